"""One hull per committee member: each candidate's energy above hull by every member, their mean and spread.

A committee campaign (``potential: committee:A,B,...``) relaxes every candidate and every offline competing phase
with one member, then scores each relaxed structure with every member (the relaxation documents' ``committee``
records, see :func:`matfunnel.makers.relax.committee_records`). :func:`committee_hulls` builds, for each member,
the same MP2020-processed hull the primary's :class:`~matfunnel.hull.maker.HullMaker` builds:

* candidates: ``mlip_entry(final structure, the member's energy, id)``;
* references from the Materials Project (an MP DFT hull): the same entries for every member;
* offline references: the competing phases with the member's *own* energies, through
  :func:`~matfunnel.hull.references.reference_entries` exactly as for the primary (the shipped MP elemental
  entries are the corners for elements without an MLIP elemental phase, the same for all members).

Per candidate it returns ``e_above_hull_members`` (``{member: eV/atom or None}``), ``e_above_hull_mean`` and
``e_above_hull_std`` (the population standard deviation over the members that produced a value; ``None`` with
fewer than two) and ``committee_errors`` (``{member: why}`` for each member without a value). A candidate is
never dropped for a member's failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from matfunnel.common.structures import as_structure
from matfunnel.hull.entries import mlip_entry
from matfunnel.hull.phase_diagram import compute_hull
from matfunnel.hull.references import ReferenceSet, reference_entries

__all__ = ["committee_hulls", "committee_members", "member_entries"]


def committee_members(docs: Sequence[dict]) -> list[str]:
    """The members' names of the first ``committee`` record in ``docs`` (``[]``: no committee records)."""
    for d in docs:
        record = d.get("committee")
        if record and record.get("members"):
            return [str(m) for m in record["members"]]
    return []


def member_entries(docs: Sequence[dict], member: str, role: str, model: str | None = None
                   ) -> tuple[list, dict[str, str]]:
    """MLIP entries of ``docs`` with ``member``'s energy at each relaxed structure, and ``{label: why}`` of the rest.

    Parameters
    ----------
    docs
        Relaxation documents with ``committee`` records (``label``, ``final_structure``).
    member
        The member's name (as in the records' ``members``).
    role
        ``candidate`` or ``competing`` (recorded in each entry's data).
    model
        Recorded as the entries' ``mlip_model`` (default: the member's name).
    """
    entries, skipped = [], {}
    for d in docs:
        label = str(d["label"])
        record = d.get("committee") or {}
        members = list(record.get("members") or [])
        energy = record["energies"][members.index(member)] if member in members else None
        if energy is None or not d.get("final_structure"):
            why = (record.get("errors") or {}).get(member) or d.get("error") or (
                "no committee record" if not record else "no energy")
            skipped[label] = str(why)
            continue
        s = as_structure(d["final_structure"], label)
        entries.append(mlip_entry(s, energy, label, data={"role": role, "committee_member": member},
                                  model=model or member))
    return entries, skipped


def committee_hulls(
    candidate_docs: Sequence[dict],
    competing_docs: Sequence[dict],
    chemsys: str,
    *,
    references: ReferenceSet | None = None,
    make_references: Callable[[list], ReferenceSet] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every member's hull; per candidate its energy above hull by each member, their mean and spread.

    Parameters
    ----------
    candidate_docs, competing_docs
        Relaxation documents of the candidates and of the offline competing phases, with ``committee`` records.
    chemsys
        The hull's chemical system.
    references
        The primary's reference set. When it came from the Materials Project (``details["source"] == "mp-api"``)
        every member's hull uses it as is (the competing phases are not mixed into an MP hull).
    make_references
        ``competing entries -> ReferenceSet`` for an offline hull (default:
        ``reference_entries(chemsys, mlip_competing=..., offline=True)``).

    Returns
    -------
    tuple[dict, dict]
        ``{candidate id: {"e_above_hull_members", "e_above_hull_mean", "e_above_hull_std", "committee_errors"}}``
        for the candidates with a committee record, and per-member details (``{"members": {name:
        {"reference_label", "skipped_competing"}}}``).
    """
    members = committee_members([*candidate_docs, *competing_docs])
    scored = [d for d in candidate_docs if d.get("committee")]
    if not members or not scored:
        return {}, {}
    from_mp = references is not None and references.details.get("source") == "mp-api"
    build = make_references or (lambda comp: reference_entries(chemsys, mlip_competing=comp, offline=True))
    values: dict[str, dict[str, float | None]] = {str(d["label"]): {} for d in scored}
    errors: dict[str, dict[str, str]] = {str(d["label"]): {} for d in scored}
    details: dict[str, Any] = {}
    comp_skipped: dict[str, str]
    for member in members:
        cand, cand_skipped = member_entries(scored, member, "candidate")
        if from_mp:
            assert references is not None
            refs, comp_skipped = references, {}
        else:
            comp, comp_skipped = member_entries(competing_docs, member, "competing")
            refs = build(comp)
        details[member] = {"reference_label": refs.label, "skipped_competing": comp_skipped}
        rows = {str(r["entry_id"]): r for r in compute_hull(cand, refs)} if cand else {}
        for cid in values:
            row = rows.get(cid)
            value = None if row is None else row.get("e_above_hull")
            values[cid][member] = None if value is None else float(value)
            if value is None:
                errors[cid][member] = cand_skipped.get(cid) or (row or {}).get("error") or "no hull energy"
    out: dict[str, dict[str, Any]] = {}
    for cid, per_member in values.items():
        ok = [v for v in per_member.values() if v is not None]
        out[cid] = {
            "e_above_hull_members": per_member,
            "e_above_hull_mean": float(np.mean(ok)) if ok else None,
            "e_above_hull_std": float(np.std(ok)) if len(ok) >= 2 else None,
            "committee_errors": errors[cid],
        }
    return out, {"members": details}
