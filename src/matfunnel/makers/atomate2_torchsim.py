"""atomate2's TorchSim makers running matfunnel's potentials (our batched CHGNet, our MatRIS, any registered name).

atomate2's ``TorchSimOptimizeMaker``, ``TorchSimStaticMaker`` and ``TorchSimIntegrateMaker`` build their model
with the module-level function ``atomate2.torchsim.core.pick_model(model_type, model_path, **model_kwargs)`` from
the closed enum ``TorchSimModelType``; there is no way to hand them a ready ``ModelInterface``. The makers here
are subclasses whose jobs run atomate2's own ``make`` body (the parent's undecorated ``make.original``) while
``pick_model`` returns our potential, exported with :func:`matfunnel.potential.torchsim_export.torchsim_model`::

    from jobflow import run_locally
    from matfunnel.makers.atomate2_torchsim import MatfunnelTorchSimOptimizeMaker

    job = MatfunnelTorchSimOptimizeMaker(potential="chgnet-0.3.0", device="cuda").make(structures)
    run_locally(job)

How the model is supplied
-------------------------
:func:`supplying_model` swaps ``atomate2.torchsim.core.pick_model`` for a dispatcher for the duration of one job
and restores the original afterwards (reference-counted, so overlapping jobs restore it once the last one ends).
The swap is process-local. The dispatcher hands out our model only inside the context (a ``contextvars``
variable) that entered :func:`supplying_model`; other threads, and code outside the job, still get atomate2's
own ``pick_model``.

What the task document records
------------------------------
atomate2's ``TorchSimCalculation.model`` is validated against the closed ``TorchSimModelType`` enum. While the
parent body runs, the job uses a placeholder member (``LENNARD_JONES``) to get past that check. Each job then
rewrites its calculation as a :class:`MatfunnelTorchSimCalculation`: ``model="MatfunnelModel"``,
``model_path="matfunnel:<name>"``, plus ``potential``, ``potential_kwargs``, ``device``, ``dtype`` and
``model_info`` (:meth:`matfunnel.potential.base.Potential.model_info`: name, package version and SHA-256 of the
weights). The job's output is a :class:`MatfunnelTorchSimTaskDoc`, a ``TorchSimTaskDoc`` subclass.
jobflow and monty decode a stored output by its ``@class``, so downstream jobs get it back intact. The same
record also goes into the job's metadata (``metadata["matfunnel_model"]``), which the job store can query.
Validating a stored output as a plain atomate2 ``TorchSimTaskDoc`` fails on ``model="MatfunnelModel"`` (the enum
has no such member); decode it as :class:`MatfunnelTorchSimTaskDoc` instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

try:
    import atomate2.torchsim.core as _core
    from atomate2.torchsim.core import (
        TorchSimIntegrateMaker,
        TorchSimOptimizeMaker,
        TorchSimStaticMaker,
    )
    from atomate2.torchsim.schema import (
        TorchSimCalculation,
        TorchSimModelType,
        TorchSimTaskDoc,
    )
    from jobflow import job
except ImportError as exc:  # pragma: no cover - atomate2 (the ``vasp`` extra) and torch-sim are optional
    raise ImportError("matfunnel's atomate2 TorchSim makers need atomate2 (with its torchsim module) and "
                      "torch-sim: pip install 'matfunnel[vasp]' torch-sim-atomistic") from exc

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from jobflow import Response
    from pymatgen.core import Structure
    from torch_sim.models.interface import ModelInterface

    from matfunnel.potential.torchsim_export import MatfunnelModel

#: the value of ``TorchSimCalculation.model`` in our documents (atomate2's enum has no member for it)
MATFUNNEL_MODEL = "MatfunnelModel"
#: the enum member the parent's body records before the calculation is rewritten (it never reaches a document)
_PLACEHOLDER = TorchSimModelType.LENNARD_JONES

__all__ = ["MATFUNNEL_MODEL", "MatfunnelTorchSimCalculation", "MatfunnelTorchSimIntegrateMaker",
           "MatfunnelTorchSimOptimizeMaker", "MatfunnelTorchSimStaticMaker", "MatfunnelTorchSimTaskDoc",
           "supplying_model"]


# --------------------------------------------------------------------------------------------------------------
# documents


class MatfunnelTorchSimCalculation(TorchSimCalculation):
    """atomate2's ``TorchSimCalculation`` run by a matfunnel potential, with that potential's provenance."""

    # widens atomate2's closed enum on purpose (our documents record "MatfunnelModel"); pydantic allows it
    model: TorchSimModelType | Literal["MatfunnelModel"] = Field(  # type: ignore[assignment]
        ..., description="'MatfunnelModel' for a matfunnel potential, else atomate2's model type.")
    potential: str = Field(..., description="The matfunnel potential's name (as load_potential takes it).")
    potential_kwargs: dict[str, Any] = Field(default_factory=dict,
                                             description="Keyword arguments of the potential's factory.")
    device: str = Field("cpu", description="Device the potential ran on.")
    dtype: str = Field("float64", description="dtype of the torch-sim state.")
    model_info: dict[str, Any] = Field(
        ..., description="Potential.model_info(): name, package, version and SHA-256 of the weights.")


class MatfunnelTorchSimTaskDoc(TorchSimTaskDoc):
    """atomate2's ``TorchSimTaskDoc`` whose calculations may come from a matfunnel potential.

    ``calcs_reversed`` holds :class:`MatfunnelTorchSimCalculation` entries for the calculations that ran a
    matfunnel potential. Calculations that atomate2 ran with its own models (earlier jobs in a chain) stay plain
    ``TorchSimCalculation`` entries.
    """

    calcs_reversed: list[MatfunnelTorchSimCalculation | TorchSimCalculation] = Field(
        ..., description="List of calculations for the task (latest first).")


# --------------------------------------------------------------------------------------------------------------
# the pick_model swap

_ACTIVE: contextvars.ContextVar[ModelInterface | None] = contextvars.ContextVar("matfunnel_torchsim_model",
                                                                                 default=None)
_LOCK = threading.Lock()
_state: dict[str, Any] = {"depth": 0, "original": None}
#: atomate2's own function, for a dispatcher reference someone kept past the swap (``from ... import pick_model``)
_ATOMATE2_PICK_MODEL = _core.pick_model


def _dispatch_pick_model(model_type, model_path, **model_kwargs):
    """Stands in for ``atomate2.torchsim.core.pick_model`` while a matfunnel job runs.

    Returns the model supplied in this context, else calls atomate2's own ``pick_model``.
    """
    model = _ACTIVE.get()
    if model is None:
        return (_state["original"] or _ATOMATE2_PICK_MODEL)(model_type, model_path, **model_kwargs)
    return model


@contextlib.contextmanager
def supplying_model(model: ModelInterface) -> Iterator[ModelInterface]:
    """Make ``atomate2.torchsim.core.pick_model`` return ``model`` inside this block, in this context only.

    The module attribute is swapped for a dispatcher on entry and restored on exit, even on an error. The swap
    is reference-counted, so overlapping blocks restore it once the last one exits. It is process-local. Inside
    the block, only the current thread (its ``contextvars`` context) gets ``model``; every other caller still
    reaches atomate2's own ``pick_model``.

    Parameters
    ----------
    model
        The torch-sim model atomate2's makers should run.

    Yields
    ------
    ModelInterface
        ``model``.
    """
    with _LOCK:
        if _state["depth"] == 0:
            _state["original"] = _core.pick_model
            _core.pick_model = _dispatch_pick_model
        _state["depth"] += 1
    token = _ACTIVE.set(model)
    try:
        yield model
    finally:
        _ACTIVE.reset(token)
        with _LOCK:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                if _core.pick_model is _dispatch_pick_model:  # leave alone whatever someone else put there since
                    _core.pick_model = _state["original"]
                _state["original"] = None


# --------------------------------------------------------------------------------------------------------------
# makers


@dataclass(kw_only=True)
class _MatfunnelPotentialFields:
    """The matfunnel potential behind a TorchSim maker (keyword-only fields, shared by the three makers).

    Parameters
    ----------
    potential
        Any name :func:`matfunnel.potential.load_potential` accepts (``chgnet-0.3.0``, ``matris-10m-oam``, ...).
    potential_kwargs
        Keyword arguments of the potential's factory (JSON values), e.g. ``{"checkpoint": PATH}``.
    device
        ``cpu`` or ``cuda[:N]``.
    dtype
        dtype of the torch-sim state (``float64`` or ``float32``); the potential computes in its own precision.
    """

    potential: str = "chgnet-0.3.0"
    potential_kwargs: dict = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float64"

    def torchsim_model(self) -> MatfunnelModel:
        """The potential as a torch-sim ``ModelInterface``. ``load_potential`` caches it per process."""
        import torch

        from matfunnel.potential.torchsim_export import torchsim_model

        return torchsim_model(self.potential, self.device, dtype=getattr(torch, self.dtype),
                              **self.potential_kwargs)

    def _run_parent(self, parent: type[Any], structure, prev_task, prev_dir) -> Response:
        """Run ``parent.make``'s undecorated body with our model, then record the potential in its document."""
        model = self.torchsim_model()
        record = {"potential": self.potential, "potential_kwargs": dict(self.potential_kwargs),
                  "device": self.device, "dtype": self.dtype, "model_info": model.potential.model_info()}
        proxy: Any = copy.copy(self)  # the parent body records model_type/model_path through pydantic's enum check
        proxy.model_type, proxy.model_path = _PLACEHOLDER, f"matfunnel:{self.potential}"
        self._prepare(proxy)
        with supplying_model(model):
            response = parent.make.original(proxy, structure, prev_task=prev_task, prev_dir=prev_dir)
        response.output = _rewrite(response.output, record)
        _tag_current_job(record)
        return response

    def _prepare(self, proxy) -> None:
        """Adjust the copy of this maker that the parent's body runs (nothing by default)."""


def _rewrite(doc: TorchSimTaskDoc, record: dict) -> MatfunnelTorchSimTaskDoc:
    """``doc`` with its newest calculation relabelled as run by the matfunnel potential in ``record``."""
    calc, *older = doc.calcs_reversed
    values = {name: getattr(calc, name) for name in type(calc).model_fields}
    values.update(record, model=MATFUNNEL_MODEL, model_path=f"matfunnel:{record['potential']}")
    ours = MatfunnelTorchSimCalculation(**values)
    fields = {name: getattr(doc, name) for name in TorchSimTaskDoc.model_fields}
    fields.update(calcs_reversed=[ours, *older], output=ours.output)
    return MatfunnelTorchSimTaskDoc(**fields)


def _tag_current_job(record: dict) -> None:
    """Record the potential in the running job's metadata (stored with its output in the job store)."""
    from jobflow import CURRENT_JOB

    current = getattr(CURRENT_JOB, "job", None)
    if current is not None:
        current.metadata = {**(current.metadata or {}), "matfunnel_model": record}


def _doc_job(method):
    """Jobflow's ``job`` decorator with our task document as the output schema."""
    return job(method, output_schema=MatfunnelTorchSimTaskDoc)


@dataclass
class MatfunnelTorchSimOptimizeMaker(_MatfunnelPotentialFields, TorchSimOptimizeMaker):
    """atomate2's ``TorchSimOptimizeMaker`` with a matfunnel potential (FIRE + Frechet cell filter by default).

    All of atomate2's fields work as documented there except ``model_type``, ``model_path`` and
    ``model_kwargs``, which our potential replaces. The defaults follow matfunnel's ``RelaxMaker``: FIRE,
    Frechet cell filter, converged when every atomic and cell force is below 0.05 eV/A.

    Parameters
    ----------
    potential, potential_kwargs, device, dtype
        The matfunnel potential (see ``_MatfunnelPotentialFields``); keyword-only.
    """

    optimizer: Any = "fire"
    # atomate2 types model_type as its closed enum; ours is the "MatfunnelModel" string, never passed to pick_model
    model_type: str = field(default=MATFUNNEL_MODEL, init=False)  # type: ignore[assignment]
    model_path: str = field(default="", init=False)
    name: str = "matfunnel torchsim optimize"
    convergence_fn_kwargs: dict | None = field(
        default_factory=lambda: {"force_tol": 0.05, "include_cell_forces": True})
    init_kwargs: dict | None = field(default_factory=lambda: {"cell_filter": "frechet"})

    def __post_init__(self):
        self.model_path = f"matfunnel:{self.potential}"

    def _prepare(self, proxy) -> None:
        """Turn a ``cell_filter`` string back into torch-sim's ``CellFilter`` member.

        torch-sim takes only a ``CellFilter`` member, and a serialized maker (jobflow stores enums as their values)
        carries the string.
        """
        import torch_sim as ts

        kwargs = dict(proxy.init_kwargs or {})
        if isinstance(kwargs.get("cell_filter"), str):
            kwargs["cell_filter"] = ts.CellFilter(kwargs["cell_filter"])
        proxy.init_kwargs = kwargs

    @_doc_job
    def make(self, structure: Structure | list[Structure], prev_task: TorchSimTaskDoc | None = None,
             prev_dir: str | Path | None = None) -> Response:
        """Optimize ``structure`` (one or a list) with atomate2's TorchSim optimize body and our potential.

        Parameters
        ----------
        structure
            A pymatgen Structure or a list of them.
        prev_task
            A previous TorchSim task document; its calculations are appended.
        prev_dir
            Unused, as in atomate2.

        Returns
        -------
        Response
            Its output is a :class:`MatfunnelTorchSimTaskDoc`.
        """
        return self._run_parent(TorchSimOptimizeMaker, structure, prev_task, prev_dir)


@dataclass
class MatfunnelTorchSimStaticMaker(_MatfunnelPotentialFields, TorchSimStaticMaker):
    """atomate2's ``TorchSimStaticMaker`` with a matfunnel potential.

    Energies, forces and stresses of a list of structures in one batched call.

    Parameters
    ----------
    potential, potential_kwargs, device, dtype
        The matfunnel potential (see ``_MatfunnelPotentialFields``); keyword-only.
    """

    # atomate2 types model_type as its closed enum; ours is the "MatfunnelModel" string, never passed to pick_model
    model_type: str = field(default=MATFUNNEL_MODEL, init=False)  # type: ignore[assignment]
    model_path: str = field(default="", init=False)
    name: str = "matfunnel torchsim static"

    def __post_init__(self):
        self.model_path = f"matfunnel:{self.potential}"

    @_doc_job
    def make(self, structure: Structure | list[Structure], prev_task: TorchSimTaskDoc | None = None,
             prev_dir: str | Path | None = None) -> Response:
        """Evaluate ``structure`` (one or a list) with atomate2's TorchSim static body and our potential.

        Parameters
        ----------
        structure
            A pymatgen Structure or a list of them.
        prev_task
            A previous TorchSim task document; its calculations are appended.
        prev_dir
            Unused, as in atomate2.

        Returns
        -------
        Response
            Its output is a :class:`MatfunnelTorchSimTaskDoc`.
        """
        return self._run_parent(TorchSimStaticMaker, structure, prev_task, prev_dir)


@dataclass
class MatfunnelTorchSimIntegrateMaker(_MatfunnelPotentialFields, TorchSimIntegrateMaker):
    """atomate2's ``TorchSimIntegrateMaker`` with a matfunnel potential.

    ``integrator``, ``n_steps``, ``temperature`` and ``timestep`` are required, as in atomate2. torch-sim takes
    ``timestep`` in its own units (ps), whatever atomate2's docstring says.

    Parameters
    ----------
    potential, potential_kwargs, device, dtype
        The matfunnel potential (see ``_MatfunnelPotentialFields``); keyword-only.
    """

    # atomate2 types model_type as its closed enum; ours is the "MatfunnelModel" string, never passed to pick_model
    model_type: str = field(default=MATFUNNEL_MODEL, init=False)  # type: ignore[assignment]
    model_path: str = field(default="", init=False)
    name: str = "matfunnel torchsim integrate"

    def __post_init__(self):
        self.model_path = f"matfunnel:{self.potential}"

    def _prepare(self, proxy) -> None:
        """Turn an ``integrator`` string back into torch-sim's ``Integrator`` member.

        torch-sim takes only an ``Integrator`` member (or a pair of functions), and a serialized maker (jobflow
        stores enums as their values) carries the string.
        """
        import torch_sim as ts

        if isinstance(proxy.integrator, str):
            proxy.integrator = ts.Integrator(proxy.integrator)

    @_doc_job
    def make(self, structure: Structure | list[Structure], prev_task: TorchSimTaskDoc | None = None,
             prev_dir: str | Path | None = None) -> Response:
        """Run MD on ``structure`` (one or a list) with atomate2's TorchSim integrate body and our potential.

        Parameters
        ----------
        structure
            A pymatgen Structure or a list of them.
        prev_task
            A previous TorchSim task document; its calculations are appended.
        prev_dir
            Unused, as in atomate2.

        Returns
        -------
        Response
            Its output is a :class:`MatfunnelTorchSimTaskDoc`.
        """
        return self._run_parent(TorchSimIntegrateMaker, structure, prev_task, prev_dir)
