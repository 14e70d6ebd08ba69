"""The typed documents the funnel's stages pass to each other.

Each stage of :class:`~matfunnel.campaign.funnel.FunnelMaker` returns one of these (the relaxation stage
returns the engine's relaxation documents, one dict per structure). They are MSONable dataclasses: jobflow
stores them as JSON and hands them to the next job as objects again. Structures inside are kept as their
``as_dict()`` documents (JSON all the way); :func:`matfunnel.common.structures.as_structure` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monty.json import MSONable


class StageDocument(MSONable):
    """Base of the stage documents: JSON in, JSON out.

    ``from_dict`` keeps nested values as stored (structures and entries stay their dicts), where monty's
    default would turn every nested pymatgen document into an object: consumers read one form only.
    """

    @classmethod
    def from_dict(cls, d: dict):
        """The document from its dict (``@module``/``@class`` keys ignored)."""
        return cls(**{k: v for k, v in d.items() if not k.startswith("@")})


@dataclass
class CandidatesDoc(StageDocument):
    """The candidates of a chemical system, after filters, dedupe and the cap.

    Attributes
    ----------
    chemsys
        ``"Al-Li"``, elements sorted.
    ids
        One id per candidate (``structures`` in the same order).
    structures
        ``Structure.as_dict()`` of each candidate.
    provenance
        The structure properties of each candidate (source, substitution, ...).
    errors
        Inputs rejected with their error (``{"label"/"file": ..., "error": ...}``).
    rejected
        Candidates dropped by a filter, with the reason.
    stats
        Counts per step.
    """

    chemsys: str
    ids: list[str] = field(default_factory=list)
    structures: list[dict] = field(default_factory=list)
    provenance: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


@dataclass
class ReferencesDoc(StageDocument):
    """The hull's references, from the Materials Project or relaxed offline.

    ``mode`` is ``"mp"`` (Materials Project entries, nothing relaxed here) or ``"offline"`` with the
    relaxation documents of the competing phases (``competing``).
    """

    mode: str
    competing: list[dict] = field(default_factory=list)


@dataclass
class HullDoc(StageDocument):
    """Formation energies and energies above the hull of the relaxed candidates.

    Attributes
    ----------
    rows
        One row per candidate entry (``entry_id``, ``e_form_per_atom``, ``e_above_hull``, ...).
    reference_label
        Which references built the hull (MP, offline elemental + competing phases).
    reference_details
        Counts and sources of the references.
    reference_entries, candidate_entries
        The MP2020-processed entries, as dicts.
    phases
        ``{entry id: structure dict}`` of every phase the DFT stage may need.
    skipped
        ``{"candidates": {id: why}, "competing": {id: why}}``: relaxations without an energy.
    """

    rows: list[dict] = field(default_factory=list)
    reference_label: str = ""
    reference_details: dict = field(default_factory=dict)
    reference_entries: list[dict] = field(default_factory=list)
    candidate_entries: list[dict] = field(default_factory=list)
    phases: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, dict] = field(default_factory=dict)

    def row_by_id(self) -> dict[str, dict]:
        """``{entry id: row}``."""
        return {r["entry_id"]: r for r in self.rows}


@dataclass
class PhononGateDoc(StageDocument):
    """The phonon gate's verdicts.

    Attributes
    ----------
    enabled
        False when the campaign has no phonon gate (nothing else is set then).
    decisions
        ``{candidate id: "stable" | "unstable: <reason>" | "skipped: <why>"}``.
    results
        Compact phonon documents of the checked candidates.
    """

    enabled: bool = False
    decisions: dict[str, str] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)

    def unstable(self) -> dict[str, str]:
        """``{candidate id: decision}`` of the candidates found dynamically unstable (kept from DFT)."""
        if not self.enabled:
            return {}
        return {cid: dec for cid, dec in self.decisions.items() if dec.startswith("unstable")}


@dataclass
class DftDoc(StageDocument):
    """The DFT stage: why each candidate did or did not go to DFT, and the DFT hull of those that did.

    Attributes
    ----------
    engine
        ``gpaw``, ``vasp`` or ``none``.
    threshold
        eV/atom above the MLIP hull up to which candidates went to DFT.
    decisions
        ``{candidate id: decision}`` (``"to DFT"``, ``"above threshold (...)"``, ...).
    results
        One DFT hull row per candidate computed (``id``, ``dft_e_above_hull``, ...).
    runs
        Compact records of every DFT calculation (candidates and competing phases).
    rule
        The gate's rule (``plain``, ``mean_k_sigma``, ``probability``, ``budget``; see
        :class:`~matfunnel.dft.gate.DftGateMaker`).
    rule_parameters
        The rule's parameters (``k``, ``min_probability``, ...); empty under ``plain``.
    scores
        ``{candidate id: {"rule", "mean", "sigma", "probability", "value", "spread"}}``: the numbers each candidate
        was decided by (empty under ``plain``).
    """

    engine: str
    threshold: float | None = None
    decisions: dict[str, str] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    rule: str = "plain"
    rule_parameters: dict = field(default_factory=dict)
    scores: dict[str, dict] = field(default_factory=dict)


@dataclass
class FineTuneDoc(StageDocument):
    """A fine-tuning run's outcome (:class:`matfunnel.train.maker.FineTuneMaker`).

    Attributes
    ----------
    base
        The potential it started from (``"chgnet-0.3.0"``).
    checkpoint
        The fine-tuned checkpoint: ``load_potential(base, checkpoint=checkpoint)``.
    folder
        The content-addressed run folder (logs, curves, state).
    key
        The run's content address (data, settings and starting model).
    dataset_hash
        The training frames' hash.
    n_train, n_val
        Frames used for training and validation.
    metrics
        Validation MAEs and loss before and after (``{"before": ..., "after": ..., "epoch": ...}``).
    references
        Change of each element's reference energy by the refit (eV/atom).
    data_errors
        Frames left out, each ``"<file>#<frame>: problem"``.
    """

    base: str
    checkpoint: str
    folder: str
    key: str
    dataset_hash: str
    n_train: int = 0
    n_val: int = 0
    metrics: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)
    data_errors: list[str] = field(default_factory=list)


def as_doc[D: StageDocument](cls: type[D], obj: Any) -> D:
    """``obj`` as a ``cls`` document: itself, or built from its dict (as stored, with or without ``@class``)."""
    return obj if isinstance(obj, cls) else cls.from_dict(dict(obj))
