"""ICSD-mined substitution probabilities (Hautier et al., Inorg. Chem. 50, 656 (2011)).

Same data (``pymatgen/core/structure_prediction/data/lambda.json``) and the same formulas as
``pymatgen.analysis.structure_prediction.SubstitutionProbability`` (alpha = -5 for unseen pairs):

    p(s1 | s2) = exp(lambda(s1, s2)) / sum_x exp(lambda(x, s2))

computed with numpy over the whole table (pymatgen's own class takes ~2 s to build, this ~20 ms).
It is extended to *elements* by marginalising over oxidation states, which is what the funnel uses
for intermetallics and for sources whose oxidation states cannot be guessed:

    p(A | t) = sum_a exp(lambda(A^a, t)) / px(t)             element A, species t
    p(A | B) = sum_{a,b} exp(lambda(A^a, B^b)) / sum_b px(B^b)   elements A, B

For intermetallics (``cations_only=True``) the sums run over positive oxidation states only: a metal
in an alloy is compared with other cations, not with its rare anionic species. Pairs involving an
element absent from the table (or without a positive species, in that mode) get
:data:`UNSEEN_PROBABILITY`.

Scores: a substitution map ``{source: target}`` scores ``prod p(source | target)`` over the
*replaced* species; a species kept as it is contributes a factor 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np
from pymatgen.core import Element, Species

from matfunnel.candidates.chemsys import ANION_ELEMENTS

#: probability used when an element has no entry in the lambda table at all
UNSEEN_PROBABILITY = 1e-5
ALPHA = -5.0


def lambda_table_path() -> Path:
    import pymatgen.core

    return Path(pymatgen.core.__file__).parent / "structure_prediction" / "data" / "lambda.json"


class SubstitutionTable:
    """Conditional substitution probabilities between species and/or elements."""

    def __init__(self, rows: Iterable[Sequence] | None = None, alpha: float = ALPHA):
        if rows is None:
            with open(lambda_table_path()) as fh:
                rows = json.load(fh)
        lam: dict[frozenset, float] = {}
        species: set[str] = set()
        for row in rows:
            if "D1+" in row:  # pymatgen skips deuterium rows too
                continue
            s1, s2 = str(Species.from_str(row[0])), str(Species.from_str(row[1]))
            species.update((s1, s2))
            lam[frozenset((s1, s2))] = float(row[2])
        self.alpha = alpha
        self.species: list[str] = sorted(species)
        self._idx = {s: i for i, s in enumerate(self.species)}
        n = len(self.species)
        mat = np.full((n, n), alpha)
        for key, val in lam.items():
            pair = tuple(key)
            i = self._idx[pair[0]]
            j = self._idx[pair[-1]]
            mat[i, j] = mat[j, i] = val
        self._w = np.exp(mat)  # symmetric weights exp(lambda)
        self._px = self._w.sum(axis=0)
        self._by_element: dict[str, list[int]] = {}
        self._charge = np.zeros(n)
        for s, i in self._idx.items():
            sp = Species.from_str(s)
            self._by_element.setdefault(sp.symbol, []).append(i)
            self._charge[i] = sp.oxi_state or 0

    # -- lookups --------------------------------------------------------------------------------
    def has(self, x: str) -> bool:
        """Whether ``x`` (a species string or an element symbol) is in the table."""
        return x in self._idx or x in self._by_element

    def species_of(self, element: str) -> list[Species]:
        """Species of ``element`` present in the table."""
        return [Species.from_str(self.species[i]) for i in self._by_element.get(element, [])]

    def _indices(self, x: str, cations_only: bool = False) -> list[int]:
        """``x`` is a species string ("Mn3+") or an element symbol ("Mn")."""
        if x in self._idx:
            return [self._idx[x]]
        idx = self._by_element.get(x, [])
        if cations_only:
            idx = [i for i in idx if self._charge[i] > 0]
        return idx

    def cond_prob(self, source: str, target: str, cations_only: bool = False) -> float:
        """p(source | target): probability that ``target`` substitutes for ``source``.

        As pymatgen's ``cond_prob(s1=source, s2=target)``. Either side may be an element symbol
        (marginalised over its species; positive ones only with ``cations_only``).
        """
        si, ti = self._indices(source, cations_only), self._indices(target, cations_only)
        if not si or not ti:
            return UNSEEN_PROBABILITY
        num = float(self._w[np.ix_(si, ti)].sum())
        return num / float(self._px[ti].sum())

    def score(self, mapping: dict[str, str], cations_only: bool = False) -> float:
        """Product of ``cond_prob(source, target)`` over the map; identical pairs contribute 1."""
        p = 1.0
        for s, t in mapping.items():
            if s != t:
                p *= self.cond_prob(s, t, cations_only)
        return p


@lru_cache(maxsize=1)
def default_table() -> SubstitutionTable:
    """The table built from pymatgen's bundled ``lambda.json`` (cached)."""
    return SubstitutionTable()


def target_species(element: str, table: SubstitutionTable | None = None) -> list[Species]:
    """Oxidation states considered for ``element`` in ionic systems.

    The species of the lambda table whose oxidation state is among the element's ICSD or common
    oxidation states (e.g. Mn: 2+, 3+, 4+, 7+; O: 2-), sorted by oxidation state. If none qualify, all
    of the element's table species; if the table has none, the ICSD/common states themselves.
    """
    table = table or default_table()
    el = Element(element)
    allowed = set(el.icsd_oxidation_states) | set(el.common_oxidation_states)
    in_table = [sp for sp in table.species_of(element) if sp.oxi_state != 0]
    chosen = [sp for sp in in_table if sp.oxi_state in allowed] or in_table
    if not chosen:
        chosen = [Species(element, ox) for ox in sorted(allowed) if ox != 0]
    if element in ANION_ELEMENTS and not any(_oxi_state(sp) < 0 for sp in chosen):
        # e.g. hydride H-: the table only knows H+, but Li-H needs the anion
        neg = [ox for ox in el.common_oxidation_states if ox < 0] or [min(el.oxidation_states)]
        chosen.append(Species(element, max(neg)))
    return sorted(chosen, key=_oxi_state)


def _oxi_state(sp: Species) -> float:
    """The oxidation state of ``sp``: the table's species and those built here all carry one."""
    return cast(float, sp.oxi_state)


def enumerate_maps(
    sources: Sequence[str],
    targets: Sequence[str],
    factor,
    threshold: float,
    accept=None,
    injective: bool = True,
) -> list[tuple[tuple[str, ...], float]]:
    """All assignments ``sources[i] -> targets[j]`` scoring at least ``threshold`` and accepted.

    Assignments are injective unless ``injective=False``; the score is the product of ``factor(i, target)``,
    and ``accept(assignment)`` must be true.

    Branch and bound: a partial assignment is dropped as soon as its score times the best possible
    factors of the remaining sources falls below the threshold. Deterministic order.
    """
    k = len(sources)
    if injective and k > len(targets):
        return []
    fac = [[factor(i, t) for t in targets] for i in range(k)]
    best_rest = [1.0] * (k + 1)
    for i in range(k - 1, -1, -1):
        best_rest[i] = best_rest[i + 1] * max(fac[i])
    out: list[tuple[tuple[str, ...], float]] = []

    def rec(i: int, used: tuple[int, ...], p: float) -> None:
        if p * best_rest[i] < threshold:
            return
        if i == k:
            assign = tuple(targets[j] for j in used)
            if accept is None or accept(assign):
                out.append((assign, p))
            return
        for j in range(len(targets)):
            if not injective or j not in used:
                rec(i + 1, (*used, j), p * fac[i][j])

    rec(0, (), 1.0)
    return out


__all__ = [
    "SubstitutionTable",
    "default_table",
    "enumerate_maps",
    "target_species",
    "UNSEEN_PROBABILITY",
]
