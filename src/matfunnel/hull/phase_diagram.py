"""Convex-hull energies of candidate entries against a ReferenceSet (pymatgen PhaseDiagram).

Convention (documented choice): candidates are placed on the hull **together with each
other**. The hull is built from references + all candidates, so

* ``e_above_hull`` (>= 0, eV/atom) is measured against that joint hull: a candidate below
  the references' hull gets 0 and becomes a vertex, and every other candidate is then
  measured against it (two candidates in one system cannot both claim a new stable phase
  at the same composition range);
* ``hull_distance`` (eV/atom) is measured against the references **only**, and is negative
  when the candidate lies below their hull (Matbench Discovery's ``e_above_hull`` with
  ``allow_negative=True``) — how much a candidate would lower the known hull.

Candidates should be MLIP entries (``mlip_entry``); MP2020 corrections are (re)applied here
by default, which is idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.entries.computed_entries import ComputedEntry

from matfunnel.hull.elemental import e_form_vs_mp_elements
from matfunnel.hull.entries import process_entries
from matfunnel.hull.references import ReferenceSet

__all__ = ["build_phase_diagram", "compute_hull"]

_STABLE_TOL = 1e-8  # eV/atom


def _decomposition(decomp: dict) -> list[dict[str, Any]]:
    rows = [
        {"entry_id": e.entry_id, "formula": e.composition.reduced_formula, "amount": float(x)}
        for e, x in decomp.items()
        if x > 1e-12
    ]
    return sorted(rows, key=lambda r: -r["amount"])


def _elements(entries: Iterable[ComputedEntry]) -> set[str]:
    return {el.symbol for e in entries for el in e.composition.elements}


def _prepare(
    candidate_entries: Iterable[ComputedEntry], apply_corrections: bool
) -> tuple[list[ComputedEntry | None], list[str | None]]:
    """-> (entries aligned with candidates or None, rejection reasons aligned)."""
    candidates = list(candidate_entries)
    reasons: list[str | None] = []
    if not apply_corrections:
        return list[ComputedEntry | None](candidates), [None] * len(candidates)
    prepared: list[ComputedEntry | None] = []
    for cand in candidates:  # one by one to keep the alignment with the input
        out = process_entries([cand])
        prepared.append(out.entries[0] if out.entries else None)
        reasons.append(out.rejected[0]["reason"] if out.rejected else None)
    return prepared, reasons


def build_phase_diagram(
    candidate_entries: Sequence[ComputedEntry],
    reference_set: ReferenceSet,
    *,
    apply_corrections: bool = True,
) -> PhaseDiagram:
    """PhaseDiagram of references + candidates (candidates the hull cannot take are left out)."""
    prepared, _ = _prepare(candidate_entries, apply_corrections)
    ref_elements = _elements(reference_set.entries)
    usable = [e for e in prepared if e is not None and _elements([e]) <= ref_elements]
    return PhaseDiagram(list(reference_set.entries) + usable)


def compute_hull(
    candidate_entries: Sequence[ComputedEntry],
    reference_set: ReferenceSet,
    *,
    apply_corrections: bool = True,
) -> list[dict[str, Any]]:
    """Hull energies of each candidate (see the module docstring for the convention).

    Returns one dict per candidate, in input order, with keys:

    ``entry_id``, ``formula`` (reduced), ``composition`` (full formula), ``n_atoms``,
    ``energy_per_atom`` (corrected), ``uncorrected_energy_per_atom``,
    ``correction_per_atom``, ``e_form_per_atom`` (vs the PhaseDiagram's elemental
    references), ``e_form_per_atom_mp_elements`` (vs the MP 2023-02-07 elemental refs,
    Matbench Discovery's convention; None if an element has none), ``e_above_hull`` (>= 0,
    vs references + all candidates), ``hull_distance`` (vs references only, negative =
    below their hull), ``is_stable`` (on the joint hull), ``decomposition`` (products on the
    joint hull: ``[{"entry_id", "formula", "amount"}]``, amount = atom fraction; the
    candidate itself when stable), ``decomposition_vs_references`` (same vs references
    only), ``hull_entry_ids`` (ids of all entries on the joint hull), ``reference_label``,
    ``error`` (None, or why the candidate could not be placed — then the energy keys are
    None). Energies in eV/atom.
    """
    candidates = list(candidate_entries)
    prepared, reasons = _prepare(candidates, apply_corrections)
    ref_entries = list(reference_set.entries)
    ref_elements = _elements(ref_entries)
    for i, entry in enumerate(prepared):
        if entry is not None and not _elements([entry]) <= ref_elements:
            missing = sorted(_elements([entry]) - ref_elements)
            prepared[i], reasons[i] = None, f"elements {missing} not covered by the references"

    usable = [e for e in prepared if e is not None]
    pd_ref = PhaseDiagram(ref_entries)
    pd_all = PhaseDiagram(ref_entries + usable) if usable else pd_ref
    # the diagram holds only the ComputedEntry objects given to it (pymatgen types them as Entry)
    hull_ids = sorted({str(e.entry_id) for e in cast("set[ComputedEntry]", pd_all.stable_entries)})
    stable = {id(e) for e in pd_all.stable_entries}

    results = []
    for cand, entry, reason in zip(candidates, prepared, reasons, strict=True):
        row: dict[str, Any] = {
            "entry_id": cand.entry_id,
            "formula": cand.composition.reduced_formula,
            "composition": cand.composition.formula,
            "n_atoms": float(cand.composition.num_atoms),
            "reference_label": reference_set.label,
            "hull_entry_ids": hull_ids,
            "error": reason,
        }
        if entry is None:
            row.update(
                dict.fromkeys(
                    (
                        "energy_per_atom",
                        "uncorrected_energy_per_atom",
                        "correction_per_atom",
                        "e_form_per_atom",
                        "e_form_per_atom_mp_elements",
                        "e_above_hull",
                        "hull_distance",
                        "is_stable",
                        "decomposition",
                        "decomposition_vs_references",
                    )
                )
            )
            results.append(row)
            continue
        decomp, e_hull = pd_all.get_decomp_and_e_above_hull(entry, allow_negative=False)
        assert decomp is not None and e_hull is not None  # None only with on_error="ignore"; by default it raises
        comp = entry.composition
        hull_distance = entry.energy_per_atom - pd_ref.get_hull_energy_per_atom(comp)
        try:
            e_form_mp = e_form_vs_mp_elements(entry)
        except KeyError:
            e_form_mp = None
        row.update(
            {
                "energy_per_atom": float(entry.energy_per_atom),
                "uncorrected_energy_per_atom": float(entry.uncorrected_energy_per_atom),
                "correction_per_atom": float(entry.correction_per_atom),
                "e_form_per_atom": float(pd_all.get_form_energy_per_atom(entry)),
                "e_form_per_atom_mp_elements": None if e_form_mp is None else float(e_form_mp),
                "e_above_hull": max(float(e_hull), 0.0),
                "hull_distance": float(hull_distance),
                "is_stable": bool(id(entry) in stable or e_hull <= _STABLE_TOL),
                "decomposition": _decomposition(decomp),
                "decomposition_vs_references": _decomposition(pd_ref.get_decomposition(comp)),
            }
        )
        results.append(row)
    return results
