"""Matbench Discovery IS2RE with a matfunnel potential, sharded into jobflow jobs with resume.

WBM initial structures -> relaxation through :class:`~matfunnel.makers.RelaxMaker` (FIRE +
FrechetCellFilter, ``fmax`` 0.05 eV/A, at most 500 steps: the protocol of the benchmark's UIP
submissions, e.g. CHGNet/MACE) -> MLIP total energy as an MP-like ComputedStructureEntry
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
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jobflow import Flow, job

from matfunnel.benchmark import data as mbd_data
from matfunnel.common.structures import as_structure
from matfunnel.potential import DEFAULT_POTENTIAL

log = logging.getLogger(__name__)

__all__ = ["BenchmarkConfig", "model_slug", "pred_column", "run_benchmark", "select_ids"]

#: protocol of the Matbench Discovery UIP submissions (FIRE + FrechetCellFilter)
FMAX = 0.05
MAX_STEPS = 500


def model_slug(name: str) -> str:
    """``chgnet-0.3.0`` -> ``chgnet_0_3_0`` (used in column and file names)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()


def pred_column(model: str) -> str:
    return f"e_form_per_atom_{model_slug(model)}"


@dataclass
class BenchmarkConfig:
    potential: str = DEFAULT_POTENTIAL
    device: str = "cpu"
    fmax: float = FMAX
    max_steps: int = MAX_STEPS
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

    @property
    def slug(self) -> str:
        return model_slug(self.potential)

    def protocol(self) -> dict:
        return {"potential": self.potential, "fmax": self.fmax, "max_steps": self.max_steps,
                "optimizer": "FIRE", "cell_filter": "FrechetCellFilter", "shard_size": self.shard_size}


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


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


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
    _write_json_gz(Path(shard_path), {"shard": shard, "potential": potential, "rows": rows})
    return {"shard": shard, "path": shard_path, "n": len(rows),
            "n_missing": sum(r["e_form_per_atom"] is None for r in rows)}


# ----------------------------------------------------------------------------------- driver
def _plan(cfg: BenchmarkConfig, out: Path, summary) -> dict:
    ids = select_ids(summary, cfg.subset, cfg.sample, cfg.seed)
    size = max(1, int(cfg.shard_size))
    shards = [ids[i : i + size] for i in range(0, len(ids), size)]
    plan = {"ids_count": len(ids), "subset": cfg.subset, "sample": cfg.sample, "seed": cfg.seed,
            "protocol": cfg.protocol(), "shards": shards}
    path = out / "plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("shards") != shards or old.get("protocol") != plan["protocol"]:
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

    maker = RelaxMaker(name="mbd relax", potential=cfg.potential, device=cfg.device, fmax=cfg.fmax,
                       max_steps=cfg.max_steps, relax_cell=True, progress=cfg.progress)
    jobs = []
    for i, _ in enumerate(plan["shards"]):
        result = out / "shards" / _shard_name(i)
        if result.exists():
            continue
        load = load_shard_job(str(out / "inputs" / _shard_name(i)))
        load.name = f"mbd load {i}"
        relax = maker.make(load.output["structures"], load.output["ids"])
        relax.name = f"mbd relax {i}"
        relax.metadata = {**(relax.metadata or {}), "category": "gpu", "shard": i}
        post = shard_result_job(relax.output, str(result), cfg.potential, i)
        post.name = f"mbd result {i}"
        jobs += [load, relax, post]
    return Flow(jobs, name=f"matbench-discovery {cfg.potential}") if jobs else None


def collect(plan: dict, out: Path) -> list[dict]:
    rows = []
    for i, _ in enumerate(plan["shards"]):
        path = out / "shards" / _shard_name(i)
        if not path.exists():
            raise RuntimeError(f"shard {i} has no result ({path}); rerun to resume")
        rows += _read_json_gz(path)["rows"]
    return rows


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    """Run (or resume) the IS2RE benchmark; return the metrics document (also written to disk)."""
    from jobflow import run_locally

    from matfunnel.common.store import embedded_store

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
    rows = collect(plan, out)
    from matfunnel.benchmark.score import score_run

    return score_run(rows, cfg, out, summary, wall_time=wall,
                     n_shards_run=0 if flow is None else len(flow.jobs) // 3)


def config_dict(cfg: BenchmarkConfig) -> dict:
    return asdict(cfg)
