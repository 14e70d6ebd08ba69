"""Matbench Discovery IS2RE with a matfunnel potential, sharded into jobflow jobs with resume.

WBM initial structures -> relaxation through :class:`~matfunnel.makers.RelaxMaker` (FIRE +
FrechetCellFilter with a preset of :mod:`matfunnel.benchmark.protocols`; default ``mbd-fire-0.05``:
``fmax`` 0.05 eV/A, at most 500 steps, the protocol of e.g. CHGNet and MACE-MP-0; ``potential_kwargs``
go to the potential's factory) -> MLIP total energy as an MP-like ComputedStructureEntry
(:func:`~matfunnel.hull.mlip_entry`) -> MaterialsProject2020Compatibility -> formation energy vs
the MP elemental references -> predicted hull distance = DFT hull distance + (E_form pred -
E_form DFT).

Layout of an output folder ``out``::

    plan.json                       the selection (ids, shards) and settings; resume must match
    inputs/shard-00000.json.gz      initial structures of each shard (written once)
    shards/shard-00000.json.gz      per-shard results; a shard with this file is never rerun
    store/, jobs/                   the jobflow store and job folders (run_locally)
    predictions-<model>.csv.gz      material_id, e_form_per_atom_<model>, e_above_hull_<model>, ...
    relaxed-structures-<model>.jsonl.gz   material_id, <model>_structure (pymatgen dicts)
    scored-<model>.csv.gz           per-material truth/prediction used for the metrics
    metrics-<model>.json            discovery metrics (3 subsets) [+ geometry metrics]
    run-info-<model>.json           protocol (preset, overrides), potential kwargs, model name/version/
                                    weights checksum, package versions, counts, files
    <yyyy-mm-dd>-discovery.csv.gz   submission format: exactly material_id, e_form_per_atom
    <yyyy-mm-dd>-geo-opt.jsonl.gz   submission format: material_id, structure, energy, converged, n_steps
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Flow, Job, job

from matfunnel.benchmark import data as mbd_data
from matfunnel.benchmark import protocols
from matfunnel.common.structures import as_structure
from matfunnel.potential import DEFAULT_POTENTIAL

log = logging.getLogger(__name__)

__all__ = ["BenchmarkConfig", "model_slug", "pred_column", "run_benchmark", "select_ids", "write_submission"]

#: settings of the default preset (FIRE + FrechetCellFilter, as CHGNet / MACE-MP-0 on the leaderboard)
FMAX = protocols.PRESETS[protocols.DEFAULT_PROTOCOL].fmax
MAX_STEPS = protocols.PRESETS[protocols.DEFAULT_PROTOCOL].max_steps
#: protocol keys a resumed run must share with the run folder's plan
_RESUME_KEYS = ("potential", "fmax", "max_steps", "optimizer", "cell_filter", "shard_size")
_DATED = re.compile(r"\d{4}-\d{2}-\d{2}-(discovery\.csv\.gz|geo-opt\.jsonl\.gz)")


def model_slug(name: str) -> str:
    """``chgnet-0.3.0`` -> ``chgnet_0_3_0`` (used in column and file names)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()


def pred_column(model: str) -> str:
    """The predictions' column name for ``model`` (``e_form_per_atom_<slug>``)."""
    return f"e_form_per_atom_{model_slug(model)}"


@dataclass
class BenchmarkConfig:
    """Settings of an IS2RE run.

    ``preset`` names a protocol of :mod:`matfunnel.benchmark.protocols` (or a leaderboard model key);
    ``fmax`` / ``max_steps`` override the preset's values when not ``None`` (recorded as overrides).
    ``potential_kwargs`` go to the potential's factory (``load_potential(potential, device, **kw)``).
    """

    potential: str = DEFAULT_POTENTIAL
    device: str = "cpu"
    fmax: float | None = None
    max_steps: int | None = None
    shard_size: int = 250
    subset: int | None = None
    sample: bool = False
    seed: int = 0
    data_dir: str | None = None
    out_dir: str = "runs/matbench-discovery"
    geometry: str = "auto"  # "auto": if the DFT structures are available locally; "on"; "off"
    download: bool = True
    check_md5: bool = True  # off only for home-made (e.g. synthetic) data files
    progress: bool = True
    extra: dict = field(default_factory=dict)
    preset: str = protocols.DEFAULT_PROTOCOL
    potential_kwargs: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The potential's name as used in column and file names."""
        return model_slug(self.potential)

    def settings(self) -> dict:
        """The preset's settings with this run's overrides (:func:`protocols.resolve_protocol`).

        Raises
        ------
        ValueError
            Unknown preset, a preset our relaxer cannot run, or bad ``fmax`` / ``max_steps``.
        """
        return protocols.resolve_protocol(self.preset, fmax=self.fmax, max_steps=self.max_steps)

    def protocol(self) -> dict:
        """What the run does, as recorded in ``plan.json``, the metrics and the run info."""
        from matfunnel.engine.fire import FireConfig

        s = self.settings()
        return {"name": s["name"], "potential": self.potential, "potential_kwargs": dict(self.potential_kwargs),
                "fmax": s["fmax"], "max_steps": s["max_steps"], "optimizer": s["optimizer"],
                "cell_filter": s["cell_filter"], "overrides": s["overrides"], "fire": asdict(FireConfig()),
                "cell_filter_params": {"exp_cell_factor": "number of atoms", "scalar_pressure": 0.0},
                "shard_size": self.shard_size}


def select_ids(summary, subset: int | None = None, sample: bool = False, seed: int = 0) -> list[str]:
    """All WBM ids in summary order, the first ``subset`` of them, or a random sample of ``subset``."""
    ids = [str(i) for i in summary.index]
    if subset is None or subset >= len(ids):
        return ids
    if sample:
        import numpy as np

        pick = np.sort(np.random.default_rng(seed).choice(len(ids), size=subset, replace=False))
        return [ids[i] for i in pick]
    return ids[:subset]


# ----------------------------------------------------------------------------------- io helpers
def _write_json_gz(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


def _read_json_gz(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.json.gz"


# ----------------------------------------------------------------------------------- per-structure
def relaxation_rows(docs: list[dict], potential: str) -> list[dict]:
    """RelaxMaker documents -> prediction rows (MP2020-corrected E_form vs MP elemental refs)."""
    import warnings

    from matfunnel.hull import e_form_vs_mp_elements, mlip_entry, process_entries

    rows, entries = {}, []
    for d in docs:
        mid = d["label"]
        row = {"material_id": mid, "energy": d.get("energy"), "n_sites": None, "n_steps": d.get("n_steps"),
               "converged": bool(d.get("converged")), "e_form_per_atom": None, "correction_per_atom": None,
               "error": d.get("error"), "structure": None, "wall_time": d.get("wall_time")}
        rows[mid] = row
        if d.get("energy") is None or d.get("final_structure") is None:
            row["error"] = row["error"] or "no energy"
            continue
        fs = d["final_structure"]
        s = as_structure(fs, mid)
        row["structure"] = s.as_dict()
        row["n_sites"] = len(s)
        entries.append(mlip_entry(s, d["energy"], mid, model=potential))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processed = process_entries(entries)
    for rej in processed.rejected:
        r = rows[rej["entry_id"]]
        r["error"] = "; ".join(filter(None, [r["error"], f"MP2020 compatibility: {rej['reason']}"]))
    for e in processed.entries:
        r = rows[e.entry_id]
        try:
            r["e_form_per_atom"] = float(e_form_vs_mp_elements(e))
            r["correction_per_atom"] = float(e.correction) / e.composition.num_atoms
        except KeyError as exc:
            r["error"] = "; ".join(filter(None, [r["error"], str(exc)]))
    return [rows[d["label"]] for d in docs]


@job(name="mbd load shard")
def load_shard_job(input_path: str) -> dict:
    """Structures of one shard, from its input file."""
    return _read_json_gz(Path(input_path))


@job(name="mbd shard result")
def shard_result_job(docs: list, shard_path: str, potential: str, shard: int) -> dict:
    """Formation energies of one relaxed shard, written to ``shard_path`` (the resume marker)."""
    rows = relaxation_rows(docs, potential)
    model = next((d["model"] for d in docs if d.get("model")), None)  # Potential.model_info()
    _write_json_gz(Path(shard_path), {"shard": shard, "potential": potential, "model": model, "rows": rows})
    return {"shard": shard, "path": shard_path, "n": len(rows),
            "n_missing": sum(r["e_form_per_atom"] is None for r in rows)}


# ----------------------------------------------------------------------------------- driver
def _plan(cfg: BenchmarkConfig, out: Path, summary) -> dict:
    ids = select_ids(summary, cfg.subset, cfg.sample, cfg.seed)
    size = max(1, int(cfg.shard_size))
    shards = [ids[i : i + size] for i in range(0, len(ids), size)]
    plan: dict[str, Any] = {"ids_count": len(ids), "subset": cfg.subset, "sample": cfg.sample, "seed": cfg.seed,
            "protocol": cfg.protocol(), "shards": shards}
    path = out / "plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        was, now = old.get("protocol") or {}, plan["protocol"]
        same = (all(was.get(k) == now[k] for k in _RESUME_KEYS)
                and (was.get("potential_kwargs") or {}) == now["potential_kwargs"])
        if old.get("shards") != shards or not same:
            raise ValueError(
                f"{out} holds a run with a different selection or protocol ({old.get('protocol')}, "
                f"{old.get('ids_count')} materials); use another --out or delete it"
            )
    else:
        path.write_text(json.dumps(plan))
    return plan


def _write_inputs(plan: dict, init_path: Path, out: Path, progress: bool) -> None:
    """Split the initial structures into per-shard input files (one pass; existing files kept)."""
    todo = {i: s for i, s in enumerate(plan["shards"]) if not (out / "inputs" / _shard_name(i)).exists()}
    if not todo:
        return
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    want = {mid for s in todo.values() for mid in s}
    t0 = time.perf_counter()
    structs = mbd_data.load_structures(init_path, want)
    missing = want - set(structs)
    if missing:
        raise KeyError(f"{len(missing)} selected materials have no initial structure in {init_path}, "
                       f"e.g. {sorted(missing)[:5]}")
    for i, ids in todo.items():
        _write_json_gz(out / "inputs" / _shard_name(i), {"ids": ids, "structures": [structs[m] for m in ids]})
    log.info("wrote %d input shards in %.1f s", len(todo), time.perf_counter() - t0)


def build_flow(cfg: BenchmarkConfig, plan: dict, out: Path) -> Flow | None:
    """One load -> RelaxMaker -> result chain per shard without a result file (None: all done)."""
    from matfunnel.makers import RelaxMaker

    s = cfg.settings()
    maker = RelaxMaker(name="mbd relax", potential=cfg.potential, potential_kwargs=dict(cfg.potential_kwargs),
                       device=cfg.device, fmax=s["fmax"], max_steps=s["max_steps"], relax_cell=True,
                       progress=cfg.progress)
    jobs: list[Flow | Job] = []
    for i, _ in enumerate(plan["shards"]):
        result = out / "shards" / _shard_name(i)
        if result.exists():
            continue
        load = load_shard_job(str(out / "inputs" / _shard_name(i)))
        load.name = f"mbd load {i}"
        relax = maker.make(load.output["structures"], load.output["ids"])
        relax.name = f"mbd relax {i}"
        relax.update_metadata({"category": "gpu", "shard": i}, dynamic=False)
        post = shard_result_job(relax.output, str(result), cfg.potential, i)
        post.name = f"mbd result {i}"
        jobs += [load, relax, post]
    return Flow(jobs, name=f"matbench-discovery {cfg.potential}") if jobs else None


def collect(plan: dict, out: Path, models: list | None = None) -> list[dict]:
    """Rows of all shards, in plan order; each shard's model record is appended to ``models`` if given."""
    rows = []
    for i, _ in enumerate(plan["shards"]):
        path = out / "shards" / _shard_name(i)
        if not path.exists():
            raise RuntimeError(f"shard {i} has no result ({path}); rerun to resume")
        shard = _read_json_gz(path)
        rows += shard["rows"]
        if models is not None:
            models.append(shard.get("model"))
    return rows


# ----------------------------------------------------------------------------------- submission
def write_submission(rows: list[dict], out: Path, date: str | None = None) -> dict[str, Path]:
    """Write the run in Matbench Discovery's submission format.

    Parameters
    ----------
    rows
        Per-material rows (:func:`relaxation_rows`).
    out
        Folder; older dated submission files in it are replaced.
    date
        ``YYYY-MM-DD`` of the file names (default today).

    Returns
    -------
    dict
        ``discovery``: ``<date>-discovery.csv.gz`` with exactly the columns
        :data:`protocols.DISCOVERY_COLUMNS` (every material; formation energy rounded to 4 decimals,
        empty where it failed); ``geo_opt``: ``<date>-geo-opt.jsonl.gz``, one JSON record per material
        with a formation energy, keys :data:`protocols.GEO_OPT_COLUMNS` (``structure`` a pymatgen dict).
    """
    import pandas as pd

    date = date or time.strftime("%Y-%m-%d")
    paths = {"discovery": out / f"{date}-discovery.csv.gz", "geo_opt": out / f"{date}-geo-opt.jsonl.gz"}
    id_col, e_col = protocols.DISCOVERY_COLUMNS
    e_form = pd.Series([r["e_form_per_atom"] for r in rows], dtype=float, name=e_col,
                       index=pd.Index([r["material_id"] for r in rows], name=id_col)).round(4)
    tmp = paths["discovery"].with_name(paths["discovery"].name + ".tmp")
    e_form.to_frame().to_csv(tmp, compression="gzip")
    os.replace(tmp, paths["discovery"])
    geo = [{"material_id": r["material_id"], "structure": r["structure"], "energy": r["energy"],
            "converged": bool(r["converged"]), "n_steps": int(r["n_steps"] or 0)}
           for r in rows if r["e_form_per_atom"] is not None and r.get("structure") is not None]
    tmp = paths["geo_opt"].with_name(paths["geo_opt"].name + ".tmp")
    pd.DataFrame(geo, columns=list(protocols.GEO_OPT_COLUMNS)).to_json(tmp, orient="records", lines=True,
                                                                        compression="gzip")
    os.replace(tmp, paths["geo_opt"])
    keep = {p.name for p in paths.values()}
    for old in out.iterdir():
        if _DATED.fullmatch(old.name) and old.name not in keep:
            old.unlink()
    return paths


def _versions() -> dict:
    import importlib.metadata

    out: dict[str, str | None] = {}
    for dist in ("matfunnel", "torch", "pymatgen", "ase", "jobflow", "numpy", "pandas"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _model_record(cfg: BenchmarkConfig, models: list) -> tuple[dict | None, list[dict]]:
    """The model record of the shards (distinct ones too); loads the potential only if no shard has one."""
    distinct: list[dict] = []
    for m in models:
        if m and m not in distinct:
            distinct.append(m)
    if distinct:
        if len(distinct) > 1:
            log.warning("the shards of this run were relaxed with %d different models (weights changed?): %s",
                        len(distinct), distinct)
        return distinct[0], distinct
    try:  # shards written before the model was recorded
        from matfunnel.potential import load_potential

        info = load_potential(cfg.potential, cfg.device, **cfg.potential_kwargs).model_info()
    except Exception as exc:  # noqa: BLE001 - provenance only: say why it is missing
        return {"name": cfg.potential, "error": f"{type(exc).__name__}: {exc}"}, []
    return info, [info]


def write_run_info(cfg: BenchmarkConfig, result: dict, models: list, path: Path) -> dict:
    """Write the run metadata JSON (protocol, model provenance, versions, counts, files); return it."""
    model, distinct = _model_record(cfg, models)
    proto = cfg.protocol()
    info = {
        "benchmark": "matbench-discovery",
        "task": "IS2RE",
        "potential": cfg.potential,
        "potential_kwargs": dict(cfg.potential_kwargs),
        "model": model,
        "models_seen": distinct,
        "protocol": proto,
        "preset_leaderboard_models": protocols.PRESETS[proto["name"]].models,
        "protocol_source": f"github.com/janosh/matbench-discovery@{protocols.SOURCE_COMMIT} models/*/*.yml",
        # the model-YAML form (hyperparams.evaluation) of what was run
        "yaml_evaluation": {"ase_optimizer": proto["optimizer"], "cell_filter": proto["cell_filter"],
                            "max_force": proto["fmax"], "max_steps": proto["max_steps"]},
        "engine": "matfunnel batched FIRE + Frechet cell filter (matfunnel.engine.fire)",
        "device": cfg.device,
        "versions": _versions(),
        "selection": {"subset": cfg.subset, "sample": cfg.sample, "seed": cfg.seed},
        "n_relaxed": result.get("n_relaxed"),
        "n_converged": result.get("n_converged"),
        "n_failed": result.get("n_failed"),
        "wall_time_s": result.get("wall_time_s"),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": dict(result.get("files", {})),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)
    return info


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    """Run (or resume) the IS2RE benchmark; return the metrics document (also written to disk)."""
    from jobflow import run_locally

    from matfunnel.common.store import embedded_store

    cfg.settings()  # unknown or unsupported protocol: fail before any work
    out = Path(cfg.out_dir).resolve()
    (out / "shards").mkdir(parents=True, exist_ok=True)
    summary_path = mbd_data.fetch("wbm_summary", cfg.data_dir, download_missing=cfg.download,
                                  progress=cfg.progress, check=cfg.check_md5)
    init_path = mbd_data.fetch("wbm_initial_structures", cfg.data_dir, download_missing=cfg.download,
                               progress=cfg.progress, check=cfg.check_md5)
    summary = mbd_data.load_wbm_summary(summary_path)
    plan = _plan(cfg, out, summary)
    _write_inputs(plan, init_path, out, cfg.progress)
    flow = build_flow(cfg, plan, out)
    t0 = time.perf_counter()
    if flow is not None:
        (out / "jobs").mkdir(exist_ok=True)
        run_locally(flow, store=embedded_store(out), create_folders=True, root_dir=str(out / "jobs"),
                    log=log.isEnabledFor(logging.INFO))
    wall = time.perf_counter() - t0
    models: list = []
    rows = collect(plan, out, models)
    from matfunnel.benchmark.score import score_run

    result = score_run(rows, cfg, out, summary, wall_time=wall,
                       n_shards_run=0 if flow is None else len(flow.jobs) // 3)
    sub = write_submission(rows, out)
    run_info = out / f"run-info-{cfg.slug}.json"
    result["files"].update({"discovery": str(sub["discovery"]), "geo_opt": str(sub["geo_opt"]),
                            "run_info": str(run_info)})
    info = write_run_info(cfg, result, models, run_info)
    result["model_info"] = info["model"]
    Path(result["files"]["metrics"]).write_text(json.dumps(result, indent=2))
    return result
