"""matfunnel.benchmark: Matbench Discovery metrics (parity with the official code), data download,
the IS2RE run on a synthetic WBM-format data set, scoring CLI, analysis report, gate metrics."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import math
import sys
import threading
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from matfunnel.benchmark import data as mbd
from matfunnel.benchmark.metrics import (
    E_FORM_DFT,
    EACH_TRUE,
    UNIQ_PROTO,
    discovery_metrics,
    score_predictions,
)


# ----------------------------------------------------------------------------------- parity
def _official_stable_metrics():
    """matbench_discovery's own ``stable_metrics`` without importing its (plotting) package root."""
    spec = importlib.util.find_spec("matbench_discovery")
    if spec is None or importlib.util.find_spec("sklearn") is None:
        pytest.skip("matbench-discovery (+ scikit-learn) not installed")
    saved = sys.modules.get("matbench_discovery")
    stub = types.ModuleType("matbench_discovery")
    stub.__path__ = list(spec.submodule_search_locations)
    stub.STABILITY_THRESHOLD = 0
    sys.modules["matbench_discovery"] = stub
    try:
        path = Path(spec.submodule_search_locations[0]) / "metrics.py"
        if not path.exists():
            pytest.skip("this matbench-discovery version keeps stable_metrics elsewhere")
        mspec = importlib.util.spec_from_file_location("matbench_discovery.metrics", path)
        mod = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(mod)
    finally:
        if saved is None:
            sys.modules.pop("matbench_discovery", None)
        else:
            sys.modules["matbench_discovery"] = saved
    return mod.stable_metrics


def _random_hull_distances(rng, n):
    true = rng.normal(0.05, 0.2, n)
    pred = true + rng.normal(0, 0.1, n)
    pred[rng.random(n) < 0.05] = np.nan  # failed predictions
    true[rng.random(n) < 0.02] = np.nan  # missing truth
    out = rng.random(n) < 0.01
    pred[out] += rng.choice([-1, 1], out.sum()) * rng.uniform(5, 50, out.sum())  # wild outliers
    return true, pred


def test_discovery_metrics_parity_with_official(rng):
    stable_metrics = _official_stable_metrics()
    worst = 0.0
    for _ in range(25):
        n = int(rng.integers(20, 4000))
        true, pred = _random_hull_distances(rng, n)
        thr = float(rng.choice([0.0, 0.05, 0.1, -0.02]))
        ref = stable_metrics(pd.Series(true), pd.Series(pred), stability_threshold=thr)
        # matbench-discovery <= 1.3.1 (PyPI) divides Accuracy by the number of finite pairs
        ours = discovery_metrics(true, pred, thr, accuracy_over="finite_pairs")
        assert set(ref) <= set(ours)
        for key, val in ref.items():
            if math.isnan(val):
                assert math.isnan(ours[key]), key
            else:
                worst = max(worst, abs(float(val) - float(ours[key])))
                assert ours[key] == pytest.approx(float(val), abs=1e-12, rel=0), key
    print(f"parity: worst |difference| {worst:.2e}")


def test_metric_semantics():
    true = np.array([-0.1, -0.05, 0.2, 0.3, np.nan, 0.0])
    pred = np.array([-0.2, np.nan, 0.1, -0.1, -0.3, 0.5])
    m = discovery_metrics(true, pred)
    # NaN pred -> predicted unstable (FN); NaN truth -> counted nowhere
    assert (m["TP"], m["FN"], m["FP"], m["TN"]) == (1, 2, 1, 1)
    assert m["Accuracy"] == pytest.approx(2 / 5)  # current official: over classified materials
    assert discovery_metrics(true, pred, accuracy_over="finite_pairs")["Accuracy"] == pytest.approx(2 / 4)
    ok = ~(np.isnan(true) | np.isnan(pred))
    assert m["MAE"] == pytest.approx(np.abs(true[ok] - pred[ok]).mean())
    assert m["DAF"] == pytest.approx(m["Precision"] / (3 / 5))
    assert math.isnan(discovery_metrics([0.1], [0.2])["R2"])
    assert math.isnan(discovery_metrics([0.1, 0.2], [0.3, 0.4])["Precision"])  # nothing predicted stable


def _summary(rng, n):
    ids = [f"wbm-{i // 1000 + 1}-{i}" for i in range(n)]
    e_form = rng.normal(-1, 0.8, n)
    each = rng.normal(0.08, 0.15, n)
    return pd.DataFrame({"material_id": ids, E_FORM_DFT: e_form, EACH_TRUE: each,
                         UNIQ_PROTO: rng.random(n) < 0.8}).set_index("material_id", drop=False)


def test_score_predictions_subsets_outliers_rounding(rng):
    n, k = 400, 50
    summary = _summary(rng, n)
    preds = summary[E_FORM_DFT] + rng.normal(0, 0.08, n)
    preds.iloc[:5] += 6.0  # > 5 eV/atom off: dropped
    preds = preds.drop(summary.index[-3:])  # missing predictions
    res = score_predictions(summary, preds, n_most_stable=k)
    # independent reference computation
    p = preds.reindex(summary.index)
    p = p.mask((p - summary[E_FORM_DFT]).abs() > 5).round(3)
    t = summary[EACH_TRUE].round(3)
    each_pred = t + p - summary[E_FORM_DFT].round(3)
    uniq = summary[UNIQ_PROTO].to_numpy()
    prev_uniq = (summary.loc[uniq, EACH_TRUE] <= 0).mean()
    full = discovery_metrics(t.to_numpy(), each_pred.to_numpy())
    assert res["metrics"]["full_test_set"]["F1"] == pytest.approx(full["F1"], abs=1e-12)
    assert res["metrics"]["full_test_set"]["missing_preds"] == 8
    assert res["info"]["n_outliers"] == 5
    top = each_pred[uniq].dropna().nsmallest(k).index
    m10k = discovery_metrics(t[top].to_numpy(), each_pred[top].to_numpy())
    got = res["metrics"]["most_stable_10k"]
    assert got["TP"] + got["FP"] + got["TN"] + got["FN"] == k
    assert got["Precision"] == pytest.approx(m10k["Precision"], abs=1e-12)
    assert got["DAF"] == pytest.approx(m10k["Precision"] / prev_uniq, abs=1e-12)
    mu = discovery_metrics(t[uniq].to_numpy(), each_pred[uniq].to_numpy())
    assert res["metrics"]["unique_prototypes"]["DAF"] == pytest.approx(mu["Precision"] / prev_uniq, abs=1e-12)
    assert res["published"]["unique_prototypes"]["F1"] == round(mu["F1"], 3)
    with pytest.raises(ValueError, match="not in the WBM summary"):
        score_predictions(summary, pd.Series([0.0], index=["wbm-x-1"]))


# ----------------------------------------------------------------------------------- download
class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    honour_range = True
    seen_ranges: ClassVar[list] = []

    def do_GET(self):
        rng_hdr = self.headers.get("Range")
        type(self).seen_ranges.append(rng_hdr)
        body, status = self.payload, 200
        if rng_hdr and self.honour_range:
            start = int(rng_hdr.split("=")[1].split("-")[0])
            body, status = self.payload[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(rng):
    handler = type("H", (_RangeHandler,), {"payload": rng.bytes(300_000), "seen_ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()
    httpd.server_close()


def test_download_md5_and_resume(server, tmp_path):
    handler, url = server
    md5 = hashlib.md5(handler.payload).hexdigest()
    dest = tmp_path / "a" / "file.bin"
    assert mbd.download(url, dest, md5=md5, progress=False).read_bytes() == handler.payload
    assert handler.seen_ranges == [None]
    # an interrupted download is resumed with a Range request
    dest2 = tmp_path / "b" / "file.bin"
    dest2.parent.mkdir()
    (dest2.parent / "file.bin.part").write_bytes(handler.payload[:123_456])
    mbd.download(url, dest2, md5=md5, progress=True)
    assert handler.seen_ranges[-1] == "bytes=123456-"
    assert dest2.read_bytes() == handler.payload
    assert not (dest2.parent / "file.bin.part").exists()
    # a server ignoring the range: start over, still correct
    handler.honour_range = False
    dest3 = tmp_path / "c" / "file.bin"
    dest3.parent.mkdir()
    (dest3.parent / "file.bin.part").write_bytes(b"garbage")
    assert mbd.download(url, dest3, md5=md5, progress=False).read_bytes() == handler.payload
    # wrong md5: error, nothing left behind
    with pytest.raises(mbd.ChecksumError):
        mbd.download(url, tmp_path / "d" / "file.bin", md5="0" * 32, progress=False)
    assert not list((tmp_path / "d").iterdir())
    # verify() stamps a checked file and catches a changed one
    mbd.verify(dest, md5)
    assert (dest.parent / "file.bin.md5ok").exists()
    dest.write_bytes(b"changed")
    with pytest.raises(mbd.ChecksumError):
        mbd.verify(dest, md5)


def test_fetch_without_network_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(mbd.DATA_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(mbd.OFFLINE_ENV, "1")
    with pytest.raises(mbd.DataUnavailableError) as exc:
        mbd.fetch("wbm_summary", tmp_path / "local")
    msg = str(exc.value)
    assert "2023-12-13-wbm-summary.csv.gz" in msg and "figshare.com" in msg and str(tmp_path / "local") in msg
    # the MP elemental references ship with the package (same md5 as the registry's file)
    assert mbd.fetch("mp_elemental_ref_entries").name == mbd.DATA_FILES["mp_elemental_ref_entries"].name
    # a local copy in --data-dir is used (by bare file name too) and md5-checked
    local = tmp_path / "local"
    local.mkdir()
    (local / "2023-12-13-wbm-summary.csv.gz").write_bytes(b"not the real file")
    with pytest.raises(mbd.ChecksumError):
        mbd.fetch("wbm_summary", local)
    assert mbd.fetch("wbm_summary", local, check=False).parent == local


# ----------------------------------------------------------------------------------- geometry
def test_geometry_metrics():
    from pymatgen.core import Lattice, Structure

    from matfunnel.benchmark.geometry import geo_opt_metrics, structure_rmsd

    ideal = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rattled = ideal.copy()
    rattled.perturb(0.05)
    other = Structure(Lattice.cubic(3.0), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert structure_rmsd(ideal, ideal)[0] == pytest.approx(0, abs=1e-8)
    metrics, frame = geo_opt_metrics({"a": ideal, "b": rattled, "c": other}, {"a": ideal, "b": ideal, "c": ideal})
    assert metrics["n_structures"] == 3 and metrics["n_unmatched"] == 1
    assert metrics["symmetry_match"] == pytest.approx(2 / 3) or metrics["symmetry_match"] == pytest.approx(1 / 3)
    assert frame.loc["a", "spg_num"] == 225 and frame.loc["a", "n_sym_ops_diff"] == 0
    assert metrics["rmsd"] == pytest.approx((0 + frame.loc["b", "rmsd"] + 1.0) / 3)


# ----------------------------------------------------------------------------------- gate
def test_gate_metrics():
    from matfunnel.benchmark import gate_metrics

    rows = [
        {"id": "a", "gate": "to DFT", "e_above_hull": 0.0, "dft_e_above_hull": 0.0, "status": "ok"},
        {"id": "b", "gate": "to DFT", "e_above_hull": 0.02, "dft_e_above_hull": 0.1, "status": "ok"},
        {"id": "c", "gate": "to DFT", "e_above_hull": 0.0, "dft_e_above_hull": None, "status": "ok"},
        {"id": "d", "gate": "above threshold", "e_above_hull": 0.4, "dft_e_above_hull": None, "status": "ok"},
        {"id": "e", "gate": "n/a", "status": "rejected"},
    ]
    g = gate_metrics(rows)
    assert (g["n_candidates"], g["n_to_dft"], g["n_with_dft"], g["n_dft_stable"]) == (4, 3, 2, 1)
    assert g["hit_rate"] == 0.5
    assert (g["metrics"]["TP"], g["metrics"]["TN"]) == (1, 1)
    assert gate_metrics(rows[3:])["metrics"] is None


# ----------------------------------------------------------------------------------- run
@pytest.mark.slow
def test_is2re_run_on_synthetic_wbm(tmp_path, capsys):
    """The whole run path on a tiny WBM-format data set: shards, resume, outputs, score, report."""
    from matfunnel.benchmark.run import BenchmarkConfig, model_slug, run_benchmark
    from matfunnel.benchmark.synthetic import make_synthetic_wbm
    from matfunnel.cli import main
    from matfunnel.potential import DEFAULT_POTENTIAL

    data_dir = tmp_path / "data"
    make_synthetic_wbm(data_dir)
    out = tmp_path / "run"
    cfg = BenchmarkConfig(data_dir=str(data_dir), out_dir=str(out), subset=3, shard_size=2, max_steps=100,
                          check_md5=False, download=False, progress=False, geometry="on")
    res = run_benchmark(cfg)
    assert res["n_relaxed"] == 3 and res["n_shards_run"] == 2 and res["n_failed"] == 0
    assert res["info"]["restricted_to_predictions"] and res["info"]["n_materials"] == 3
    preds = pd.read_csv(res["files"]["predictions"])
    slug = model_slug(DEFAULT_POTENTIAL)
    assert list(preds.columns[:2]) == ["material_id", f"e_form_per_atom_{slug}"]
    assert preds["material_id"].tolist() == ["wbm-1-1", "wbm-1-2", "wbm-2-1"]
    assert preds[f"e_form_per_atom_{slug}"].between(-5, 1).all()
    # NaCl and MgO get MP2020 anion corrections, LiAl none
    assert (preds["correction_per_atom"].to_numpy()[:2] < 0).all() and preds["correction_per_atom"][2] == 0
    summary = mbd.load_wbm_summary(data_dir / mbd.DATA_FILES["wbm_summary"].path)
    row = preds.iloc[0]
    assert row[f"e_above_hull_{slug}"] == pytest.approx(
        summary.at["wbm-1-1", EACH_TRUE] + row[f"e_form_per_atom_{slug}"] - summary.at["wbm-1-1", E_FORM_DFT])
    assert res["geometry"]["n_structures"] == 3 and res["geometry"]["rmsd"] < 0.2
    assert Path(res["files"]["structures"]).exists()

    # resume: finished shards are not recomputed; a different selection is refused
    assert run_benchmark(cfg)["n_shards_run"] == 0
    (out / "shards" / "shard-00001.json.gz").unlink()
    assert run_benchmark(cfg)["n_shards_run"] == 1
    with pytest.raises(ValueError, match="different selection"):
        run_benchmark(BenchmarkConfig(**{**cfg.__dict__, "subset": 4}))

    # the score CLI on the run's predictions file agrees with the run
    js = tmp_path / "score.json"
    assert main(["benchmark", "score", res["files"]["predictions"], "--data-dir", str(data_dir),
                 "--no-md5-check", "--no-download", "--only-predicted", "--json", str(js)]) == 0
    import json

    scored = json.loads(js.read_text())
    assert scored["published"] == res["published"]
    assert "unique_prototypes" in capsys.readouterr().out

    # analysis report: markdown + PNGs
    spec = importlib.util.spec_from_file_location(
        "mbd_report", Path(__file__).resolve().parents[1] / "analysis" / "matbench_discovery_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    paths = report.make_report(out, tmp_path / "report")
    text = paths["markdown"].read_text()
    assert f"{DEFAULT_POTENTIAL} (this run)" in text and "CHGNet 0.3.0 (published)" in text
    assert all(paths[k].stat().st_size > 1000 for k in ("parity", "histogram", "cumulative", "roc"))


def test_published_chgnet_counts_give_published_f1_and_daf():
    """CHGNet 0.3.0 on WBM unique prototypes (Matbench Discovery leaderboard): TP 25,313,
    FP 23,955, TN 158,159, FN 8,061 -> F1 0.6126, DAF 3.361.

    The DAF only comes out right with the official normalisation: the stable fraction of the
    unique prototypes counted on *unrounded* DFT hull distances (32,942 of 215,488), while the
    classification uses hull distances rounded to 3 decimals — so 432 materials 0 < E_hull <
    0.0005 eV/atom count as stable (TP/FN) yet not in the prevalence. The summary below is built
    to have exactly that structure, in a shuffled order, and scored through the whole file path."""
    from matfunnel.benchmark.metrics import (
        E_FORM_DFT,
        EACH_TRUE,
        UNIQ_PROTO,
        score_predictions,
    )

    rng = np.random.default_rng()
    n_raw_stable, n_rounding, n_total = 32_942, 432, 215_488
    tp, fn, fp, tn = 25_313, 8_061, 23_955, 158_159
    assert tp + fn == n_raw_stable + n_rounding and tp + fn + fp + tn == n_total
    each_true = np.concatenate([
        -rng.uniform(0.001, 0.5, n_raw_stable),        # stable
        rng.uniform(1e-5, 4.9e-4, n_rounding),          # rounds to 0.000: stable when classified
        rng.uniform(0.002, 0.8, n_total - n_raw_stable - n_rounding),  # unstable
    ])
    truly_stable = np.arange(n_total) < n_raw_stable + n_rounding
    pred_stable = np.zeros(n_total, bool)
    pred_stable[rng.choice(np.flatnonzero(truly_stable), tp, replace=False)] = True
    pred_stable[rng.choice(np.flatnonzero(~truly_stable), fp, replace=False)] = True
    e_form_dft = rng.uniform(-3, 0.5, n_total)
    each_pred = np.where(pred_stable, -rng.uniform(0.002, 0.3, n_total), rng.uniform(0.002, 0.3, n_total))
    ids = np.array([f"wbm-{i}" for i in range(n_total)])
    order = rng.permutation(n_total)
    summary = pd.DataFrame({E_FORM_DFT: e_form_dft[order], EACH_TRUE: each_true[order],
                            UNIQ_PROTO: True}, index=ids[order])
    # predicted formation energy that yields the wanted predicted hull distance after rounding
    e_form_pred = pd.Series(np.round(e_form_dft, 3) + each_pred - np.round(each_true, 3), index=ids)
    res = score_predictions(summary, e_form_pred)
    m = res["metrics"]["unique_prototypes"]
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (tp, fp, tn, fn)
    assert round(m["F1"], 4) == 0.6126
    assert round(m["DAF"], 3) == 3.361
    assert res["published"]["unique_prototypes"]["F1"] == 0.613


# ----------------------------------------------------------------------------------- protocols
def test_protocol_presets_resolve_and_unsupported_ones_error():
    from matfunnel.benchmark.protocols import (
        DEFAULT_PROTOCOL,
        LEADERBOARD,
        PRESETS,
        UnknownProtocol,
        UnsupportedProtocol,
        get_protocol,
        resolve_protocol,
    )

    p = get_protocol(DEFAULT_PROTOCOL)
    assert (p.optimizer, p.cell_filter, p.fmax, p.max_steps, p.supported) == ("FIRE", "FrechetCellFilter", 0.05,
                                                                              500, True)
    assert {"chgnet-0.3.0", "mace-mp-0", "sevennet-0"} <= set(p.models)
    assert get_protocol("mbd-fire-0.02").fmax == 0.02 and "orb-v3" in get_protocol("mbd-fire-0.02").models
    # a leaderboard model key gives the preset that model was run with
    assert get_protocol("orb-v3").name == "mbd-fire-0.02"
    assert get_protocol("sevennet-mf-ompa").name == "mbd-fire-0.02-800"
    # every leaderboard entry belongs to exactly one preset, and every preset has an entry
    assert sorted(m for q in PRESETS.values() for m in q.models) == sorted(LEADERBOARD)
    assert all(q.models for q in PRESETS.values())
    # settings our relaxer lacks: one clear error naming what is missing and what can run
    with pytest.raises(UnsupportedProtocol, match="cell filter 'ExpCellFilter'.*mbd-fire-0.05") as exc:
        get_protocol("m3gnet")
    assert "m3gnet was run with it" in str(exc.value)
    with pytest.raises(UnsupportedProtocol, match="optimizer 'GOQN'"):
        get_protocol("mbd-goqn-0.05")
    assert not get_protocol("mbd-goqn-0.05", allow_unsupported=True).supported
    with pytest.raises(UnknownProtocol, match="mbd-fire-0.05"):
        get_protocol("lbfgs-please")
    # overrides are applied and recorded; none when the values equal the preset's
    r = resolve_protocol("mbd-fire-0.05", fmax=0.02, max_steps=500)
    assert (r["fmax"], r["max_steps"]) == (0.02, 500)
    assert r["overrides"] == {"fmax": {"preset": 0.05, "used": 0.02}}
    assert resolve_protocol()["overrides"] == {}
    with pytest.raises(ValueError, match="fmax must be positive"):
        resolve_protocol(fmax=0)


def test_protocols_cli_lists_presets_and_rejects_unsupported(tmp_path, capsys):
    from matfunnel.cli import main

    assert main(["benchmark", "protocols"]) == 0
    out = capsys.readouterr().out
    assert "mbd-fire-0.05" in out and "chgnet-0.3.0" in out and "ExpCellFilter" in out
    run = ["benchmark", "matbench-discovery", "--out", str(tmp_path / "run"), "--no-download"]
    assert main([*run, "--protocol", "mattersim-v1-5m"]) == 2
    assert "ExpCellFilter" in capsys.readouterr().err
    assert main([*run, "--potential-kwargs", "{not json"]) == 2
    assert "--potential-kwargs: not JSON" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any work


PUBLISHED_DISCOVERY_CSV = """material_id,e_form_per_atom
wbm-1-1,-2.1034
wbm-1-2,
wbm-2-1,-0.1712
"""


def test_submission_files_and_run_info_with_protocol_and_potential_kwargs(tmp_path, monkeypatch, capsys):
    """A pair potential registered at run time, through the CLI: --protocol, an override and
    --potential-kwargs reach the relaxation and the potential and are recorded; the submission files
    have the published columns and round-trip."""
    import gzip
    import io
    import json

    from pymatgen.core import Structure

    from matfunnel.benchmark.protocols import DISCOVERY_COLUMNS, GEO_OPT_COLUMNS
    from matfunnel.benchmark.run import BenchmarkConfig, run_benchmark
    from matfunnel.benchmark.score import score_file
    from matfunnel.benchmark.synthetic import make_synthetic_wbm
    from matfunnel.cli import main
    from matfunnel.engine.testing import PairPotential
    from matfunnel.potential import registry

    seen = []

    def factory(device, **kw):
        seen.append(kw)
        return PairPotential(device=device, **kw)

    monkeypatch.setattr(registry, "REGISTERED", dict(registry.REGISTERED))
    registry.register("pair-mbd-test", factory, "LJ pair potential (test)")
    data_dir = tmp_path / "data"
    make_synthetic_wbm(data_dir)
    out = tmp_path / "run"
    out.mkdir()
    (out / "2000-01-01-discovery.csv.gz").write_bytes(b"stale")  # an older submission file is replaced
    argv = ["benchmark", "matbench-discovery", "--model", "pair-mbd-test", "--protocol", "mbd-fire-0.02",
            "--max-steps", "25", "--potential-kwargs", '{"sigma": 2.2, "cutoff": 4.5}', "--subset", "4",
            "--shard-size", "2", "--data-dir", str(data_dir), "--no-download", "--no-md5-check",
            "--geometry", "off", "--out", str(out)]
    assert main(argv) == 0
    assert "overridden: max_steps 25 (preset 500)" in capsys.readouterr().err
    assert seen and all(kw == {"sigma": 2.2, "cutoff": 4.5} for kw in seen)

    metrics = json.loads((out / "metrics-pair_mbd_test.json").read_text())
    files = metrics["files"]
    info = json.loads(Path(files["run_info"]).read_text())
    proto = info["protocol"]
    assert (proto["name"], proto["fmax"], proto["max_steps"]) == ("mbd-fire-0.02", 0.02, 25)
    assert proto["overrides"] == {"max_steps": {"preset": 500, "used": 25}}
    assert (proto["optimizer"], proto["cell_filter"], proto["fire"]["dt"]) == ("FIRE", "FrechetCellFilter", 0.1)
    assert info["potential_kwargs"] == proto["potential_kwargs"] == {"sigma": 2.2, "cutoff": 4.5}
    assert info["model"]["name"] == "pair-lj" and info["model"]["package"] == "matfunnel"
    assert {"weights_sha256", "version"} <= set(info["model"]) and info["versions"]["torch"]
    assert info["yaml_evaluation"] == {"ase_optimizer": "FIRE", "cell_filter": "FrechetCellFilter",
                                       "max_force": 0.02, "max_steps": 25}
    assert "orb-v3" in info["preset_leaderboard_models"]
    assert metrics["protocol"] == proto and metrics["model_info"] == info["model"]

    # the energies file: exactly the published columns, lining up with a published file
    disc = Path(files["discovery"])
    assert disc.name.endswith("-discovery.csv.gz") and not (out / "2000-01-01-discovery.csv.gz").exists()
    ours = pd.read_csv(disc)
    published = pd.read_csv(io.StringIO(PUBLISHED_DISCOVERY_CSV))
    assert tuple(ours.columns) == tuple(published.columns) == DISCOVERY_COLUMNS
    assert ours.dtypes.equals(published.dtypes)
    both = pd.concat([published, ours])
    assert list(both.columns) == list(DISCOVERY_COLUMNS) and len(both) == 3 + 4
    assert ours["material_id"].tolist() == ["wbm-1-1", "wbm-1-2", "wbm-2-1", "wbm-2-2"]
    preds = pd.read_csv(files["predictions"]).set_index("material_id")["e_form_per_atom_pair_mbd_test"]
    assert np.allclose(ours.set_index("material_id")["e_form_per_atom"], preds.round(4), equal_nan=True, atol=1e-12)
    scored = score_file(disc, pred_col="e_form_per_atom", data_dir=str(data_dir), restrict=True,
                        download=False, check_md5=False)
    assert scored["info"]["n_materials"] == metrics["info"]["n_materials"] == 4

    # the relaxed structures: JSON lines as the site's geo-opt analysis reads them
    geo = pd.read_json(files["geo_opt"], lines=True)
    assert tuple(geo.columns) == GEO_OPT_COLUMNS
    with gzip.open(files["structures"], "rt") as fh:
        relaxed = {d["material_id"]: d["pair_mbd_test_structure"] for d in map(json.loads, fh)}
    ok = preds.dropna().index.tolist()
    assert geo["material_id"].tolist() == ok
    for row in geo.itertuples():
        got, want = Structure.from_dict(row.structure), Structure.from_dict(relaxed[row.material_id])
        assert np.allclose(got.lattice.matrix, want.lattice.matrix, atol=1e-8)
        assert np.allclose(got.frac_coords, want.frac_coords, atol=1e-8)
        assert 0 < row.n_steps <= 25 and isinstance(row.converged, (bool, np.bool_))
    assert geo["energy"].notna().all()

    # resume: same protocol reuses the shards and rewrites the files; another protocol is refused
    cfg = BenchmarkConfig(potential="pair-mbd-test", preset="mbd-fire-0.02", max_steps=25, subset=4, shard_size=2,
                          data_dir=str(data_dir), out_dir=str(out), geometry="off", download=False,
                          check_md5=False, progress=False, potential_kwargs={"sigma": 2.2, "cutoff": 4.5})
    n_calls = len(seen)
    res = run_benchmark(cfg)
    assert res["n_shards_run"] == 0 and res["model_info"]["name"] == "pair-lj" and len(seen) == n_calls
    assert len(list(out.glob("*-discovery.csv.gz"))) == 1
    for change in ({"max_steps": 26}, {"preset": "mbd-fire-0.05"}, {"potential_kwargs": {}}):
        with pytest.raises(ValueError, match="different selection or protocol"):
            run_benchmark(BenchmarkConfig(**{**cfg.__dict__, **change}))
    # the same settings reached from another preset are the same run (recorded as overrides of that preset)
    again = run_benchmark(BenchmarkConfig(**{**cfg.__dict__, "preset": "mbd-fire-0.05", "fmax": 0.02}))
    assert again["n_shards_run"] == 0 and again["protocol"]["overrides"]["fmax"] == {"preset": 0.05, "used": 0.02}
