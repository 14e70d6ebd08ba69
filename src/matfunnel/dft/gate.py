"""The DFT gate of the funnel: only candidates near the MLIP hull go to DFT, then a DFT hull.

:class:`DftGateMaker` decides per candidate (:meth:`DftGateMaker.decisions`), then runs GPAW (each gated
candidate and the competing phases its hull needs, for a self-consistent DFT hull) or atomate2's VASP flow
(MP-compatible energies on the Materials Project hull). It returns a
:class:`~matfunnel.common.documents.DftDoc`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

from jobflow import Flow, Maker, Response, job

from matfunnel.common.cache import active_cache, content_key, structure_fingerprint
from matfunnel.common.documents import DftDoc, HullDoc, PhononGateDoc, as_doc
from matfunnel.common.structures import as_structure

#: the DFT codes a campaign can use (``none``: the gate decides, nothing runs)
ENGINES = ("gpaw", "vasp", "none")
TO_DFT = "to DFT"
DONE = "checked by DFT in an earlier round"
#: the gate's rules (see :class:`DftGateMaker`)
RULES = ("auto", "plain", "mean", "mean_k_sigma", "probability", "budget")
#: what ``auto`` (the default) becomes with a committee, chosen by the GPAW calibration
#: (``benchmarks/results/gate_calibration``; README, "An uncertainty-aware DFT gate"): the committee's mean found
#: more near-hull candidates per DFT run than the primary member alone, and the spread (``mean_k_sigma``,
#: ``probability``) did not improve on the mean
COMMITTEE_DEFAULT_RULE = "mean"
#: the rules that compare one number with the threshold (the others a probability)
VALUE_RULES = ("plain", "mean", "mean_k_sigma")
#: eV/atom: the smallest spread the probability rules divide by (a committee that agrees exactly)
SIGMA_FLOOR = 1e-3
#: the ``budget`` rule considers only candidates at least this likely to be within the threshold
BUDGET_MIN_PROBABILITY = 0.01


def within_probability(mean: float, sigma: float | None, threshold: float) -> float:
    """P(e_above_hull <= threshold) for a normal of ``mean`` and ``sigma`` (floored at :data:`SIGMA_FLOOR`).

    Without a spread (``sigma`` None) the probability is 1 when ``mean <= threshold``, else 0.
    """
    if sigma is None:
        return 1.0 if mean <= threshold else 0.0
    z = (threshold - mean) / max(float(sigma), SIGMA_FLOOR)
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def gate_score(row: dict, rule: str, threshold: float, k: float) -> dict[str, Any]:
    """The numbers a rule decides one hull row by.

    ``mean`` is the committee's mean energy above hull (the row's ``e_above_hull`` where it has none), ``sigma``
    their spread (None without), ``probability`` P(e_hull <= threshold) (:func:`within_probability`), ``value``
    the number compared with the threshold (``mean - k*sigma`` for ``mean_k_sigma``, the mean for ``mean``, else
    ``e_above_hull``) and ``spread`` whether the row had one (a rule falls back to plain without).
    """
    sigma = row.get("e_above_hull_std")
    mean = row.get("e_above_hull_mean")
    if mean is None or sigma is None:
        mean, sigma = row["e_above_hull"], None
    mean = float(mean)
    value = float(row["e_above_hull"]) if rule == "plain" or sigma is None else (
        mean - k * float(sigma) if rule == "mean_k_sigma" else mean)
    return {"rule": rule, "mean": mean, "sigma": None if sigma is None else float(sigma),
            "probability": within_probability(mean, sigma, threshold), "value": value, "spread": sigma is not None}


def gate_order(score: dict) -> tuple[float, ...]:
    """The sort key a rule sends near-hull candidates to DFT by (smallest first).

    ``plain``, ``mean`` and ``mean_k_sigma``: the score's ``value``; the probability rules: the probability, highest
    first, then the mean. The gate breaks ties by fewer sites, then the id.
    """
    if score["rule"] in VALUE_RULES:
        return (score["value"],)
    return (-score["probability"], score["mean"])


def _entry_dict(obj) -> dict:
    return obj if isinstance(obj, dict) else obj.as_dict()


@dataclass
class DftGateMaker(Maker):
    """Send the candidates near the hull to DFT.

    The ``rule`` decides which candidates are near the hull (committee potentials give each hull row the mean
    ``e_above_hull_mean`` and the spread ``e_above_hull_std`` of the members' energies above hull):

    * ``auto`` (the default): ``mean`` when the hull rows carry a committee's mean, else ``plain``
      (:data:`COMMITTEE_DEFAULT_RULE`, chosen by the GPAW calibration);
    * ``plain``: ``e_above_hull <= threshold`` (the primary member's, or the single potential's);
    * ``mean``: the committee's mean ``e_above_hull_mean <= threshold``;
    * ``mean_k_sigma``: ``mean - k*sigma <= threshold``;
    * ``probability``: P(e_hull <= threshold) >= ``min_probability``, e_hull normal with the committee's mean and
      spread (the spread floored at :data:`SIGMA_FLOOR`);
    * ``budget``: no threshold cut: every candidate with P(e_hull <= threshold) >= :data:`BUDGET_MIN_PROBABILITY`
      is near the hull, and ``max_candidates`` go to DFT in order of that probability, highest first.

    A row without a spread (a committee member failed, or no committee) is decided by the plain rule under
    ``mean_k_sigma`` and gets P = 1 or 0 under the probability rules; its decision says so. The
    near-hull candidates go to DFT in order (``plain``: ``e_above_hull``; ``mean``: the mean; ``mean_k_sigma``:
    ``mean - k*sigma``;
    the probability rules: the probability, highest first, then the mean), then fewer sites, then the id. A
    ``"to DFT"`` decision is exactly that; the numbers of every decision under a rule other than ``plain`` are
    in :attr:`~matfunnel.common.documents.DftDoc.scores`, and the other decisions name the rule.

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
    rule
        One of :data:`RULES` (above).
    k
        ``mean_k_sigma``: how many spreads below the mean.
    min_probability
        ``probability``: the least probability of being within the threshold.
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
    rule: str = "auto"
    k: float = 1.0
    min_probability: float = 0.5

    def decisions(self, candidate_docs: list, hull: HullDoc | dict,
                  phonons: PhononGateDoc | dict | None = None) -> dict[str, str]:
        """Why each candidate does or does not go to DFT (``"to DFT"`` for those that do)."""
        return self.decide(candidate_docs, hull, phonons)[0]

    def _why_not(self, score: dict) -> str | None:
        """Why a row with ``score`` is not near the hull under the rule (None: it is)."""
        t = self.threshold
        if self.rule == "plain":
            v = score["value"]
            return None if v <= t else f"above threshold ({v:.3f} > {t} eV/atom)"
        if not score["spread"]:
            if self.rule in VALUE_RULES:
                v = score["value"]
                return None if v <= t else (f"above threshold ({v:.3f} > {t} eV/atom; rule {self.rule}: "
                                            "no committee spread, plain rule)")
            p, least = score["probability"], (self.min_probability if self.rule == "probability"
                                              else BUDGET_MIN_PROBABILITY)
            return None if p >= least else (f"above threshold ({score['mean']:.3f} > {t} eV/atom; rule "
                                             f"{self.rule}: no committee spread, P = {p:.0f})")
        if self.rule == "mean":
            v = score["value"]
            return None if v <= t else (f"above threshold (rule mean: committee mean {v:.3f} > {t} eV/atom; "
                                        f"sigma {score['sigma']:.3f})")
        if self.rule == "mean_k_sigma":
            v = score["value"]
            return None if v <= t else (f"above threshold (rule mean_k_sigma: mean - k*sigma = {score['mean']:.3f} "
                                        f"- {self.k:g}*{score['sigma']:.3f} = {v:.3f} > {t} eV/atom)")
        least = self.min_probability if self.rule == "probability" else BUDGET_MIN_PROBABILITY
        p = score["probability"]
        return None if p >= least else (f"unlikely within threshold (rule {self.rule}: P(e_hull <= {t}) = {p:.3f} "
                                        f"< {least:g}; mean {score['mean']:.3f}, sigma {score['sigma']:.3f} eV/atom)")

    def _note(self, score: dict) -> str:
        """The rule's numbers for a near-hull decision (empty under ``plain``)."""
        if self.rule == "plain":
            return ""
        if not score["spread"]:
            return f" (rule {self.rule}: no committee spread, plain rule)"
        if self.rule in ("mean", "mean_k_sigma"):
            return f" (rule {self.rule}: {score['value']:.3f} eV/atom)"
        return f" (rule {self.rule}: P = {score['probability']:.3f})"

    def resolved(self, hull: HullDoc | dict) -> DftGateMaker:
        """The gate with ``auto`` made concrete: ``mean`` when a hull row carries a committee mean, else ``plain``."""
        if self.rule != "auto":
            return self
        committee = any(r.get("e_above_hull_mean") is not None for r in as_doc(HullDoc, hull).rows)
        return replace(self, rule=COMMITTEE_DEFAULT_RULE if committee else "plain")

    def decide(self, candidate_docs: list, hull: HullDoc | dict, phonons: PhononGateDoc | dict | None = None
               ) -> tuple[dict[str, str], dict[str, dict]]:
        """The decisions (:meth:`decisions`) and, under a rule other than ``plain``, each scored row's numbers.

        Returns
        -------
        tuple[dict[str, str], dict[str, dict]]
            ``{candidate id: decision}`` and ``{candidate id: {"rule", "mean", "sigma", "probability", "value",
            "spread"}}`` (see :func:`gate_score`) of every candidate with a hull energy (empty under ``plain``).
        """
        if self.rule not in RULES:
            raise ValueError(f"unknown DFT gate rule {self.rule!r} (one of {', '.join(RULES)})")
        if self.rule == "auto":
            return self.resolved(hull).decide(candidate_docs, hull, phonons)
        unstable = as_doc(PhononGateDoc, phonons).unstable() if phonons else {}
        rows = as_doc(HullDoc, hull).row_by_id()
        decisions: dict[str, str] = {}
        scores: dict[str, dict] = {}
        eligible = []
        done = set(self.exclude)
        for d in candidate_docs:
            cid = d["label"]
            row = rows.get(cid)
            if cid in done:
                decisions[cid] = DONE
                continue
            if row is None or row.get("e_above_hull") is None:
                decisions[cid] = "skipped: " + ((row or {}).get("error") or d.get("error") or "no hull energy")
                continue
            score = gate_score(row, self.rule, self.threshold, self.k)
            if self.rule != "plain":
                scores[cid] = score
            why_not = self._why_not(score)
            if not d.get("converged"):
                decisions[cid] = "skipped: MLIP relaxation not converged"
            elif why_not is not None:
                decisions[cid] = why_not
            elif cid in unstable:
                decisions[cid] = f"skipped: dynamically unstable ({unstable[cid]})"
            elif self.engine == "none":
                decisions[cid] = "near hull; DFT disabled" + self._note(score)
            elif self.max_sites is not None and len(as_structure(d["final_structure"], cid)) > self.max_sites:
                decisions[cid] = f"near hull; too large for DFT (> {self.max_sites} sites)" + self._note(score)
            else:
                eligible.append((*gate_order(score), len(as_structure(d["final_structure"], cid)), cid))
        eligible.sort()
        for rank, item in enumerate(eligible):
            cid = item[-1]
            decisions[cid] = (TO_DFT if rank < self.max_candidates
                              else f"near hull; beyond dft.max_candidates={self.max_candidates}"
                              + self._note(scores.get(cid, {})))
        return decisions, scores

    @job
    def make(self, candidate_docs: list, hull: HullDoc, phonons: PhononGateDoc | None, chemsys: str):
        """The gate's :class:`DftDoc` (a dynamic Response when some candidate goes to DFT)."""
        hull = as_doc(HullDoc, hull)
        return self.resolved(hull).gate(candidate_docs, hull, phonons, chemsys)

    def gate(self, candidate_docs: list, hull: HullDoc, phonons: PhononGateDoc | dict | None, chemsys: str
             ) -> DftDoc | Response:
        """What :meth:`make`'s job returns (the rule already concrete: see :meth:`resolved`)."""
        decisions, scores = self.decide(candidate_docs, hull, phonons)
        chosen = [cid for cid, dec in decisions.items() if dec == TO_DFT]
        if not chosen:
            return DftDoc(engine=self.engine, threshold=self.threshold, decisions=decisions,
                          **self._rule_fields(scores))
        structures = {d["label"]: d["final_structure"] for d in candidate_docs}
        if self.engine == "vasp":
            return Response(replace=self._vasp_flow(chosen, structures, hull, decisions, self.threshold,
                                                    self._rule_fields(scores)))
        return Response(replace=self._gpaw_flow(chosen, structures, hull, decisions, chemsys.split("-"),
                                                self._rule_fields(scores)))

    def _rule_fields(self, scores: dict) -> dict:
        """The :class:`DftDoc` fields of the rule (none under ``plain``: its documents stay as they were)."""
        if self.rule == "plain":
            return {}
        return {"rule": self.rule, "rule_parameters": {"k": self.k, "min_probability": self.min_probability,
                                                       "sigma_floor": SIGMA_FLOOR,
                                                       "budget_min_probability": BUDGET_MIN_PROBABILITY},
                "scores": scores}

    def _gpaw_flow(self, chosen: list[str], structures: dict, hull: HullDoc, decisions: dict,
                   elements: list[str], rule: dict | None = None) -> Flow:
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
        collect = gpaw_hull_job([j.output for j in jobs], plan_small, decisions, self.threshold, rule or None)
        return Flow([*jobs, collect], output=collect.output, name="gpaw DFT")

    @staticmethod
    def _vasp_flow(chosen: list[str], structures: dict, hull: HullDoc, decisions: dict, threshold: float,
                   rule: dict | None = None) -> Flow:
        from matfunnel.dft.vasp import vasp_flow

        flows = []
        for cid in chosen:
            f = vasp_flow(as_structure(structures[cid], cid), metadata={"candidate_id": cid})
            f.update_metadata({"category": "dft"})  # every nested job, and jobs they create
            flows.append(f)
        collect = vasp_hull_job([f.output for f in flows], chosen, hull, decisions, threshold, rule or None)
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
def gpaw_hull_job(results: list, plan: dict, decisions: dict, threshold: float | None = None,
                  rule: dict | None = None) -> DftDoc:
    """Self-consistent GPAW hull of the gated candidates and their competing phases (``rule``: DftDoc fields)."""
    from matfunnel.dft.dft_hull import dft_hull_from_results, expand_results

    cand, comp = expand_results(results, plan)
    # the runs keep their forces and stress: they are the labels a campaign's loop fine-tunes on
    return DftDoc(engine="gpaw", threshold=threshold, decisions=decisions, results=dft_hull_from_results(cand, comp),
                  runs=list(results), **(rule or {}))


@job(name="dft hull")
def vasp_hull_job(taskdocs: list, ids: list[str], hull: HullDoc, decisions: dict,
                  threshold: float | None = None, rule: dict | None = None) -> DftDoc:
    """MP-compatible VASP energies on the same MP2020 hull as the references (``rule``: DftDoc fields)."""
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
    return DftDoc(engine="vasp", threshold=threshold, decisions=decisions, results=out, **(rule or {}))
