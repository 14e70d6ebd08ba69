"""Chemical-system strings: ``"Li-Mn-O"`` -> ``["Li", "Mn", "O"]``, and ionic/intermetallic classification."""

from __future__ import annotations

import re
from collections.abc import Iterable

from pymatgen.core import Element

#: Elements that act as anions in the funnel's sense: a chemical system containing one of them is
#: treated as ionic (oxidation-state-decorated substitution and a charge-neutrality filter).
ANION_ELEMENTS: frozenset[str] = frozenset(
    {"H", "N", "O", "F", "P", "S", "Cl", "Se", "Br", "Te", "I"}
)

_TOKEN = re.compile(r"^[A-Z][a-z]?$")
_ISOTOPES = frozenset({"D", "T"})  # pymatgen knows them, the substitution table does not


def parse_chemsys(chemsys: str | Iterable[str]) -> list[str]:
    """Parse ``"Li-Mn-O"`` (or ``["Li", "Mn", "O"]``) into a sorted list of unique element symbols.

    Separators ``-``, ``,`` and whitespace are accepted. Raises ``ValueError`` naming the offending
    token for malformed input or an unknown element.
    """
    if isinstance(chemsys, str):
        text = chemsys.strip()
        if not text:
            raise ValueError("empty chemical system; expected something like 'Li-Mn-O'")
        tokens = [t.strip() for t in re.split(r"\s*[-,]\s*|\s+", text)]
        if any(not t for t in tokens):
            raise ValueError(f"malformed chemical system {chemsys!r}; expected something like 'Li-Mn-O'")
    else:
        tokens = [str(t).strip() for t in chemsys]
        if not tokens:
            raise ValueError("empty chemical system; expected something like 'Li-Mn-O'")
    out = set()
    for tok in tokens:
        if not _TOKEN.match(tok):
            raise ValueError(
                f"malformed element {tok!r} in chemical system {chemsys!r}; "
                "use element symbols separated by '-', e.g. 'Li-Mn-O'"
            )
        if tok in _ISOTOPES or not Element.is_valid_symbol(tok):
            raise ValueError(f"unknown element {tok!r} in chemical system {chemsys!r}")
        out.add(tok)
    return sorted(out)


def is_ionic(elements: Iterable[str]) -> bool:
    """True if the system contains an anion-forming element and at least one other element.

    The anion-forming elements are :data:`ANION_ELEMENTS`. Pure anion systems (e.g. ``O``, ``N-O``) are not ionic.
    """
    els = set(elements)
    return bool(els & ANION_ELEMENTS) and bool(els - ANION_ELEMENTS)
