"""The benchmark scripts still run (tiny sizes, CPU); their numbers are recorded in benchmarks/NOTES.md.

The GPU run kit (``benchmarks/gpu_check.py``, used by ``benchmarks/gpu_suite.sh`` on a lent CUDA machine) is
smoke-tested here on the CPU so that it does not rot between GPU sessions; CI has no GPU.

Each script runs single-threaded (``OMP_NUM_THREADS=1``), so the module starts them all at once, two at a time
(the machine's two cores), and each test waits for its own script's output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_PHONON_REFS = (ROOT.parent / "shared/data/phonons/pbe-reference/mp-1883").is_dir()

#: every script this module runs, by test; started together when the module's first test asks for one
SCRIPTS: dict[str, tuple[str, ...]] = {
    "gpu_check": ("benchmarks/gpu_check.py", "--device", "cpu", "--relax-like", "4", "--sizes", "64", "--largest",
                  "128", "--relax", "3", "--relax-steps", "3", "--profile"),
    "phonon": ("benchmarks/phonon_throughput.py", "--refs", "mp-1883", "--repeat", "1", "--relax", "3"),
    "relax_processes": ("benchmarks/relax_throughput.py", "--device", "cpu", "--n", "4", "--max-steps", "6",
                        "--no-ase", "--no-chgnet", "--processes", "2", "--threads", "1"),
    "potential": ("benchmarks/potential_throughput.py", "--n", "6", "--supercells", "", "--scaling", "8",
                  "--repeats", "2", "--ref-batch-size", "2", "--seed", "3"),
    "relax": ("benchmarks/relax_throughput.py", "--device", "cpu", "--n", "3", "--ref-n", "2", "--max-steps", "8",
              "--no-chgnet"),
    "engine_overhead": ("benchmarks/engine_overhead.py", "--n", "60", "--max-atoms", "600", "--repeats", "1",
                        "--max-steps", "20"),
    "train": ("benchmarks/train_throughput.py", "--sizes", "small", "--batch-size", "2", "--small-atoms", "8,16",
              "--repeats", "1", "--seed", "0"),
}


def _run(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


@pytest.fixture(scope="module")
def started():
    """Every script of :data:`SCRIPTS` running, two at a time, longest first; ``{name: Future[stdout]}``."""
    pool = ThreadPoolExecutor(max_workers=2)
    runs: dict[str, Future] = {name: pool.submit(_run, *args) for name, args in SCRIPTS.items()
                               if name != "phonon" or HAS_PHONON_REFS}
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


def _output(started, name: str) -> str:
    return started[name].result(timeout=900)


def test_gpu_check_runs_on_cpu(started):
    out = _output(started, "gpu_check")
    # one row per batch with items and timings, the breakdown table, the profile, the relax profile, the largest cell
    row = re.search(r"rocksalt 64\s+(\d+)\s+([\d,]+)\s", out)
    assert row and int(row.group(1)) > 16 and int(row.group(2).replace(",", "")) > 10 * int(row.group(1))
    assert re.search(r"relax-like 4 x 4-64 atoms\s+\d+\s+[\d,]+\s", out)
    assert "== profile: rocksalt 64" in out
    assert re.search(r"rocksalt 64\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+", out.split("where a pass goes")[1])
    assert re.search(r"relax_batched profile: 3 structures .* [\d,]+ atom-steps/s", out)
    assert re.search(r"^\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out.split("largest structure")[1], re.M)


def test_relax_benchmark_reports_rates_and_agreement(started):
    out = _output(started, "relax")
    assert re.search(r"batched: 3 structures in .* structures/s", out)
    assert re.search(r"batched: [\d,]+ atom-steps/s", out)
    assert "(a) and (b) run on the first 2 structures" in out
    assert re.search(r"ase: 2 structures in", out) and re.search(r"speed-up batched / ase: [\d.]+x", out)


def test_relax_benchmark_in_several_engine_processes(started):
    """--processes: the batched engine in two processes at once (every other structure each) gives the same
    relaxations as one process, and the combined rate is reported."""
    out = _output(started, "relax_processes")
    assert re.search(r"batched in 2 processes sharing the device: 4 structures in [\d.]+ s = [\d,]+/h", out)
    de = re.search(r"one process vs 2: \|dE\| max ([\d.]+) meV/atom", out)
    assert de and float(de.group(1)) < 0.01, out


def test_engine_overhead_benchmark_reports_host_time(started):
    out = _output(started, "engine_overhead")
    ratio = re.search(r"pymatgen ([\d.]+) ms, SiteTable ([\d.]+) ms: ([\d.]+)x", out)
    assert ratio and float(ratio.group(3)) > 0  # documents checked equal inside the script
    run = re.search(r"run 1: .* (\d+) iterations, (\d+) structure-steps; engine host time ([\d.]+) ms per structure",
                    out)
    assert run and int(run.group(1)) > 1 and int(run.group(2)) >= 60 and float(run.group(3)) > 0


def test_phonon_benchmark_compares_symmetric_relaxations(started):
    if not HAS_PHONON_REFS:
        pytest.skip("no shared DFT phonon references beside the repository")
    out = _output(started, "phonon")
    assert re.search(r"symmetric relaxation of 3 reference cells .* speed-up [\d.]+x", out)
    agree = re.search(r"\|dE\| max ([\d.e+-]+) meV/atom, .* identical step counts (\d+)/3; converged batched 3", out)
    assert agree and float(agree.group(1)) < 0.1 and int(agree.group(2)) >= 2, out


def test_potential_benchmark_reports_ratio_and_agreement(started):
    out = _output(started, "potential")
    assert re.search(r"chgnet CHGNet \(reference\)\s+[\d.]+\s+[\d.]+", out)
    assert re.search(r"speed-up: [\d.]+x wall", out)
    assert re.search(r"adjacent pairs: median [\d.]+x, range [\d.]+-[\d.]+x", out)
    diff = re.search(r"energy/atom ([\d.e+-]+) eV, forces ([\d.e+-]+) eV/A", out)
    assert diff and float(diff.group(1)) < 1e-5 and float(diff.group(2)) < 1e-3
    assert re.search(r"^\s+\d+\s+[\d.]+\s+[\d.]+$", out.split("time per atom")[1], re.M)


def test_train_benchmark_reports_ratio_memory_and_loss_agreement(started):
    """One tiny batch (2 cells, 8-16 atoms): both trainers' steps timed, their peak memory in child processes."""
    out = _output(started, "train")
    loss = re.search(r"loss before the step: ours ([\d.e+-]+), theirs ([\d.e+-]+), relative difference ([\d.e+-]+)",
                     out)
    ref = re.search(r"loss of the float64 model \(numpy\): [\d.e+-]+; relative difference to it: ours ([\d.e+-]+), "
                    r"theirs ([\d.e+-]+)", out)
    assert loss and ref, out
    # ours is the float64 loss to float32 round-off; chgnet's float32 stress on these strained cells (~20 GPa)
    # is ~1e-3 GPa off its float64 value, a few 1e-4 of this loss
    assert float(ref.group(1)) < 2e-5 and float(ref.group(2)) < 2e-3 and float(loss.group(3)) < 2e-3, out
    for side in ("chgnet Trainer \\(theirs\\)", "matfunnel.train \\(ours\\)"):
        row = re.search(side + r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+(\d+)\s+[\d.]+x", out)
        assert row and float(row.group(3)) > 0 and int(row.group(4)) > 0, out
    assert re.search(r"speed-up ours over theirs \(small\): [\d.]+x with graphs, [\d.]+x without .*"
                     r"adjacent pairs: median [\d.]+x", out)
    assert re.search(r"peak memory of one step \(small\): theirs / ours [\d.]+x", out)
