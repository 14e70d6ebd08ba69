"""The DFT gate of the funnel: only candidates near the MLIP hull go to DFT, then a DFT hull.

:class:`DftGateMaker` decides per candidate (:meth:`DftGateMaker.decisions`), then runs GPAW (each gated
candidate and the competing phases its hull needs, for a self-consistent DFT hull) or atomate2's VASP flow
(MP-compatible energies on the Materials Project hull). It returns a
:class:`~matfunnel.common.documents.DftDoc`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from jobflow import Flow, Maker, Response, job

from matfunnel.common.cache import active_cache, content_key, structure_fingerprint
from matfunnel.common.documents import DftDoc, HullDoc, PhononGateDoc, as_doc
from matfunnel.common.structures import as_structure

#: the DFT codes a campaign can use (``none``: the gate decides, nothing runs)
ENGINES = ("gpaw", "vasp", "none")
TO_DFT = "to DFT"
DONE = "checked by DFT in an earlier round"


def _entry_dict(obj) -> dict:
    return obj if isinstance(obj, dict) else obj.as_dict()


@dataclass
class DftGateMaker(Maker):
    """Send the candidates near the hull to DFT.

    Parameters
    ----------
    name
        The job's name.
    engine
        ``gpaw``, ``vasp`` or ``none`` (decide only).
    threshold
        eV/atom: candidates at or below this energy above the MLIP hull go to DFT.
    max_candidates
        At most this many DFT candidates, lowest ``e_above_hull`` first (then fewer sites).
    max_sites
        Larger candidates stay out (a cost guard); None: no limit.
    preset, settings
        GPAW settings: a preset (``quick``, ``standard``) and overrides.
    result_cache
        SQLite file of finished GPAW runs (None: ``MATFUNNEL_RESULT_CACHE`` if set).
    exclude
        Candidates DFT has checked already (a later round of a campaign's loop): never sent again.
    phase_structures
        ``{phase id: structure dict}`` used for the competing phases instead of the hull's (a later round of a
        loop keeps the first round's, so each competing phase's DFT runs once per campaign).
    """

    name: str = "dft gate"
    engine: str = "gpaw"
    threshold: float = 0.05
    max_candidates: int = 5
    max_sites: int | None = None
    preset: str = "quick"
    settings: dict = field(default_factory=dict)
    result_cache: str | None = None
    exclude: list[str] = field(default_factory=list)
    phase_structures: dict = field(default_factory=dict)

    def decisions(self, candidate_docs: list, hull: HullDoc | dict,
                  phonons: PhononGateDoc | dict | None = None) -> dict[str, str]:
        """Why each candidate does or does not go to DFT (``"to DFT"`` for those that do)."""
        unstable = as_doc(PhononGateDoc, phonons).unstable() if phonons else {}
        rows = as_doc(HullDoc, hull).row_by_id()
        decisions: dict[str, str] = {}
        eligible = []
        done = set(self.exclude)
        for d in candidate_docs:
            cid = d["label"]
            row = rows.get(cid)
            if cid in done:
                decisions[cid] = DONE
            elif row is None or row.get("e_above_hull") is None:
                decisions[cid] = "skipped: " + ((row or {}).get("error") or d.get("error") or "no hull energy")
            elif not d.get("converged"):
                decisions[cid] = "skipped: MLIP relaxation not converged"
            elif row["e_above_hull"] > self.threshold:
                decisions[cid] = f"above threshold ({row['e_above_hull']:.3f} > {self.threshold} eV/atom)"
            elif cid in unstable:
                decisions[cid] = f"skipped: dynamically unstable ({unstable[cid]})"
            elif self.engine == "none":
                decisions[cid] = "near hull; DFT disabled"
            elif self.max_sites is not None and len(as_structure(d["final_structure"], cid)) > self.max_sites:
                decisions[cid] = f"near hull; too large for DFT (> {self.max_sites} sites)"
            else:
                eligible.append((row["e_above_hull"], len(as_structure(d["final_structure"], cid)), cid))
        eligible.sort()
        for rank, (_, _, cid) in enumerate(eligible):
            decisions[cid] = (TO_DFT if rank < self.max_candidates
                              else f"near hull; beyond dft.max_candidates={self.max_candidates}")
        return decisions

    @job
    def make(self, candidate_docs: list, hull: HullDoc, phonons: PhononGateDoc | None, chemsys: str):
        """The gate's :class:`DftDoc` (a dynamic Response when some candidate goes to DFT)."""
        hull = as_doc(HullDoc, hull)
        decisions = self.decisions(candidate_docs, hull, phonons)
        chosen = [cid for cid, dec in decisions.items() if dec == TO_DFT]
        if not chosen:
            return DftDoc(engine=self.engine, threshold=self.threshold, decisions=decisions)
        structures = {d["label"]: d["final_structure"] for d in candidate_docs}
        if self.engine == "vasp":
            return Response(replace=self._vasp_flow(chosen, structures, hull, decisions, self.threshold))
        return Response(replace=self._gpaw_flow(chosen, structures, hull, decisions, chemsys.split("-")))

    def _gpaw_flow(self, chosen: list[str], structures: dict, hull: HullDoc, decisions: dict,
                   elements: list[str]) -> Flow:
        from matfunnel.dft.dft_hull import plan_dft_runs
        from matfunnel.dft.settings import GpawSettings

        settings = GpawSettings.preset(self.preset, **self.settings).as_dict()
        rows = hull.row_by_id()
        comp_ids = [pid for cid in chosen for pid in competing_for(rows[cid], hull, elements)]
        plan = plan_dft_runs([(cid, as_structure(structures[cid], cid)) for cid in chosen],
                             [(pid, as_structure(self.phase_structures.get(pid) or hull.phases[pid], pid))
                              for pid in dict.fromkeys(comp_ids)])
        jobs = []
        for sid, s in plan["runs"]:
            j = gpaw_job(s.as_dict(), settings, sid, self.result_cache)
            j.name = f"gpaw {sid}"
            j.update_metadata({"category": "dft"}, dynamic=False)
            jobs.append(j)
        plan_small = {k: plan[k] for k in ("alias", "candidate_ids", "competing_ids")}
        collect = gpaw_hull_job([j.output for j in jobs], plan_small, decisions, self.threshold)
        return Flow([*jobs, collect], output=collect.output, name="gpaw DFT")

    @staticmethod
    def _vasp_flow(chosen: list[str], structures: dict, hull: HullDoc, decisions: dict, threshold: float) -> Flow:
        from matfunnel.dft.vasp import vasp_flow

        flows = []
        for cid in chosen:
            f = vasp_flow(as_structure(structures[cid], cid), metadata={"candidate_id": cid})
            f.update_metadata({"category": "dft"})  # every nested job, and jobs they create
            flows.append(f)
        collect = vasp_hull_job([f.output for f in flows], chosen, hull, decisions, threshold)
        return Flow([*flows, collect], output=collect.output, name="VASP DFT")


def competing_for(row: dict, hull: HullDoc, elements: list[str]) -> list[str]:
    """Ids of the phases a candidate's DFT hull needs.

    Its decomposition products and the lowest-energy reference of each element (those with a structure).
    """
    ids = [p["entry_id"] for p in row.get("decomposition_vs_references") or [] if p["entry_id"] != row["entry_id"]]
    best: dict[str, tuple[float, str]] = {}
    for d in map(_entry_dict, hull.reference_entries):
        comp = d.get("composition", {})
        if len(comp) != 1 or str(d.get("entry_id")) not in hull.phases:
            continue
        (el,) = comp
        e = (d["energy"] + d.get("correction", 0.0)) / sum(comp.values())
        if el in elements and (el not in best or e < best[el][0]):
            best[el] = (e, str(d["entry_id"]))
    ids += [best[el][1] for el in sorted(best)]
    return [i for i in dict.fromkeys(ids) if i in hull.phases]


@job(name="gpaw")
def gpaw_job(structure: dict, settings: dict, label: str, result_cache: str | None = None) -> dict:
    """One GPAW PAW-PBE plane-wave calculation (in the job's own folder); finished runs are cached."""
    from matfunnel.dft.gpaw import run_gpaw

    cache = active_cache(result_cache)
    key = content_key("gpaw", structure_fingerprint(structure), settings)
    if cache is not None and (hit := cache.get(key)) is not None:
        return {**hit, "label": label, "cached": True}
    result = run_gpaw(as_structure(structure, label), settings, label=label, workdir=os.getcwd())
    if cache is not None and not result.get("error"):
        cache.put(key, "gpaw", result)
    return {**result, "cached": False}


@job(name="dft hull")
def gpaw_hull_job(results: list, plan: dict, decisions: dict, threshold: float | None = None) -> DftDoc:
    """Self-consistent GPAW hull of the gated candidates and their competing phases."""
    from matfunnel.dft.dft_hull import dft_hull_from_results, expand_results

    cand, comp = expand_results(results, plan)
    # the runs keep their forces and stress: they are the labels a campaign's loop fine-tunes on
    return DftDoc(engine="gpaw", threshold=threshold, decisions=decisions, results=dft_hull_from_results(cand, comp),
                  runs=list(results))


@job(name="dft hull")
def vasp_hull_job(taskdocs: list, ids: list[str], hull: HullDoc, decisions: dict,
                  threshold: float | None = None) -> DftDoc:
    """MP-compatible VASP energies on the same MP2020 hull as the references."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    from matfunnel.dft.vasp import vasp_entry

    hull = as_doc(HullDoc, hull)
    refs = [ComputedStructureEntry.from_dict(d) if "structure" in d else ComputedEntry.from_dict(d)
            for d in map(_entry_dict, hull.reference_entries)]
    pd = PhaseDiagram(refs)
    out = []
    for cid, doc in zip(ids, taskdocs, strict=False):
        try:
            entry = vasp_entry(doc, entry_id=cid)
            e_hull = pd.get_e_above_hull(entry, allow_negative=True)
            assert e_hull is not None  # None only with on_error="ignore"; by default pymatgen raises
            out.append({"id": cid, "formula": entry.composition.reduced_formula,
                        "dft_energy_per_atom": entry.energy_per_atom,
                        "dft_e_form_per_atom": pd.get_form_energy_per_atom(entry),
                        "dft_e_above_hull": max(e_hull, 0.0), "dft_decomposition_energy": e_hull,
                        "error": None})
        except Exception as exc:  # noqa: BLE001 - one failed calculation must not lose the others
            out.append({"id": cid, "error": f"structure {cid!r}: {type(exc).__name__}: {exc}"})
    return DftDoc(engine="vasp", threshold=threshold, decisions=decisions, results=out)
