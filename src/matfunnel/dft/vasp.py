"""VASP route for users who have VASP: atomate2's MP-compatible GGA flow.

`vasp_flow` returns atomate2's ``MPGGADoubleRelaxStaticMaker().make(structure)``:
two MP GGA relaxations ("MP GGA relax 1", "MP GGA relax 2") followed by an MP GGA static
("MP GGA static"), with MPRelaxSet/MPStaticSet-style inputs (PBE, 520 eV, PAW_PBE
POTCARs, Hubbard U for oxides/fluorides, MP magmoms).  Its output is the static's
`emmet.core.tasks.TaskDoc`.

`vasp_entry` turns that TaskDoc (object or serialized dict) into a pymatgen
`ComputedStructureEntry` and, by default, applies `MaterialsProject2020Compatibility`,
so the energy can go on the same MP2020 hull as MP's own entries.

atomate2 is an optional dependency (``matfunnel[vasp]``); it is imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matfunnel.common.structures import as_structure


def vasp_flow(structure: Any, relax_maker: Any = None, static_maker: Any = None,
              name: str | None = None, prev_dir: str | Path | None = None,
              metadata: dict | None = None):
    """atomate2 MP GGA double-relax + static flow for one structure.

    Parameters
    ----------
    structure: pymatgen Structure.
    relax_maker / static_maker: override atomate2's defaults (``MPGGADoubleRelaxMaker``
        and ``MPGGAStaticMaker``); pass ``static_maker=False`` to skip the static.
    name: flow name (default atomate2's "MP GGA relax").
    prev_dir: previous VASP directory to copy outputs from (atomate2 semantics).
    metadata: stored on the flow (e.g. {"candidate_id": ...}).

    Returns a jobflow `Flow`; ``flow.output`` is the final (static) TaskDoc.
    Running it needs VASP, POTCARs and atomate2's VASP_CMD configuration.
    """
    from atomate2.vasp.flows.mp import MPGGADoubleRelaxStaticMaker

    kwargs: dict[str, Any] = {}
    if relax_maker is not None:
        kwargs["relax_maker"] = relax_maker
    if static_maker is not None:
        kwargs["static_maker"] = static_maker or None
    if name is not None:
        kwargs["name"] = name
    maker = MPGGADoubleRelaxStaticMaker(**kwargs)
    flow = maker.make(structure, prev_dir=prev_dir)
    if metadata:
        flow.metadata = {**(flow.metadata or {}), **metadata}
    return flow


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def vasp_entry(taskdoc: Any, apply_mp2020: bool = True, entry_id: str | None = None):
    """ComputedStructureEntry from an atomate2/emmet VASP TaskDoc (object or dict).

    Uses ``taskdoc.entry`` (energy, MP parameters: run_type, potcar_spec, hubbards) and
    the final structure (``taskdoc.output.structure``, else ``taskdoc.structure``).
    With ``apply_mp2020`` the MP2020 corrections are applied; returns None if the
    calculation is not MP2020-compatible (e.g. wrong POTCARs or functional).
    """
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    entry = _get(taskdoc, "entry")
    if entry is None:
        raise ValueError("TaskDoc has no 'entry'; was the VASP calculation completed?")
    if isinstance(entry, dict):
        entry = ComputedEntry.from_dict(entry)
    structure = _get(_get(taskdoc, "output"), "structure") or _get(taskdoc, "structure")
    if structure is None:
        raise ValueError("TaskDoc has no final structure")
    structure = as_structure(structure, str(entry_id or "") or None)
    if structure.composition.reduced_composition != entry.composition.reduced_composition:
        raise ValueError(f"entry composition {entry.composition} does not match "
                         f"structure {structure.composition}")
    eid = entry_id or entry.entry_id or _get(taskdoc, "task_id")
    cse = ComputedStructureEntry(
        structure=structure,
        energy=entry.uncorrected_energy * structure.composition.num_atoms
        / entry.composition.num_atoms,
        parameters=dict(entry.parameters or {}),
        data=dict(entry.data or {}),
        entry_id=None if eid is None else str(eid),
    )
    if not apply_mp2020:
        return cse
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility().process_entry(cse)


def vasp_entry_from_dir(path: str | Path, apply_mp2020: bool = True,
                        entry_id: str | None = None):
    """Parse a finished VASP directory (emmet `TaskDoc.from_directory`) into an entry."""
    from emmet.core.tasks import TaskDoc

    return vasp_entry(TaskDoc.from_directory(Path(path)), apply_mp2020=apply_mp2020,
                      entry_id=entry_id)


def vasp_result(taskdoc: Any, apply_mp2020: bool = True) -> dict[str, Any]:
    """Plain-dict summary of a VASP TaskDoc for the funnel (never raises).

    Keys: energy (eV, uncorrected), energy_per_atom, corrected_energy_per_atom
    (MP2020; None if incompatible), correction_per_atom, formula, entry (the
    ComputedStructureEntry as dict, or None), mp2020_compatible, error.
    """
    out: dict[str, Any] = {"energy": None, "energy_per_atom": None,
                           "corrected_energy_per_atom": None, "correction_per_atom": None,
                           "formula": None, "entry": None, "mp2020_compatible": None,
                           "error": None}
    try:
        raw = vasp_entry(taskdoc, apply_mp2020=False)
        out["energy"] = float(raw.energy)
        out["energy_per_atom"] = float(raw.energy_per_atom)
        out["formula"] = raw.composition.reduced_formula
        out["entry"] = raw.as_dict()
        if apply_mp2020:
            corr = vasp_entry(taskdoc, apply_mp2020=True)
            out["mp2020_compatible"] = corr is not None
            if corr is not None:
                out["corrected_energy_per_atom"] = float(corr.energy_per_atom)
                out["correction_per_atom"] = float(corr.correction_per_atom)
                out["entry"] = corr.as_dict()
    except Exception as exc:
        out["error"] = f"VASP TaskDoc could not be read: {type(exc).__name__}: {exc}"
    return out
