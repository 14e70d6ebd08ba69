"""The potential interface every backend implements.

``predict(structures)`` returns one dict per structure with

* ``energy``  total energy, eV
* ``forces``  (n, 3) eV/A
* ``stress``  (3, 3) GPa, chgnet's sign convention (= ASE's: positive is tensile)
* ``magmoms`` (n,) mu_B

Structures may be pymatgen ``Structure`` or ASE ``Atoms``. A structure that cannot be evaluated
raises :class:`~matfunnel.common.errors.StructureError` naming it; with ``errors="record"`` its
result is ``{"error": message}`` and the rest of the batch is still evaluated.

``evaluate(numbers, positions, cells, n_atoms)`` is the tensor-level entry the batched engine
(:mod:`matfunnel.engine`) calls every step: concatenated torch tensors in, :class:`Evaluation` out.
The default converts to pymatgen structures and calls ``_predict_checked``; backends with their own
batched graph code override it to skip the round trip.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal, NamedTuple, cast

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from matfunnel.common.errors import ResourceError, StructureError
from matfunnel.potential.failures import is_memory_failure, labels_for_predict, out_of_memory
from matfunnel.potential.validate import structure_label, to_structure, validate_structure


class Evaluation(NamedTuple):
    """Outputs of :meth:`Potential.evaluate` for a batch of ``B`` structures with ``N`` atoms in all.

    ``energy`` (B,) eV, ``forces`` (N, 3) eV/A, ``stress`` (B, 3, 3) GPa (ASE/chgnet sign: positive is
    tensile; ``None`` when not requested), ``magmoms`` (N,) mu_B or ``None``. A structure that could
    not be evaluated has NaN energy/forces/stress and its message in ``errors[b]`` (``None`` if fine).
    """

    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor | None
    magmoms: torch.Tensor | None = None
    errors: list | None = None
    #: (B,) smallest interatomic distance (A) seen on the potential's neighbour graph, or None when the backend
    #: does not report it (the engine then measures it itself)
    min_distance: torch.Tensor | None = None


class Potential(ABC):
    """A machine-learned interatomic potential evaluated on batches of structures."""

    name: str = "potential"
    device: str = "cpu"
    #: atomic numbers the model covers
    supported_elements: frozenset[int] = frozenset(range(1, 95))
    #: whether the backend checks the minimum interatomic distance itself (on its neighbour graph) in predict
    distances_on_graph: bool = False
    #: for the provenance record, where a backend sets them: the distribution providing the model, its weights file
    package: str
    weights_file: str | None

    def predict(
        self,
        structures: Sequence[Structure] | Structure,
        *,
        labels: Sequence[str] | None = None,
        errors: Literal["raise", "record"] = "raise",
    ) -> list[dict]:
        """Evaluate structures (pymatgen ``Structure`` or ASE ``Atoms``); one result dict per structure.

        A single structure may be passed bare; the result is still a list. Each structure is validated
        first (types, geometry, elements, the memory it would need); with ``errors="record"`` a failing
        structure gets ``{"error": message}`` instead of raising, and the others are evaluated as they would
        be alone. A batch that runs out of memory is split until the structure that does not fit is alone.
        """
        if errors not in ("raise", "record"):
            raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
        single = not isinstance(structures, (list, tuple))
        items = [structures] if single else list(structures)
        label_list = labels_for_predict(labels, len(items))
        good: list[Structure] = []
        good_idx: list[int] = []
        good_labels: list[str] = []
        results: list[dict | None] = [None] * len(items)
        for i, (obj, label) in enumerate(zip(items, label_list, strict=True)):
            try:
                s, name = self._admit(obj, label, i)
                good.append(s)
                good_idx.append(i)
                good_labels.append(name)
            except StructureError as exc:
                if errors == "raise":
                    raise
                results[i] = {"error": str(exc)}
        if good:
            out = self._predict_isolated(good, good_labels, errors)
            for i, r in zip(good_idx, out, strict=True):
                results[i] = r
        return cast(list[dict], results)  # every slot is filled: a result or an error dict

    def _admit(self, obj, label: str | None, i: int) -> tuple[Structure, str]:
        """Input ``i`` as a validated structure and its name; ``StructureError`` naming it when it cannot run."""
        name = label or (f"{obj.get_chemical_formula()}#{i}" if hasattr(obj, "get_chemical_formula")
                         else f"structure#{i}")
        try:
            s = to_structure(obj, name)
            name = label or structure_label(s, i)
            validate_structure(s, name, self.supported_elements, check_distances=not self.distances_on_graph)
        except StructureError:
            raise
        except Exception as exc:  # noqa: BLE001 - an input nothing could read: its own error, never the batch's
            raise StructureError(name, f"cannot be read as a structure ({type(exc).__name__})") from exc
        problem = self.budget_problem(len(s), float(abs(np.linalg.det(s.lattice.matrix))))
        if problem is not None:
            raise ResourceError(name, problem)
        return s, name

    def budget_problem(self, n_atoms: int, volume: float) -> str | None:
        """Why a structure of this size cannot be evaluated within the memory budget, or None (the default: no budget).

        Potentials with a memory model (:class:`~matfunnel.potential.batching.ItemBudget`) estimate it.
        """
        return None

    def _predict_isolated(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        """``_predict_checked``, splitting a batch that raises until the structure that fails is alone.

        A structure that runs out of memory on its own gets a :class:`ResourceError`; with ``errors="record"`` any
        other exception raised for a lone structure becomes its error too (with ``"raise"`` it propagates).
        """
        try:
            return self._predict_checked(structures, labels, errors)
        except StructureError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the structure that fails
            memory = is_memory_failure(exc)
            if not memory and errors == "raise":
                raise
            if len(structures) == 1:
                err = (ResourceError(labels[0], out_of_memory(len(structures[0]), exc)) if memory
                       else StructureError(labels[0], f"{self.name} failed: {type(exc).__name__}: {exc}"))
                if errors == "raise":
                    raise err from exc
                return [{"error": str(err)}]
        half = len(structures) // 2
        return (self._predict_isolated(structures[:half], labels[:half], errors)
                + self._predict_isolated(structures[half:], labels[half:], errors))

    @abstractmethod
    def _predict_checked(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        """Evaluate validated structures; return numpy arrays / floats."""

    def evaluate(
        self,
        numbers: torch.Tensor,
        positions: torch.Tensor,
        cells: torch.Tensor,
        n_atoms: torch.Tensor,
        *,
        compute_stress: bool = True,
    ) -> Evaluation:
        """Energy, forces, stress (and magmoms) of a concatenated batch, as tensors.

        ``numbers`` (N,) atomic numbers, ``positions`` (N, 3) Cartesian A, ``cells`` (B, 3, 3) with
        lattice vectors as rows, ``n_atoms`` (B,) atoms per structure (structures are consecutive).
        Outputs are float64 on ``positions.device``. Structures are not validated here (the engine
        checks geometry itself); one that fails is reported in ``Evaluation.errors``, not raised.

        This default goes through pymatgen ``Structure`` objects and ``_predict_checked``; a backend
        that can build its graphs from tensors should override it.
        """
        dev = positions.device
        counts = [int(n) for n in n_atoms.tolist()]
        z = numbers.detach().cpu().numpy()
        pos = positions.detach().cpu().double().numpy()
        lat = cells.detach().cpu().double().numpy()
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        structs = [
            Structure(Lattice(lat[b]), z[offsets[b]:offsets[b + 1]].tolist(), pos[offsets[b]:offsets[b + 1]],
                      coords_are_cartesian=True)
            for b in range(len(counts))
        ]
        labels = [f"batch[{b}]" for b in range(len(counts))]
        try:
            outs = self._predict_checked(structs, labels, "record")
        except Exception:  # noqa: BLE001 - fall back to one by one to find the culprit
            outs = []
            for s, lab in zip(structs, labels, strict=False):
                try:
                    outs.extend(self._predict_checked([s], [lab], "record"))
                except Exception as exc1:  # noqa: BLE001
                    outs.append({"error": f"{type(exc1).__name__}: {exc1}"})
        n_total, b_total = int(offsets[-1]), len(counts)
        energy = np.full(b_total, np.nan)
        forces = np.full((n_total, 3), np.nan)
        stress = np.full((b_total, 3, 3), np.nan)
        magmoms = np.full(n_total, np.nan)
        errors: list[str | None] = [None] * b_total
        for b, o in enumerate(outs):
            lo, hi = offsets[b], offsets[b + 1]
            if o is None or "error" in o:
                errors[b] = (o or {}).get("error", "no result")
                continue
            energy[b] = float(o["energy"])
            forces[lo:hi] = np.asarray(o["forces"], dtype=float).reshape(-1, 3)
            stress[b] = np.asarray(o["stress"], dtype=float).reshape(3, 3)
            if o.get("magmoms") is not None:
                magmoms[lo:hi] = np.asarray(o["magmoms"], dtype=float).reshape(-1)

        def t(a):
            return torch.from_numpy(a).to(dev)

        return Evaluation(t(energy), t(forces), t(stress) if compute_stress else None, t(magmoms),
                          errors if any(errors) else None)

    def model_info(self) -> dict:
        """Provenance of the model behind every result: ``name``, ``package``, ``version`` and ``weights_sha256``.

        The checksum is of the weights file (``weights_file``) when the backend names one, else of the model's
        parameters (``model.state_dict()``), else ``None``; it is computed once per potential.
        """
        cached = getattr(self, "_model_info", None)
        if cached is not None:
            return dict(cached)
        from matfunnel.potential.provenance import model_info

        info = model_info(self)
        self._model_info = info
        return dict(info)

    def calculator(self):
        """An ASE calculator backed by this potential."""
        from matfunnel.potential.calculator import MatfunnelCalculator

        return MatfunnelCalculator(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r})"
