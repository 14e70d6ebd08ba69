"""Committee potentials (``committee:NAME,NAME,...``): every member's energy per structure, relaxation with one member.

Real models only: our CHGNet 0.3.0 and SevenNet-0 from the sevenn wheel; the member that fails on purpose is
ASE's Lennard-Jones behind an ``ase:`` spec string (``tests/committee_members.py``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matfunnel.common.errors import StructureError
from matfunnel.potential import UnknownPotential, WeightsMissing, check_potential_name, load_potential, registry
from matfunnel.potential.committee import CommitteePotential
from matfunnel.potential.registry import PotentialArguments

pytest.importorskip("torch_sim")
pytest.importorskip("sevenn")

PAIR = "committee:chgnet-0.3.0,sevennet-0"
#: no per-device memory calibration (a child process per model): the built-in batch budgets, the same for the
#: committee's members and the models loaded alone. CHGNet runs in float32 and by default picks its CPU thread count
#: from the machine's load on every call, which changes the order of its sums (1e-6 eV/A in forces between two
#: calls on a busy machine): one thread makes the runs compared here bit for bit repeatable.
CHGNET_KW = {"calibrate": False, "threads": 1}
KW = {"chgnet-0.3.0": CHGNET_KW, "sevennet-0": {"calibrate": False}}
PICKY = "ase:committee_members:picky_lj"


def random_cells(rng, n: int, elements=("Al", "Li", "Si", "O")) -> list[Structure]:
    """``n`` random cells of 2-16 atoms of ``elements`` (14-20 A^3 per atom, atoms at least 1.9 A apart)."""
    out = []
    while len(out) < n:
        n_atoms = int(rng.integers(2, 17))
        species = [str(e) for e in rng.choice(elements, n_atoms)]
        a = (n_atoms * rng.uniform(14.0, 20.0)) ** (1 / 3)
        lattice = Lattice(np.diag([a, a, a]) @ (np.eye(3) + 0.05 * rng.standard_normal((3, 3))))
        frac: list[np.ndarray] = []
        for _ in range(2000):
            if len(frac) == n_atoms:
                break
            trial = rng.random(3)
            if not frac or lattice.get_all_distances([trial], frac).min() >= 1.9:
                frac.append(trial)
        if len(frac) < n_atoms:
            continue
        s = Structure(lattice, species, frac)
        s.properties["label"] = f"{s.composition.reduced_formula}#{len(out)}"
        out.append(s)
    return out


def fcc_al() -> Structure:
    return Structure(Lattice.cubic(4.0), ["Al"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def diamond_si() -> Structure:
    return Structure(Lattice.cubic(5.5), ["Si"] * 8,
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                      [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]])


@pytest.fixture(scope="module")
def chgnet():
    return load_potential("chgnet-0.3.0", **CHGNET_KW)


@pytest.fixture(scope="module")
def sevennet():
    return load_potential("sevennet-0", calibrate=False)


@pytest.fixture(scope="module")
def pair():
    return load_potential(PAIR, members_kwargs=KW)


def test_committee_equals_its_members_run_one_by_one(pair, chgnet, sevennet, rng):
    cells = random_cells(rng, 3)
    labels = [s.properties["label"] for s in cells]
    assert isinstance(pair, CommitteePotential) and pair.name == PAIR
    assert pair.member_names == ["chgnet-0.3.0", "sevennet-0"] and pair.primary == 0
    t0 = time.perf_counter()
    outs = pair.predict(cells, labels=labels)
    print(f"committee predict, 3 cells of {[len(s) for s in cells]} atoms: {time.perf_counter() - t0:.2f} s")
    alone = {"chgnet-0.3.0": chgnet.predict(cells, labels=labels), "sevennet-0": sevennet.predict(cells, labels=labels)}
    for i, (s, out) in enumerate(zip(cells, outs, strict=True)):
        rec = out["committee"]
        assert rec["members"] == ["chgnet-0.3.0", "sevennet-0"] and rec["primary"] == "chgnet-0.3.0"
        assert rec["errors"] == {} and rec["n_ok"] == 2
        # the members are separate instances of the same models, batched the same way: the same numbers
        want = [alone["chgnet-0.3.0"][i]["energy"], alone["sevennet-0"][i]["energy"]]
        np.testing.assert_allclose(rec["energies"], want, rtol=0, atol=1e-6, err_msg=labels[i])
        per_atom = np.array(want) / len(s)
        assert rec["energy_per_atom_mean"] == pytest.approx(per_atom.mean(), abs=1e-9)
        assert rec["energy_per_atom_std"] == pytest.approx(per_atom.std(), abs=1e-9)
        # the committee's own numbers are the primary's
        assert out["energy"] == pytest.approx(want[0], abs=1e-6)
        np.testing.assert_allclose(out["forces"], alone["chgnet-0.3.0"][i]["forces"], atol=1e-6)
        np.testing.assert_allclose(out["stress"], alone["chgnet-0.3.0"][i]["stress"], atol=1e-5)

    # relax_with switches the primary: the committee's numbers become SevenNet's, the record stays the same
    other = load_potential(PAIR, members_kwargs=KW, relax_with="sevennet-0")
    assert other.primary == 1 and other.primary_name == "sevennet-0"
    # (compared with the members on the same single structure: a float32 model's numbers for a structure move by
    # ~1e-6 eV with the other structures in its batch, for SevenNet and CHGNet alike)
    (one,) = other.predict(cells[0])  # a bare structure: still a list
    (sev1,), (ch1,) = sevennet.predict(cells[0]), chgnet.predict(cells[0])
    assert one["energy"] == pytest.approx(sev1["energy"], abs=1e-6)
    np.testing.assert_allclose(one["forces"], sev1["forces"], atol=1e-6)
    np.testing.assert_allclose(one["committee"]["energies"], [ch1["energy"], sev1["energy"]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(one["committee"]["energies"], outs[0]["committee"]["energies"], rtol=0, atol=1e-4)
    assert one["committee"]["primary"] == "sevennet-0"
    again = CommitteePotential(pair.members, pair.member_names, relax_with=1)  # the same loaded members, by index
    assert again.primary_name == "sevennet-0" and again.name == PAIR

    # the provenance records every member and the choice; evaluation-side attributes follow the primary
    info = pair.model_info()
    assert info["name"] == PAIR and info["relaxed_with"] == "chgnet-0.3.0" and info["primary"] == 0
    assert [m["name"] for m in info["members"]] == ["chgnet-0.3.0", "sevennet-0"]
    assert info["members"][1] == sevennet.model_info() and info["weights_sha256"]
    assert other.model_info()["relaxed_with"] == "sevennet-0"
    assert other.model_info()["weights_sha256"] == info["weights_sha256"]  # same weights, in the same order
    assert pair.supported_elements == chgnet.supported_elements & sevennet.supported_elements
    assert pair.graph_cutoffs == chgnet.graph_cutoffs and other.graph_cutoffs == sevennet.graph_cutoffs
    assert pair.plan_batches([4, 8], [60.0, 120.0]) == chgnet.plan_batches([4, 8], [60.0, 120.0])


def test_a_member_failing_on_one_structure_flags_it_and_the_rest_finish(chgnet, rng):
    name = f"committee:chgnet-0.3.0,{PICKY}"
    kw = {"chgnet-0.3.0": CHGNET_KW, PICKY: {"refuse": "Li"}}
    cells = [*random_cells(rng, 1, ("Al", "Si")), *random_cells(rng, 1, ("Li", "O")),
             *random_cells(rng, 1, ("Si", "O"))]
    cells[1].replace(0, "Li")  # at least one Li, whatever the draw
    labels = ["AlSi", "LiO", "SiO"]
    pot = load_potential(name, members_kwargs=kw)
    outs = pot.predict(cells, labels=labels, errors="record")
    alone = chgnet.predict(cells, labels=labels)
    for i in (0, 2):
        rec = outs[i]["committee"]
        assert rec["errors"] == {} and rec["n_ok"] == 2 and None not in rec["energies"], labels[i]
        assert outs[i]["energy"] == pytest.approx(alone[i]["energy"], abs=1e-6)
    flagged = outs[1]
    assert flagged["energy"] == pytest.approx(alone[1]["energy"], abs=1e-6)  # the primary still gives its numbers
    rec = flagged["committee"]
    assert list(rec["errors"]) == [PICKY] and "refuses structures containing Li" in rec["errors"][PICKY]
    assert "'LiO'" in rec["errors"][PICKY]
    assert rec["energies"][1] is None and rec["n_ok"] == 1 and rec["energy_per_atom_std"] is None
    assert rec["energy_per_atom_mean"] == pytest.approx(alone[1]["energy"] / len(cells[1]), abs=1e-9)
    # errors="raise" raises only for the primary's failures: the flagged structure still comes back
    assert pot.predict(cells, labels=labels)[1]["committee"]["n_ok"] == 1

    # when the failing member is the primary, the structure's result is its error, with the committee record
    picky_first = load_potential(name, members_kwargs=kw, relax_with=PICKY)
    outs = picky_first.predict(cells, labels=labels, errors="record")
    assert "energy" in outs[0] and "energy" in outs[2]
    assert "refuses structures containing Li" in outs[1]["error"] and "energy" not in outs[1]
    assert outs[1]["committee"]["energies"][0] == pytest.approx(alone[1]["energy"], abs=1e-6)
    with pytest.raises(StructureError, match="'LiO'.*refuses structures containing Li"):
        picky_first.predict(cells, labels=labels)


def test_engine_relaxes_with_the_primary_alone(chgnet):
    from matfunnel.engine import relax_batched
    from matfunnel.makers.relax import RelaxMaker

    name = f"committee:chgnet-0.3.0,{PICKY}"
    kw = {"chgnet-0.3.0": CHGNET_KW}
    pot = load_potential(name, members_kwargs=kw)
    counter = pot.members[1].calc
    cells = [fcc_al(), diamond_si()]
    for s, amp in zip(cells, (0.05, 0.08), strict=True):
        s.apply_strain(0.02)
        s.perturb(amp)
    t0 = time.perf_counter()
    ours = relax_batched(cells, pot, fmax=0.1, max_steps=30)
    t1 = time.perf_counter()
    ref = relax_batched(cells, chgnet, fmax=0.1, max_steps=30)
    print(f"relax 2 cells: committee {t1 - t0:.2f} s, chgnet alone {time.perf_counter() - t1:.2f} s")
    assert counter.calls == 0  # the other member never ran
    for a, b in zip(ours, ref, strict=True):
        assert a.error is None and b.error is None, (a.error, b.error)
        assert a.n_steps == b.n_steps and a.n_steps > 1
        assert a.e_per_atom == pytest.approx(b.e_per_atom, abs=1e-6)

    maker = RelaxMaker(potential=name, potential_kwargs={"members_kwargs": kw}, progress=False, max_steps=5)
    (doc,) = RelaxMaker.relax_job.original(maker, [cells[0]])
    assert doc["potential"] == name and doc["model"]["relaxed_with"] == "chgnet-0.3.0"
    assert [m["name"] for m in doc["model"]["members"]] == ["chgnet-0.3.0", PICKY]


def test_bad_committee_names_one_clear_error():
    with pytest.raises(UnknownPotential, match="member 'no-such-model': unknown potential 'no-such-model'"):
        check_potential_name("committee:chgnet-0.3.0,no-such-model")
    with pytest.raises(UnknownPotential, match="at least 2 members, got 1"):
        load_potential("committee:chgnet-0.3.0")
    with pytest.raises(UnknownPotential, match="member 'sevennet-0' appears 2 times"):
        load_potential("committee:sevennet-0,chgnet-0.3.0,sevennet-0")
    with pytest.raises(UnknownPotential, match="an empty member name"):
        load_potential("committee:chgnet-0.3.0,,sevennet-0")
    with pytest.raises(UnknownPotential, match="is a committee"):
        load_potential("committee:chgnet-0.3.0,committee:sevennet-0")
    with pytest.raises(UnknownPotential, match="member 'torchsim:no_such_pkg:make': .*cannot import module"):
        load_potential("committee:chgnet-0.3.0,torchsim:no_such_pkg:make")
    with pytest.raises(WeightsMissing) as err:
        load_potential("committee:chgnet-0.3.0,sevennet-omni")
    msg = str(err.value)
    assert msg.startswith("committee 'committee:chgnet-0.3.0,sevennet-omni': member 'sevennet-omni': ")
    assert "checkpoint_sevennet_omni.pth" in msg and "Nothing is downloaded" in msg
    with pytest.raises(PotentialArguments, match="relax_with='mace' is not a member"):
        load_potential(PAIR, relax_with="mace")
    with pytest.raises(PotentialArguments, match="relax_with=2 is not a member index"):
        load_potential(PAIR, relax_with=2)
    with pytest.raises(PotentialArguments, match=r"not \['calibrate'\].*members_kwargs"):
        load_potential(PAIR, calibrate=False)
    with pytest.raises(PotentialArguments, match="members_kwargs must map member names"):
        load_potential(PAIR, members_kwargs={"mace": {}})
    with pytest.raises(PotentialArguments, match="member 'sevennet-0': potential 'sevennet-0' does not accept"):
        load_potential(PAIR, members_kwargs={"chgnet-0.3.0": CHGNET_KW, "sevennet-0": {"no_such_option": 1}})
    check_potential_name(PAIR)  # a good name resolves without loading anything
    rows = {r.name: r for r in registry.describe()}
    assert "relax_with" in rows["committee:NAME,NAME,..."].summary
