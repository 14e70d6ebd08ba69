"""CUDA checks of chgnet-0.3.0 that the throughput scripts do not make: memory model, profile, size limits.

    python benchmarks/gpu_check.py [--sizes 864,2048] [--largest 20000,40000,60000] [--profile]

* **memory per work item** (directed edge or angle) of one forward + backward pass: peak allocated
  bytes above the baseline, on rocksalt cells; this is what ``BYTES_PER_ITEM`` plans with;
* **Triton kernels vs the pure-torch path** on the same batches (``MATFUNNEL_TRITON=0`` is read per call):
  median time of a model pass and the largest difference of the outputs;
* **profile** (``--profile``): the CUDA kernels that take the time on a relax-like batch (100 structures
  of 4-64 atoms) and on a 2000-atom cell, and how much of the wall time the GPU is busy;
* **largest structure**: rocksalt supercells of growing size until one fails (out of memory), with time
  per atom and peak memory.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from functools import partial

import numpy as np
import torch

warnings.filterwarnings("ignore")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_time(fn, repeats: int = 5) -> float:
    fn()
    _sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _triton(flag: bool):
    os.environ["MATFUNNEL_TRITON"] = "1" if flag else "0"


def _mem_reset(gpu: bool) -> int:
    """Free cached blocks, reset the peak, return the allocated bytes (the baseline)."""
    if not gpu:
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _mem_peak(gpu: bool) -> int:
    return torch.cuda.max_memory_allocated() if gpu else 0


def _relax_like(rng, n=100):
    from matfunnel.potential.synthetic import random_structure

    out = []
    while len(out) < n:
        s = random_structure(rng, 64, rattle=0.05, shear=0.03)
        if len(s) >= 4:
            out.append(s)
    return out


def _memory_and_triton(pot, batches: dict, gpu: bool) -> None:
    from matfunnel.potential.chgnet.graph import build_graph

    print("\n== memory per work item and Triton vs torch path (one forward + backward, float32)")
    print(f"{'batch':<30}{'atoms':>7}{'items':>10}{'peak MiB':>10}{'B/item':>8}{'triton ms':>11}{'torch ms':>10}"
          f"{'us/atom':>9}{'max dF':>10}")
    for name, structs in batches.items():
        frac, lat, z, n = pot._arrays(structs)
        g = build_graph(frac, lat, z, n)
        items = 2 * g.n_edges + g.n_angles
        _triton(True)
        pot.predict(structs)
        _sync()
        base = _mem_reset(gpu)
        a = pot.predict(structs)
        _sync()
        peak = _mem_peak(gpu) - base
        t_tr = _median_time(partial(pot.predict, structs))
        _triton(False)
        b = pot.predict(structs)
        t_to = _median_time(partial(pot.predict, structs))
        _triton(True)
        df = max(float(np.abs(x["forces"] - y["forces"]).max()) for x, y in zip(a, b, strict=False))
        n_at = int(n.sum())
        print(f"{name:<30}{n_at:>7}{items:>10,}{peak / 2**20:>10.0f}{peak / max(items, 1):>8.0f}{t_tr * 1e3:>11.1f}"
              f"{t_to * 1e3:>10.1f}{t_tr / n_at * 1e6:>9.2f}{df:>10.1e}")


def _pass_breakdown(pot, batches: dict) -> None:
    from matfunnel.potential.chgnet.graph import build_graph

    print("\n== where a pass goes (median ms): graph build, forward only, forward + forces + stress, whole predict")
    print(f"{'batch':<30}{'graph':>8}{'fwd':>8}{'fwd+bwd':>9}{'predict':>9}")
    for name, structs in batches.items():
        arrays = pot._arrays(structs)
        t_g = _median_time(partial(build_graph, *arrays))
        g = build_graph(*arrays)
        t_f = _median_time(partial(pot.model, g, compute_forces=False, compute_stress=False))
        t_fb = _median_time(partial(pot.model, g))
        t_p = _median_time(partial(pot.predict, structs))
        print(f"{name:<30}{t_g * 1e3:>8.1f}{t_f * 1e3:>8.1f}{t_fb * 1e3:>9.1f}{t_p * 1e3:>9.1f}")


def _profile(pot, batches: dict, gpu: bool) -> None:
    from torch.profiler import ProfilerActivity, profile

    for name in dict.fromkeys([list(batches)[0], list(batches)[-1]]):
        structs = batches[name]
        pot.predict(structs)
        _sync()
        t0 = time.perf_counter()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        with profile(activities=acts) as prof:
            pot.predict(structs)
            _sync()
        wall = time.perf_counter() - t0
        ev = prof.key_averages()
        busy = sum(e.self_device_time_total for e in ev) / 1e3
        print(f"\n== profile: {name}: wall {wall * 1e3:.1f} ms (profiled), GPU busy {busy:.1f} ms")
        print(ev.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70))
        print(ev.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


def _syncs(pot, structs: list, dev: str, gpu: bool) -> None:
    from torch.profiler import ProfilerActivity, profile

    from matfunnel.engine.state import from_structures

    st = from_structures(structs, dev)

    def ev():
        return pot.evaluate(st.numbers, st.positions, st.cell, st.n_atoms)
    ev()
    _sync()
    t_wall = _median_time(ev)
    sites: dict = {}
    if gpu:
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ev()
            _sync()
        torch.cuda.set_sync_debug_mode(0)
        for w in caught:
            if "synchroniz" not in str(w.message):
                continue
            key = f"{w.filename}:{w.lineno}"
            sites[key] = sites.get(key, 0) + 1

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=acts) as prof:
        ev()
        _sync()
    busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
    print(f"\n== one engine evaluation of {len(structs)} relax-like structures ({int(st.n_atoms.sum())} atoms): "
          f"wall {t_wall * 1e3:.1f} ms, GPU busy {busy:.1f} ms (profiled), {sum(sites.values())} synchronisations")
    for key, c in sorted(sites.items(), key=lambda kv: -kv[1]):
        print(f"  {c:4d}  {key}")


def _relax_profile(pot, structs: list, relax_steps: int) -> None:
    import cProfile
    import pstats

    from matfunnel.engine import relax_batched

    relax_batched(structs[:8], pot, max_steps=5)
    _sync()
    t0 = time.perf_counter()
    prof = cProfile.Profile()
    prof.enable()
    res = relax_batched(structs, pot, max_steps=relax_steps)
    _sync()
    prof.disable()
    wall = time.perf_counter() - t0
    steps = sum(r.n_steps or 0 for r in res)
    atom_steps = sum(len(s) * (r.n_steps or 0) for s, r in zip(structs, res, strict=False))
    print(f"\n== relax_batched profile: {len(structs)} structures ({sum(len(s) for s in structs)} atoms), "
          f"at most {relax_steps} steps: {wall:.2f} s (cProfile on), {steps} structure-steps, "
          f"{atom_steps / wall:,.0f} atom-steps/s")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


def _largest(pot, rng, sizes: list[int], gpu: bool) -> None:
    from matfunnel.potential.synthetic import supercell

    print("\n== largest structure (rocksalt supercells, chunked when over the budget)")
    print(f"{'atoms':>8}{'time s':>9}{'us/atom':>9}{'peak GiB':>10}")
    for n in sizes:
        s = supercell(rng, n, proto="rocksalt", bond=2.75)
        _mem_reset(gpu)
        try:
            _sync()
            t0 = time.perf_counter()
            out = pot.predict([s], errors="record")[0]
            _sync()
            dt = time.perf_counter() - t0
        except torch.OutOfMemoryError as exc:
            print(f"{len(s):>8}  out of memory: {str(exc)[:120]}")
            break
        if "error" in out:
            print(f"{len(s):>8}  failed: {out['error'][:160]}")
            break
        print(f"{len(s):>8}{dt:>9.2f}{dt / len(s) * 1e6:>9.1f}{_mem_peak(gpu) / 2**30:>10.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="864,2048,6912")
    ap.add_argument("--largest", default="20000,40000,60000,80000")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cpu only smoke-tests this script")
    ap.add_argument("--relax", type=int, default=0, help="profile relax_batched on this many relax-like structures")
    ap.add_argument("--relax-steps", type=int, default=60)
    ap.add_argument("--syncs", type=int, default=0,
                    help="on this many relax-like structures: host synchronisations of one engine evaluation "
                         "(where), its wall time and the GPU's busy time")
    ap.add_argument("--relax-like", type=int, default=100, help="structures in the relax-like batch (0: none)")
    args = ap.parse_args()

    from matfunnel.potential.chgnet.potential import ChgnetPotential
    from matfunnel.potential.synthetic import supercell

    dev = args.device
    gpu = dev.startswith("cuda")
    if gpu:
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs; "
              f"torch {torch.__version__}")
    else:
        print("device: cpu (smoke test of this script: memory figures are 0)")

    rng = np.random.default_rng(args.seed)
    pot = ChgnetPotential(device=dev)
    print(f"memory budget per batch {pot.memory_budget / 2**30:.1f} GiB, max items {pot.max_items:,}, "
          f"bytes_per_item {pot.bytes_per_item}")

    batches = {}
    if args.relax_like:
        batches[f"relax-like {args.relax_like} x 4-64 atoms"] = _relax_like(rng, args.relax_like)
    for n in [int(x) for x in args.sizes.split(",") if x]:
        batches[f"rocksalt {n}"] = [supercell(rng, n, proto="rocksalt", bond=2.75)]

    _memory_and_triton(pot, batches, gpu)
    _pass_breakdown(pot, batches)
    if args.profile:
        _profile(pot, batches, gpu)
    if args.syncs:
        _syncs(pot, _relax_like(rng, args.syncs), dev, gpu)
    if args.relax:
        _relax_profile(pot, _relax_like(rng, args.relax), args.relax_steps)
    _largest(pot, rng, [int(x) for x in args.largest.split(",") if x], gpu)


if __name__ == "__main__":
    main()
