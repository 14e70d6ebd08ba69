"""Candidates stage of the discovery funnel: pure functions over pymatgen objects.

* :func:`load_user_structures` -- CIF/POSCAR/JSON files or folders -> ``(structures, errors)``
  (:class:`UserStructuresError` when none is usable)
* :func:`parse_chemsys` -- ``"Li-Mn-O"`` -> ``["Li", "Mn", "O"]`` (``ValueError`` on bad input)
* :func:`generate_candidates` -- AFLOW prototypes + user structures, substituted into the system
  with ICSD-mined probabilities, filtered, de-duplicated and capped -> :class:`CandidateSet`
* :func:`competing_phase_structures` -- elemental and binary reference structures for the hull
"""

from matfunnel.candidates.chemsys import ANION_ELEMENTS, is_ionic, parse_chemsys
from matfunnel.candidates.competing import competing_phase_structures
from matfunnel.candidates.dedupe import dedupe_ranked, dedupe_structures
from matfunnel.candidates.generate import (
    CandidateSet,
    candidate_id,
    generate_candidates,
)
from matfunnel.candidates.prototypes import (
    Prototype,
    get_prototype,
    load_aflow_prototypes,
)
from matfunnel.candidates.sources import UserStructuresError, load_user_structures
from matfunnel.candidates.substitution import (
    SubstitutionTable,
    default_table,
    target_species,
)

__all__ = [
    "ANION_ELEMENTS",
    "CandidateSet",
    "Prototype",
    "SubstitutionTable",
    "UserStructuresError",
    "candidate_id",
    "competing_phase_structures",
    "dedupe_ranked",
    "dedupe_structures",
    "default_table",
    "generate_candidates",
    "get_prototype",
    "is_ionic",
    "load_aflow_prototypes",
    "load_user_structures",
    "parse_chemsys",
    "target_species",
]
