"""Training data: labelled frames read from extxyz, JSON, phonopy references and a campaign's DFT store.

Every reader returns ``(frames, errors)``: the :class:`~matfunnel.train.frames.Frame` objects it could read
and one :class:`~matfunnel.train.frames.TrainingDataError` per file or frame it could not; it never raises for
bad data. :func:`load_frames` reads many paths at once, checks every frame (:func:`frame_problem`) and drops
the bad ones, one error each, naming the file and the frame; it raises only when no frame at all is usable.

Units and signs (those of :class:`~matfunnel.train.frames.Frame`): energies eV (total), forces eV/Å, stress GPa
with ASE's sign (positive = tensile), magnetic moments μB as magnitudes. Frame indices are 0-based, in file
order (``ase.io.read(path, index=i)`` gives frame ``i``); a frame's ``source`` is ``"<file>#<index>"``.

* :func:`read_extxyz` - extended XYZ (ASE), labels from the attached calculator or ``REF_*`` keys.
* :func:`read_json` / :func:`write_json` - a JSON list of frame documents (``.json`` or ``.json.gz``).
* :func:`read_phonopy_dataset` - the displaced supercells of a phonopy reference folder with their forces.
* :func:`read_store_dft` - the GPAW (or atomate2 VASP) calculations in a campaign's job store.
* :func:`load_frames` - any of the above by path, validated; :func:`dataset_hash` - a content hash.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure

from matfunnel.common.readers import StructureFileError, read_text, structure_problem
from matfunnel.common.readers.pmg_json import _disallowed_class, _json_item
from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.train.frames import Frame, TrainingDataError

__all__ = [
    "EXTXYZ_SUFFIXES",
    "JSON_SUFFIXES",
    "LABELS",
    "MAX_JSON_BYTES",
    "dataset_hash",
    "frame_problem",
    "load_frames",
    "read_extxyz",
    "read_json",
    "read_phonopy_dataset",
    "read_store_dft",
    "write_json",
]

#: the labels a frame may carry (``require`` of :func:`load_frames` names some of them)
LABELS = ("energy", "forces", "stress", "magmoms")
#: file names :func:`load_frames` reads as extended XYZ (optionally compressed: .gz, .bz2, .xz)
EXTXYZ_SUFFIXES = (".extxyz", ".xyz")
#: file names :func:`load_frames` reads as JSON frame lists
JSON_SUFFIXES = (".json", ".json.gz")
#: largest JSON training file read (bytes, after decompression)
MAX_JSON_BYTES = 2**30
#: a cell with less volume (Å^3) is degenerate
MIN_VOLUME = 1e-3
#: 1 kbar (VASP's stress unit) in GPa
KBAR_TO_GPA = 0.1
_COMPRESSIONS = (".gz", ".bz2", ".xz")
_ERRORS_SHOWN = 5


# ------------------------------------------------------------------------------------------------ helpers
def _array(value: Any, what: str) -> np.ndarray:
    """``value`` as a float array, or a ValueError naming ``what``."""
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not an array of numbers") from None


def _energy(value: Any) -> float:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError("the energy is not a number") from None
    if arr.size != 1:
        raise ValueError(f"the energy is not one number (shape {arr.shape})")
    return float(arr.reshape(()))


def _stress_3x3(value: Any, what: str) -> np.ndarray:
    """A stress given as Voigt 6 (xx, yy, zz, yz, xz, xy), 9 values or 3x3 -> a 3x3 array (same units)."""
    arr = _array(value, what)
    if arr.size == 6:
        xx, yy, zz, yz, xz, xy = arr.reshape(6)
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if arr.size == 9:
        return arr.reshape(3, 3)
    raise ValueError(f"{what} has {arr.size} values (expected Voigt 6, 9 or 3x3)")


def _magnitudes(value: Any, what: str) -> np.ndarray:
    """Per-site moments as magnitudes: collinear moments lose their sign, vectors give their length."""
    arr = _array(value, what)
    return np.linalg.norm(arr, axis=1) if arr.ndim == 2 and arr.shape[1] == 3 else np.abs(arr)


def _structure_from_dict(d: Any, what: str) -> Structure:
    """A Structure from its dict, refusing any ``@module``/``@class`` outside the structure-file allowlist."""
    problem = _disallowed_class(d)
    if problem:
        raise ValueError(problem)
    item = _json_item(d, what)
    if item.structure is None:
        raise ValueError(item.error or f"{what} is not a structure")
    return item.structure


def _exc_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _frame_id(frame: Frame) -> str:
    return frame.source.rsplit("#", 1)[1] if "#" in frame.source else frame.source or "?"


# ------------------------------------------------------------------------------------------------ extxyz
def read_extxyz(path: str | os.PathLike) -> tuple[list[Frame], list[TrainingDataError]]:
    """Read every frame of an extended XYZ file (``.extxyz``/``.xyz``, optionally ``.gz``/``.bz2``/``.xz``).

    Labels come from ``REF_*`` keys when present (``info["REF_energy"]``, ``arrays["REF_forces"]``,
    ``info["REF_stress"]``, the MACE convention for reference labels), else from the calculator ASE attaches
    on reading (``energy`` (else ``free_energy``), ``forces``, ``stress``, ``magmoms``), else from plain
    ``info``/``arrays`` keys of those names. A ``virial`` (eV) stands in for a missing stress
    (stress = -virial / volume). Stress is read in ASE units and sign (eV/Å^3, positive = tensile, Voigt 6,
    9 values or 3x3) and converted to GPa. ``info["code"]`` (``"vasp"``, ``"gpaw"``) names the code of the
    energies (default ``"unknown"``); the rest of ``info`` is kept in :attr:`Frame.info`.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    frames : list of Frame
        The frames read, in file order (sources ``"<path>#<index>"``, 0-based); not yet validated (see
        :func:`frame_problem`).
    errors : list of TrainingDataError
        One per frame that cannot be used (not periodic in all three directions, a degenerate cell, labels of
        the wrong type) and one for the file when it cannot be read at all; a parse error part-way keeps the
        frames before it and names the first frame not read.
    """
    import ase.io

    name = str(path)
    frames: list[Frame] = []
    errors: list[TrainingDataError] = []
    if not Path(path).is_file():
        return [], [TrainingDataError(name, "file not found (or not a regular file)")]
    iterator = ase.io.iread(name, index=":", format="extxyz")
    index = 0
    while True:
        try:
            atoms = next(iterator)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - ASE's parser raises many kinds; name the file and frame
            if index == 0:
                errors.append(TrainingDataError(name, f"cannot be parsed as extended XYZ ({_exc_text(exc)})"))
            else:
                errors.append(TrainingDataError(f"{name}#{index}", f"this frame cannot be parsed; it and the rest "
                                                                   f"of the file are not read ({_exc_text(exc)})"))
            break
        try:
            frames.append(_atoms_frame(atoms, f"{name}#{index}"))
        except ValueError as exc:
            errors.append(TrainingDataError(f"{name}#{index}", str(exc)))
        index += 1
    if not frames and not errors:
        errors.append(TrainingDataError(name, "no frame in the file"))
    return frames, errors


def _atoms_frame(atoms: Any, source: str) -> Frame:
    """One ASE ``Atoms`` (as read from extxyz) -> a Frame; ValueError names what is wrong."""
    if not all(atoms.pbc):
        raise ValueError(f"the frame is not periodic (pbc={[bool(p) for p in atoms.pbc]}); training frames must "
                         "be periodic in all three directions")
    cell = np.asarray(atoms.cell, dtype=float)
    pos = np.asarray(atoms.positions, dtype=float)
    if not np.all(np.isfinite(cell)) or not np.all(np.isfinite(pos)):
        raise ValueError("the cell or the positions are not finite numbers (NaN/inf)")
    vol = abs(float(np.linalg.det(cell)))
    if not vol > MIN_VOLUME:
        raise ValueError(f"zero-volume cell (volume {vol:.3g} Å^3)")
    structure = Structure(Lattice(cell), atoms.get_chemical_symbols(), pos, coords_are_cartesian=True)
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    info, arrays = dict(atoms.info), atoms.arrays

    def pick(key: str) -> Any:
        for source_dict, k in ((info, f"REF_{key}"), (arrays, f"REF_{key}"), (results, key), (info, key),
                               (arrays, key)):
            if k in source_dict and source_dict[k] is not None:
                return source_dict[k]
        return None

    energy = pick("energy")
    if energy is None:
        energy = pick("free_energy")
    forces, stress, magmoms = pick("forces"), pick("stress"), pick("magmoms")
    if stress is None and (virial := pick("virial")) is not None:
        stress = -_stress_3x3(virial, "the virial") / vol
    code = info.pop("code", "unknown")
    for k in ("energy", "free_energy", "forces", "stress", "virial", "magmoms"):
        info.pop(k, None)
        info.pop(f"REF_{k}", None)
    return Frame(structure=structure,
                 energy=None if energy is None else _energy(energy),
                 forces=None if forces is None else _array(forces, "the forces"),
                 stress=None if stress is None else _stress_3x3(stress, "the stress") * EV_A3_TO_GPA,
                 magmoms=None if magmoms is None else _magnitudes(magmoms, "the magnetic moments"),
                 source=source, code=str(code), info=info)


# -------------------------------------------------------------------------------------------------- JSON
def read_json(path: str | os.PathLike) -> tuple[list[Frame], list[TrainingDataError]]:
    """Read a JSON file of frames (``.json``, or gzip-compressed ``.json.gz``).

    The file holds a list of frame documents or ``{"frames": [...]}``. A frame document has ``structure``
    (a pymatgen ``Structure.as_dict()``), ``energy`` (eV, total), ``forces`` (n x 3, eV/Å), ``stress`` (GPa,
    positive = tensile: 3x3, 9 values or Voigt 6), ``magmoms`` (n, μB), optionally ``code`` and ``info``;
    any label may be missing or null. :func:`write_json` writes this format.

    The file is decoded with :mod:`json` only: every ``@module``/``@class`` pair in it must name a pymatgen
    structure class (:data:`matfunnel.common.readers.ALLOWED_CLASSES`), checked before anything is built, so
    a file cannot make the reader import a module.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    frames : list of Frame
        The frames read, in file order (sources ``"<path>#<index>"``); not yet validated.
    errors : list of TrainingDataError
        One per frame document that cannot be read, or one for the file (missing, over
        :data:`MAX_JSON_BYTES`, not UTF-8 JSON, a refused class, not a list of frames).
    """
    name = str(path)
    try:
        text = read_text(Path(path), name, MAX_JSON_BYTES)
        data = json.loads(text)
    except StructureFileError as exc:
        return [], [TrainingDataError(name, exc.problem)]
    except RecursionError:
        return [], [TrainingDataError(name, "JSON nested too deeply")]
    except json.JSONDecodeError as exc:
        return [], [TrainingDataError(name, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")]
    problem = _disallowed_class(data)
    if problem:
        return [], [TrainingDataError(name, problem)]
    if isinstance(data, dict) and "frames" in data:
        data = data["frames"]
    if not isinstance(data, list):
        return [], [TrainingDataError(name, "not a list of frames (expected a JSON list or {\"frames\": [...]})")]
    if not data:
        return [], [TrainingDataError(name, "no frame in the file")]
    frames: list[Frame] = []
    errors: list[TrainingDataError] = []
    for i, doc in enumerate(data):
        source = f"{name}#{i}"
        try:
            frames.append(frame_from_doc(doc, source))
        except ValueError as exc:
            errors.append(TrainingDataError(source, str(exc)))
    return frames, errors


def frame_from_doc(doc: Any, source: str) -> Frame:
    """A frame from one frame document (the format of :func:`read_json`); ValueError says what is wrong."""
    if not isinstance(doc, dict) or "structure" not in doc:
        raise ValueError("not a frame document (a JSON object with a 'structure')")
    structure = _structure_from_dict(doc["structure"], "the structure")

    def get(key: str) -> Any:
        return doc.get(key)

    info = doc.get("info")
    return Frame(structure=structure,
                 energy=None if get("energy") is None else _energy(get("energy")),
                 forces=None if get("forces") is None else _array(get("forces"), "the forces"),
                 stress=None if get("stress") is None else _stress_3x3(get("stress"), "the stress"),
                 magmoms=None if get("magmoms") is None else _magnitudes(get("magmoms"), "the magnetic moments"),
                 source=source, code=str(doc.get("code") or "unknown"),
                 info=dict(info) if isinstance(info, dict) else {})


def _plain(value: Any) -> Any:
    """JSON-able copy of frame info values (numpy arrays and scalars to lists and floats)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def frame_to_doc(frame: Frame) -> dict[str, Any]:
    """The JSON frame document of ``frame`` (what :func:`write_json` writes and :func:`frame_from_doc` reads)."""
    f = frame
    return {"structure": f.structure.as_dict(), "energy": f.energy,
            "forces": None if f.forces is None else np.asarray(f.forces).tolist(),
            "stress": None if f.stress is None else np.asarray(f.stress).tolist(),
            "magmoms": None if f.magmoms is None else np.asarray(f.magmoms).tolist(),
            "code": f.code, "info": _plain(f.info)}


def write_json(frames: Iterable[Frame], path: str | os.PathLike) -> Path:
    """Write ``frames`` as a JSON frame list that :func:`read_json` reads (gzip-compressed when ``.gz``).

    Parameters
    ----------
    frames
        The frames.
    path
        The file (its folder must exist).

    Returns
    -------
    Path
        The file written.
    """
    docs = [frame_to_doc(f) for f in frames]
    path = Path(path)
    text = json.dumps({"frames": docs})
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- phonopy
def read_phonopy_dataset(folder: str | os.PathLike) -> tuple[list[Frame], list[TrainingDataError]]:
    """The displaced supercells of a phonopy reference folder, with their DFT forces.

    The folder is laid out as :mod:`matfunnel.phonons.dft_reference` expects: ``phonopy.yaml`` (or
    ``phonopy_disp.yaml``/``phonon.yaml``, optionally ``.xz``/``.gz``/``.bz2``) with the displacements, and
    their forces in it or in a ``FORCE_SETS`` beside it. It is loaded with phonopy (no force constants, no
    symmetry search). The shared references (``shared/data/phonons/pbe-reference``) are VASP PBE
    calculations: their energies (if any) are on the VASP scale, so the frames have ``code="vasp"``; a dataset
    whose yaml names another calculator is converted to Å and eV/Å and has ``code="unknown"``.

    Parameters
    ----------
    folder
        The reference folder.

    Returns
    -------
    frames : list of Frame
        One per displacement, in dataset order (source ``"<folder>#<displacement index>"``, 0-based): the
        displaced supercell, its forces, its energy when the dataset has supercell energies (else None), no
        stress; ``info`` holds ``material_id``, ``displaced_atom`` and ``displacement`` (Å) for
        single-atom displacements.
    errors : list of TrainingDataError
        One for the folder when it cannot be read, one per displacement without forces or with forces of
        the wrong shape.
    """
    import phonopy
    from phonopy.interface.calculator import get_calculator_physical_units

    from matfunnel.phonons.dft_reference import FORCE_SETS_NAMES, YAML_NAMES, _decompressed, _find

    folder = Path(folder)
    name = str(folder)
    if not folder.is_dir():
        return [], [TrainingDataError(name, "not a directory")]
    yaml = _find(folder, YAML_NAMES)
    if yaml is None:
        return [], [TrainingDataError(name, f"no {' / '.join(YAML_NAMES)} (optionally .xz/.gz/.bz2) found")]
    fsets = _find(folder, FORCE_SETS_NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fs_path = _decompressed(fsets, Path(tmp)) if fsets else None
            ph = phonopy.load(str(yaml), force_sets_filename=str(fs_path) if fs_path else None, produce_fc=False,
                              is_symmetry=False, is_nac=False, log_level=0)
        except Exception as exc:  # noqa: BLE001 - phonopy raises many kinds; name the folder
            return [], [TrainingDataError(name, f"cannot read {yaml.name}{' / ' + fsets.name if fsets else ''}: "
                                                f"{type(exc).__name__}: {str(exc)[:200]}")]
    calculator = ph.calculator or "vasp"
    try:
        units = get_calculator_physical_units(calculator)
    except Exception:  # noqa: BLE001
        return [], [TrainingDataError(name, f"unknown phonopy calculator {calculator!r}: units unknown")]
    return _phonopy_frames(ph, name, folder.name, calculator, units)


def _phonopy_frames(ph: Any, name: str, material_id: str, calculator: str,
                    units: Any) -> tuple[list[Frame], list[TrainingDataError]]:
    dataset = ph.dataset or {}
    n_atoms = len(ph.supercell)
    if "first_atoms" in dataset:
        disps = dataset["first_atoms"]
        forces_list = [d.get("forces") for d in disps]
        energies = [d.get("supercell_energy") for d in disps]
        moved: list[dict] = [{"displaced_atom": int(d["number"]),
                              "displacement": (np.asarray(d["displacement"], float) * units.distance_to_A).tolist()}
                             for d in disps]
    elif dataset.get("displacements") is not None:
        n = len(dataset["displacements"])
        forces_list = list(dataset["forces"]) if dataset.get("forces") is not None else [None] * n
        energies = list(dataset.get("supercell_energies") or [None] * n)
        moved = [{} for _ in range(n)]
    else:
        return [], [TrainingDataError(name, "no displacement dataset (no displacements in the yaml and no "
                                            "FORCE_SETS)")]
    if not forces_list:
        return [], [TrainingDataError(name, "the displacement dataset is empty")]
    code = "vasp" if calculator == "vasp" else "unknown"
    ideal = ph.supercell
    baseline = Structure(Lattice(np.asarray(ideal.cell, dtype=float) * units.distance_to_A), list(ideal.symbols),
                         np.asarray(ideal.scaled_positions, dtype=float))
    frames: list[Frame] = []
    errors: list[TrainingDataError] = []
    for i, cell in enumerate(ph.supercells_with_displacements):
        source = f"{name}#{i}"
        if forces_list[i] is None:
            errors.append(TrainingDataError(source, f"displacement {i} has no forces (missing force sets)"))
            continue
        forces = np.asarray(forces_list[i], dtype=float) * units.force_to_eVperA
        if forces.shape != (n_atoms, 3):
            errors.append(TrainingDataError(source, f"mismatched number of atoms: forces for {len(forces)} atoms, "
                                                    f"supercell has {n_atoms}"))
            continue
        energy = energies[i]
        structure = Structure(Lattice(np.asarray(cell.cell, dtype=float) * units.distance_to_A), list(cell.symbols),
                              np.asarray(cell.scaled_positions, dtype=float))
        frames.append(Frame(structure=structure,
                            energy=None if energy is None else float(energy) * units.energy_to_eV,
                            forces=forces, stress=None, magmoms=None, source=source, code=code,
                            info={"material_id": material_id, "phonopy_calculator": calculator, **moved[i]},
                            baseline=baseline))
    return frames, errors


# ------------------------------------------------------------------------------------------------- store
def read_store_dft(store: Any) -> tuple[list[Frame], list[TrainingDataError]]:
    """The DFT calculations a campaign's DFT stage stored, as frames.

    What the stage stores (:mod:`matfunnel.dft.gate`): with GPAW, one ``gpaw <id>`` job per unique structure
    (the gated candidates and their competing phases), whose output is the full :func:`matfunnel.dft.run_gpaw`
    record: the final ``structure``, ``energy`` (eV, zero-smearing total; ``free_energy`` is kept in
    ``info``), ``forces`` (eV/Å), ``stress`` (Voigt, eV/Å^3, ASE sign; converted to GPa here), per-site
    ``magmoms`` when spin-polarised (their magnitudes here), ``code="gpaw"`` and the ``energy_fingerprint`` of
    the settings (in ``info``). Those outputs carry forces and stress; the ``dft hull`` job's
    :class:`~matfunnel.common.documents.DftDoc` repeats them in ``runs`` without forces and is not read. With
    VASP, the atomate2 jobs' TaskDocs are read (``output.structure``/``energy``/``forces``, ``output.stress``
    in kbar with VASP's sign, converted to GPa positive-tensile; ``code="vasp"``).

    Runs that failed (``error`` set) are reported, not read. The same calculation stored twice (a campaign
    rerun in the same folder reuses cached runs) gives one frame.

    Parameters
    ----------
    store
        A jobflow ``JobStore`` or maggma store holding the job outputs (left open), or the path of a run folder
        (``<run>/store`` is opened with :func:`matfunnel.common.store.embedded_store`, and closed) or of its
        ``store`` folder.

    Returns
    -------
    frames : list of Frame
        In completion order; source ``"<store>#<structure id>"`` (VASP: ``"<store>#<id>:<job name>"``).
    errors : list of TrainingDataError
        One per failed or unreadable run, or one for the store when it cannot be opened.
    """
    opened = None
    if isinstance(store, (str, os.PathLike)):
        where = str(store)
        try:
            opened = store = _open_store(Path(store))
        except (OSError, ValueError) as exc:  # StoreError is a ValueError
            return [], [TrainingDataError(where, str(exc))]
    else:
        where = str(getattr(store, "name", None) or type(store).__name__)
        store.connect()
    try:
        gpaw_docs = _query(store, {"output.code": "gpaw"})
        vasp_docs = _query(store, {"output.calcs_reversed": {"$exists": True}, "output.output": {"$exists": True}})
    except Exception as exc:  # noqa: BLE001 - a store of any backend; name it
        return [], [TrainingDataError(where, f"cannot query the store ({type(exc).__name__}: {str(exc)[:200]})")]
    finally:
        if opened is not None:
            opened.close()
    frames: list[Frame] = []
    errors: list[TrainingDataError] = []
    seen: set[str] = set()
    docs = sorted([(d, "gpaw") for d in gpaw_docs] + [(d, "vasp") for d in vasp_docs],
                  key=lambda t: str(t[0].get("completed_at") or ""))
    for doc, code in docs:
        out = doc.get("output") or {}
        if code == "gpaw":
            source = f"{where}#{out.get('label') or doc.get('name')}"
        else:
            cid = (doc.get("metadata") or {}).get("candidate_id")
            source = f"{where}#{cid + ':' if cid else ''}{doc.get('name') or doc.get('uuid')}"
        try:
            frame = frame_from_gpaw(out, source) if code == "gpaw" else _taskdoc_frame(out, source)
        except ValueError as exc:
            errors.append(TrainingDataError(source, str(exc)))
            continue
        frame.info["job_uuid"] = doc.get("uuid")
        key = _frame_digest(frame)
        if key not in seen:
            seen.add(key)
            frames.append(frame)
    return frames, errors


def _open_store(path: Path) -> Any:
    from matfunnel.common.store import DATABASE, embedded_store

    if (path / "store" / DATABASE).is_dir():
        return embedded_store(path)
    if path.name == "store" and (path / DATABASE).is_dir():
        return embedded_store(path.parent)
    if not path.exists():
        raise ValueError("not found")
    raise ValueError("not a run folder with a job store (no store/ folder with a matfunnel database)")


def _query(store: Any, criteria: dict) -> list[dict]:
    from jobflow import JobStore

    kwargs = {"load": True} if isinstance(store, JobStore) else {}
    return list(store.query(criteria, sort={"completed_at": 1}, **kwargs))


def frame_from_gpaw(rec: dict, source: str) -> Frame:
    """A frame from one GPAW run record (:func:`matfunnel.dft.run_gpaw`); ValueError for a failed run."""
    if rec.get("error"):
        raise ValueError(f"the DFT run failed: {str(rec['error'])[:300]}")
    if rec.get("structure") is None:
        raise ValueError("the DFT record has no structure")
    structure = _structure_from_dict(rec["structure"], "the structure")
    energy, forces, stress, magmoms = (rec.get(k) for k in ("energy", "forces", "stress", "magmoms"))
    info = {k: rec.get(k) for k in ("label", "formula", "free_energy", "energy_fingerprint", "converged",
                                    "relax_converged", "gpaw_version", "kpts") if rec.get(k) is not None}
    return Frame(structure=structure,
                 energy=None if energy is None else _energy(energy),
                 forces=None if forces is None else _array(forces, "the forces"),
                 stress=None if stress is None else _stress_3x3(stress, "the stress") * EV_A3_TO_GPA,
                 magmoms=None if magmoms is None else _magnitudes(magmoms, "the magnetic moments"),
                 source=source, code=str(rec.get("code") or "gpaw"), info=info)


def _taskdoc_frame(task: dict, source: str) -> Frame:
    out = task.get("output") or {}
    if out.get("structure") is None:
        raise ValueError("the VASP task document has no output structure")
    structure = _structure_from_dict(out["structure"], "the output structure")
    energy, forces, stress = out.get("energy"), out.get("forces"), out.get("stress")
    site_moments = structure.site_properties.get("magmom")
    magmoms = (_magnitudes([float(np.linalg.norm(m)) for m in site_moments], "the magnetic moments")
               if site_moments is not None and all(m is not None for m in site_moments) else None)
    structure = Structure(structure.lattice, structure.species, structure.frac_coords)
    info = {k: task.get(k) for k in ("task_label", "task_type", "calc_type", "run_type") if task.get(k) is not None}
    return Frame(structure=structure,
                 energy=None if energy is None else _energy(energy),
                 forces=None if forces is None else _array(forces, "the forces"),
                 stress=None if stress is None else -KBAR_TO_GPA * _stress_3x3(stress, "the stress"),
                 magmoms=magmoms, source=source, code="vasp", info={k: _plain(v) for k, v in info.items()})


# -------------------------------------------------------------------------------------------- validation
def frame_problem(frame: Frame, require: Sequence[str] = ()) -> str | None:
    """What makes ``frame`` unusable for training, or None.

    Checked: the structure (real elements, ordered sites, finite lattice and coordinates, a cell with volume:
    :func:`matfunnel.common.readers.structure_problem`), every label finite, the shapes (forces
    ``(n_atoms, 3)``, stress ``(3, 3)``, magmoms ``(n_atoms,)``) and the labels named in ``require``
    present. Several problems are joined with ``"; "``.

    Parameters
    ----------
    frame
        The frame.
    require
        Labels that must be present (of :data:`LABELS`).
    """
    problems: list[str] = []
    problem = structure_problem(frame.structure)
    if problem:
        problems.append(problem.replace("the cell is degenerate", "zero-volume cell"))
    n = len(frame.structure)
    if frame.energy is not None and not math.isfinite(frame.energy):
        problems.append(f"the energy is not finite ({frame.energy})")
    shapes = {"forces": (n, 3), "stress": (3, 3), "magmoms": (n,)}
    for key, shape in shapes.items():
        value = getattr(frame, key)
        if value is None:
            continue
        arr = np.asarray(value)
        if arr.shape != shape:
            if key != "stress" and arr.ndim >= 1 and arr.shape[1:] == shape[1:]:
                problems.append(f"mismatched number of atoms: {key} for {arr.shape[0]} atoms, structure has {n}")
            else:
                problems.append(f"{key} of shape {arr.shape}, expected {shape}")
        elif not np.all(np.isfinite(arr)):
            problems.append(f"{key} contain NaN/inf" if key != "stress" else "the stress contains NaN/inf")
    for key in require:
        if key not in LABELS:
            raise ValueError(f"unknown label {key!r} in require (choose from {', '.join(LABELS)})")
        if getattr(frame, key) is None:
            noun = {"energy": "energies", "forces": "forces", "stress": "stresses", "magmoms": "magnetic moments"}
            problems.append(f"frame {_frame_id(frame)} has no {key}, and {noun[key]} are required")
    return "; ".join(problems) or None


# -------------------------------------------------------------------------------------------------- load
def _kind(path: Path) -> str | None:
    """How :func:`load_frames` reads ``path``: ``"extxyz"``, ``"json"``, ``"phonopy"``, ``"store"``, ``"folder"``."""
    if path.is_dir():
        from matfunnel.phonons.dft_reference import YAML_NAMES, _find

        if _find(path, YAML_NAMES) is not None:
            return "phonopy"
        if (path / "store").is_dir() or path.name == "store":  # before importing jobflow for the store
            from matfunnel.common.store import DATABASE

            if (path / "store" / DATABASE).is_dir() or (path.name == "store" and (path / DATABASE).is_dir()):
                return "store"
        return "folder"
    name = path.name.lower()
    if name.endswith(JSON_SUFFIXES):
        return "json"
    for comp in ("", *_COMPRESSIONS):
        if name.endswith(tuple(s + comp for s in EXTXYZ_SUFFIXES)):
            return "extxyz"
    return None


def _read_path(path: Path) -> tuple[list[Frame], list[TrainingDataError]]:
    kind = _kind(path)
    if kind == "extxyz":
        return read_extxyz(path)
    if kind == "json":
        return read_json(path)
    if kind == "phonopy":
        return read_phonopy_dataset(path)
    if kind == "store":
        return read_store_dft(path)
    if kind == "folder":
        inside = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                        and (_kind(p) in ("extxyz", "json") or (p.is_dir() and _kind(p) == "phonopy")))
        if not inside:
            return [], [TrainingDataError(str(path), "no training files in the folder (.extxyz, .xyz, .json, "
                                                     ".json.gz or phonopy reference folders)")]
        frames: list[Frame] = []
        errors: list[TrainingDataError] = []
        for p in inside:
            f, e = _read_path(p)
            frames += f
            errors += e
        return frames, errors
    return [], [TrainingDataError(str(path), "unknown training file type (expected .extxyz, .xyz, .json, .json.gz, "
                                             "a phonopy reference folder, a run folder or a folder of these)")]


def load_frames(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                require: Sequence[str] = ("energy", "forces")) -> tuple[list[Frame], list[TrainingDataError]]:
    """Read training frames from files and folders, and keep the usable ones.

    Each path is read by its kind: ``.extxyz``/``.xyz`` (optionally ``.gz``/``.bz2``/``.xz``) with
    :func:`read_extxyz`, ``.json``/``.json.gz`` with :func:`read_json`, a folder holding a phonopy yaml with
    :func:`read_phonopy_dataset`, a run folder (with ``store/``) or its store with :func:`read_store_dft`, and
    any other folder by reading its training files and phonopy reference sub-folders (sorted by name, not
    recursing further). Every frame is checked with :func:`frame_problem`.

    Parameters
    ----------
    paths
        One path or several.
    require
        Labels every frame must have (of :data:`LABELS`); a frame without one is dropped.

    Returns
    -------
    frames : list of Frame
        The usable frames, in the order of ``paths`` and of each file.
    errors : list of TrainingDataError
        One per missing path, unreadable file and dropped frame (naming the file and the frame index).

    Raises
    ------
    TrainingDataError
        When no frame at all is usable (the message lists the first few errors).
    ValueError
        ``require`` names an unknown label.
    """
    bad = [r for r in require if r not in LABELS]
    if bad:
        raise ValueError(f"unknown label(s) {bad} in require (choose from {', '.join(LABELS)})")
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    frames: list[Frame] = []
    errors: list[TrainingDataError] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            errors.append(TrainingDataError(str(p), "not found"))
            continue
        read, read_errors = _read_path(path)
        errors += read_errors
        for frame in read:
            problem = frame_problem(frame, require)
            if problem:
                errors.append(TrainingDataError(frame.source, problem))
            else:
                frames.append(frame)
    if not frames:
        where = ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        shown = "; ".join(str(e) for e in errors[:_ERRORS_SHOWN])
        more = f" (and {len(errors) - _ERRORS_SHOWN} more errors)" if len(errors) > _ERRORS_SHOWN else ""
        raise TrainingDataError(where or "no paths", f"no usable training frame: {shown or 'nothing to read'}{more}")
    return frames, errors


# -------------------------------------------------------------------------------------------------- hash
_DECIMALS = 6


def _pack(h: Any, tag: bytes, value: Any) -> None:
    """Feed ``tag`` and ``value`` (None or numbers, rounded to :data:`_DECIMALS`) into the hash ``h``."""
    h.update(tag)
    if value is None:
        h.update(b"\x00none")
        return
    arr = np.round(np.asarray(value, dtype=np.float64), _DECIMALS) + 0.0  # + 0.0: -0.0 -> 0.0
    h.update(struct.pack("<q", arr.ndim) + b"".join(struct.pack("<q", s) for s in arr.shape))
    h.update(np.ascontiguousarray(arr, dtype="<f8").tobytes())


def _feed(h: Any, frame: Frame) -> None:
    s = frame.structure
    symbols = ",".join(site.species_string for site in s).encode()
    h.update(b"frame" + struct.pack("<q", len(s)) + symbols + b"|" + frame.code.encode() + b"|")
    _pack(h, b"lattice", s.lattice.matrix)
    frac = np.round(np.asarray(s.frac_coords, dtype=np.float64) % 1.0, _DECIMALS) % 1.0
    _pack(h, b"frac", frac)
    _pack(h, b"energy", frame.energy)
    _pack(h, b"forces", frame.forces)
    _pack(h, b"stress", frame.stress)
    _pack(h, b"magmoms", frame.magmoms)


def _frame_digest(frame: Frame) -> str:
    h = hashlib.sha256()
    _feed(h, frame)
    return h.hexdigest()


def dataset_hash(frames: Iterable[Frame]) -> str:
    """A sha256 of the frames' content, hex: the same frames in the same order give the same hash anywhere.

    Hashed per frame, in order: the species, the code, the lattice, the fractional coordinates (wrapped into
    [0, 1)), the energy, forces, stress and magnetic moments (absent labels marked as such), all numbers
    rounded to 1e-6 (Å, eV, eV/Å, GPa, μB). ``source`` and ``info`` are not hashed: the same data read from
    another path hashes the same.

    Parameters
    ----------
    frames
        The frames.

    Returns
    -------
    str
        64 hex digits.
    """
    h = hashlib.sha256(b"matfunnel-frames-v1")
    for frame in frames:
        _feed(h, frame)
    return h.hexdigest()
