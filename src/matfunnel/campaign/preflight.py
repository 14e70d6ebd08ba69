"""Checks at the start of a campaign run, before any work: every problem found is reported at once.

A campaign that can only fail (no GPU for ``device: cuda``, an element the potential does not know, a
Materials Project hull without a key, a run folder that cannot be written or holds another campaign)
is refused here in a second, instead of after an hour of relaxations or -- worse -- finishing with a
silently different hull. :func:`preflight` runs every check and raises one :class:`PreflightError`
listing all problems; :func:`decide_references` also settles which hull references the run uses and why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

from matfunnel.campaign.spec import CampaignSpec
from matfunnel.candidates.chemsys import parse_chemsys
from matfunnel.candidates.competing import missing_elemental_phases
from matfunnel.candidates.maker import MP_API_KEY_ENV

log = logging.getLogger(__name__)

#: the least free space on the run folder's disk for a run to start (the store, the cache and the report)
MIN_FREE_BYTES = 100 * 2**20
#: entries of a run folder that must be folders, and those that must be files
RUN_SUBFOLDERS = ("jobs", "store")
RUN_FILES = ("spec.json", "run.json", "report.json", "report.csv", "cache.sqlite")


class PreflightError(ValueError):
    """A campaign cannot start; ``problems`` lists every reason (the message shows them all)."""

    def __init__(self, campaign: str, run_dir: str | Path, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"campaign {campaign!r} cannot start (run folder {run_dir}):\n{lines}")


def check_run_folder(run_dir: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> list[str]:
    """Problems of ``run_dir`` as a run folder: not a folder, not creatable, not writable, too little space.

    The folder is created when missing; a probe file is written and removed.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        return [f"run folder {run_dir} is an existing file, not a folder; choose another --run-dir"]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"run folder {run_dir} cannot be created: {exc.strerror or exc}; choose another --run-dir"]
    problems = [f"run folder {run_dir}: {name!r} is a file, not a folder; remove it or use another --run-dir"
                for name in RUN_SUBFOLDERS if (run_dir / name).exists() and not (run_dir / name).is_dir()]
    problems += [f"run folder {run_dir}: {name!r} is a folder, not a file; remove it or use another --run-dir"
                 for name in RUN_FILES if (run_dir / name).is_dir()]
    probe = run_dir / f".matfunnel-write-probe-{os.getpid()}"
    try:
        with probe.open("wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        problems.append(f"run folder {run_dir} is not writable: {exc.strerror or exc}")
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        free = None
    if free is not None and free < min_free_bytes:
        problems.append(f"run folder {run_dir}: only {free / 2**20:.0f} MB free on its disk (at least "
                        f"{min_free_bytes / 2**20:.0f} MB needed); free some space or use another --run-dir")
    return problems


def check_campaign_folder(spec: CampaignSpec, run_dir: str | Path) -> list[str]:
    """A problem when ``run_dir`` already holds a different campaign (another name or chemical system)."""
    path = Path(run_dir) / "spec.json"
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
        name, chemsys = old.get("name"), old.get("chemsys")
    except (OSError, ValueError, AttributeError):
        return [f"run folder {run_dir} holds an unreadable spec.json (not a run of matfunnel?); "
                f"use another --run-dir"]
    try:
        same_sys = "-".join(parse_chemsys(str(chemsys))) == "-".join(parse_chemsys(spec.chemsys))
    except ValueError:
        same_sys = False
    if name != spec.name or not same_sys:
        return [f"run folder {run_dir} holds campaign {name!r} ({chemsys}), not {spec.name!r} ({spec.chemsys}); "
                f"use another --run-dir (or delete that folder)"]
    return []


def check_device(device: str) -> list[str]:
    """A problem when ``potential.device`` names a device that is not available here."""
    import torch

    dev = str(device).strip()
    try:
        parsed = torch.device(dev)
    except (RuntimeError, ValueError, TypeError):
        return [f"potential.device {dev!r} is not a device name (use 'cpu', 'cuda' or 'cuda:N')"]
    if parsed.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            return [f"potential.device is {dev!r} but no CUDA GPU is available here (use device: cpu)"]
        if parsed.index is not None and parsed.index >= n:
            return [f"potential.device is {dev!r} but this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})"]
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        return [f"potential.device is {dev!r} but MPS is not available here (use device: cpu)"]
    elif parsed.type not in ("cpu", "cuda", "mps"):
        return [f"potential.device {dev!r} is not supported (use 'cpu' or 'cuda')"]
    return []


def check_potential(spec: CampaignSpec) -> list[str]:
    """Problems of the potential: it cannot be loaded, or it does not cover an element of the chemsys."""
    from pymatgen.core import Element

    from matfunnel.potential import DEFAULT_POTENTIAL, load_potential

    pot = spec.potential
    try:
        model = load_potential(pot.name or DEFAULT_POTENTIAL, pot.device, **dict(pot.kwargs))
    except Exception as exc:  # noqa: BLE001 - whatever the loader raises, the run cannot start
        return [f"potential {pot.name!r} cannot be loaded on {pot.device!r}: {type(exc).__name__}: "
                f"{str(exc)[:300]}"]
    supported = getattr(model, "supported_elements", None)
    if not supported:
        return []
    bad = [el for el in parse_chemsys(spec.chemsys) if Element(el).Z not in supported]
    if bad:
        return [f"potential {pot.name!r} does not cover element(s) {', '.join(bad)} of chemsys {spec.chemsys} "
                f"(it knows atomic numbers {min(supported)}..{max(supported)}); choose another potential"]
    return []


def _mp_reason(exc: BaseException, key: str) -> str:
    text = f"{type(exc).__name__}: {exc}".replace(key, "***") if key else f"{type(exc).__name__}: {exc}"
    text = text.split(" (Caused by")[0]
    return text[:200]


def decide_references(spec: CampaignSpec) -> tuple[str, str, list[str]]:
    """The hull references this run uses: ``(mode, why, problems)``.

    ``mode`` is ``"mp"`` or ``"offline"``. ``auto`` with ``MP_API_KEY`` queries the Materials Project now
    (the entries are cached for the hull stage); when that fails, the run uses the full offline hull and
    ``why`` says so (``"MP query failed: ..."``, never the key). ``mp`` without a key, or with a failing query,
    is a problem. The offline hull must have an elemental phase of every element within
    ``hull.competing_max_sites``.
    """
    mode, problems = spec.hull.references, []
    key = os.environ.get(MP_API_KEY_ENV, "").strip()
    why = {"offline": "hull.references: offline", "mp": "hull.references: mp"}.get(mode, "")
    if mode == "mp" and not key:
        problems.append(f"hull.references is 'mp' but {MP_API_KEY_ENV} is not set (export your Materials "
                        f"Project key, or use hull.references: offline)")
    elif mode in ("mp", "auto") and key:
        from matfunnel.hull.mp_cache import fetch_mp_entries

        try:
            fetch_mp_entries(parse_chemsys(spec.chemsys), key, spec.hull.cache_dir)
            mode, why = "mp", why or "hull.references: auto, MP_API_KEY set"
        except Exception as exc:  # noqa: BLE001 - no network, wrong key, server error: all the same here
            reason = _mp_reason(exc, key)
            if mode == "mp":
                problems.append(f"hull.references is 'mp' but the Materials Project query failed ({reason})")
            else:
                log.warning("Materials Project query failed (%s): the hull uses offline references", reason)
                mode, why = "offline", f"MP query failed: {reason}"
    elif mode == "auto":
        mode, why = "offline", f"hull.references: auto, {MP_API_KEY_ENV} not set"
    if mode == "offline":
        missing = missing_elemental_phases(spec.chemsys, spec.hull.competing_max_sites)
        if missing:
            need = max(missing.values())
            problems.append(
                f"hull.competing_max_sites {spec.hull.competing_max_sites} leaves no elemental phase of "
                f"{', '.join(missing)} for the offline hull (raise it to at least {need})")
    return mode, why, problems


def check_user_structures(spec: CampaignSpec) -> list[str]:
    """The user's structure files, read as the candidates stage reads them: a problem only if none is usable.

    Bad files among good ones are not a problem here: the candidates stage records them and goes on.
    """
    if "user" not in spec.candidates.sources or not spec.candidates.structures:
        return []
    from matfunnel.candidates.sources import UserStructuresError, load_user_structures

    try:
        load_user_structures(spec.structure_paths())
    except UserStructuresError as exc:
        return [f"candidates.structures: {exc}"]
    return []


def preflight(spec: CampaignSpec, run_dir: str | Path) -> tuple[str, str]:
    """Every check before a run; return the hull references ``(mode, why)`` (see :func:`decide_references`).

    Raises
    ------
    PreflightError
        Listing every problem found: run folder, other campaign, device, potential and its elements,
        user structure files (when none is usable), hull references.
    """
    from matfunnel.common.store import StoreError, check_store

    problems = check_run_folder(run_dir)
    if not problems:
        problems += check_campaign_folder(spec, run_dir)
        try:
            check_store(Path(run_dir) / "store")
        except StoreError as exc:
            problems.append(str(exc))
    device_problems = check_device(spec.potential.device)
    problems += device_problems
    if not device_problems:
        problems += check_potential(spec)
    problems += check_user_structures(spec)
    mode, why, ref_problems = decide_references(spec)
    problems += ref_problems
    if problems:
        raise PreflightError(spec.name, run_dir, problems)
    return mode, why
