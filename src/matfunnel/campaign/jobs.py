"""The jobs of a campaign: candidates -> MLIP relaxation -> hull -> gated DFT -> report.

Every job takes and returns plain JSON-able data (structures as dicts), so a campaign runs the
same way with ``run_locally`` on the embedded store and on FireWorks workers. Jobs that need a
GPU or DFT carry ``metadata["category"]`` ("gpu" / "dft") for FireWorks routing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from jobflow import Flow, Response, job
from pymatgen.core import Structure

from matfunnel.campaign.spec import CampaignSpec
from matfunnel.makers import RelaxMaker

log = logging.getLogger(__name__)

MP_API_KEY_ENV = "MP_API_KEY"


def _structure(d) -> Structure:
    return d if isinstance(d, Structure) else Structure.from_dict(d)


def _as_dict(obj) -> dict:
    """jobflow hands MSONable outputs back as objects; accept both."""
    return obj if isinstance(obj, dict) else obj.as_dict()


# --------------------------------------------------------------------------------- candidates
@job(name="candidates")
def candidates_job(spec: dict) -> dict:
    """Generate, filter, deduplicate and cap the candidates of the campaign's chemical system."""
    from matfunnel.candidates import generate_candidates

    sp = CampaignSpec.from_dict(spec)
    opts = sp.candidates
    cset = generate_candidates(
        sp.chemsys,
        user_structures=sp.structure_paths(),
        max_candidates=opts.max_candidates,
        sources=opts.sources,
        max_sites=opts.max_sites,
        charge_neutral=opts.charge_neutral,
    )
    structures = [s.as_dict() for s in cset.candidates]
    return {
        "chemsys": sp.chemsys,
        "ids": cset.ids,
        "structures": structures,
        "provenance": [dict(s.properties) for s in cset.candidates],
        "errors": cset.errors,
        "rejected": cset.rejected,
        "stats": cset.stats,
    }


# --------------------------------------------------------------------------------- relaxation
def relax_flow(structures: list, ids: list[str], spec: CampaignSpec, name: str) -> Flow:
    """One RelaxMaker job per batch of ``relax.batch_size`` structures, then a gather job."""
    maker = RelaxMaker(
        name=f"{name} relax",
        potential=spec.potential.name,
        potential_kwargs=dict(spec.potential.kwargs),
        device=spec.potential.device,
        fmax=spec.relax.fmax,
        max_steps=spec.relax.max_steps,
        relax_cell=spec.relax.relax_cell,
    )
    size = max(1, int(spec.relax.batch_size))
    jobs = []
    for start in range(0, len(structures), size):
        j = maker.make(structures[start : start + size], ids[start : start + size])
        j.name = f"{name} relax {start // size + 1}"
        j.metadata = {**(j.metadata or {}), "category": "gpu"}
        jobs.append(j)
    gather = gather_job([j.output for j in jobs])
    return Flow([*jobs, gather], output=gather.output, name=f"{name} relaxation")


@job(name="gather", data=True)
def gather_job(parts: list[list]) -> list:
    """Concatenate the outputs of the batch jobs, in order (to the ``data`` store: a large campaign's documents
    together pass MongoDB's 16 MB document limit)."""
    return [doc for part in parts for doc in part]


@job(name="relax candidates")
def relax_candidates_job(candidates: dict, spec: dict):
    """Relax all candidates in batches (one job per batch)."""
    sp = CampaignSpec.from_dict(spec)
    if not candidates["structures"]:
        return []
    return Response(replace=relax_flow(candidates["structures"], candidates["ids"], sp, "candidates"))


# --------------------------------------------------------------------------------- references
def use_materials_project(spec: CampaignSpec) -> bool:
    mode = spec.hull.references
    return mode == "mp" or (mode == "auto" and bool(os.environ.get(MP_API_KEY_ENV)))


@job(name="reference phases")
def references_job(spec: dict):
    """Offline: relax the competing phases with the candidates' potential; MP: nothing to relax."""
    from matfunnel.candidates import competing_phase_structures

    sp = CampaignSpec.from_dict(spec)
    if use_materials_project(sp):
        return {"mode": "mp", "competing": []}
    structs = competing_phase_structures(sp.chemsys, max_sites=sp.hull.competing_max_sites)
    ids = [s.properties.get("label") or f"ref-{i}" for i, s in enumerate(structs)]
    flow = relax_flow([s.as_dict() for s in structs], ids, sp, "reference")
    pack = pack_references_job(flow.output)
    return Response(replace=Flow([flow, pack], output=pack.output, name="reference phases"))


@job(name="pack references")
def pack_references_job(docs: list) -> dict:
    return {"mode": "offline", "competing": docs}


# --------------------------------------------------------------------------------- hull
def _relaxed_entries(docs: list[dict], model: str, role: str):
    """MLIP entries for the relaxations that produced an energy, and the skipped ones."""
    from matfunnel.hull import mlip_entry

    entries, skipped = [], {}
    for d in docs:
        if d.get("energy") is None or d.get("final_structure") is None:
            skipped[d["label"]] = d.get("error") or "no energy"
            continue
        s = _structure(d["final_structure"])
        entries.append(mlip_entry(s, d["energy"], d["label"], data={"role": role}, model=model))
    return entries, skipped


@job(name="hull")
def hull_job(candidate_docs: list, references: dict, spec: dict) -> dict:
    """Formation energy and energy above hull of every relaxed candidate."""
    from matfunnel.hull import compute_hull, reference_entries

    sp = CampaignSpec.from_dict(spec)
    model = sp.potential.name
    competing, comp_skipped = _relaxed_entries(references.get("competing", []), model, "competing")
    refs = reference_entries(
        sp.chemsys,
        mlip_competing=competing,
        cache_dir=sp.hull.cache_dir,
        offline=references["mode"] == "offline",
    )
    cand_entries, cand_skipped = _relaxed_entries(candidate_docs, model, "candidate")
    rows = compute_hull(cand_entries, refs) if cand_entries else []
    # structures of every phase the DFT stage may need (references and candidates)
    phases = {}
    for e in list(refs.entries) + cand_entries:
        if getattr(e, "structure", None) is not None:
            phases[str(e.entry_id)] = e.structure.as_dict()
    return {
        "rows": rows,
        "reference_label": refs.label,
        "reference_details": {k: v for k, v in refs.details.items() if k != "rejected"},
        "reference_entries": [e.as_dict() for e in refs.entries],
        "candidate_entries": [e.as_dict() for e in cand_entries],
        "phases": phases,
        "skipped": {"candidates": cand_skipped, "competing": comp_skipped},
    }


# --------------------------------------------------------------------------------- DFT gate
def gate_decisions(candidate_docs: list, hull: dict, spec: CampaignSpec, phonons: dict | None = None) -> dict[str, str]:
    """Why each candidate does or does not go to DFT."""
    from matfunnel.phonons.gate import unstable_ids

    opts = spec.dft
    unstable = unstable_ids(phonons)
    decisions: dict[str, str] = {}
    rows = {r["entry_id"]: r for r in hull["rows"]}
    eligible = []
    for d in candidate_docs:
        cid = d["label"]
        row = rows.get(cid)
        if row is None or row.get("e_above_hull") is None:
            decisions[cid] = "skipped: " + (
                (row or {}).get("error") or d.get("error") or "no hull energy"
            )
        elif not d.get("converged"):
            decisions[cid] = "skipped: MLIP relaxation not converged"
        elif row["e_above_hull"] > opts.threshold:
            decisions[cid] = f"above threshold ({row['e_above_hull']:.3f} > {opts.threshold} eV/atom)"
        elif cid in unstable:
            decisions[cid] = f"skipped: dynamically unstable ({unstable[cid]})"
        elif opts.engine == "none":
            decisions[cid] = "near hull; DFT disabled"
        elif opts.max_sites is not None and len(_structure(d["final_structure"])) > opts.max_sites:
            decisions[cid] = f"near hull; too large for DFT (> {opts.max_sites} sites)"
        else:
            eligible.append((row["e_above_hull"], len(_structure(d["final_structure"])), cid))
    eligible.sort()
    for rank, (_, _, cid) in enumerate(eligible):
        if rank < opts.max_candidates:
            decisions[cid] = "to DFT"
        else:
            decisions[cid] = f"near hull; beyond dft.max_candidates={opts.max_candidates}"
    return decisions


def _competing_for(row: dict, hull: dict, elements: list[str]) -> list[str]:
    """Ids of the phases a candidate's DFT hull needs: its decomposition products and elements."""
    ids = [p["entry_id"] for p in row.get("decomposition_vs_references") or [] if p["entry_id"] != row["entry_id"]]
    # the lowest-energy reference of each element that has a structure
    best: dict[str, tuple[float, str]] = {}
    for d in map(_as_dict, hull["reference_entries"]):
        comp = d.get("composition", {})
        if len(comp) != 1 or str(d.get("entry_id")) not in hull["phases"]:
            continue
        (el,) = comp
        n = sum(comp.values())
        e = (d["energy"] + d.get("correction", 0.0)) / n
        if el in elements and (el not in best or e < best[el][0]):
            best[el] = (e, str(d["entry_id"]))
    ids += [best[el][1] for el in sorted(best)]
    return [i for i in dict.fromkeys(ids) if i in hull["phases"]]


@job(name="dft gate")
def dft_gate_job(candidate_docs: list, hull: dict, spec: dict, phonons: dict | None = None):
    """Send only the candidates near the hull (and dynamically stable, when the phonon gate is
    on) to DFT: a dynamic jobflow Response."""
    sp = CampaignSpec.from_dict(spec)
    decisions = gate_decisions(candidate_docs, hull, sp, phonons)
    chosen = [cid for cid, dec in decisions.items() if dec == "to DFT"]
    if not chosen:
        return {"engine": sp.dft.engine, "decisions": decisions, "results": []}
    rows = {r["entry_id"]: r for r in hull["rows"]}
    structures = {d["label"]: d["final_structure"] for d in candidate_docs}
    if sp.dft.engine == "vasp":
        return Response(replace=_vasp_flow(chosen, structures, hull, decisions))
    return Response(replace=_gpaw_flow(chosen, structures, rows, hull, decisions, sp))


def _gpaw_flow(chosen, structures, rows, hull, decisions, sp: CampaignSpec) -> Flow:
    from matfunnel.dft import plan_dft_runs
    from matfunnel.dft.settings import GpawSettings

    elements = sp.chemsys.split("-")
    settings = GpawSettings.preset(sp.dft.preset, **sp.dft.settings).as_dict()
    cand_items = [(cid, _structure(structures[cid])) for cid in chosen]
    comp_ids = []
    for cid in chosen:
        comp_ids += _competing_for(rows[cid], hull, elements)
    comp_items = [(pid, _structure(hull["phases"][pid])) for pid in dict.fromkeys(comp_ids)]
    plan = plan_dft_runs(cand_items, comp_items)
    jobs = []
    for sid, s in plan["runs"]:
        j = gpaw_job(s.as_dict(), settings, sid)
        j.name = f"gpaw {sid}"
        j.metadata = {**(j.metadata or {}), "category": "dft"}
        jobs.append(j)
    plan_small = {k: plan[k] for k in ("alias", "candidate_ids", "competing_ids")}
    collect = gpaw_hull_job([j.output for j in jobs], plan_small, decisions)
    return Flow([*jobs, collect], output=collect.output, name="gpaw DFT")


@job(name="gpaw")
def gpaw_job(structure: dict, settings: dict, label: str) -> dict:
    """One GPAW PAW-PBE plane-wave calculation (in the job's own folder)."""
    from matfunnel.cache import active_cache, content_key, structure_fingerprint
    from matfunnel.dft import run_gpaw

    cache = active_cache()
    key = content_key("gpaw", structure_fingerprint(structure), settings)
    if cache is not None and (hit := cache.get(key)) is not None:
        return {**hit, "label": label, "cached": True}
    result = run_gpaw(_structure(structure), settings, label=label, workdir=os.getcwd())
    if cache is not None and not result.get("error"):
        cache.put(key, "gpaw", result)
    return {**result, "cached": False}


@job(name="dft hull")
def gpaw_hull_job(results: list, plan: dict, decisions: dict) -> dict:
    """Self-consistent GPAW hull of the gated candidates and their competing phases."""
    from matfunnel.dft import dft_hull_from_results, expand_results

    cand, comp = expand_results(results, plan)
    hull_rows = dft_hull_from_results(cand, comp)
    compact = [{k: v for k, v in r.items() if k not in ("forces",)} for r in results]
    return {"engine": "gpaw", "decisions": decisions, "results": hull_rows, "runs": compact}


def _vasp_flow(chosen, structures, hull, decisions) -> Flow:
    from matfunnel.dft import vasp_flow

    flows = []
    for cid in chosen:
        f = vasp_flow(_structure(structures[cid]), metadata={"candidate_id": cid})
        f.update_metadata({"category": "dft"})  # every nested job, and jobs they create
        flows.append(f)
    collect = vasp_hull_job([f.output for f in flows], chosen, hull, decisions)
    return Flow([*flows, collect], output=collect.output, name="VASP DFT")


@job(name="dft hull")
def vasp_hull_job(taskdocs: list, ids: list[str], hull: dict, decisions: dict) -> dict:
    """MP-compatible VASP energies go on the same MP2020 hull as the references."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    from matfunnel.dft import vasp_entry

    refs = [ComputedStructureEntry.from_dict(d) if "structure" in d else _computed_entry(d)
            for d in map(_as_dict, hull["reference_entries"])]
    pd = PhaseDiagram(refs)
    out = []
    for cid, doc in zip(ids, taskdocs):
        try:
            entry = vasp_entry(doc, entry_id=cid)
            e_hull = pd.get_e_above_hull(entry, allow_negative=True)
            out.append({"id": cid, "formula": entry.composition.reduced_formula,
                        "dft_energy_per_atom": entry.energy_per_atom,
                        "dft_e_form_per_atom": pd.get_form_energy_per_atom(entry),
                        "dft_e_above_hull": max(e_hull, 0.0), "dft_decomposition_energy": e_hull,
                        "error": None})
        except Exception as exc:  # noqa: BLE001 - one failed calculation must not lose the others
            out.append({"id": cid, "error": f"structure {cid!r}: {type(exc).__name__}: {exc}"})
    return {"engine": "vasp", "decisions": decisions, "results": out}


def _computed_entry(d: dict):
    from pymatgen.entries.computed_entries import ComputedEntry

    return ComputedEntry.from_dict(d)


# --------------------------------------------------------------------------------- report
@job(name="report")
def report_job(candidates: dict, candidate_docs: list, hull: dict, dft: dict, spec: dict,
               out_dir: str | None = None, phonons: dict | None = None) -> dict:
    """The campaign table (CSV + JSON) and a hull plot, written into ``out_dir``."""
    from matfunnel.campaign.report import build_report, write_report

    report = build_report(candidates, candidate_docs, hull, dft, CampaignSpec.from_dict(spec), phonons)
    write_report(report, hull, Path(out_dir or os.getcwd()))
    return report
