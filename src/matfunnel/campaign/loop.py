"""The closed loop: DFT results fine-tune the potential, which re-screens the candidates DFT has not seen.

After the funnel's first pass (round 0), each round ``r = 1 .. rounds``:

1. fine-tunes the campaign's potential on every DFT calculation so far (the gated candidates and the
   competing phases of their DFT hulls: forces and stresses of GPAW's static runs at the MLIP-relaxed
   structures), starting from the base weights each round (:class:`~matfunnel.train.maker.FineTuneMaker`,
   content-addressed under ``<run folder>/fine-tune/``, so a rerun never trains again);
2. relaxes all candidates and the hull's competing phases with the fine-tuned potential and builds the hull;
3. runs the DFT gate on the candidates DFT has not checked, with what is left of the DFT budget (the competing
   phases of their DFT hulls keep the structures of the first pass, so each one's DFT runs once per campaign);
4. records the round (:func:`round_summary`): the checkpoint, the MLIP-vs-DFT errors on the DFT-checked
   structures before and after fine-tuning, the gate's decisions and its self-scored precision.

The loop stops early when the budget is spent or no DFT result exists to train on. The final report is
the funnel's table with the last round's hull and every round's DFT results, plus ``report["loop"]`` (and
``loop.csv``).

Energies: GPAW's PAW energies are not on the Materials Project's scale the hull's references use, so the loop
trains on forces and stresses only (``energy: forces_only``, the default; the spec refuses other energy modes).
The loop runs with GPAW; a VASP campaign's task documents are read from its store by ``matfunnel train``.

Everything a round computes is identified by its inputs (relaxations and GPAW runs in the run's result cache,
fine-tuning runs by their content address): a campaign killed in any round resumes where it was.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from jobflow import Flow, Maker, Response, job

from matfunnel.benchmark.gate_metrics import gate_metrics
from matfunnel.campaign.report import build_report, write_report
from matfunnel.common.cache import structure_fingerprint
from matfunnel.common.documents import CandidatesDoc, DftDoc, FineTuneDoc, HullDoc, PhononGateDoc, as_doc
from matfunnel.dft.gate import DONE, TO_DFT
from matfunnel.train.data import frame_from_gpaw, frame_to_doc
from matfunnel.train.maker import FineTuneMaker

#: fine-tuning settings of a loop round unless the spec says otherwise
LOOP_TRAIN_DEFAULTS: dict[str, Any] = {"energy": "forces_only", "epochs": 5, "batch_size": 4, "lr": 1e-4}

LOOP_COLUMNS = ("round", "checkpoint", "n_frames", "n_to_dft", "budget_left", "forces_mae_before",
                "forces_mae_after", "stress_mae_before", "stress_mae_after", "e_hull_mae_before",
                "e_hull_mae_after", "hit_rate", "precision")


@dataclass
class LoopMaker(Maker):
    """The loop's settings (the spec's ``loop:`` section).

    Parameters
    ----------
    name
        The loop's name.
    rounds
        Fine-tune / re-screen rounds after the first pass (0: no loop).
    budget
        DFT candidates over the whole campaign, the first pass included (None: ``dft.max_candidates`` per
        round, without a total).
    fine_tune
        How each round fine-tunes (its ``root`` is set to the run folder's ``fine-tune/``).
    """

    name: str = "loop"
    rounds: int = 0
    budget: int | None = None
    fine_tune: FineTuneMaker = field(default_factory=lambda: FineTuneMaker(
        settings=dict(LOOP_TRAIN_DEFAULTS), val_fraction=0.0, require=["forces"]))


def dft_frames(dft_docs: list) -> tuple[list, list[str]]:
    """Each distinct structure's frame among the DFT runs of ``dft_docs`` (GPAW records), and the runs skipped.

    A structure computed again in a later round (a result cache hit: a competing phase of several rounds' DFT
    hulls) is one frame, from the first round that computed it, so that neither training nor the round's errors
    count it twice.
    """
    frames, skipped = [], []
    seen: set[str] = set()
    for k, d in enumerate(as_doc(DftDoc, x) for x in dft_docs):
        for i, rec in enumerate(d.runs):
            source = f"round {k} run {rec.get('label', i)}"
            try:
                frame = frame_from_gpaw(rec, source)
            except ValueError as exc:
                skipped.append(f"{source}: {exc}")
                continue
            key = json.dumps(structure_fingerprint(rec["structure"]))
            if key in seen:
                continue
            seen.add(key)
            frames.append(frame)
    return frames, skipped


def training_docs(dft_docs: list) -> tuple[list[dict], list[str]]:
    """Frame documents of the distinct finished DFT runs of ``dft_docs`` (GPAW, with forces), and the skipped."""
    frames, skipped = dft_frames(dft_docs)
    docs = []
    for frame in frames:
        if frame.forces is None:
            skipped.append(f"{frame.source}: no forces")
            continue
        docs.append(frame_to_doc(frame))
    return docs, skipped


def _checked(dft_docs: list) -> list[str]:
    return [cid for d in dft_docs for cid, dec in as_doc(DftDoc, d).decisions.items() if dec == TO_DFT]


def _budget_left(loop: LoopMaker, dft_docs: list) -> int | None:
    return None if loop.budget is None else max(loop.budget - len(_checked(dft_docs)), 0)


@job(name="loop round")
def loop_round(funnel: Any, loop: LoopMaker, r: int, candidates: CandidatesDoc, dft_docs: list, hulls: list,
               relaxed: list, phonons: PhononGateDoc | None, rounds: list, chemsys: str, after: Any = None):
    """Round ``r``: fine-tune on the DFT results so far, then re-screen (or write the final report).

    ``after``: an output this round waits for (the first pass's report).
    """
    budget = _budget_left(loop, dft_docs)
    docs, _ = training_docs(dft_docs)
    if r > loop.rounds or budget == 0 or not docs:
        why = ("all rounds done" if r > loop.rounds else "DFT budget spent" if budget == 0
               else "no DFT result to train on")
        final = loop_report(funnel.report, candidates, dft_docs, hulls, relaxed, phonons, rounds, why)
        final.name = "report"
        return Response(replace=Flow([final], output=final.output, name="loop report"))
    ft = loop.fine_tune.make(docs)
    ft.name = f"fine-tune round {r}"
    nxt = loop_rescreen(funnel, loop, r, ft.output, candidates, dft_docs, hulls, relaxed, phonons, rounds, chemsys)
    return Response(replace=Flow([ft, nxt], output=nxt.output, name=f"loop round {r}"))


@job(name="loop rescreen")
def loop_rescreen(funnel: Any, loop: LoopMaker, r: int, fine_tuned: FineTuneDoc, candidates: CandidatesDoc,
                  dft_docs: list, hulls: list, relaxed: list, phonons: PhononGateDoc | None, rounds: list,
                  chemsys: str):
    """Relax, hull and gate again with the fine-tuned potential; then the next round."""
    ft = as_doc(FineTuneDoc, fine_tuned)
    cands = as_doc(CandidatesDoc, candidates)
    relax = funnel.relax
    kwargs = {**relax.relax.potential_kwargs, "checkpoint": ft.checkpoint}
    relax = replace(relax, name=f"relax candidates round {r}", relax=replace(relax.relax, potential_kwargs=kwargs))
    rel = relax.make(cands.structures, cands.ids, f"round {r} candidates")
    refs = replace(funnel.references, relax=relax).make(chemsys)
    hull = funnel.hull.make(rel.output, refs.output, chemsys)
    budget = _budget_left(loop, dft_docs)
    per_round = funnel.dft_gate.max_candidates if budget is None else min(funnel.dft_gate.max_candidates, budget)
    first = as_doc(HullDoc, hulls[0]).phases  # competing phases keep their first DFT structures (cache hits)
    gate = replace(funnel.dft_gate, max_candidates=per_round, exclude=_checked(dft_docs),
                   phase_structures={k: v for k, v in first.items() if k not in cands.ids}).make(
        rel.output, hull.output, phonons, chemsys)
    base = funnel.relax.relax
    summary = round_summary(r, ft, dft_docs, hulls[-1], hull.output, gate.output, base.potential, base.device,
                            base.potential_kwargs if r == 1 else {**base.potential_kwargs, **_previous(rounds)},
                            kwargs, budget)
    nxt = loop_round(funnel, loop, r + 1, cands, [*dft_docs, gate.output], [*hulls, hull.output],
                     [*relaxed, rel.output], phonons, [*rounds, summary.output], chemsys)
    for j in (rel, refs):
        j.update_metadata({"category": "gpu"}, dynamic=False)
    return Response(replace=Flow([rel, refs, hull, gate, summary, nxt], output=nxt.output, name=f"rescreen {r}"))


def _previous(rounds: list) -> dict:
    """The potential keyword arguments of the previous round's fine-tuned checkpoint."""
    return {"checkpoint": rounds[-1]["checkpoint"]} if rounds else {}


def _mae(pairs: list[tuple[Any, Any]]) -> float | None:
    vals = [abs(a - b) for a, b in pairs if a is not None and b is not None and not math.isnan(a - b)]
    return round(float(np.mean(vals)), 4) if vals else None


def _static_errors(potential: str, device: str, kwargs: dict, frames: list) -> dict[str, float | None]:
    """Force (meV/Å) and stress (GPa) MAE of ``potential`` on the DFT frames (failed structures left out)."""
    from matfunnel.potential import load_potential

    if not frames:
        return {"forces": None, "stress": None}
    pot = load_potential(potential, device, **kwargs)
    preds = pot.predict([f.structure for f in frames], errors="record")
    f_err, s_err = [], []
    for f, p in zip(frames, preds, strict=True):
        if "error" in p:
            continue
        if f.forces is not None:
            f_err.append(np.abs(np.asarray(p["forces"]) - f.forces).mean() * 1000)
        if f.stress is not None:
            s_err.append(np.abs(np.asarray(p["stress"]) - f.stress).mean())
    return {"forces": round(float(np.mean(f_err)), 3) if f_err else None,
            "stress": round(float(np.mean(s_err)), 4) if s_err else None}


@job(name="loop round summary")
def round_summary(r: int, fine_tuned: FineTuneDoc, dft_docs: list, hull_before: HullDoc, hull_after: HullDoc,
                  gate: DftDoc, potential: str, device: str, kwargs_before: dict, kwargs_after: dict,
                  budget: int | None) -> dict:
    """What round ``r`` changed: errors against DFT before and after fine-tuning, and the gate's choices."""
    ft = as_doc(FineTuneDoc, fine_tuned)
    gate_doc = as_doc(DftDoc, gate)
    frames, _ = dft_frames(dft_docs)
    before = _static_errors(potential, device, kwargs_before, frames)
    after = _static_errors(potential, device, kwargs_after, frames)
    dft_rows = {row.get("id"): row for d in dft_docs for row in as_doc(DftDoc, d).results}
    hb, ha = as_doc(HullDoc, hull_before).row_by_id(), as_doc(HullDoc, hull_after).row_by_id()
    checked = [str(cid) for cid, row in dft_rows.items() if row.get("dft_e_above_hull") is not None]
    e_before = [(hb.get(c, {}).get("e_above_hull"), dft_rows[c]["dft_e_above_hull"]) for c in checked]
    e_after = [(ha.get(c, {}).get("e_above_hull"), dft_rows[c]["dft_e_above_hull"]) for c in checked]
    rows = [{"id": cid, "status": "ok", "gate": dec, "e_above_hull": ha.get(cid, {}).get("e_above_hull"),
             "dft_e_above_hull": next((x.get("dft_e_above_hull") for x in gate_doc.results if x.get("id") == cid),
                                      None)}
            for cid, dec in gate_doc.decisions.items() if dec != DONE]
    scored = gate_metrics(rows, stability_threshold=gate_doc.threshold or 0.0)
    return {"round": r, "checkpoint": ft.checkpoint, "fine_tune_key": ft.key, "n_frames": ft.n_train + ft.n_val,
            "training_set": ft.dataset_hash, "fine_tune_metrics": ft.metrics,
            "budget_left": budget, "n_to_dft": sum(d == TO_DFT for d in gate_doc.decisions.values()),
            "forces_mae_before": before["forces"], "forces_mae_after": after["forces"],
            "stress_mae_before": before["stress"], "stress_mae_after": after["stress"],
            "e_hull_mae_before": _mae(e_before), "e_hull_mae_after": _mae(e_after), "n_dft_checked": len(checked),
            "decisions": gate_doc.decisions, "hit_rate": scored["hit_rate"],
            "precision": (scored["metrics"] or {}).get("precision"), "dft_results": gate_doc.results}


def merged_dft(dft_docs: list) -> DftDoc:
    """One DftDoc of all rounds: each candidate's decision from the round DFT checked it (else the last)."""
    docs = [as_doc(DftDoc, d) for d in dft_docs]
    decisions: dict[str, str] = {}
    for k, d in enumerate(docs):
        for cid, dec in d.decisions.items():
            if dec == TO_DFT:
                decisions[cid] = TO_DFT if k == 0 else f"{TO_DFT} (round {k})"
            elif dec != DONE:
                decisions[cid] = dec
    # report rows count a "to DFT" gate exactly: keep the plain label for gate_metrics, the round goes in the note
    plain = {cid: (TO_DFT if dec.startswith(TO_DFT) else dec) for cid, dec in decisions.items()}
    return DftDoc(engine=docs[0].engine, threshold=docs[0].threshold, decisions=plain,
                  results=[r for d in docs for r in d.results],
                  runs=[{k: v for k, v in r.items() if k not in ("forces", "stress")} for d in docs for r in d.runs])


@job(name="report")
def loop_report(report_maker: Any, candidates: CandidatesDoc, dft_docs: list, hulls: list, relaxed: list,
                phonons: PhononGateDoc | None, rounds: list, stopped: str) -> dict:
    """The campaign's report after the loop: the last hull, every round's DFT results, and ``report["loop"]``."""
    hull = as_doc(HullDoc, hulls[-1])
    dft = merged_dft(dft_docs)
    report = build_report(as_doc(CandidatesDoc, candidates), relaxed[-1], hull, dft, report_maker.campaign,
                          report_maker.potential, as_doc(PhononGateDoc, phonons) if phonons else None,
                          run_id=report_maker.run_id, reference_note=report_maker.reference_note)
    round_of = {cid: k for k, d in enumerate(dft_docs) for cid, dec in as_doc(DftDoc, d).decisions.items()
                if dec == TO_DFT}
    for row in report["rows"]:
        if row["id"] in round_of:
            row["dft_round"] = round_of[row["id"]]
    report["loop"] = {"rounds": rounds, "stopped": stopped}
    out = Path(report_maker.out_dir or ".")
    write_report(report, hull, out)
    with open(out / "loop.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOOP_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rounds)
    return report
