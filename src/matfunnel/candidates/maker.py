"""The candidates stage and the reference-phases stage of the funnel, as jobflow makers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from jobflow import Flow, Maker, Response, job

from matfunnel.candidates.competing import competing_phase_structures, missing_elemental_phases
from matfunnel.candidates.generate import SOURCES, generate_candidates
from matfunnel.common.documents import CandidatesDoc, ReferencesDoc
from matfunnel.makers.relax import BatchedRelaxMaker

#: the user's Materials Project key (read from the environment only, never stored)
MP_API_KEY_ENV = "MP_API_KEY"
#: hull reference modes: Materials Project when a key is set (``auto``), always (``mp``), never (``offline``)
REFERENCE_MODES = ("auto", "mp", "offline")


@dataclass
class CandidatesMaker(Maker):
    """Generate, filter, deduplicate and cap the candidates of a chemical system.

    Parameters
    ----------
    name
        The job's name.
    sources
        ``aflow`` (substituted prototypes) and/or ``user`` (``structures``).
    structures
        The user's structure files or folders (absolute paths).
    max_candidates
        The cap (score first, then fewer sites, then id).
    max_sites
        Largest candidate kept.
    charge_neutral
        Keep only charge-neutral candidates of ionic systems.
    """

    name: str = "candidates"
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    structures: list[str] = field(default_factory=list)
    max_candidates: int = 50
    max_sites: int = 8  # a campaign's cost guard (generate_candidates alone allows 12)
    charge_neutral: bool = True

    @job
    def make(self, chemsys: str) -> CandidatesDoc:
        """The candidates of ``chemsys`` (``"Li-Mn-O"``)."""
        cset = generate_candidates(chemsys, user_structures=self.structures, max_candidates=self.max_candidates,
                                   sources=self.sources, max_sites=self.max_sites,
                                   charge_neutral=self.charge_neutral)
        return CandidatesDoc(chemsys=chemsys, ids=cset.ids, structures=[s.as_dict() for s in cset.candidates],
                             provenance=[dict(s.properties) for s in cset.candidates], errors=cset.errors,
                             rejected=cset.rejected, stats=cset.stats)


@dataclass
class ReferencesMaker(Maker):
    """The hull's references.

    Materials Project entries, or competing phases relaxed with the candidates' potential (offline).

    Parameters
    ----------
    name
        The job's name.
    references
        ``auto`` (Materials Project when ``MP_API_KEY`` is set, else offline), ``mp`` or ``offline``.
    competing_max_sites
        Largest competing phase relaxed offline.
    relax
        How the competing phases are relaxed (the same settings as the candidates).
    """

    name: str = "reference phases"
    references: str = "auto"
    competing_max_sites: int = 4
    relax: BatchedRelaxMaker = field(default_factory=BatchedRelaxMaker)

    def use_materials_project(self) -> bool:
        """True when the hull takes its references from the Materials Project."""
        return self.references == "mp" or (self.references == "auto" and bool(os.environ.get(MP_API_KEY_ENV)))

    @job
    def make(self, chemsys: str):
        """The references of ``chemsys``: a :class:`ReferencesDoc` (offline: after relaxing the phases)."""
        if self.use_materials_project():
            return ReferencesDoc(mode="mp")
        missing = missing_elemental_phases(chemsys, self.competing_max_sites)
        if missing:  # that corner would silently come from another energy model (or the hull has none)
            raise ValueError(f"hull.competing_max_sites {self.competing_max_sites} leaves no elemental phase of "
                             f"{', '.join(missing)} for the offline hull of {chemsys} (raise it to at least "
                             f"{max(missing.values())})")
        structs = competing_phase_structures(chemsys, max_sites=self.competing_max_sites)
        ids = [s.properties.get("label") or f"ref-{i}" for i, s in enumerate(structs)]
        relaxed = self.relax.batches([s.as_dict() for s in structs], ids, "reference")
        pack = pack_references_job(relaxed.output)
        return Response(replace=Flow([relaxed, pack], output=pack.output, name="reference phases"))


@job(name="pack references")
def pack_references_job(docs: list) -> ReferencesDoc:
    """The relaxed competing phases as the offline references."""
    return ReferencesDoc(mode="offline", competing=docs)
