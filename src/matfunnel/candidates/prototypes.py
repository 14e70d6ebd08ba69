"""pymatgen's bundled AFLOW prototype library, loaded once and filtered by size.

The library (``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``, 288 prototypes from the AFLOW
Library of Crystallographic Prototypes) stores each prototype as a StructureNL decorated with a real
compound (e.g. rocksalt as NaCl) plus tags (``aflow`` label, ``strukturbericht``, ``mineral``,
``pearson``). We read the file directly (importing ``pymatgen.analysis.prototypes`` also loads large
Wyckoff tables we do not need).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pymatgen.core import Structure


@dataclass(frozen=True)
class Prototype:
    """One AFLOW prototype.

    A stable ``id`` (the AFLOW label, qualified when the label is shared), the decorated structure as stored
    by pymatgen, and its tags.
    """

    id: str
    structure: Structure = field(compare=False, repr=False)
    tags: dict = field(compare=False, repr=False, default_factory=dict)

    @property
    def num_sites(self) -> int:
        """The number of sites of the prototype's structure."""
        return len(self.structure)

    @property
    def strukturbericht(self) -> str | None:
        """The Strukturbericht designation, or None when the library gives none."""
        sb = self.tags.get("strukturbericht")
        return None if sb in (None, "", "None") else sb


def library_path() -> Path:
    """The path of pymatgen's bundled ``aflow_prototypes.json.gz``."""
    import pymatgen.core

    # pymatgen.analysis is a namespace package (no __file__): go via pymatgen.core
    return Path(pymatgen.core.__file__).parent.parent / "analysis" / "prototypes" / "aflow_prototypes.json.gz"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_']+", "_", text).strip("_")


@lru_cache(maxsize=1)
def _all_prototypes() -> tuple[Prototype, ...]:
    with gzip.open(library_path(), "rt") as fh:
        raw = json.load(fh)
    counts = Counter(entry["tags"]["aflow"] for entry in raw)
    protos, seen = [], set()
    for entry in raw:
        tags = dict(entry["tags"])
        pid = tags["aflow"]
        if counts[pid] > 1:  # e.g. A_oC8_64_f is alpha-Ga (A11), black P (A17) and I2 (A14)
            sb = tags.get("strukturbericht")
            qual = sb if sb not in (None, "", "None") else tags.get("mineral") or tags.get("pearson")
            pid = f"{pid}:{_slug(str(qual))}"
        base, n = pid, 1
        while pid in seen:
            n += 1
            pid = f"{base}#{n}"
        seen.add(pid)
        snl = entry["snl"]
        struct = Structure.from_dict({"lattice": snl["lattice"], "sites": snl["sites"]})
        protos.append(Prototype(pid, struct, tags))
    return tuple(protos)


def load_aflow_prototypes(max_sites: int | None = None) -> list[Prototype]:
    """All ordered prototypes with at most ``max_sites`` sites (all if None), in library order.

    The structures are shared (cached): copy before modifying.
    """
    return [
        p
        for p in _all_prototypes()
        if (max_sites is None or p.num_sites <= max_sites) and p.structure.is_ordered
    ]


def get_prototype(pid: str) -> Prototype:
    """The prototype with id ``pid`` (see :func:`load_aflow_prototypes`)."""
    for p in _all_prototypes():
        if p.id == pid:
            return p
    raise KeyError(f"no AFLOW prototype with id {pid!r}")
