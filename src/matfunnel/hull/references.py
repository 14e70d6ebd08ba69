"""Reference phases for a chemical system's convex hull.

Order of preference:

(a) **mp-api** — when an API key is given or ``MP_API_KEY`` is set: the Materials Project's
    GGA/GGA+U entries of the system and all its subsystems (cached on disk, see
    :mod:`matfunnel.hull.mp_cache`), re-processed with MaterialsProject2020Compatibility so
    they carry exactly the corrections the candidates get. MLIP competing phases are *not*
    mixed into an MP DFT hull (their count is reported in ``details``), following Matbench
    Discovery: MLIP candidates are judged against the DFT hull.
(b) **offline** — competing phases relaxed with the same potential (entries from
    :func:`matfunnel.hull.entries.mlip_entry`, MP2020-corrected here), elements in their
    reference structures included, so the hull is self-consistent; the MP elemental reference
    entries shipped with the package (DFT, 2023-02-07) are the corners only for elements with no
    MLIP elemental phase, and otherwise measure the potential's elemental offsets.

If the MP query fails, (b) is used and the (key-masked) error is recorded in the label
and ``details["mp_api_error"]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from monty.json import MSONable
from pymatgen.entries.computed_entries import ComputedEntry

from matfunnel.hull.elemental import MP_ELEMENTAL_REFS_DATE, elemental_reference_entries
from matfunnel.hull.entries import process_entries
from matfunnel.hull.mp_cache import MPFetchError, fetch_mp_entries, normalize_chemsys

__all__ = ["MP_API_KEY_ENV", "ReferenceSet", "reference_entries"]

log = logging.getLogger(__name__)

MP_API_KEY_ENV = "MP_API_KEY"


@dataclass
class ReferenceSet(MSONable):
    """Reference entries of a chemical system plus a human-readable account of their origin.

    entries: MP2020-corrected entries (elements within ``details["chemsys"]``).
    label: which reference was used, e.g. ``"mp-api (143 entries, cached 2026-01-05)"`` or
        ``"offline: MP elemental refs 2023-02-07 + 3 MLIP competing phases"``.
    details: ``source`` ("mp-api" | "offline"), ``chemsys``, ``n_entries``, ``rejected``
        (entries the compatibility scheme dropped, with reasons) and source-specific keys.
    """

    entries: list[ComputedEntry]
    label: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def chemsys(self) -> str:
        """The chemical system of the references (``details["chemsys"]``; empty when unknown)."""
        return self.details.get("chemsys", "")


def _within(entry: ComputedEntry, elements: set[str]) -> bool:
    return {el.symbol for el in entry.composition.elements} <= elements


def _from_mp(elements: list[str], api_key: str, cache_dir) -> ReferenceSet:
    raw, meta = fetch_mp_entries(elements, api_key, cache_dir)
    processed = process_entries(raw)
    entries = list(processed.entries)
    # MP always has the elements; guard anyway so a PhaseDiagram can always be built
    have = {e.composition.elements[0].symbol for e in entries if e.composition.is_element}
    missing = [el for el in elements if el not in have]
    entries += list(elemental_reference_entries(missing).values())
    when = meta["retrieved_at"][:10]
    how = "cached" if meta["cache_hit"] else "retrieved"
    label = f"mp-api ({len(processed.entries)} entries, {how} {when})"
    if missing:
        label += f" + MP elemental refs {MP_ELEMENTAL_REFS_DATE} for {'-'.join(missing)}"
    details = {
        "source": "mp-api",
        "chemsys": "-".join(elements),
        "n_entries": len(entries),
        "thermo_type": meta["thermo_type"],
        "retrieved_at": meta["retrieved_at"],
        "cache_file": meta["cache_file"],
        "cache_hit": meta["cache_hit"],
        "rejected": processed.rejected,
        "added_mp_elemental_refs": missing,
    }
    return ReferenceSet(entries, label, details)


def _offline(elements: list[str], mlip_competing: list[ComputedEntry]) -> ReferenceSet:
    """Self-consistent offline references.

    Every element with at least one MLIP-relaxed elemental phase takes its corner from the
    potential itself (so candidates, binaries and corners all come from one energy model);
    the shipped MP elemental entry is then left out of the hull and its offset from the MLIP
    elemental ground state is recorded in ``details["mlip_minus_mp_elemental"]`` (eV/atom).
    Elements without an MLIP elemental phase fall back to the MP entry (said in the label).
    """
    mp_elemental = elemental_reference_entries(elements)
    inside = [e for e in mlip_competing if _within(e, set(elements))]
    processed = process_entries(inside)
    mlip_elemental: dict[str, float] = {}
    for e in processed.entries:
        if e.composition.is_element:
            el = e.composition.elements[0].symbol
            mlip_elemental[el] = min(mlip_elemental.get(el, float("inf")), e.energy_per_atom)
    fallback = [el for el in elements if el not in mlip_elemental]
    corners = [mp_elemental[el] for el in fallback]
    n = len(processed.entries)
    label = f"offline: {n} MLIP competing phases"
    if fallback:
        label += f" + MP elemental refs {MP_ELEMENTAL_REFS_DATE} for {'-'.join(fallback)}"
    details = {
        "source": "offline",
        "chemsys": "-".join(elements),
        "n_entries": len(corners) + n,
        "elemental_refs": {el: ("mlip" if el in mlip_elemental else f"MP {MP_ELEMENTAL_REFS_DATE}")
                           for el in elements},
        "mlip_minus_mp_elemental": {el: mlip_elemental[el] - mp_elemental[el].energy_per_atom
                                    for el in mlip_elemental},
        "n_mlip_competing": n,
        "n_mlip_outside_chemsys": len(mlip_competing) - len(inside),
        "rejected": processed.rejected,
    }
    return ReferenceSet(corners + processed.entries, label, details)


def reference_entries(
    chemsys: str | Iterable[str],
    *,
    mlip_competing: Iterable[ComputedEntry] = (),
    mp_api_key: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    offline: bool = False,
) -> ReferenceSet:
    """Reference entries for the hull of ``chemsys`` ("Li-Fe-O" or ["Li", "Fe", "O"]).

    Parameters
    ----------
    chemsys
        The chemical system; all subsystems are included.
    mlip_competing
        Competing phases relaxed with the candidates' potential, as entries from ``mlip_entry`` (used
        offline only; entries outside ``chemsys`` are skipped).
    mp_api_key
        Materials Project API key; None reads ``$MP_API_KEY``. Never logged, cached or returned.
    cache_dir
        MP cache directory (default ``~/.cache/matfunnel/mp``).
    offline
        Force (b) even when a key is available.
    """
    elements = normalize_chemsys(chemsys)
    competing = list(mlip_competing)
    key = mp_api_key if mp_api_key is not None else os.environ.get(MP_API_KEY_ENV)
    if key and not offline:
        try:
            refs = _from_mp(elements, key, cache_dir)
        except MPFetchError as exc:
            error = str(exc).replace(key, "***")
            log.warning("Materials Project unavailable (%s); using offline references", error)
            refs = _offline(elements, competing)
            refs.label += " (mp-api failed)"
            refs.details["mp_api_error"] = error
            return refs
        refs.details["n_mlip_competing_ignored"] = len(competing)
        return refs
    return _offline(elements, competing)
