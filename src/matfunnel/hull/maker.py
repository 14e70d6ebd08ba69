"""The hull stage of the funnel as a jobflow maker: MLIP energies -> MP2020 -> energy above hull."""

from __future__ import annotations

from dataclasses import dataclass

from jobflow import Maker, job

from matfunnel.common.documents import HullDoc, ReferencesDoc, as_doc
from matfunnel.common.structures import as_structure
from matfunnel.hull.committee import committee_hulls, committee_members
from matfunnel.hull.entries import mlip_entry
from matfunnel.hull.phase_diagram import compute_hull
from matfunnel.hull.references import MP_API_KEY_ENV, reference_entries


def relaxed_entries(docs: list[dict], model: str, role: str) -> tuple[list, dict[str, str]]:
    """MLIP entries of the relaxations that produced an energy, and ``{label: why}`` of the others.

    Parameters
    ----------
    docs
        Relaxation documents (``label``, ``energy``, ``final_structure``, ``error``).
    model
        The potential's name (recorded in each entry).
    role
        ``candidate`` or ``competing`` (recorded in each entry's data).
    """
    entries, skipped = [], {}
    for d in docs:
        if d.get("energy") is None or d.get("final_structure") is None:
            skipped[d["label"]] = d.get("error") or "no energy"
            continue
        s = as_structure(d["final_structure"], d["label"])
        entries.append(mlip_entry(s, d["energy"], d["label"], data={"role": role}, model=model))
    return entries, skipped


@dataclass
class HullMaker(Maker):
    """Formation energy and energy above the hull of every relaxed candidate.

    When the relaxation documents carry committee records (a ``committee:`` potential), each row also gets every
    member's energy above its own hull, their mean and spread (:func:`matfunnel.hull.committee.committee_hulls`);
    ``e_above_hull`` stays the primary member's.

    Parameters
    ----------
    name
        The job's name.
    model
        The potential's name, recorded in the MLIP entries.
    cache_dir
        Where Materials Project references are cached (None: the default cache).
    """

    name: str = "hull"
    model: str = ""
    cache_dir: str | None = None

    @job
    def make(self, candidate_docs: list, references: ReferencesDoc, chemsys: str) -> HullDoc:
        """The hull of ``chemsys`` with the candidates' relaxation documents."""
        references = as_doc(ReferencesDoc, references)
        competing, comp_skipped = relaxed_entries(references.competing, self.model, "competing")
        refs = reference_entries(chemsys, mlip_competing=competing, cache_dir=self.cache_dir,
                                 offline=references.mode == "offline")
        if references.mode == "mp" and refs.details.get("source") != "mp-api":
            # no competing phase was relaxed for an offline hull: elemental corners alone would be a wrong hull
            why = refs.details.get("mp_api_error") or f"{MP_API_KEY_ENV} is not set"
            raise ValueError(f"hull of {chemsys}: the references were to come from the Materials Project, but "
                             f"the query failed ({why}) and no competing phases were relaxed for an offline hull; "
                             f"run again with hull.references: offline (or auto)")
        cand_entries, cand_skipped = relaxed_entries(candidate_docs, self.model, "candidate")
        rows = compute_hull(cand_entries, refs) if cand_entries else []
        details = {k: v for k, v in refs.details.items() if k != "rejected"}
        if committee_members(candidate_docs):  # a committee: every member's hull too (e_above_hull stays the primary's)
            per_candidate, committee_details = committee_hulls(candidate_docs, references.competing, chemsys,
                                                               references=refs)
            for row in rows:
                row.update(per_candidate.get(str(row["entry_id"]), {}))
            details["committee"] = committee_details
        # structures of every phase the DFT stage may need (references and candidates)
        phases = {str(e.entry_id): e.structure.as_dict() for e in [*refs.entries, *cand_entries]
                  if getattr(e, "structure", None) is not None}
        return HullDoc(rows=rows, reference_label=refs.label,
                       reference_details=details,
                       reference_entries=[e.as_dict() for e in refs.entries],
                       candidate_entries=[e.as_dict() for e in cand_entries], phases=phases,
                       skipped={"candidates": cand_skipped, "competing": comp_skipped})
