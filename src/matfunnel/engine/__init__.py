"""Relaxation and dynamics over many structures.

* :func:`relax_batched` - FIRE (default) or L-BFGS + Frechet cell filter (ASE semantics, ``optimizer=``) on
  whole batches on the potential's device, with in-flight refill and per-structure failure isolation (the default
  engine);
* :func:`relax_structures` - ASE's FIRE (or LBFGS) + FrechetCellFilter one structure at a time (the reference);
* :func:`run_md` - batched NVE / NVT (Langevin) / NPT (stochastic cell rescaling) dynamics.

Both relaxation engines return :class:`RelaxResult` documents, :func:`run_md` :class:`MDResult` documents (both in
:mod:`~matfunnel.engine.results`). The functional building blocks live in :mod:`matfunnel.engine.state` (the batched
state), :mod:`~matfunnel.engine.cellfilter` (the degrees of freedom all optimizers move),
:mod:`~matfunnel.engine.fire`, :mod:`~matfunnel.engine.lbfgs` and :mod:`~matfunnel.engine.md` (init/step functions;
:mod:`~matfunnel.engine.optimizers` names them),
:mod:`~matfunnel.engine.symmetry` (space-group constraints); the queue, refill and harvest that both batched engines
share in :mod:`~matfunnel.engine.batching` (:class:`~matfunnel.engine.batching.InFlightBatcher`, :class:`AtomBudget`);
the documents the engines write in :mod:`~matfunnel.engine.documents` (structures) and
:mod:`~matfunnel.engine.trajectory` (capped trajectories); argument checks in :mod:`~matfunnel.engine.inputs`.
"""

from matfunnel.engine.ase_relax import RelaxResult, relax_structure, relax_structures
from matfunnel.engine.fire import (
           FireConfig,
           FireState,
           fire_forces,
           fire_init,
           fire_update,
)
from matfunnel.engine.md import MDResult, MDState, run_md
from matfunnel.engine.runner import AtomBudget, relax_batched
from matfunnel.engine.state import (
           SystemState,
           concat,
           evaluate,
           from_structures,
           select,
           to_structure,
)

__all__ = ["AtomBudget", "FireConfig", "FireState", "MDResult", "MDState", "RelaxResult", "SystemState", "concat",
           "evaluate", "fire_forces", "fire_init", "fire_update", "from_structures", "relax_batched",
           "relax_structure", "relax_structures", "run_md", "select", "to_structure"]
