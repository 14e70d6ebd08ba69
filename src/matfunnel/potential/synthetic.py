"""Synthetic structures: prototype-derived, strained (triclinic), rattled, mixed chemistries.

The memory probes (:mod:`matfunnel.potential.memprobe`) size their cells with :func:`supercell`; the parity
tests and the throughput benchmarks draw random structures here (every call with a fresh ``rng`` gives new
ones).
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

ELEMENTS = ["H", "Li", "Be", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K", "Ca", "Sc", "Ti",
            "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Rb", "Sr", "Y", "Zr", "Nb",
            "Mo", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Cs", "Ba", "La", "Ce", "Nd", "Sm", "Gd",
            "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "U"]

# (lattice as multiples of a, fractional coords, number of distinct species)
_C = np.eye(3)
_FCC = 0.5 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
_HEX = np.array([[1, 0, 0], [-0.5, np.sqrt(3) / 2, 0], [0, 0, 1.63]])
PROTOTYPES = {
    "sc": (_C, [[0, 0, 0]]),
    "fcc-prim": (_FCC, [[0, 0, 0]]),
    "bcc": (_C, [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "fcc": (_C, [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
    "hcp": (_HEX, [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]),
    "rocksalt": (_FCC, [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "zincblende": (_FCC, [[0, 0, 0], [0.25, 0.25, 0.25]]),
    "cscl": (_C, [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "perovskite": (_C, [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
    "fluorite": (_FCC, [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]]),
    "rutile": (np.diag([1, 1, 0.64]), [[0, 0, 0], [0.5, 0.5, 0.5], [0.3, 0.3, 0], [0.7, 0.7, 0],
                                       [0.8, 0.2, 0.5], [0.2, 0.8, 0.5]]),
    "wurtzite": (_HEX, [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.375], [2 / 3, 1 / 3, 0.875]]),
}


def _rattled(s: Structure, rng: np.random.Generator, sigma: float) -> Structure:
    cart = s.cart_coords + rng.normal(0.0, sigma, (len(s), 3))
    return Structure(s.lattice, s.species, cart, coords_are_cartesian=True)


def random_structure(rng: np.random.Generator, max_atoms: int = 200, *, proto: str | None = None,
                     n_species: int | None = None, rattle: float | None = None,
                     shear: float | None = None) -> Structure:
    """One random structure of at most ``max_atoms`` atoms."""
    name = proto or str(rng.choice(sorted(PROTOTYPES)))
    lat, coords = PROTOTYPES[name]
    coords = np.asarray(coords, float)
    n_species = n_species or int(rng.integers(1, 4))
    pool = rng.choice(ELEMENTS, size=n_species, replace=False)
    species = [pool[k % n_species] for k in rng.permutation(len(coords))]
    s = Structure(Lattice(lat * 4.0), species, coords)
    # supercell up to max_atoms
    reps = [1, 1, 1]
    for _ in range(6):
        ax = int(rng.integers(0, 3))
        if len(s) * np.prod(reps) * (reps[ax] + 1) / reps[ax] <= max_atoms and rng.random() < 0.7:
            reps[ax] += 1
    s.make_supercell(reps)
    # random species swaps for mixed chemistry
    if n_species > 1:
        for k in rng.choice(len(s), size=min(len(s), int(rng.integers(0, 3))), replace=False):
            s.replace(int(k), str(rng.choice(pool)))
    # strain (shear makes the cell triclinic)
    shear = rng.uniform(0.0, 0.15) if shear is None else shear
    eps = np.eye(3) + rng.uniform(-shear, shear, (3, 3))
    s = Structure(Lattice(s.lattice.matrix @ eps), s.species, s.frac_coords)
    rattle = rng.uniform(0.0, 0.12) if rattle is None else rattle
    s = _rattled(s, rng, rattle)
    # scale so that the closest pair sits at a plausible bond length
    target = rng.uniform(1.9, 2.7)
    dm = s.distance_matrix + np.diag(np.full(len(s), np.inf)) if len(s) > 1 else np.array([[np.inf]])
    dmin = min(float(dm.min()), min(s.lattice.abc))
    s.scale_lattice(s.volume * (target / dmin) ** 3)
    if np.linalg.det(s.lattice.matrix) < 0:  # keep right-handed cells
        s = Structure(Lattice(-s.lattice.matrix), s.species, -s.frac_coords)
    s.properties["label"] = f"{name}-{s.composition.reduced_formula}-{len(s)}"
    return s


def random_structures(rng: np.random.Generator, count: int, max_atoms: int = 200) -> list[Structure]:
    """``count`` independent :func:`random_structure` draws of at most ``max_atoms`` atoms each."""
    return [random_structure(rng, max_atoms) for _ in range(count)]


def _reps(m: float) -> tuple[int, int, int]:
    """The most nearly cubic repetitions (a, b, c) whose product is closest to ``m``."""
    best: tuple[tuple[float, int], tuple[int, int, int]] | None = None
    top = max(1, round(m))
    for a in range(1, top + 1):
        for b in range(a, top + 1):
            if a * b > 2 * top:
                break
            c = max(b, round(m / (a * b)))
            key = (abs(a * b * c - m), c - a)
            if best is None or key < best[0]:
                best = (key, (a, b, c))
    assert best is not None  # a = b = 1 is always tried
    return best[1]


def supercell(rng: np.random.Generator, n_target: int, proto: str | None = None,
              bond: float | None = None, cubic: bool = True) -> Structure:
    """A rattled, sheared supercell with about ``n_target`` atoms (``bond``: closest distance, A).

    The same number of repetitions along each axis, or with ``cubic=False`` the most nearly cubic ones closest
    to the target (finer steps).
    """
    proto = proto or str(rng.choice(["fcc", "rocksalt", "perovskite", "bcc"]))
    base = random_structure(rng, 4, proto=proto, rattle=0.0, shear=0.03)
    if bond is not None:
        dm = base.distance_matrix + np.diag(np.full(len(base), np.inf))
        base.scale_lattice(base.volume * (bond / min(float(dm.min()), min(base.lattice.abc))) ** 3)
    if cubic:
        k = max(1, round((n_target / len(base)) ** (1 / 3)))
        s = base * (k, k, k)
    else:
        s = base * _reps(max(1.0, n_target / len(base)))
    s = _rattled(s, rng, 0.05)
    s.properties["label"] = f"supercell-{s.composition.reduced_formula}-{len(s)}"
    return s
