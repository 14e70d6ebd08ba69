"""Self-consistent GPAW convex hull for DFT-checked candidates.

GPAW energies are not on the MP2020 (VASP + corrections) scale, so a candidate's hull is
rebuilt from GPAW energies only: the candidate and its competing phases (the elements of
its chemical system and its MLIP/MP decomposition products) are all computed with the
same `GpawSettings`, and a pymatgen `PhaseDiagram` is built from those energies.

The work splits into independent pieces so that a workflow manager (jobflow) can run
them as separate jobs:

1. ``plan = plan_dft_runs(candidates, competing)`` - deduplicate; ``plan["runs"]`` are
   the unique ``(id, structure)`` to compute, ``plan["alias"]`` maps every id to the
   id that is actually computed.
2. ``run_gpaw(structure, settings, label=id, workdir)`` - one job per unique structure.
3. ``expand_results(results, plan)`` - give every requested id its record (duplicates
   reuse the representative's energy per atom).
4. ``dft_hull_from_results(candidate_results, competing_results)`` - pure, fast.

`dft_hull` does all four in-process.  Candidates are judged independently: each
candidate's hull contains the competing phases and that candidate only, never other
candidates.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from matfunnel.common.errors import StructureError
from matfunnel.common.structures import as_structure
from matfunnel.dft.gpaw import run_gpaw
from matfunnel.dft.settings import GpawSettings, as_settings

if TYPE_CHECKING:
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

Item = tuple[str, Any]  # (id, pymatgen Structure)


# ----------------------------------------------------------------- deduplication
def _matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    # tight tolerances, no volume scaling: only genuinely identical structures match
    # (primitive vs conventional cells of one crystal do match).
    return StructureMatcher(ltol=0.01, stol=0.05, angle_tol=0.5, primitive_cell=True,
                            scale=False, attempt_supercell=True)


def plan_dft_runs(candidates: Sequence[Item], competing: Sequence[Item]) -> dict[str, Any]:
    """Deduplicate candidates + competing phases.

    Returns a dict with
    ``runs``: list of unique (id, structure) to compute (first occurrence wins),
    ``alias``: {id: representative id} for every id in either list,
    ``structures``: {id: structure} for every id,
    ``candidate_ids`` and ``competing_ids``: the requested ids in order (unique).

    The same id given twice must be the same structure (ValueError otherwise).
    Identical structures under different ids are computed once.
    """
    structures: dict[str, Any] = {}
    order: list[str] = []
    cand_ids: list[str] = []
    comp_ids: list[str] = []
    for target, items in ((cand_ids, candidates), (comp_ids, competing)):
        for sid, s in items:
            sid = str(sid)
            with contextlib.suppress(StructureError):  # not a structure: run_gpaw records its error
                s = as_structure(s, sid)
            if sid in structures:
                if structures[sid] is not s and not _same(structures[sid], s):
                    raise ValueError(f"id {sid!r} is given twice with different structures")
            else:
                structures[sid] = s
                order.append(sid)
            if sid not in target:
                target.append(sid)

    alias: dict[str, str] = {}
    reps_by_formula: dict[str, list[str]] = {}
    runs: list[Item] = []
    for sid in order:
        s = structures[sid]
        key = _formula_key(s)
        rep = None
        for other in reps_by_formula.get(key, []) if key is not None else []:
            if _same(structures[other], s):
                rep = other
                break
        if rep is None:
            alias[sid] = sid
            runs.append((sid, s))
            if key is not None:
                reps_by_formula.setdefault(key, []).append(sid)
        else:
            alias[sid] = rep
    return {"runs": runs, "alias": alias, "structures": structures,
            "candidate_ids": cand_ids, "competing_ids": comp_ids}


def _formula_key(s: Any) -> str | None:
    try:
        return s.composition.reduced_formula
    except Exception:
        return None


def _same(a: Any, b: Any) -> bool:
    try:
        if len(a) == len(b) and a == b:
            return True
        va, vb = a.volume / len(a), b.volume / len(b)
        if abs(va - vb) > 5e-3 * max(va, vb):  # strained copies are different structures
            return False
        return bool(_matcher().fit(a, b))
    except Exception:
        return False


def expand_results(results: Sequence[dict] | dict[str, dict], plan: dict[str, Any]
                   ) -> tuple[list[dict], list[dict]]:
    """Records of the unique runs -> (candidate_results, competing_results) for every id.

    ``results`` is a list of `run_gpaw` records (matched by ``label``) or {id: record}.
    ``plan`` needs ``alias``, ``candidate_ids`` and ``competing_ids``; ``structures``
    is optional.
    A duplicate gets a copy of its representative's record with its own label,
    composition and total energy (energy per atom is shared) and ``duplicate_of`` set.
    """
    by_id = dict(results) if isinstance(results, dict) else {r["label"]: r for r in results}

    def record(sid: str) -> dict:
        rep = plan["alias"][sid]
        if rep not in by_id:
            return {"label": sid, "error": f"structure {sid!r}: no GPAW result for {rep!r}",
                    "energy_per_atom": None, "composition": None}
        rec = dict(by_id[rep])
        if rep == sid:
            return rec
        rec["label"] = sid
        rec["duplicate_of"] = rep
        rec["structure"] = None
        rec["forces"] = None
        # without the structure (plan reduced to alias/ids for a workflow) the
        # representative's composition is kept: same reduced formula, same energy/atom
        s = (plan.get("structures") or {}).get(sid)
        if s is None:
            return rec
        try:
            comp = {el.symbol: float(n) for el, n in s.composition.items()}
            rec["composition"] = comp
            rec["natoms"] = int(round(sum(comp.values())))
            rec["formula"] = s.composition.hill_formula.replace(" ", "")
            if rec.get("energy_per_atom") is not None:
                rec["energy"] = rec["energy_per_atom"] * rec["natoms"]
        except Exception:
            pass
        return rec

    return ([record(i) for i in plan["candidate_ids"]],
            [record(i) for i in plan["competing_ids"]])


# ------------------------------------------------------------------- pure hull
def _usable(rec: dict) -> str | None:
    """Why a record cannot go on a hull (None if it can)."""
    if rec.get("error"):
        return str(rec["error"])
    epa = rec.get("energy_per_atom")
    if epa is None or not math.isfinite(float(epa)):
        return f"structure {rec.get('label')!r}: no finite energy"
    if not rec.get("composition"):
        return f"structure {rec.get('label')!r}: no composition"
    return None


def _entry(rec: dict):
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    comp = Composition(rec["composition"])
    return PDEntry(comp, float(rec["energy_per_atom"]) * comp.num_atoms,
                   name=comp.reduced_formula, attribute=str(rec["label"]))


def _e_above_hull(pd: PhaseDiagram, entry: PDEntry) -> float:
    """``entry``'s energy above the hull of ``pd``; pymatgen raises (``on_error="raise"``) rather than give None."""
    e_hull = pd.get_e_above_hull(entry)
    assert e_hull is not None
    return float(e_hull)


def dft_hull_from_results(candidate_results: Sequence[dict],
                          competing_results: Sequence[dict]) -> list[dict]:
    """Convex hull from GPAW records only; one result dict per candidate.

    Inputs are `run_gpaw` records (label, composition, energy_per_atom, error,
    energy_fingerprint).  Competing records with an error are left out (and listed);
    competing records whose ``energy_fingerprint`` differs from the candidate's are
    left out too (mixing settings is meaningless).  Each candidate's phase diagram holds
    the usable competing phases whose elements lie in the candidate's chemical system.

    Returned keys per candidate:
    id, formula, dft_energy_per_atom (eV/atom, GPAW scale), dft_e_form_per_atom
    (eV/atom, vs the lowest GPAW elemental phases), dft_e_above_hull (eV/atom, >= 0),
    dft_decomposition_energy (eV/atom, signed distance to the hull of the competing
    phases: negative = stable by that margin), stable (bool), dft_decomposition
    ([{id, formula, fraction}] of the competing phases at the candidate's
    composition), elemental_references ({element: {id, energy_per_atom}}), phases_used
    (competing ids in the phase diagram), competing_e_above_hull ({id: eV/atom} on the
    competing-only hull; elemental references are 0), excluded_phases ({id: reason}),
    converged (candidate run), wall_time_s (candidate run), error (None or message),
    errors (list of messages).
    """
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Composition

    out = []
    for cand in candidate_results:
        cid = str(cand.get("label"))
        res: dict[str, Any] = {
            "id": cid, "formula": cand.get("formula"),
            "dft_energy_per_atom": cand.get("energy_per_atom"),
            "dft_e_form_per_atom": None, "dft_e_above_hull": None,
            "dft_decomposition_energy": None, "stable": None,
            "dft_decomposition": [], "elemental_references": {}, "phases_used": [],
            "competing_e_above_hull": {}, "excluded_phases": {},
            "converged": bool(cand.get("converged", False)),
            "wall_time_s": cand.get("wall_time_s"),
            "error": None, "errors": [],
        }
        out.append(res)
        why = _usable(cand)
        if why:
            res["errors"].append(f"candidate {cid!r} has no usable DFT energy: {why}")
            res["error"] = res["errors"][0]
            continue
        comp = Composition(cand["composition"])
        res["formula"] = res["formula"] or comp.reduced_formula
        elements = {el.symbol for el in comp.elements}
        fp = cand.get("energy_fingerprint")

        entries = []
        for rec in competing_results:
            rid = str(rec.get("label"))
            rcomp = rec.get("composition")
            try:
                relements = {el.symbol for el in Composition(rcomp).elements} if rcomp else None
            except Exception:
                relements = None
            if relements is not None and not relements <= elements:
                continue  # outside this candidate's chemical system
            why = _usable(rec)
            if why is None and fp is not None and rec.get("energy_fingerprint") not in (None, fp):
                why = (f"structure {rid!r}: GPAW settings differ from the candidate's "
                       f"({rec.get('energy_fingerprint')} vs {fp})")
            if why:
                res["excluded_phases"][rid] = why
                continue
            entries.append(_entry(rec))
        res["phases_used"] = [e.attribute for e in entries]

        present = {e.composition.elements[0].symbol for e in entries if e.is_element}
        missing = sorted(elements - present)
        if missing:
            msg = (f"candidate {cid!r}: no usable GPAW elemental reference for "
                   f"{', '.join(missing)}")
            for el in missing:
                bad = [r for r, w in res["excluded_phases"].items()
                       if Composition(_comp_of(competing_results, r) or {}).reduced_formula == el]
                if bad:
                    msg += f" ({el}: {'; '.join(res['excluded_phases'][b] for b in bad)})"
            res["errors"].append(msg)
            res["error"] = msg
            continue
        try:
            pd = PhaseDiagram(entries)
            cand_entry = _entry(cand)
            e_hull = pd.get_hull_energy_per_atom(comp)
            delta = float(cand["energy_per_atom"]) - float(e_hull)
            res["dft_decomposition_energy"] = delta
            res["dft_e_above_hull"] = max(delta, 0.0)
            res["stable"] = delta <= 1e-8
            res["dft_e_form_per_atom"] = float(pd.get_form_energy_per_atom(cand_entry))
            # the diagram holds only the PDEntry objects built by _entry (pymatgen types them as Entry)
            decomp = cast("dict[PDEntry, float]", pd.get_decomposition(comp))
            res["dft_decomposition"] = [
                {"id": e.attribute, "formula": e.composition.reduced_formula,
                 "fraction": float(f)}
                for e, f in sorted(decomp.items(), key=lambda kv: -kv[1])
            ]
            res["elemental_references"] = {
                el.symbol: {"id": e.attribute, "energy_per_atom": float(e.energy_per_atom)}
                for el, e in pd.el_refs.items()
            }
            res["competing_e_above_hull"] = {
                e.attribute: _e_above_hull(pd, e) for e in entries
            }
        except Exception as exc:
            msg = f"candidate {cid!r}: phase diagram failed: {type(exc).__name__}: {exc}"
            res["errors"].append(msg)
            res["error"] = msg
    return out


def _comp_of(records: Sequence[dict], rid: str):
    for r in records:
        if str(r.get("label")) == rid:
            return r.get("composition")
    return None


# --------------------------------------------------------------- all-in-one driver
def dft_hull(
    candidates: Sequence[Item],
    competing: Sequence[Item],
    settings: GpawSettings | str | dict | None = None,
    workdir: str | Path = "dft_runs",
    run: Callable[..., dict] = run_gpaw,
    return_runs: bool = False,
) -> list[dict] | tuple[list[dict], list[dict]]:
    """Run GPAW on every unique candidate/competing structure and build the hulls.

    ``candidates`` and ``competing`` are lists of (id, pymatgen Structure).  Competing
    phases should include the elements of each candidate's chemical system and its
    decomposition products; identical structures are computed once.  All runs use the
    same ``settings`` (default "standard").  Logs go to ``workdir/<id>.gpaw.txt``.

    Returns `dft_hull_from_results` output (one dict per candidate, in order); with
    ``return_runs=True`` also the list of raw `run_gpaw` records of the unique runs.
    Never raises for a failing structure: failures appear in ``error``/``errors``.
    """
    settings = as_settings(settings)
    plan = plan_dft_runs(candidates, competing)
    records = [run(s, settings, label=sid, workdir=workdir) for sid, s in plan["runs"]]
    cand_res, comp_res = expand_results(records, plan)
    hull = dft_hull_from_results(cand_res, comp_res)
    return (hull, records) if return_runs else hull
