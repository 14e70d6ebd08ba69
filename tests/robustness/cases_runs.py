"""Hostile campaign runs (group ``runs``): ``matfunnel run SPEC --run-dir DIR``, ``matfunnel report`` and the
result cache.

A run that cannot succeed must be refused before any work with one message naming the input (the run folder,
the spec key, the file) and the problem; a run that fails must exit non-zero and never leave a previous run's
report looking like its own; a damaged cache is never trusted. Most cases are refused in the run's preflight;
two run a real tiny campaign (CHGNet, two user structures, DFT off): one in a messy folder (an earlier report,
a stale lock, a corrupt cache), one with ``hull.references: auto`` and a Materials Project key whose query
fails -- no mock: the Materials Project cannot be reached from here (without network the query fails at name
resolution; with network the made-up key is refused), which is exactly the failing-key path.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from harness import Case, CliFailed, cli
from pymatgen.core import Lattice, Structure

GROUP = "runs"
#: a made-up Materials Project key: it must never appear in any output
FAKE_KEY = "robustFAKEkey0123456789abcdefghij"


def _inputs(tmp: Path) -> Path:
    """Two user structures: fcc Al (the elemental ground state) and B2 LiAl."""
    folder = tmp / "inputs"
    folder.mkdir(exist_ok=True)
    al = Structure(Lattice.cubic(4.04), ["Al"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    al.get_primitive_structure().to(filename=str(folder / "Al_fcc.json"))
    Structure(Lattice.cubic(3.16), ["Li", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(folder / "LiAl_B2.json"))
    return folder


def _spec(tmp: Path, name: str = "robust", chemsys: str = "Al-Li", references: str = "offline",
          device: str = "cpu", competing_max_sites: int = 1, **hull) -> Path:
    """The smallest campaign: the user's two structures, CHGNet, elemental competing phases, DFT off."""
    _inputs(tmp)
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps({
        "name": name, "chemsys": chemsys,
        "candidates": {"sources": ["user"], "structures": ["inputs"], "max_candidates": 4, "max_sites": 2},
        "potential": {"name": "chgnet-0.3.0", "device": device},
        "relax": {"fmax": 0.05, "max_steps": 150, "batch_size": 4},
        "hull": {"references": references, "competing_max_sites": competing_max_sites, **hull},
        "dft": {"engine": "none"},
    }))
    return path


def _no_key() -> None:
    os.environ.pop("MP_API_KEY", None)


def _run(spec: Path, run_dir: Path) -> tuple[int, str, str]:
    return cli(["run", str(spec), "--run-dir", str(run_dir)])


def _previous_run(run_dir: Path, name: str = "robust", chemsys: str = "Al-Li") -> None:
    """A folder left by an earlier run of the same campaign: its spec.json and its report (one odd row)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps({"name": name, "chemsys": chemsys}))
    report = {"name": name, "chemsys": chemsys, "potential": "chgnet-0.3.0", "reference": "offline: earlier",
              "dft_engine": "none", "dft_threshold": 0.05,
              "rows": [{"id": "stale-row-from-an-earlier-run", "formula": "Al", "status": "ok", "e_above_hull": 0.0}]}
    (run_dir / "report.json").write_text(json.dumps(report))


def _refused(cid: str, build, *match: str, note: str = "", seconds: float = 120.0) -> Case:
    """``matfunnel run`` on what ``build(tmp) -> (spec, run_dir)`` prepares must fail with ``match``."""

    def run(tmp: Path, _):
        _no_key()
        spec, run_dir = build(tmp)
        return _run(spec, run_dir)

    return Case(id=f"runs-{cid}", group=GROUP, run=run, match=match, note=note, seconds=seconds)


# ---- the run folder -------------------------------------------------------------------------------------------

def _dir_is_file(tmp):
    f = tmp / "run-is-a-file"
    f.write_text("not a folder")
    return _spec(tmp), f


def _parent_is_file(tmp):
    f = tmp / "parent-file"
    f.write_text("x")
    return _spec(tmp), f / "run"


def _unwritable(tmp):
    # /sys cannot be written, even by root (a chmod'ed folder would not stop root)
    return _spec(tmp), Path(f"/sys/matfunnel-robust-{os.getpid()}")


def _jobs_is_file(tmp):
    d = tmp / "run"
    _previous_run(d)
    (d / "jobs").write_text("x")
    return _spec(tmp), d


def _cache_is_folder(tmp):
    d = tmp / "run"
    (d / "cache.sqlite").mkdir(parents=True)
    return _spec(tmp), d


def _other_campaign(tmp):
    d = tmp / "run-of-other"
    _previous_run(d, name="brass", chemsys="Cu-Zn")
    return _spec(tmp), d


def _garbage_spec_json(tmp):
    d = tmp / "run-garbage"
    d.mkdir()
    (d / "spec.json").write_bytes(b"\x00\xff not json")
    return _spec(tmp), d


def _corrupt_store(tmp):
    d = tmp / "run"
    _previous_run(d)
    (d / "store" / "matfunnel").mkdir(parents=True)
    (d / "store" / "matfunnel" / "outputs.collection").write_bytes(b"this is no database " * 500)
    return _spec(tmp), d


def _locked(tmp):
    """The folder is held by another run (this process holds the lock through its own open file)."""
    d = tmp / "run-busy"
    d.mkdir()
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": 4242, "host": socket.gethostname(), "since": "2026-01-01 00:00:00"}).encode())
    return _spec(tmp), d  # the fd stays open (and locked) until the case's process ends


# ---- the spec's demands on this machine -------------------------------------------------------------------------

def _cuda(tmp):
    return _spec(tmp, device="cuda:63"), tmp / "run"


def _device_name(tmp):
    return _spec(tmp, device="gpu0"), tmp / "run"


def _uncovered(tmp):
    return _spec(tmp, chemsys="Am-Li"), tmp / "run"  # Am (Z 95) is beyond CHGNet's 94 elements


def _mp_no_key(tmp):
    return _spec(tmp, references="mp"), tmp / "run"


def _no_elemental_phase(tmp):
    return _spec(tmp, chemsys="Li-O", competing_max_sites=1), tmp / "run"  # solid O2 has 2 sites


def _all_at_once(tmp):
    d = tmp / "run-of-other"
    _previous_run(d, name="brass", chemsys="Cu-Zn")
    return _spec(tmp, device="cuda:63", references="mp"), d


def _stale_then_cuda(tmp: Path, _):
    """A rerun that cannot start must fail; it must not rewrite spec.json (the folder's report is the old run's)."""
    _no_key()
    d = tmp / "run"
    _previous_run(d)
    before = (d / "spec.json").read_text()
    try:
        return _run(_spec(tmp, device="cuda:63"), d)
    except CliFailed:
        if (d / "spec.json").read_text() != before:
            return "the folder's spec.json was overwritten by a run that never started (its report is another run's)"
        raise


def _private_mounts(*commands: list[str]) -> None:
    """Give this process (the case's own forked child) a private mount namespace and run ``mount`` commands in it.

    Needs root (CAP_SYS_ADMIN): a chmod'ed folder does not stop root, a read-only mount does. The mounts are
    private (``--make-rprivate`` first), so nothing is visible outside, and they vanish with the process.
    """
    os.unshare(os.CLONE_NEWNS)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True, capture_output=True)
    for cmd in commands:
        subprocess.run(cmd, check=True, capture_output=True)


def _small_disk(tmp: Path, _):
    """The run folder is on a 2 MB file system (a private tmpfs): refused before any work, not when it fills."""
    _no_key()
    disk = tmp / "small-disk"
    disk.mkdir()
    spec = _spec(tmp)
    _private_mounts(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)])
    return _run(spec, disk / "run")


def _read_only(tmp: Path, _):
    """An earlier run's folder, now on a read-only mount."""
    _no_key()
    d = tmp / "ro-run"
    _previous_run(d)
    spec = _spec(tmp)
    _private_mounts(["mount", "--bind", str(d), str(d)], ["mount", "-o", "remount,bind,ro", str(d)])
    return _run(spec, d)


def _killed_rerun(tmp: Path, _):
    """A rerun killed midway (SIGKILL, e.g. the OOM killer): ``matfunnel report`` must not show the earlier run's
    report as the folder's current one."""
    import signal
    import time

    _no_key()
    d = tmp / "run-killed"
    _previous_run(d)
    spec = _spec(tmp)
    pid = os.fork()
    if pid == 0:  # the rerun, in a process of its own (forked: no second start-up of Python)
        try:
            _run(spec, d)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 120
    while not (d / "jobs").exists() and time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG)[0] == 0:
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    _, out, _ = cli(["report", str(d)])
    return out


# ---- the result cache (ResultCache, the public API of common/cache.py) --------------------------------------

def _cache_file_garbage(tmp: Path, _):
    from matfunnel.common.cache import ResultCache

    path = tmp / "cache.sqlite"
    path.write_bytes(b"definitely not sqlite " * 200)
    cache = ResultCache(path)
    cache.put("k", "mlip-relax", {"energy": -3.7})
    moved = sorted(p.name for p in tmp.glob("cache.sqlite.corrupt-*"))
    return cache.get("k"), moved


def _check_quarantined(value) -> str | None:
    got, moved = value
    if got != {"energy": -3.7}:
        return f"the cache does not work after a corrupt file: get returned {got!r}"
    return None if moved else "the corrupt cache file was not moved aside (cache.sqlite.corrupt-*)"


def _cache_truncated(tmp: Path, _):
    from matfunnel.common.cache import ResultCache

    path = tmp / "cache.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE results (key TEXT PRIMARY KEY, kind TEXT, value TEXT, created REAL)")
    con.executemany("INSERT INTO results VALUES (?, ?, ?, ?)",
                    [(f"k{i}", "mlip-relax", json.dumps({"energy": -1.0 * i, "pad": "x" * 500}), 0.0)
                     for i in range(400)])
    con.commit()
    con.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] + b"\0" * 4096 + data[len(data) // 2:])  # a torn write
    cache = ResultCache(path)
    wrong = [i for i in range(400) if (v := cache.get(f"k{i}")) is not None and v.get("energy") != -1.0 * i]
    cache.put("new", "mlip-relax", {"energy": -3.7})
    moved = sorted(p.name for p in tmp.glob("cache.sqlite.corrupt-*"))
    return (cache.get("new") if not wrong else {"wrong values": wrong[:5]}), moved


def _tampered(how: str):
    def run(tmp: Path, _):
        from matfunnel.common.cache import ResultCache

        cache = ResultCache(tmp / "cache.sqlite")
        cache.put("key-of-Al", "mlip-relax", {"label": "Al", "energy": -3.7})
        cache.put("key-of-Li", "mlip-relax", {"label": "Li", "energy": -1.9})
        con = sqlite3.connect(tmp / "cache.sqlite")
        if how == "swapped":  # a value copied under another key (a bad merge of two caches, a bug)
            con.execute("UPDATE results SET value = (SELECT value FROM results WHERE key = 'key-of-Li') "
                        "WHERE key = 'key-of-Al'")
        elif how == "edited":  # a number changed inside a valid JSON value (bit rot, a hand edit)
            con.execute("UPDATE results SET value = replace(value, '-3.7', '-9.7') WHERE key = 'key-of-Al'")
        else:  # undecodable
            con.execute("UPDATE results SET value = '{\"label\": \"Al\", \"energy\": -3.' WHERE key = 'key-of-Al'")
        con.commit()
        con.close()
        return cache.get("key-of-Al"), cache.get("key-of-Li")

    return run


def _check_miss(value) -> str | None:
    al, li = value
    if al is not None:
        return f"a damaged entry was returned as a hit: {al!r}"
    return None if li == {"label": "Li", "energy": -1.9} else f"a sound entry was lost: {li!r}"


def _report_corrupt_store(tmp: Path, _):
    d = tmp / "run"
    _corrupt_store(tmp)
    return cli(["report", str(d)])


# ---- the one real campaign: auto references, a failing MP key --------------------------------------------------

def _campaign(messy: bool):
    """A real tiny campaign. ``messy=False``: ``hull.references: auto`` with a key whose query fails, in a fresh
    folder: the run must use the full offline hull and say why in the report's header. ``messy=True``: offline
    references, in a folder with an earlier run's report, a stale lock of a dead process and a corrupt
    cache.sqlite: the run must go on (the lock taken over, the cache moved aside) and show only its own rows."""

    def run(tmp: Path, _):
        d = tmp / "run"
        if messy:
            _no_key()
            _previous_run(d)
            dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True)
            (d / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                                 "since": "earlier"}))
            (d / "cache.sqlite").write_bytes(b"garbage, not sqlite " * 100)
            spec = _spec(tmp)
        else:
            os.environ["MP_API_KEY"] = FAKE_KEY
            # an empty MP cache of its own: no entries cached by an earlier session can stand in for the query
            spec = _spec(tmp, references="auto", cache_dir="mp-cache")
        _, out, err = _run(spec, d)
        report = json.loads((d / "report.json").read_text())
        return messy, out, err, report, sorted(p.name for p in d.glob("cache.sqlite.corrupt-*"))

    return run


def _check_campaign(value) -> str | None:
    messy, out, err, report, moved = value
    if FAKE_KEY in out + err + json.dumps(report):
        return "the Materials Project key was printed"
    header = next((line for line in out.splitlines() if line.startswith("hull reference:")), "")
    if not messy and ("offline" not in header or "MP query failed" not in header):
        return f"the report header does not say the references are offline because the MP query failed: {header!r}"
    if any("stale-row" in r["id"] for r in report["rows"]) or "stale-row" in out:
        return "the earlier run's report rows are shown"
    al = [r for r in report["rows"] if r.get("formula") == "Al" and r.get("status") == "ok"]
    if not al or al[0]["e_above_hull"] is None or abs(al[0]["e_above_hull"]) > 0.005:
        return f"fcc Al (the ground state) is not on the hull: {al[:1]}"
    lial = [r for r in report["rows"] if r.get("formula") == "LiAl" and r.get("status") == "ok"]
    if not lial or lial[0]["e_form_per_atom"] is None or lial[0]["e_form_per_atom"] > -0.02:
        return f"LiAl's formation energy is not negative against the offline hull: {lial[:1]}"
    if messy and not moved:
        return "the corrupt cache.sqlite was not moved aside"
    return None


CASES: list[Case] = [
    _refused("dir-is-file", _dir_is_file, "run-is-a-file", "not a folder"),
    _refused("dir-parent-is-file", _parent_is_file, "parent-file", "not a directory"),
    _refused("dir-unwritable", _unwritable, "matfunnel-robust", "cannot be created",
             note="a read-only location even for root (/sys); a chmod'ed folder does not stop root"),
    _refused("jobs-is-file", _jobs_is_file, "'jobs'", "not a folder"),
    _refused("cache-is-folder", _cache_is_folder, "cache.sqlite", "not a file"),
    _refused("other-campaign", _other_campaign, "run-of-other", "holds campaign 'brass'"),
    _refused("garbage-spec-json", _garbage_spec_json, "run-garbage", "unreadable spec.json"),
    _refused("corrupt-store", _corrupt_store, "outputs.collection", "corrupt"),
    _refused("locked", _locked, "run-busy", "in use by pid 4242"),
    _refused("cuda-no-gpu", _cuda, "cuda:63", "GPU"),
    _refused("device-name", _device_name, "potential.device", "gpu0", "cuda:N"),
    _refused("uncovered-element", _uncovered, "Am", "does not cover"),
    _refused("mp-without-key", _mp_no_key, "hull.references", "MP_API_KEY is not set"),
    _refused("no-elemental-phase", _no_elemental_phase, "competing_max_sites", "no elemental phase of O"),
    _refused("all-problems-at-once", _all_at_once, "cuda:63", "MP_API_KEY", "holds campaign 'brass'"),
    Case(id="runs-stale-report-rerun-cannot-start", group=GROUP, run=_stale_then_cuda, match=("cuda:63", "GPU")),
    Case(id="runs-small-disk", group=GROUP, run=_small_disk, match=("small-disk", "MB free"),
         note="a private 2 MB tmpfs (needs root)"),
    Case(id="runs-read-only-folder", group=GROUP, run=_read_only, match=("ro-run", "read-only file system"),
         note="a read-only bind mount in a private mount namespace (needs root): root cannot write there either"),
    Case(id="runs-report-after-killed-rerun", group=GROUP, run=_killed_rerun, match=("run-killed", "not finished"),
         note="the earlier run's report.json is still there in the old code's layout; it must not be shown"),
    Case(id="runs-report-corrupt-store", group=GROUP, run=_report_corrupt_store,
         match=("outputs.collection", "corrupt"), seconds=30),
    Case(id="runs-cache-garbage-file", group=GROUP, run=_cache_file_garbage, expect="ok", check=_check_quarantined,
         quick=True, seconds=30),
    Case(id="runs-cache-torn-file", group=GROUP, run=_cache_truncated, expect="ok", check=_check_quarantined,
         quick=True, seconds=30),
    Case(id="runs-cache-value-swapped", group=GROUP, run=_tampered("swapped"), expect="ok", check=_check_miss,
         quick=True, seconds=30),
    Case(id="runs-cache-value-edited", group=GROUP, run=_tampered("edited"), expect="ok", check=_check_miss,
         quick=True, seconds=30),
    Case(id="runs-cache-value-undecodable", group=GROUP, run=_tampered("undecodable"), expect="ok",
         check=_check_miss, quick=True, seconds=30),
    Case(id="runs-auto-mp-fails-offline-hull", group=GROUP, run=_campaign(messy=False), expect="ok",
         check=_check_campaign, seconds=240, mem_gb=4.0,
         note="no mock: the MP query fails for real (no network here / a made-up key)"),
    Case(id="runs-rerun-in-messy-folder", group=GROUP, run=_campaign(messy=True), expect="ok", check=_check_campaign,
         seconds=240, mem_gb=4.0),
]
