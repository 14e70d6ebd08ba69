"""Relaxation throughput: the batched FIRE engine vs ASE one structure at a time (vs torch-sim).

    python benchmarks/relax_throughput.py                  # 100 structures, chgnet-0.3.0
    python benchmarks/relax_throughput.py --n 12 --threads 1
    python benchmarks/relax_throughput.py --device cuda --n 100 --ref-n 20   # (a), (b) on the first 20 only
    python benchmarks/relax_throughput.py --device cuda --n 2000 --no-ase --no-chgnet   # throughput, IS2RE estimate
    PYTHONPATH=/path/to/torch-sim python benchmarks/relax_throughput.py --torch-sim
    python benchmarks/relax_throughput.py --device cuda --n 2000 --no-ase --no-chgnet --processes 2   # 2 engines/GPU

Random rattled and strained structures of 4-64 atoms (prototype supercells, mixed chemistries) are
relaxed to ``--fmax`` (FIRE + Frechet cell filter, ASE semantics everywhere) by every engine with the
same potential object in the same process. Prints structures/s per engine, the speed-up, and how
far the engines' final energies are apart.

``--processes N`` first runs the batched engine in N processes at once on the same device, each with every
N-th structure (as N FireWorks workers sharing a GPU would), started together once all have loaded: one
process's host work (pymatgen, FIRE bookkeeping, kernel launches) then overlaps the others' device work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # scipy's 3x3 expm/logm in ASE's filter otherwise crawl

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_structures(n: int, seed: int, max_atoms: int = 64):
    from pymatgen.core import Structure

    from matfunnel.potential.synthetic import random_structure

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        s = random_structure(rng, max_atoms=max_atoms, rattle=float(rng.uniform(0.02, 0.08)),
                             shear=float(rng.uniform(0.0, 0.05)))
        while len(s) < 4:
            s.make_supercell([2, 1, 1] if len(s) < 2 else [1, 2, 1])
        if len(s) > max_atoms:
            continue
        s = Structure(s.lattice, s.species, s.frac_coords, properties={"label": f"b{len(out)}-{s.formula}"})
        out.append(s)
    return out


def _volume(result) -> float:
    from pymatgen.core import Structure

    return Structure.from_dict(result.final_structure).volume if result.final_structure else float("nan")


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def summarize(name: str, results, wall: float) -> dict:
    n = len(results)
    conv = sum(bool(getattr(r, "converged", False)) for r in results)
    steps = [r.n_steps for r in results if getattr(r, "n_steps", None) is not None]
    print(f"{name:>10}: {n} structures in {wall:8.1f} s = {n / wall:7.3f} structures/s = {3600 * n / wall:,.0f}/h; "
          f"converged {conv}/{n}; mean steps {np.mean(steps) if steps else float('nan'):.0f}")
    return {"wall": wall, "rate": n / wall}


def run_torch_sim(structures, potential, fmax: float, max_steps: int, max_atoms: int):
    """torch-sim 0.6's own batched FIRE + Frechet cell filter with the same model: a torch-sim model's native
    ``ModelInterface`` when the potential wraps one (e.g. sevennet-0), else our potential exported to torch-sim
    (``matfunnel.potential.torchsim_export``, e.g. our CHGNet)."""
    import torch_sim as ts
    from torch_sim.autobatching import InFlightAutoBatcher

    from matfunnel.potential.torchsim import TorchSimPotential
    from matfunnel.potential.torchsim_export import MatfunnelModel

    native = isinstance(potential, TorchSimPotential)
    model = potential.model if native else MatfunnelModel(potential)
    if native and potential.device.startswith("cuda"):  # torch-sim sizes its batches by measuring the GPU
        batcher = True
    else:  # torch-sim cannot measure CPU memory: the same atom budget as ours
        batcher = InFlightAutoBatcher(model, memory_scales_with="n_atoms", max_memory_scaler=float(max_atoms))
    states = ts.io.structures_to_state(list(structures), device=torch.device(potential.device), dtype=model.dtype)
    t0 = time.perf_counter()
    final = ts.optimize(system=states, model=model, optimizer=ts.Optimizer.fire, max_steps=max_steps,
                        convergence_fn=ts.generate_force_convergence_fn(fmax, include_cell_forces=True),
                        autobatcher=batcher, init_kwargs={"cell_filter": ts.CellFilter.frechet})
    wall = time.perf_counter() - t0
    energies = model(final)["energy"].detach().cpu().double().numpy()
    return wall, energies


def _worker(args) -> int:
    """One of ``--processes`` engine processes: relax every N-th structure when the parent says go."""
    import json

    from matfunnel.engine import relax_batched
    from matfunnel.potential import load_potential

    k, n = (int(x) for x in args.worker.split("/"))
    if not str(args.device).startswith("cuda") and not args.threads:  # the cores are shared out, not oversubscribed
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
    pot = load_potential(args.potential, args.device, **({"max_atoms": args.max_atoms} if args.max_atoms else {}))
    structs = make_structures(args.n, args.seed)[k::n]
    pot.predict(structs[:2])  # warm-up
    print("READY", flush=True)
    sys.stdin.readline()
    res = relax_batched(structs, pot, fmax=args.fmax, max_steps=args.max_steps, optimizer=args.optimizer,
                        config=args.optimizer_config)
    _sync(args.device)
    print(json.dumps({"atom_steps": sum(len(s) * (r.n_steps or 0) for s, r in zip(structs, res, strict=False)),
                      "converged": sum(bool(r.converged) for r in res), "e": [r.e_per_atom for r in res]}))
    return 0


def _run_processes(args, argv: list[str]) -> dict:
    """Run ``args.processes`` workers together; their wall time counts from the common start to the last end."""
    import json
    import subprocess

    n = args.processes
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--worker", f"{k}/{n}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for k in range(n)]
    for p in procs:  # every worker has loaded its potential and warmed up
        for line in p.stdout:
            if line.strip() == "READY":
                break
        else:
            raise RuntimeError(f"an engine process exited before it was ready (code {p.wait()})")
    t0 = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    texts = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise RuntimeError(f"an engine process failed (exit codes {[p.returncode for p in procs]})")
    outs = [json.loads(t.strip().splitlines()[-1]) for t in texts]
    e: list = [None] * args.n
    for k, o in enumerate(outs):
        e[k::n] = o["e"]
    return {"wall": wall, "n": args.n, "atom_steps": sum(o["atom_steps"] for o in outs),
            "converged": sum(o["converged"] for o in outs), "e": e}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="number of structures (default 100)")
    ap.add_argument("--potential", default="chgnet-0.3.0")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--optimizer", default="fire", help="the batched engine's optimizer (and ASE's, for the "
                    "one-by-one comparison): fire or lbfgs (chgnet's StructOptimizer stays FIRE, the reference)")
    ap.add_argument("--optimizer-config", type=json.loads, default=None,
                    help='its parameters as JSON, e.g. \'{"alpha": 10, "curvature_check": true}\' (lbfgs)')
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--no-ase", action="store_true", help="skip the one-by-one ASE run")
    ap.add_argument("--no-chgnet", action="store_true", help="skip chgnet's own StructOptimizer (reference)")
    ap.add_argument("--torch-sim", action="store_true", help="also run torch-sim (if importable)")
    ap.add_argument("--ref-n", type=int, default=None,
                    help="run (a) and (b) on the first REF_N structures only (the same random sample); speed-ups "
                         "are then ratios of structures/hour")
    ap.add_argument("--wbm", type=int, default=257_487, help="structures in the IS2RE task, for the extrapolation")
    ap.add_argument("--max-atoms", type=int, default=None,
                    help="the potential's atom cap per batch (its default if unset)")
    ap.add_argument("--processes", type=int, default=1,
                    help="also run the batched engine in this many processes sharing the device")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: "k/N", one of those processes
    ap.add_argument("--split", action="store_true",
                    help="also report the time inside potential evaluations (synchronised) against the engine's own")
    return ap


def _time_evaluations(device, split: dict) -> None:
    """Wrap the engine's potential evaluation so that ``split`` adds up its (synchronised) time and calls."""
    import matfunnel.engine.runner as runner

    inner = runner.evaluate

    def timed(state, potential, *a, **kw):
        _sync(device)
        t = time.perf_counter()
        out = inner(state, potential, *a, **kw)
        _sync(device)
        split["eval"] += time.perf_counter() - t
        split["calls"] += 1
        split["atoms"] += int(state.positions.shape[0])
        return out

    runner.evaluate = timed


def _report_batched(args, structs, batched, wall_b: float, finished_at: list[float]) -> None:
    atom_steps = sum(len(s) * (r.n_steps or 0) for s, r in zip(structs, batched, strict=False))
    per_struct = wall_b / len(structs)
    print(f"batched: {atom_steps / wall_b:,.0f} atom-steps/s ({atom_steps:,} atom-steps: mean "
          f"{atom_steps / len(structs):.0f} per structure); at this rate {args.wbm:,} structures like these take "
          f"{args.wbm * per_struct / 3600:.2f} h")
    # steady state: until the last structure enters the batch the device is full; after it, the batch drains
    # (the tail). A structure's atom-steps are spread evenly over its time in the batch.
    entered = [f - (r.wall_time or 0.0) for f, r in zip(finished_at, batched, strict=False)]
    t_full = max(entered)
    done = sum(len(s) * (r.n_steps or 0) * min(1.0, max(0.0, (t_full - e) / max(f - e, 1e-9)))
               for s, r, e, f in zip(structs, batched, entered, finished_at, strict=False))
    if t_full > 0.1 * wall_b and done > 0:
        steady = done / t_full
        tail = wall_b - t_full
        est = args.wbm * (atom_steps / len(structs)) / steady + tail
        print(f"batched, steady state (until the last structure entered, {t_full:.1f} s of {wall_b:.1f} s): "
              f"{steady:,.0f} atom-steps/s; tail {tail:.1f} s. {args.wbm:,} structures like these: "
              f"{est / 3600:.2f} h (steady rate for all, plus one tail)")


def _report_multi(args, multi: dict, batched, rows: dict) -> None:
    rate = multi["n"] / multi["wall"]
    print(f"batched in {args.processes} processes sharing the device: {multi['n']} structures in "
          f"{multi['wall']:.1f} s = {rate * 3600:,.0f}/h, {multi['atom_steps'] / multi['wall']:,.0f} atom-steps/s; "
          f"{rate / rows['batched']['rate']:.2f}x one process; converged {multi['converged']}/{multi['n']}")
    de = [abs(multi["e"][k] - r.e_per_atom) * 1000 for k, r in enumerate(batched)
          if multi["e"][k] is not None and r.e_per_atom is not None]
    if de:
        print(f"    same structures, one process vs {args.processes}: |dE| max {max(de):.4f} meV/atom")


def _compare_ase(args, pot, ref_structs, ref_batched, rows: dict) -> None:
    from matfunnel.engine import relax_structures

    t0 = time.perf_counter()
    ase = relax_structures(ref_structs, pot, fmax=args.fmax, max_steps=args.max_steps, optimizer=args.optimizer,
                           config=args.optimizer_config)
    rows["ase"] = summarize("ase", ase, time.perf_counter() - t0)
    both = [(a, b) for a, b in zip(ase, ref_batched, strict=False) if a.converged and b.converged]
    de = np.array([abs(a.e_per_atom - b.e_per_atom) * 1000 for a, b in both])
    same_steps = sum(a.n_steps == b.n_steps for a, b in zip(ase, ref_batched, strict=False))
    if len(de):
        print(f"batched vs ase (both converged: {len(both)}): |dE| median {np.median(de):.4f}, "
              f"max {de.max():.4f} meV/atom, {int((de > 1).sum())} above 1 meV/atom; "
              f"identical step counts {same_steps}/{len(ref_structs)}")
    for (a, b), d in zip(both, de, strict=False):
        if d > 1:
            print(f"    {b.label}: ase {a.e_per_atom:.5f} eV/atom in {a.n_steps} steps, batched "
                  f"{b.e_per_atom:.5f} in {b.n_steps} (final volumes {_volume(a):.2f} / {_volume(b):.2f} A^3)")
    print(f"speed-up batched / ase: {rows['batched']['rate'] / rows['ase']['rate']:.2f}x")


def _compare_chgnet(args, ref_structs, ref_batched, rows: dict) -> None:
    """(a) the reference: chgnet's own StructOptimizer, one structure at a time."""
    from chgnet.model import CHGNet, StructOptimizer

    opt = StructOptimizer(model=CHGNet.load(model_name="0.3.0", verbose=False), optimizer_class="FIRE",
                          use_device=args.device)
    t0 = time.perf_counter()
    ref = []
    for s in ref_structs:
        try:
            out = opt.relax(s, fmax=args.fmax, steps=args.max_steps, relax_cell=True,
                            ase_filter="FrechetCellFilter", verbose=False)
            traj = out["trajectory"]
            ref.append((float(traj.energies[-1]) / len(s), len(traj.energies)))
        except Exception as exc:  # noqa: BLE001
            print(f"chgnet StructOptimizer failed on {s.properties['label']}: {exc}")
            ref.append((float("nan"), 0))
    wall = time.perf_counter() - t0
    rows["chgnet"] = {"wall": wall, "rate": len(ref_structs) / wall}
    print(f"{'chgnet':>10}: {len(ref_structs)} structures in {wall:8.1f} s = {len(ref_structs) / wall:7.3f} "
          f"structures/s (StructOptimizer, FIRE + FrechetCellFilter)")
    de = np.array([abs(e - b.e_per_atom) * 1000 for (e, _), b in zip(ref, ref_batched, strict=False)
                   if b.converged and np.isfinite(e)])
    if len(de):
        print(f"batched vs chgnet StructOptimizer: |dE| median {np.median(de):.4f}, max {de.max():.4f} meV/atom")
    print(f"speed-up batched / chgnet StructOptimizer: {rows['batched']['rate'] / rows['chgnet']['rate']:.2f}x")


def _compare_torch_sim(args, pot, budget, structs, sizes, batched, rows: dict) -> None:
    try:
        import torch_sim  # noqa: F401
    except ImportError:
        print("torch-sim: not importable, skipped (pip install torch-sim-atomistic)")
        return
    max_atoms = budget.max_atoms if budget.max_atoms else 4000
    wall, energies = run_torch_sim(structs, pot, args.fmax, args.max_steps, max_atoms)
    rows["torch-sim"] = {"wall": wall, "rate": len(structs) / wall}
    print(f"{'torch-sim':>10}: {len(structs)} structures in {wall:8.1f} s = "
          f"{len(structs) / wall:7.3f} structures/s")
    if energies is not None and len(energies) == len(structs):
        de = [abs(e / n - b.e_per_atom) * 1000 for e, n, b in zip(energies, sizes, batched, strict=False)
              if b.e_per_atom is not None]
        print(f"torch-sim vs batched: |dE| median {np.median(de):.4f}, max {np.max(de):.4f} meV/atom")
    print(f"speed-up batched / torch-sim: {wall / rows['batched']['wall']:.2f}x")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    warnings.filterwarnings("ignore")  # pymatgen/scipy chatter on every ASE step
    if args.threads:
        torch.set_num_threads(args.threads)

    from matfunnel.engine import AtomBudget, relax_batched
    from matfunnel.potential import load_potential

    if args.worker:
        return _worker(args)
    multi = _run_processes(args, sys.argv[1:] if argv is None else list(argv)) if args.processes > 1 else None

    pot = load_potential(args.potential, args.device, **({"max_atoms": args.max_atoms} if args.max_atoms else {}))
    structs = make_structures(args.n, args.seed)
    sizes = [len(s) for s in structs]
    budget = AtomBudget(pot)
    print(f"{args.n} structures, {min(sizes)}-{max(sizes)} atoms (mean {np.mean(sizes):.1f}); potential "
          f"{args.potential} on {args.device}, torch threads {torch.get_num_threads()}; fmax {args.fmax} eV/A, "
          f"max {args.max_steps} steps; batch budget {'plan_batches' if budget.plan else budget.max_atoms}; optimizer "
          f"{args.optimizer} {args.optimizer_config or '(ASE defaults)'}")
    cal = getattr(pot, "calibration", None)
    if cal is not None:
        print(f"memory model: {cal['bytes_per_item']} bytes per item measured on this device ({cal['source']}), "
              f"{pot.bytes_per_item} used, {pot.max_items:,} items per batch")
    pot.predict(structs[:2])  # warm-up

    split = {"eval": 0.0, "calls": 0, "atoms": 0}
    if args.split:
        _time_evaluations(args.device, split)
    finished_at: list[float] = [0.0] * len(structs)
    _sync(args.device)
    t0 = time.perf_counter()

    def on_result(i, res):
        finished_at[i] = time.perf_counter() - t0

    batched = relax_batched(structs, pot, fmax=args.fmax, max_steps=args.max_steps, on_result=on_result,
                            optimizer=args.optimizer, config=args.optimizer_config)
    _sync(args.device)
    wall_b = time.perf_counter() - t0
    rows = {"batched": summarize("batched", batched, wall_b)}
    _report_batched(args, structs, batched, wall_b, finished_at)
    if args.split:
        calls = max(split["calls"], 1)
        print(f"inside potential evaluations: {split['eval']:.1f} s of {wall_b:.1f} s over {split['calls']} calls "
              f"(mean {split['atoms'] / calls:,.0f} atoms, {1e3 * split['eval'] / calls:.1f} ms"
              f" per call); engine and host work: {wall_b - split['eval']:.1f} s")
    if multi is not None:
        _report_multi(args, multi, batched, rows)
    ref_structs = structs[: args.ref_n] if args.ref_n else structs
    ref_batched = batched[: len(ref_structs)]
    if args.ref_n:
        print(f"(a) and (b) run on the first {len(ref_structs)} structures; speed-ups are ratios of structures/hour")

    if not args.no_ase:
        _compare_ase(args, pot, ref_structs, ref_batched, rows)
    if not args.no_chgnet:
        _compare_chgnet(args, ref_structs, ref_batched, rows)
    if args.torch_sim:
        _compare_torch_sim(args, pot, budget, structs, sizes, batched, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
