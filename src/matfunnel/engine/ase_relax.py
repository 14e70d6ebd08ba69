"""Relaxation through ASE (FIRE, L-BFGS or BFGS + Frechet cell filter), one structure after another.

The reference path of the batched engine (:mod:`matfunnel.engine.runner`): the same optimizer names and
parameters (:mod:`matfunnel.engine.optimizers`), run by ASE's own implementations.

Each structure gets its own result; a structure that fails (bad geometry, NaN, exploding forces,
non-convergence) is recorded with its reason and the rest carry on.
"""

from __future__ import annotations

import time

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matfunnel.common.errors import ResourceError
from matfunnel.engine.inputs import MAX_FORCE
from matfunnel.engine.results import RelaxResult
from matfunnel.potential import Potential, StructureError
from matfunnel.potential.validate import structure_label, validate_structure


def relax_structure(
    structure: Structure,
    potential: Potential,
    *,
    label: str | None = None,
    fmax: float = 0.05,
    max_steps: int = 500,
    relax_cell: bool = True,
    optimizer: str | None = None,
    config=None,
) -> RelaxResult:
    """Relax one structure with ASE's optimizer (+ FrechetCellFilter when ``relax_cell``).

    ``optimizer`` and ``config`` as :func:`matfunnel.engine.relax_batched` takes them (``None``: the default
    optimizer with ASE's parameters).
    """
    import dataclasses

    import ase.optimize
    from ase.filters import FrechetCellFilter

    from matfunnel.engine.optimizers import resolve

    method, cfg = resolve(optimizer, config)
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("curvature_check",)}
    if getattr(cfg, "curvature_check", False):
        raise ValueError("ASE's LBFGS has no curvature check: the reference path runs it as ASE does")

    t0 = time.perf_counter()
    label = label or structure_label(structure)
    res = RelaxResult(label=label, formula=structure.composition.reduced_formula if len(structure) else "",
                      initial_structure=structure.as_dict())
    try:
        validate_structure(structure, label, potential.supported_elements)
        budget = getattr(potential, "budget_problem", None)
        over = budget(len(structure), abs(float(structure.lattice.volume))) if budget is not None else None
        if over is not None:
            raise ResourceError(label, over)
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = potential.calculator()
        target = FrechetCellFilter(atoms) if relax_cell else atoms
        opt = getattr(ase.optimize, method.ase_name)(target, logfile=None, **params)
        for _ in opt.irun(fmax=fmax, steps=max_steps):
            e = atoms.get_potential_energy()
            f = atoms.get_forces()
            if not np.isfinite(e) or not np.all(np.isfinite(f)):
                raise StructureError(label, f"NaN energy/forces at step {opt.nsteps}")
            if np.abs(f).max() > MAX_FORCE:
                raise StructureError(label, f"forces exploded (> {MAX_FORCE} eV/A) at step {opt.nsteps}")
        res.n_steps = opt.nsteps
        res.converged = bool(opt.converged())
        final = AseAtomsAdaptor.get_structure(atoms)
        final.properties = dict(structure.properties)
        validate_structure(final, label, potential.supported_elements)
        (out,) = potential.predict([final], labels=[label])
        res.final_structure = final.as_dict()
        res.energy = float(out["energy"])
        res.e_per_atom = res.energy / len(final)
        res.forces = np.asarray(out["forces"]).tolist()
        res.stress = np.asarray(out["stress"]).tolist()
        res.magmoms = np.asarray(out["magmoms"]).tolist()
        if not res.converged:
            res.error = f"structure {label!r}: not converged to fmax={fmax} in {max_steps} steps"
    except StructureError as exc:
        res.error = str(exc)
        if isinstance(exc, ResourceError):  # too large for this machine: a rerun with more memory may pass
            res.data["potential_error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - a batch never dies for one structure
        res.error = f"structure {label!r}: {type(exc).__name__}: {exc}"
        res.data["potential_error"] = f"{type(exc).__name__}: {exc}"  # may pass on a retry: not to be kept
    res.wall_time = time.perf_counter() - t0
    return res


def relax_structures(
    structures: list[Structure],
    potential: Potential,
    *,
    labels: list[str] | None = None,
    fmax: float = 0.05,
    max_steps: int = 500,
    relax_cell: bool = True,
    progress: bool = False,
    on_result=None,
    optimizer: str | None = None,
    config=None,
) -> list[RelaxResult]:
    """Relax every structure; failures are recorded per structure.

    ``on_result(index, result)`` is called as soon as each structure is finished (used to
    commit results one by one, so a crash loses only the structure in progress).
    """
    labels = labels or [structure_label(s, i) for i, s in enumerate(structures)]
    it = list(enumerate(zip(structures, labels, strict=False)))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="relax", unit="struct")
    results = []
    for i, (s, lab) in it:
        r = relax_structure(s, potential, label=lab, fmax=fmax, max_steps=max_steps, relax_cell=relax_cell,
                            optimizer=optimizer, config=config)
        if on_result is not None:
            on_result(i, r)
        results.append(r)
    return results


__all__ = ["MAX_FORCE", "RelaxResult", "relax_structure", "relax_structures"]
