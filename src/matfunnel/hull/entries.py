"""MLIP energies as Materials-Project-like GGA(+U) entries, and the MP2020 corrections.

An MLIP trained on MP relaxations (e.g. CHGNet, MACE-MP) predicts *uncorrected* GGA/GGA+U
total energies. To compare such an energy with MP data it must be labelled like an MP
calculation — run type, Hubbard U values and POTCARs of MP's ``MPRelaxSet`` — so that
``MaterialsProject2020Compatibility`` applies the same anion and GGA/GGA+U mixing
corrections MP applies. This is the convention of Matbench Discovery, which puts the model
energy into a ComputedStructureEntry carrying MP's parameters and then runs
``MaterialsProject2020Compatibility().process_entries`` on it.

There is no POTCAR here, so the POTCAR check is switched off (``check_potcar=False``); the
POTCAR labels are still written so that the check would pass if switched on.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pymatgen.analysis.compatibility import CompatibilityError, MaterialsProject2020Compatibility
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
from pymatgen.io.vasp.sets import MPRelaxSet

__all__ = [
    "ProcessedEntries",
    "mlip_entry",
    "mp_compatibility",
    "mp_parameters",
    "process_entries",
]


def mp_hubbards(composition: Composition | str) -> dict[str, float]:
    """MP's Hubbard U values (eV) for ``composition``, as ``MPRelaxSet`` sets them.

    U is used only when the most electronegative element is O or F, on Co, Cr, Fe, Mn, Mo,
    Ni, V and W (the table is read from pymatgen's MPRelaxSet, the same table the
    compatibility scheme checks against). Returns ``{}`` for a plain GGA composition.
    """
    comp = Composition(composition)
    elements = [el for el in comp.elements if comp[el] > 0]
    if not elements:
        return {}
    # same ordering rule as MPRelaxSet / MaterialsProject2020Compatibility
    most_electroneg = sorted(elements, key=lambda el: el.X)[-1].symbol
    table = MPRelaxSet.CONFIG["INCAR"]["LDAUU"].get(most_electroneg, {})
    return {el.symbol: float(table[el.symbol]) for el in elements if float(table.get(el.symbol, 0)) > 0}


def mp_parameters(composition: Composition | str) -> dict[str, Any]:
    """``ComputedEntry.parameters`` of an MP GGA(+U) calculation of ``composition``.

    Keys: ``run_type`` ("GGA" or "GGA+U"), ``is_hubbard``, ``hubbards`` (element -> U, eV),
    ``potcar_symbols`` (e.g. "PAW_PBE Mn_pv") and ``potcar_spec`` (``[{"titel", "hash"}]``,
    hash None: unknown without the POTCAR files).
    """
    comp = Composition(composition)
    hubbards = mp_hubbards(comp)
    potcars = MPRelaxSet.CONFIG["POTCAR"]
    functional = MPRelaxSet.CONFIG.get("POTCAR_FUNCTIONAL", "PBE")
    symbols = [f"PAW_{functional} {potcars.get(el.symbol, el.symbol)}" for el in comp.elements]
    return {
        "run_type": "GGA+U" if hubbards else "GGA",
        "is_hubbard": bool(hubbards),
        "hubbards": hubbards,
        "potcar_symbols": symbols,
        "potcar_spec": [{"titel": sym, "hash": None} for sym in symbols],
    }


def mlip_entry(
    structure: Structure,
    energy: float,
    entry_id: str,
    data: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
) -> ComputedStructureEntry:
    """A ComputedStructureEntry for an MLIP total energy, labelled as an MP GGA(+U) run.

    The entry has no energy corrections yet; run :func:`process_entries` on it.

    Parameters
    ----------
    structure
        The (relaxed) structure.
    energy
        MLIP total energy of ``structure`` in eV (not per atom), uncorrected.
    entry_id
        Identifier, kept through the hull stage.
    data
        Extra metadata stored in ``entry.data`` (copied).
    model
        Name of the potential, stored as ``data["mlip_model"]``.
    """
    entry_data = dict(data or {})
    entry_data.setdefault("energy_source", "mlip")
    if model is not None:
        entry_data["mlip_model"] = model
    return ComputedStructureEntry(
        structure=structure,
        energy=float(energy),
        parameters=mp_parameters(structure.composition),
        data=entry_data,
        entry_id=entry_id,
    )


def mp_compatibility(check_potcar: bool = False) -> MaterialsProject2020Compatibility:
    """The MP2020 correction scheme as used here (POTCAR check off by default: no POTCARs)."""
    return MaterialsProject2020Compatibility(check_potcar=check_potcar)


class ProcessedEntries(NamedTuple):
    """Result of :func:`process_entries`.

    entries: corrected copies of the accepted entries, in input order.
    rejected: one dict per rejected entry: ``entry_id``, ``formula``, ``reason``.
    """

    entries: list[ComputedEntry]
    rejected: list[dict[str, Any]]


def _short_reason(exc: Exception) -> str:
    msg = str(exc)
    # pymatgen appends the whole entry dict to the invalid-U message
    cut = msg.find(" for {")
    return msg[:cut] if cut > 0 else msg


# elements whose MP2020 anion correction depends on the guessed oxidation states
_OXI_DEPENDENT_ANIONS = frozenset({"Br", "I", "Se", "Si", "Sb", "Te", "H", "N", "F", "Cl"})


def _has_anion_correction(entry: ComputedEntry) -> bool:
    return any(el.symbol in _OXI_DEPENDENT_ANIONS for el in entry.composition.elements)


def process_entries(
    entries: Iterable[ComputedEntry],
    compatibility: MaterialsProject2020Compatibility | None = None,
) -> ProcessedEntries:
    """Apply MaterialsProject2020Compatibility to copies of ``entries``.

    Any previous corrections are replaced (``clean=True``), so this is idempotent and safe to
    run on entries that were already processed (e.g. MP's). Entries the scheme rejects
    (wrong run type, wrong or missing U for a transition-metal oxide/fluoride, conflicting
    existing adjustments) are returned in ``rejected`` with the reason instead of being
    silently dropped. The input entries are not modified.
    """
    compat = compatibility if compatibility is not None else mp_compatibility()
    accepted: list[ComputedEntry] = []
    rejected: list[dict[str, Any]] = []
    for entry in entries:
        work = copy.deepcopy(entry)
        reason = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = compat.process_entry(work, inplace=True, clean=True, on_error="raise")
            except CompatibilityError as exc:
                out, reason = None, _short_reason(exc)
        for w in caught:
            text = str(w.message)
            if "energy adjustment" in text:
                continue  # becomes the rejection reason
            if text.startswith("Failed to guess oxidation states") and not _has_anion_correction(entry):
                continue  # irrelevant: no element whose correction depends on oxidation states
            warnings.warn(w.message, w.category, stacklevel=2)
        if out is None:
            if reason is None:
                msgs = [str(w.message) for w in caught if "energy adjustment" in str(w.message)]
                reason = msgs[0] if msgs else "rejected by MaterialsProject2020Compatibility"
            rejected.append(
                {"entry_id": entry.entry_id, "formula": entry.composition.formula, "reason": reason}
            )
            continue
        accepted.append(out)
    return ProcessedEntries(accepted, rejected)
