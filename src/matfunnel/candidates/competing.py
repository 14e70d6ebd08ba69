"""Reference (competing) phases for an offline convex hull, to be relaxed with the same potential.

What is generated, for ``chemsys`` (all from pymatgen's bundled AFLOW prototypes):

* **Elements** (``properties["kind"] = "element"``)

  - molecular elements H, N, O, F, Cl, Br, I: one molecular crystal each -- alpha-O2 type (``mC4``)
    for O, H and F; gamma-N2 type (``tP4``) for N; I2 type (A14, ``oC8``) for Cl, Br and I. The
    prototype's molecule centres are kept (cell scaled by the ratio of van der Waals radii) and each
    molecule is rebuilt with the element's gas-phase bond length (:data:`BOND_LENGTHS`).
  - every other element: fcc (A1), bcc (A2) and hcp (A3), plus diamond (A4) for C, Si, Ge, Sn,
    graphite (A9) for C, A7 (alpha-As) for P, As, Sb, Bi and A8 (trigonal Se chains) for S, Se, Te.

* **Binaries** for every pair (``kind = "binary"``)

  - intermetallic pairs (no anion element): B2, L1_0, B1, L1_2, D0_3, C1, C11_b, C32 and D0_19,
    both decorations of each.
  - cation-anion pairs (one of :data:`~matfunnel.candidates.chemsys.ANION_ELEMENTS`): B1, B2, B3,
    B4, C1, C4 (rutile), C6 (CdI2), D0_3, D0_9 (ReO3) and D5_1 (corundum), only decorations that
    are charge-neutral with the cation's common/ICSD positive oxidation states and the anion's
    negative ones (MnO, MnO2, Mn2O3, Li2O, ...).
  - anion-anion pairs (e.g. N-O) are skipped.

Volumes are set by reference lattice scaling with atomic radii (as for candidates). Structures
larger than ``max_sites`` are dropped, duplicates (StructureMatcher) removed, the order is
deterministic (elements first, then pairs, in the order above). ``properties``: ``label``
(e.g. ``"Mn:bcc(A2)"``, ``"MnO2:rutile(C4)"``), ``role="competing"``, ``kind``, ``formula``,
``prototype`` (AFLOW id).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from matfunnel.candidates.chemsys import ANION_ELEMENTS, parse_chemsys
from matfunnel.candidates.dedupe import dedupe_ranked
from matfunnel.candidates.prototypes import get_prototype

#: X-X bond lengths of the diatomic molecules (Angstrom)
BOND_LENGTHS = {"H": 0.741, "N": 1.098, "O": 1.208, "F": 1.412, "Cl": 1.988, "Br": 2.281, "I": 2.666}

_MOLECULAR_PROTO = {
    "O": ("A_mC4_12_i", "alpha-O2"),
    "H": ("A_mC4_12_i", "alpha-O2-type"),
    "F": ("A_mC4_12_i", "alpha-O2-type"),
    "N": ("A_tP4_136_f", "gamma-N2"),
    "Cl": ("A_oC8_64_f:A14", "I2-type(A14)"),
    "Br": ("A_oC8_64_f:A14", "I2-type(A14)"),
    "I": ("A_oC8_64_f:A14", "I2(A14)"),
}
_METAL_PROTOS = [("A_cF4_225_a", "fcc(A1)"), ("A_cI2_229_a", "bcc(A2)"), ("A_hP2_194_c", "hcp(A3)")]
_EXTRA_ELEMENT_PROTOS = {
    "C": [("A_cF8_227_a", "diamond(A4)"), ("A_hP4_194_bc", "graphite(A9)")],
    "Si": [("A_cF8_227_a", "diamond(A4)")],
    "Ge": [("A_cF8_227_a", "diamond(A4)")],
    "Sn": [("A_cF8_227_a", "diamond(A4)")],
    "P": [("A_hR2_166_c:A7", "A7")],
    "As": [("A_hR2_166_c:A7", "A7")],
    "Sb": [("A_hR2_166_c:A7", "A7")],
    "Bi": [("A_hR2_166_c:A7", "A7")],
    "S": [("A_hP3_152_a", "A8")],
    "Se": [("A_hP3_152_a", "A8")],
    "Te": [("A_hP3_152_a", "A8")],
}
_INTERMETALLIC_PROTOS = [
    ("AB_cP2_221_b_a", "CsCl(B2)"),
    ("AB_tP2_123_a_d", "CuAu(L1_0)"),
    ("AB_cF8_225_a_b", "rocksalt(B1)"),
    ("AB3_cP4_221_a_c", "Cu3Au(L1_2)"),
    ("AB3_cF16_225_a_bc", "BiF3(D0_3)"),
    ("AB2_cF12_225_a_c", "fluorite(C1)"),
    ("AB2_tI6_139_a_e", "MoSi2(C11_b)"),
    ("AB2_hP3_191_a_d", "AlB2(C32)"),
    ("A3B_hP8_194_h_c", "Ni3Sn(D0_19)"),
]
_IONIC_PROTOS = [
    ("AB_cF8_225_a_b", "rocksalt(B1)"),
    ("AB_cP2_221_b_a", "CsCl(B2)"),
    ("AB_cF8_216_c_a", "zincblende(B3)"),
    ("AB_hP4_186_b_b", "wurtzite(B4)"),
    ("AB2_cF12_225_a_c", "fluorite(C1)"),
    ("A2B_tP6_136_f_a", "rutile(C4)"),
    ("AB2_hP3_164_a_d", "CdI2(C6)"),
    ("AB3_cF16_225_a_bc", "BiF3(D0_3)"),
    ("A3B_cP4_221_d_a", "ReO3(D0_9)"),
    ("A2B3_hR10_167_c_e", "corundum(D5_1)"),
]


def _atomic_radius(el: str) -> float:
    e = Element(el)
    return float(e.atomic_radius or e.atomic_radius_calculated or 1.5)


def _decorate(pid: str, mapping: dict[str, str]) -> Structure:
    """The prototype with its elements replaced per ``mapping``.

    Lengths are scaled by atomic radii (reference lattice scaling).
    """
    proto = get_prototype(pid).structure
    counts: dict[str, int] = {}
    for site in proto:
        counts[site.specie.symbol] = counts.get(site.specie.symbol, 0) + 1
    num = sum(_atomic_radius(mapping[e]) * n ** (1 / 3) for e, n in counts.items())
    den = sum(_atomic_radius(e) * n ** (1 / 3) for e, n in counts.items())
    s = Structure(proto.lattice, [mapping[site.specie.symbol] for site in proto], proto.frac_coords)
    if den > 0:
        s.scale_lattice(s.volume * (num / den) ** 3)
    return s


def molecular_crystal(element: str) -> Structure:
    """Molecular crystal of the diatomic ``element`` (see module doc)."""
    pid, _ = _MOLECULAR_PROTO[element]
    proto = get_prototype(pid).structure
    ref_el = proto[0].specie.symbol
    vdw = lambda e: float(Element(e).van_der_waals_radius or 1.8)  # noqa: E731
    scale = vdw(element) / vdw(ref_el)
    lattice = Lattice(proto.lattice.matrix * scale)
    bond = BOND_LENGTHS[element]
    species, coords, done = [], [], set()
    for i, site in enumerate(proto):
        if i in done:
            continue
        # nearest partner (periodic images included) = the other atom of the molecule
        best: int | None = None
        best_d, best_img = np.inf, None
        for j, other in enumerate(proto):
            if j == i or j in done:
                continue
            d, img = site.distance_and_image(other)
            if d < best_d:
                best, best_d, best_img = j, d, img
        # every molecular prototype pairs each atom with a partner
        assert best is not None and best_img is not None
        done.update({i, best})
        f1 = site.frac_coords
        f2 = proto[best].frac_coords + best_img
        centre = (f1 + f2) / 2
        axis = proto.lattice.get_cartesian_coords(f2 - f1)
        axis /= np.linalg.norm(axis)
        c_cart = lattice.get_cartesian_coords(centre)
        for sign in (-1, 1):
            species.append(element)
            coords.append(c_cart + sign * axis * bond / 2)
    return Structure(lattice, species, coords, coords_are_cartesian=True)


def _oxidation_states(el: str, sign: int) -> list[int]:
    e = Element(el)
    states = set(e.common_oxidation_states) | set(e.icsd_oxidation_states)
    return sorted(s for s in states if s * sign > 0)


def _charge_neutral(counts: dict[str, int], cation: str, anion: str) -> bool:
    nc, na = counts[cation], counts[anion]
    return any(
        nc * qc + na * qa == 0 for qc in _oxidation_states(cation, 1) for qa in _oxidation_states(anion, -1)
    )


def _label(s: Structure, name: str) -> str:
    return f"{s.composition.reduced_formula}:{name}"


def _elemental_phases(el: str) -> list[tuple[Structure, str, str, str]]:
    """The elemental reference structures of ``el`` as (structure, name, ``"element"``, prototype id)."""
    if el in _MOLECULAR_PROTO:
        pid, name = _MOLECULAR_PROTO[el]
        return [(molecular_crystal(el), name, "element", pid)]
    out = []
    for pid, name in _METAL_PROTOS + _EXTRA_ELEMENT_PROTOS.get(el, []):
        src = get_prototype(pid).structure
        out.append((_decorate(pid, {src[0].specie.symbol: el}), name, "element", pid))
    return out


def missing_elemental_phases(chemsys: str | Iterable[str], max_sites: int) -> dict[str, int]:
    """Elements of ``chemsys`` with no elemental reference phase of at most ``max_sites`` sites.

    An offline hull needs one per element (else that corner would come from another energy model).

    Returns
    -------
    dict
        ``{element: sites of its smallest elemental phase}`` for each such element (empty when all are covered).
    """
    out = {}
    for el in parse_chemsys(chemsys):
        smallest = min(len(s) for s, *_ in _elemental_phases(el))
        if smallest > max_sites:
            out[el] = smallest
    return out


def competing_phase_structures(chemsys: str | Iterable[str], max_sites: int = 10) -> list[Structure]:
    """Elemental and binary reference structures for ``chemsys`` (see the module doc)."""
    elements = parse_chemsys(chemsys)
    out: list[tuple[Structure, str, str, str]] = []  # structure, name, kind, prototype id

    for el in elements:
        out.extend(_elemental_phases(el))

    for a, b in itertools.combinations(elements, 2):
        an_a, an_b = a in ANION_ELEMENTS, b in ANION_ELEMENTS
        if an_a and an_b:
            continue  # anion-anion pairs: no sensible prototype-based reference
        ionic = an_a or an_b
        cation, anion = (b, a) if an_a else (a, b)
        for pid, name in _IONIC_PROTOS if ionic else _INTERMETALLIC_PROTOS:
            proto = get_prototype(pid).structure
            pels = sorted({site.specie.symbol for site in proto})
            if len(pels) != 2:
                continue
            for x, y in ((a, b), (b, a)):
                s = _decorate(pid, {pels[0]: x, pels[1]: y})
                if ionic:
                    counts = {e.symbol: int(n) for e, n in s.composition.items()}
                    if not _charge_neutral(counts, cation, anion):
                        continue
                out.append((s, name, "binary", pid))

    out = [o for o in out if len(o[0]) <= max_sites]
    kept, _, _ = dedupe_ranked([o[0] for o in out])
    result = []
    for i in kept:
        s, name, kind, pid = out[i]
        s.properties = {"label": _label(s, name), "role": "competing", "kind": kind,
                        "formula": s.composition.reduced_formula, "prototype": pid}
        result.append(s)
    return result
