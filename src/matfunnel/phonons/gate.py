"""The optional phonon gate of a campaign: dynamically unstable candidates do not go to DFT.

After the hull, candidates within ``threshold`` eV/atom of the hull (at most ``max_candidates``, lowest
first) get an MLIP phonon check (:class:`~matfunnel.phonons.maker.PhononMaker`, a "gpu" job).
:class:`PhononGateMaker` returns a :class:`~matfunnel.common.documents.PhononGateDoc`; its ``unstable()``
gives the candidates the DFT gate drops. Spec section (YAML; :class:`PhononGateOptions`)::

    phonons:
      enabled: true
      threshold: 0.05        # eV/atom above hull
      max_candidates: 10
      min_length: 12.0       # Angstrom, supercell width
      max_supercell_atoms: 1000
      relax: true            # tight symmetric relaxation first (fmax 0.005 eV/A)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from jobflow import Flow, Maker, Response, job
from pydantic import Field

from matfunnel.common.documents import HullDoc, PhononGateDoc, as_doc
from matfunnel.common.structures import as_structure
from matfunnel.common.validation import StrictOptions
from matfunnel.phonons.calculate import DEFAULT_DISPLACEMENT
from matfunnel.phonons.maker import PhononMaker
from matfunnel.phonons.stability import IMAGINARY_TOL
from matfunnel.phonons.supercell import MAX_SUPERCELL_ATOMS
from matfunnel.phonons.symmetric_relax import TIGHT_FMAX
from matfunnel.potential import DEFAULT_POTENTIAL, load_potential

#: document keys kept in the gate's output (band/DOS arrays stay out of the campaign report)
COMPACT_KEYS = ("label", "formula", "potential", "supercell_matrix", "n_supercell_atoms", "n_displacements",
                "free_energy_300k", "entropy_300k", "heat_capacity_300k", "omega_max_thz", "omega_max_k",
                "min_frequency_thz", "dynamically_stable", "stability", "relaxation", "wall_time", "error")


@dataclass
class PhononGateOptions:
    """The ``phonons`` section of a campaign spec (see the module doc)."""

    enabled: bool = False
    threshold: float = 0.05  # eV/atom above hull
    max_candidates: int = 10
    min_length: float = 12.0  # Angstrom
    max_supercell_atoms: int = MAX_SUPERCELL_ATOMS
    displacement: float = DEFAULT_DISPLACEMENT  # Angstrom
    relax: bool = True
    relax_fmax: float = TIGHT_FMAX  # eV/A
    imaginary_tol: float = IMAGINARY_TOL  # THz
    mesh: float = 50.0  # phonopy mesh length (a gate needs the sign of the frequencies, not converged S/F)


class PhononGateSchema(StrictOptions):
    """The ranges of :class:`PhononGateOptions`, checked when a spec is read (every field required).

    ``threshold`` -1 to 5 eV/atom; ``max_candidates`` 0-10^4; ``min_length`` (0, 100] Å;
    ``max_supercell_atoms`` 1-20000; ``displacement`` (0, 0.5] Å; ``relax_fmax`` (0, 10] eV/Å;
    ``imaginary_tol`` [0, 10] THz; ``mesh`` (0, 1000]; ``enabled`` and ``relax`` are booleans (``"yes"`` is not).
    """

    enabled: bool
    threshold: Annotated[float, Field(ge=-1, le=5, allow_inf_nan=False)]
    max_candidates: Annotated[int, Field(ge=0, le=10_000)]
    min_length: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
    max_supercell_atoms: Annotated[int, Field(ge=1, le=20_000)]
    displacement: Annotated[float, Field(gt=0, le=0.5, allow_inf_nan=False)]
    relax: bool
    relax_fmax: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]
    imaginary_tol: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]
    mesh: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]


def gate_phonons(opts: PhononGateOptions, potential: str | None = None, device: str = "cpu",
                 potential_kwargs: dict | None = None) -> PhononMaker:
    """The phonon pipeline a gate runs: ``opts`` with coarse band/DOS grids (a gate needs the verdict)."""
    return PhononMaker(name="phonons", potential=potential or DEFAULT_POTENTIAL, device=device,
                       potential_kwargs=dict(potential_kwargs or {}), relax=opts.relax, relax_fmax=opts.relax_fmax,
                       displacement=opts.displacement, min_length=opts.min_length,
                       max_supercell_atoms=opts.max_supercell_atoms, imaginary_tol=opts.imaginary_tol,
                       mesh=opts.mesh, band_npoints=21, dos_points=101)


def select_for_phonons(candidate_docs: list, hull: HullDoc | dict, opts: PhononGateOptions | PhononGateMaker,
                       ) -> tuple[list[str], dict[str, str]]:
    """Ids that get a phonon check (lowest ``e_above_hull`` first) and the reasons for the others."""
    rows = as_doc(HullDoc, hull).row_by_id()
    skipped, eligible = {}, []
    for d in candidate_docs:
        cid = d["label"]
        row = rows.get(cid)
        if row is None or row.get("e_above_hull") is None or d.get("final_structure") is None:
            skipped[cid] = "skipped: no hull energy"
        elif row["e_above_hull"] > opts.threshold:
            skipped[cid] = f"skipped: above phonon threshold ({row['e_above_hull']:.3f} > {opts.threshold} eV/atom)"
        else:
            eligible.append((row["e_above_hull"], cid))
    eligible.sort()
    chosen = [cid for _, cid in eligible[: opts.max_candidates]]
    for _, cid in eligible[opts.max_candidates:]:
        skipped[cid] = f"skipped: beyond phonons.max_candidates={opts.max_candidates}"
    return chosen, skipped


def verdict(doc: dict) -> str:
    """``stable``, ``unstable: <reason>`` or ``skipped: phonon check failed (...)`` for one phonon document."""
    if doc.get("dynamically_stable") is None:
        return f"skipped: phonon check failed ({doc.get('error')})"
    if doc["dynamically_stable"]:
        return "stable"
    return f"unstable: {doc['stability']['reason']}"


@dataclass
class PhononGateMaker(Maker):
    """Phonon-check the candidates near the hull; the unstable ones are kept from DFT.

    Parameters
    ----------
    name
        The job's name.
    enabled
        Off: the gate decides nothing (a :class:`PhononGateDoc` with ``enabled=False``).
    threshold
        eV/atom above the hull up to which a candidate is checked.
    max_candidates
        At most this many checks, lowest ``e_above_hull`` first.
    phonons
        The per-structure phonon pipeline (potential, supercell, displacement, relaxation, mesh).
    """

    name: str = "phonon gate"
    enabled: bool = PhononGateOptions.enabled
    threshold: float = PhononGateOptions.threshold
    max_candidates: int = PhononGateOptions.max_candidates
    phonons: PhononMaker = field(default_factory=lambda: gate_phonons(PhononGateOptions()))

    @classmethod
    def from_options(cls, opts: PhononGateOptions, potential: str | None = None, device: str = "cpu",
                     potential_kwargs: dict | None = None) -> PhononGateMaker:
        """The gate of a campaign spec's ``phonons`` section, run with the campaign's potential."""
        return cls(enabled=opts.enabled, threshold=opts.threshold, max_candidates=opts.max_candidates,
                   phonons=gate_phonons(opts, potential, device, potential_kwargs))

    @job
    def make(self, candidate_docs: list, hull: HullDoc):
        """The gate's :class:`PhononGateDoc` (a dynamic Response when there is something to check)."""
        if not self.enabled:
            return PhononGateDoc(enabled=False)
        chosen, skipped = select_for_phonons(candidate_docs, hull, self)
        if not chosen:
            return PhononGateDoc(enabled=True, decisions=skipped)
        structures = {d["label"]: d["final_structure"] for d in candidate_docs}
        j = self.phonons.make([structures[c] for c in chosen], chosen)
        j.update_metadata({"category": "gpu"}, dynamic=False)
        collect = phonon_verdicts_job(j.output, skipped)
        return Response(replace=Flow([j, collect], output=collect.output, name="phonon gate"))

    def run(self, candidate_docs: list, hull: HullDoc | dict) -> PhononGateDoc:
        """The gate in this process, without jobflow (for scripts and notebooks)."""
        chosen, decisions = select_for_phonons(candidate_docs, hull, self)
        structures = {d["label"]: d["final_structure"] for d in candidate_docs}
        m = self.phonons
        pot = load_potential(m.potential, m.device, **m.potential_kwargs)
        docs = [m.run_one(as_structure(structures[c], c), c, pot).as_dict() for c in chosen]
        return _verdicts(docs, decisions)


def _verdicts(docs: list[dict], skipped: dict[str, str]) -> PhononGateDoc:
    decisions = dict(skipped)
    for d in docs:
        decisions[d["label"]] = verdict(d)
    return PhononGateDoc(enabled=True, decisions=decisions,
                         results=[{k: d.get(k) for k in COMPACT_KEYS} for d in docs])


@job(name="phonon verdicts")
def phonon_verdicts_job(docs: list, skipped: dict) -> PhononGateDoc:
    """The verdict of each phonon document, with the candidates the gate skipped."""
    return _verdicts(docs, skipped)
