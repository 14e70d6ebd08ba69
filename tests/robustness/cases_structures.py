"""Hostile structures through ``predict``, the batched relaxation and ``RelaxMaker`` (group ``structures``).

Memory bombs from tiny inputs (skewed and collapsed cells, dense grids, cells over the memory budget), inputs that
are not structures at all, ASE ``Atoms`` of every kind, and legitimate edge cases that must give the right numbers
(a skewed cell equivalent to a normal one, a 1-atom cell, a vacuum slab, a left-handed lattice). Mixed batches check
that the good members get the same numbers as alone while each bad one gets its own error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from harness import Case

GROUP = "structures"
POT = "chgnet-0.3.0"
LJ_ASE = "ase:ase.calculators.lj:LennardJones"
LJ_TS = "torchsim:torch_sim.models.lennard_jones:LennardJonesModel"
#: the audit's budget: the cells over it must be refused, not run at 3x the budget
BUDGET = int(2.7e9)


# --- structures --------------------------------------------------------------------------------------------------

def _s(lattice, species, coords, label: str | None = None, cart: bool = False):
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice(lattice), species, coords, coords_are_cartesian=cart)
    if label:
        s.properties["label"] = label
    return s


def si(label: str = "si"):
    """Diamond Si, 2-atom primitive cell."""
    a = 5.43
    return _s(np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]) * a / 2, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]],
              label)


def nacl(label: str = "nacl"):
    """Rocksalt NaCl, 2-atom primitive cell."""
    a = 5.64
    return _s(np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]) * a / 2, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], label)


def skew_1deg(label: str = "skew1deg"):
    """The audit's bomb: 1 atom, |a|=|b|=|c|=3 A, all angles 1 degree (volume 0.007 A^3, image 0.05 A away)."""
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.from_parameters(3, 3, 3, 1, 1, 1), ["Si"], [[0, 0, 0]])
    s.properties["label"] = label
    return s


def tiny_cubic(label: str = "tiny03"):
    """1 atom in a 0.3 A cube (the relaxation path's bomb)."""
    return _s(np.eye(3) * 0.3, ["Si"], [[0, 0, 0]], label)


def skew_short_image(label: str = "skewimg"):
    """A skewed cell whose lattice vectors are all >= 2.9 A but whose nearest image is 0.22 A away (b - a)."""
    return _s([[3, 0, 0], [2.9, 0.2, 0], [0, 0, 8]], ["Ar"], [[0, 0, 0]], label)


def dense_grid(label: str = "densegrid"):
    """216 C atoms on a simple cubic grid of 1.1 A (0.75 atoms/A^3; no two atoms closer than 1.1 A).

    Every distance check passes, yet its bond graph has ~1.5 million angles: about 12 GB at CHGNet's cost per item.
    """
    n, d = 6, 1.1
    grid = np.array([[i, j, k] for i in range(n) for j in range(n) for k in range(n)], dtype=float) / n
    return _s(np.eye(3) * n * d, ["C"] * len(grid), grid, label)


def cluster_in_box(label: str = "cluster"):
    """343 C atoms on a 1.1 A grid in one corner of a 40 A box: a low mean density hides a dense cluster.

    The estimate from the mean density is small; the exact graph (2.5 million angles) is what must be refused.
    """
    n, d, box = 7, 1.1, 40.0
    grid = np.array([[i, j, k] for i in range(n) for j in range(n) for k in range(n)], dtype=float) * d
    return _s(np.eye(3) * box, ["C"] * len(grid), grid, label, cart=True)


def check_resource_failure(words: tuple[str, ...]):
    """check of a relaxation document refused for memory: named, said, and marked as retryable."""
    def check(value) -> str | None:
        d = value[-1]
        problem = _doc_error(d, words)
        if problem:
            return problem
        if not (d.get("data") or {}).get("potential_error"):
            return "a refusal for memory is not marked retryable (a rerun with more memory may pass)"
        return None
    return check


def big_si(reps: tuple[int, int, int], label: str):
    """A diamond-Si supercell (8 atoms per conventional cell)."""
    from pymatgen.core import Lattice, Structure

    conv = Structure(Lattice.cubic(5.43), ["Si"] * 8,
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [0.25, 0.25, 0.25],
                      [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]])
    big = conv.make_supercell(list(reps), in_place=False)
    big.properties["label"] = label
    return big


# --- helpers ----------------------------------------------------------------------------------------------------

def chgnet(_tmp: Path | None = None, **kw):
    from matfunnel.potential import load_potential

    return load_potential(POT, **kw)


def chgnet_budget(_tmp: Path | None = None):
    return chgnet(memory_budget=BUDGET)


def lj_ase(_tmp: Path | None = None):
    from matfunnel.potential import load_potential

    return load_potential(LJ_ASE, sigma=2.3, epsilon=0.4, rc=6.0, smooth=False)


def lj_ts(_tmp: Path | None = None):
    from matfunnel.potential import load_potential

    return load_potential(LJ_TS, sigma=2.3, epsilon=0.4, cutoff=6.0, calibrate=False)


def predict_one(obj, label: str | None = None, pot_arg: str = "pot"):
    """``run`` of a case that predicts one structure with errors='raise' (the prepared potential)."""
    def run(_tmp, pot):
        return pot.predict([obj() if callable(obj) else obj], labels=[label] if label else None)
    return run


def same_as_alone(pot, batch: list, out: list, good: dict[int, Any], bad: dict[int, tuple[str, ...]]) -> str | None:
    """None when the good members of ``batch`` got their numbers alone and each bad one an error naming it."""
    if len(out) != len(batch):
        return f"{len(out)} results for {len(batch)} inputs"
    for i, words in bad.items():
        err = out[i].get("error") if isinstance(out[i], dict) else None
        if not err:
            return f"member {i} has no error: {str(out[i])[:120]}"
        missing = [w for w in words if w.lower() not in err.lower()]
        if missing:
            return f"member {i}'s error lacks {missing}: {err}"
    for i, alone in good.items():
        r = out[i]
        if "error" in r:
            return f"good member {i} failed: {r['error']}"
        if abs(r["energy"] - alone["energy"]) > 1e-4:
            return f"good member {i}: energy {r['energy']} in the batch, {alone['energy']} alone"
        if np.abs(np.asarray(r["forces"]) - np.asarray(alone["forces"])).max() > 1e-4:
            return f"good member {i}: forces differ from alone"
        if np.abs(np.asarray(r["stress"]) - np.asarray(alone["stress"])).max() > 1e-3:
            return f"good member {i}: stress differs from alone"
    return None


def mixed_run(items: list, good_ids: list[int], labels: list[str] | None = None):
    """``run``: predict the batch with errors='record' and each good member alone."""
    def run(_tmp, pot):
        batch = [f() if callable(f) else f for f in items]
        out = pot.predict(batch, labels=labels, errors="record")
        alone = {i: pot.predict([batch[i]])[0] for i in good_ids}
        return pot, batch, out, alone
    return run


def mixed_check(bad: dict[int, tuple[str, ...]]):
    def check(value) -> str | None:
        pot, batch, out, alone = value
        return same_as_alone(pot, batch, out, alone, bad)
    return check


def energy_ok(expected_len: int = 1):
    def check(out) -> str | None:
        if len(out) != expected_len:
            return f"{len(out)} results"
        for r in out:
            if "error" in r:
                return r["error"]
            if not np.isfinite(r["energy"]):
                return "non-finite energy"
        return None
    return check


def pair_equal(tol: float = 2e-4, per_atom: bool = False):
    """check of a run returning (results of A, results of B): the same energy (per atom when asked)."""
    def check(value) -> str | None:
        (a,), (b,), na, nb = value
        for r in (a, b):
            if "error" in r:
                return r["error"]
        ea, eb = (a["energy"] / na, b["energy"] / nb) if per_atom else (a["energy"], b["energy"])
        if abs(ea - eb) > tol:
            return f"energies differ: {ea} vs {eb}"
        return None
    return check


def predict_pair(make_a, make_b):
    def run(_tmp, pot):
        a, b = make_a(), make_b()
        return pot.predict([a]), pot.predict([b]), len(a), len(b)
    return run


# --- ASE inputs -------------------------------------------------------------------------------------------------

def atoms_si():
    from ase.build import bulk

    return bulk("Si", "diamond", a=5.43)


def atoms_no_cell():
    from ase import Atoms

    return Atoms("Si2", positions=[[0, 0, 0], [1.2, 1.2, 1.2]])


def atoms_zero_cell_pbc():
    from ase import Atoms

    return Atoms("Si2", positions=[[0, 0, 0], [1.2, 1.2, 1.2]], pbc=True)


def atoms_molecule_in_box():
    from ase.build import molecule

    m = molecule("H2O")
    m.center(vacuum=6.0)
    return m  # a cell, pbc False


def atoms_slab_2d():
    from ase.build import fcc111

    return fcc111("Cu", size=(2, 2, 3), vacuum=8.0)  # pbc (T, T, F)


def atoms_nan():
    a = atoms_si()
    a.positions[1, 0] = np.nan
    return a


def atoms_int_positions():
    from ase import Atoms

    return Atoms(numbers=np.array([11, 17], dtype=np.int32),
                 positions=np.array([[0, 0, 0], [3, 0, 0]], dtype=np.int64),
                 cell=np.diag([6, 3, 3]).astype(np.int64), pbc=True)


# --- relaxation paths -------------------------------------------------------------------------------------------

def relax_docs(structs: list, labels: list[str] | None = None, tmp: Path | None = None, cache: bool = False) -> list:
    """``RelaxMaker(...).make(structs)`` run with jobflow's ``run_locally``: the documents."""
    from jobflow import run_locally

    from matfunnel.makers.relax import RelaxMaker

    maker = RelaxMaker(potential=POT, progress=False, max_steps=60, fmax=0.1,
                       result_cache=str(tmp / "results.sqlite") if cache and tmp else None)
    j = maker.make(structs, labels)
    out = run_locally(j, log=False, ensure_success=True)
    return out[j.uuid][1].output


def _doc_error(doc: dict, words: tuple[str, ...]) -> str | None:
    err = doc.get("error") or ""
    missing = [w for w in words if w.lower() not in err.lower()]
    return f"error lacks {missing}: {err!r}" if missing else None


def check_relax_mixed(value) -> str | None:
    docs = value
    if len(docs) != 4:
        return f"{len(docs)} documents for 4 inputs"
    for k in (0, 1):
        if docs[k].get("error") or not docs[k].get("converged"):
            return f"good input {k} did not relax: {docs[k].get('error')}"
    if abs(docs[0]["e_per_atom"] - docs[1]["e_per_atom"]) > 2e-3:
        return f"the same Si as Structure and as Atoms relaxed to {docs[0]['e_per_atom']} and {docs[1]['e_per_atom']}"
    for k, words in ((2, ("tiny03", "density")), (3, ("partial", "disorder"))):
        problem = _doc_error(docs[k], words)
        if problem:
            return f"input {k}: {problem}"
        if (docs[k].get("data") or {}).get("potential_error"):
            return f"input {k}: a geometry rejection is marked as a retryable potential failure"
    return None


def check_final_failure(words: tuple[str, ...]):
    def check(value) -> str | None:
        docs = value if isinstance(value, list) else [value]
        d = docs[-1]
        d = d if isinstance(d, dict) else d.as_dict()
        problem = _doc_error(d, words)
        if problem:
            return problem
        if (d.get("data") or {}).get("potential_error"):
            return "a deterministic geometry failure is marked as a retryable potential failure"
        return None
    return check


def relax_batched_one(make, label: str):
    def run(_tmp, pot):
        from matfunnel.engine import relax_batched

        return [r.as_dict() for r in relax_batched([make()], pot, labels=[label], max_steps=20)]
    return run


def overlap_pair(label: str = "overlap03"):
    return _s(np.eye(3) * 5.0, ["Si", "Si"], [[0, 0, 0], [0.3, 0, 0]], label, cart=True)


def relax_twice_cached(tmp: Path, _prepared):
    first = relax_docs([overlap_pair()], tmp=tmp, cache=True)
    second = relax_docs([overlap_pair()], tmp=tmp, cache=True)
    return first, second


def lonely(label: str = "lonely"):
    """Fe and O 13 A apart in a 15 A box: neither has a neighbour within CHGNet's 6 A (found on its graph)."""
    return _s(np.eye(3) * 15.0, ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]], label)


def relax_lonely_twice(tmp: Path, _prepared):
    first = relax_docs([lonely(), si()], tmp=tmp, cache=True)
    second = relax_docs([lonely(), si()], tmp=tmp, cache=True)
    return first, second


def check_lonely_cached(value) -> str | None:
    first, second = value
    problem = _doc_error(first[0], ("lonely", "no neighbour"))
    if problem:
        return problem
    if (first[0].get("data") or {}).get("potential_error"):
        return "a structure rejected for its geometry is marked as a retryable potential failure"
    if not (second[0].get("cached") and second[1].get("cached")):
        return "a rerun computes a final rejection again (it is not kept by the result cache)"
    return None


def check_cached_failure(value) -> str | None:
    first, second = value
    problem = check_final_failure(("overlap03", "closer than"))(first)
    if problem:
        return problem
    if not second[0].get("cached"):
        return "a deterministic geometry failure is computed again on every rerun (not kept by the result cache)"
    return None


# --- memory budget ----------------------------------------------------------------------------------------------

def over_budget_record(_tmp, prep):
    pot, big = prep
    out = pot.predict([si(), big, nacl()], errors="record")
    alone = {0: pot.predict([si()])[0], 2: pot.predict([nacl()])[0]}
    return pot, None, out, alone


def alloc_failure_record(_tmp, prep):
    pot, big = prep
    out = pot.predict([big, si(), nacl()], errors="record")
    alone = {1: pot.predict([si()])[0], 2: pot.predict([nacl()])[0]}
    return pot, None, out, alone


def check_over_budget(label: str, words: tuple[str, ...], bad: int = 1):
    def check(value) -> str | None:
        pot, _batch, out, alone = value
        return same_as_alone(pot, [None] * 3, out, alone, {bad: (label, *words)})
    return check


# --- legitimate edge cases --------------------------------------------------------------------------------------

def si_skewed_equivalent():
    """The Si primitive cell in a skewed but equivalent basis (unimodular change of basis: the same crystal)."""
    s = si("si-skewed")
    m = np.array([[1, 0, 0], [1, 1, 0], [2, 1, 1]])  # det 1
    from pymatgen.core import Lattice, Structure

    lat = m @ s.lattice.matrix
    return Structure(Lattice(lat), s.species, s.cart_coords, coords_are_cartesian=True)


def si_left_handed():
    """The Si primitive cell with two lattice vectors swapped (negative determinant): the same crystal."""
    s = si("si-left")
    lat = s.lattice.matrix[[1, 0, 2]]
    return _s(lat, s.species, s.cart_coords, "si-left", cart=True)


def cu_one_atom():
    a = 3.61
    return _s(np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]) * a / 2, ["Cu"], [[0, 0, 0]], "cu1")


def cu_conventional():
    return _s(np.eye(3) * 3.61, ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], "cu4")


def slab(c: float):
    def make():
        from pymatgen.core import Lattice, Structure

        s = Structure(Lattice([[3.84, 0, 0], [1.92, 3.3255, 0], [0, 0, c]]), ["Si", "Si", "Si", "Si"],
                      [[0, 0, 0], [1.92, 1.1085, 0.78], [1.92, 1.1085, 3.13], [0, 0, 3.91]], coords_are_cartesian=True)
        s.properties["label"] = f"slab{c:.0f}"
        return s
    return make


def dimer_box(a: float):
    def make():
        return _s(np.eye(3) * a, ["H", "H"], [[0, 0, 0], [0.74, 0, 0]], f"h2-box{a:.0f}", cart=True)
    return make


def int_coords():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice(np.eye(3, dtype=np.int64) * 3), ["Po"], np.zeros((1, 3), dtype=np.int64))
    s.properties["label"] = "po-int"
    return s


def float_coords():
    return _s(np.eye(3) * 3.0, ["Po"], [[0.0, 0.0, 0.0]], "po-float")


def nacl_from_int_atoms():
    return _s(np.diag([6.0, 3.0, 3.0]), ["Na", "Cl"], [[0, 0, 0], [3, 0, 0]], "nacl-float", cart=True)


# --- the cases --------------------------------------------------------------------------------------------------

def C(id_: str, run, **kw) -> Case:  # noqa: N802 - short constructor of this module's cases
    kw.setdefault("setup", chgnet)
    kw.setdefault("seconds", 90.0)
    return Case(id=f"structures-{id_}", group=GROUP, run=run, **kw)


def _partial():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(5.43), [{"Si": 0.5, "Ge": 0.5}, "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    s.properties["label"] = "partial-sige"
    return s


def _dummy():
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.periodic_table import DummySpecies

    return Structure(Lattice.cubic(4.0), [DummySpecies("X"), "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _dummy_xx():
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.periodic_table import DummySpecies

    return Structure(Lattice.cubic(4.0), [DummySpecies("Xx"), "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _og():
    return _s(np.eye(3) * 4.0, ["Og", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]], "og-cell")


def _nan_pos():
    s = si("nanpos")
    s.replace(1, "Si", [math.nan, 0.25, 0.25])
    return s


def _inf_lattice():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice(np.diag([5.0, 5.0, 5.0])), ["Si"], [[0, 0, 0]])
    s.lattice = Lattice(np.diag([5.0, math.inf, 5.0]))
    s.properties["label"] = "inflat"
    return s


def _empty():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(5.0), [], [])
    s.properties["label"] = "empty-cell"
    return s


def _coincident():
    return _s(np.eye(3) * 5.0, ["Si", "Si"], [[0, 0, 0], [0, 0, 0]], "same-point")


def _big_over_budget(_tmp):
    return chgnet_budget(), big_si((11, 11, 11), "si10648")


def _big_alloc(_tmp):
    # a user who set the budget far above what the process may use: the batch runs out of memory for real
    return chgnet(memory_budget=400 * 2**30), big_si((8, 8, 8), "si4096")


def _skew_relax_batched(_tmp, pot):
    return relax_batched_one(skew_1deg, "skew1deg")(_tmp, pot)


CASES: list[Case] = [
    # memory bombs from tiny inputs: rejected in < 1 s and < 1 GB
    C("skew-1deg-predict", predict_one(skew_1deg), match=("skew1deg", "density"), quick=True),
    C("tiny-cubic-predict", predict_one(tiny_cubic), match=("tiny03", "density"), quick=True),
    C("skew-1deg-ase-lj", predict_one(skew_1deg), setup=lj_ase, match=("skew1deg", "density"), quick=True),
    C("skew-1deg-torchsim-lj", predict_one(skew_1deg), setup=lj_ts, match=("skew1deg", "density"), quick=True),
    C("tiny-cubic-relax-batched", relax_batched_one(tiny_cubic, "tiny03"), expect="ok",
      check=check_final_failure(("tiny03", "density")), quick=True),
    C("skew-1deg-relax-batched", _skew_relax_batched, expect="ok",
      check=check_final_failure(("skew1deg", "density")), quick=True),
    C("dense-grid-predict", predict_one(dense_grid), match=("densegrid", "memory"), quick=True),
    C("cluster-in-box-predict", predict_one(cluster_in_box), match=("cluster", "memory"), quick=True),
    C("cluster-in-box-relax", relax_batched_one(cluster_in_box, "cluster"), expect="ok",
      check=check_resource_failure(("cluster", "memory"))),
    C("skew-short-image-predict", predict_one(skew_short_image), match=("skewimg", "closer than"), quick=True),
    C("skew-short-image-ase-lj", predict_one(skew_short_image), setup=lj_ase, match=("skewimg", "closer than"),
      quick=True),
    C("thin-cell-image", predict_one(_s(np.diag([0.3, 8, 8]), ["Si"], [[0, 0, 0]], "thin03")),
      match=("thin03", "closer than"), quick=True),
    # the memory budget
    C("over-budget-predict", lambda _t, p: p[0].predict([p[1]]), setup=_big_over_budget,
      match=("si10648", "memory"), quick=True, mem_gb=3.0),
    C("over-budget-record", over_budget_record, setup=_big_over_budget, expect="ok",
      check=check_over_budget("si10648", ("memory",))),
    C("alloc-failure-record", alloc_failure_record, setup=_big_alloc, expect="ok",
      check=check_over_budget("si4096", ("memory",), bad=0), mem_gb=1.0, seconds=120),
    # ASE Atoms
    C("atoms-no-cell", predict_one(atoms_no_cell, "nocell"), match=("nocell", "periodic"), quick=True),
    C("atoms-zero-cell-pbc", predict_one(atoms_zero_cell_pbc, "zerocell"), match=("zerocell", "volume"),
      quick=True),
    C("atoms-molecule-in-box", predict_one(atoms_molecule_in_box, "water"), match=("water", "periodic"),
      quick=True),
    C("atoms-slab-2d", predict_one(atoms_slab_2d, "cu111"), match=("cu111", "periodic"), quick=True),
    C("atoms-nan-position", predict_one(atoms_nan, "nanatoms"), match=("nanatoms", "nan"), quick=True),
    C("atoms-nan-ase-lj", predict_one(atoms_nan, "nanatoms"), setup=lj_ase, match=("nanatoms", "nan"), quick=True),
    C("atoms-int-dtypes", predict_pair(atoms_int_positions, nacl_from_int_atoms), expect="ok",
      check=pair_equal()),
    C("relaxmaker-atoms", lambda t, _p: relax_docs([atoms_si()], ["si-atoms"]), expect="ok",
      check=lambda docs: None if docs and docs[0].get("converged") and not docs[0].get("error")
      else f"not relaxed: {docs[0].get('error') if docs else 'no document'}"),
    # structures that cannot be evaluated
    C("nan-position", predict_one(_nan_pos), match=("nanpos", "nan"), quick=True),
    C("inf-lattice", predict_one(_inf_lattice), match=("inflat", "inf"), quick=True),
    C("empty", predict_one(_empty), match=("empty-cell", "no atoms"), quick=True),
    C("partial-occupancy", predict_one(_partial), match=("partial-sige", "partial"), quick=True),
    C("dummy-x", predict_one(_dummy, "dummy-x"), match=("dummy-x", "dummy"), quick=True),
    C("dummy-xx", predict_one(_dummy_xx, "dummy-xx"), match=("dummy-xx", "dummy"), quick=True),
    C("element-og", predict_one(_og), match=("og-cell", "Og"), quick=True),
    C("coincident-atoms", predict_one(_coincident), match=("same-point", "closer than"), quick=True),
    C("atoms-0.3A-apart", predict_one(overlap_pair), match=("overlap03", "closer than"), quick=True),
    C("none-input", predict_one(None, "none-in"), match=("none-in", "NoneType"), quick=True),
    C("string-input", predict_one("Si2", "str-in"), match=("str-in", "str"), quick=True),
    C("array-input", predict_one(np.zeros((2, 3)), "array-in"), match=("array-in", "ndarray"), quick=True),
    # mixed batches: the good members get their numbers, each bad one its own error
    C("mixed-predict-record",
      mixed_run([si, skew_1deg, nacl, _nan_pos, _empty, _og, None, "junk", atoms_no_cell, tiny_cubic, dense_grid],
                [0, 2]),
      expect="ok", check=mixed_check({1: ("skew1deg", "density"), 3: ("nanpos", "nan"), 4: ("empty", "no atoms"),
                                      5: ("og-cell", "Og"), 6: ("#6", "NoneType"), 7: ("#7", "str"),
                                      8: ("periodic",), 9: ("tiny03", "density"), 10: ("densegrid", "memory")})),
    C("mixed-predict-ase-lj", mixed_run([si, skew_1deg, nacl, skew_short_image, _nan_pos], [0, 2]), setup=lj_ase,
      expect="ok", check=mixed_check({1: ("skew1deg", "density"), 3: ("skewimg", "closer than"),
                                      4: ("nanpos", "nan")})),
    C("mixed-relaxmaker", lambda t, _p: relax_docs([si(), atoms_si(), tiny_cubic(), _partial()],
                                                   ["si", "si-atoms", "tiny03", "partial"]),
      expect="ok", check=check_relax_mixed),
    C("overlap-relax-final", relax_batched_one(overlap_pair, "overlap03"), expect="ok",
      check=check_final_failure(("overlap03", "closer than"))),
    C("overlap-relaxmaker-cached", relax_twice_cached, expect="ok", check=check_cached_failure),
    C("isolated-relaxmaker-cached", relax_lonely_twice, expect="ok", check=check_lonely_cached),
    # legitimate edge cases: correct numbers, not a rejection
    C("skewed-equivalent-cell", predict_pair(si, si_skewed_equivalent), expect="ok", check=pair_equal()),
    C("left-handed-cell", predict_pair(si, si_left_handed), expect="ok", check=pair_equal()),
    C("one-atom-cell", predict_pair(cu_one_atom, cu_conventional), expect="ok", check=pair_equal(per_atom=True)),
    C("vacuum-slab", predict_pair(slab(30.0), slab(60.0)), expect="ok", check=pair_equal()),
    C("huge-box-dimer", predict_pair(dimer_box(20.0), dimer_box(200.0)), expect="ok", check=pair_equal()),
    C("int-coords", predict_pair(int_coords, float_coords), expect="ok", check=pair_equal()),
]
