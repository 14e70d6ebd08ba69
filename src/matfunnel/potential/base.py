"""The potential interface every backend implements.

``predict(structures)`` returns one dict per structure with

* ``energy``  total energy, eV
* ``forces``  (n, 3) eV/A
* ``stress``  (3, 3) GPa, chgnet's sign convention (= ASE's: positive is tensile)
* ``magmoms`` (n,) mu_B

Structures may be pymatgen ``Structure`` or ASE ``Atoms``. A structure that cannot be evaluated
raises :class:`~matfunnel.potential.errors.StructureError` naming it; with ``errors="record"`` its
result is ``{"error": message}`` and the rest of the batch is still evaluated.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

from pymatgen.core import Structure

from matfunnel.potential.errors import StructureError
from matfunnel.potential.validate import structure_label, to_structure, validate_structure


class Potential(ABC):
    """A machine-learned interatomic potential evaluated on batches of structures."""

    name: str = "potential"
    device: str = "cpu"
    #: atomic numbers the model covers
    supported_elements: frozenset[int] = frozenset(range(1, 95))

    def predict(
        self,
        structures: Sequence[Structure] | Structure,
        *,
        labels: Sequence[str] | None = None,
        errors: Literal["raise", "record"] = "raise",
    ) -> list[dict]:
        single = not isinstance(structures, (list, tuple))
        items = [structures] if single else list(structures)
        if labels is None:
            labels = [None] * len(items)
        good, good_idx, results = [], [], [None] * len(items)
        for i, (obj, label) in enumerate(zip(items, labels)):
            try:
                s = to_structure(obj, label)
                label = label or structure_label(s, i)
                validate_structure(s, label, self.supported_elements)
                good.append(s)
                good_idx.append(i)
            except StructureError as exc:
                if errors == "raise":
                    raise
                results[i] = {"error": str(exc)}
        if good:
            out = self._predict_checked(good, [labels[i] or structure_label(good[k], i) for k, i in enumerate(good_idx)], errors)
            for i, r in zip(good_idx, out):
                results[i] = r
        return results

    @abstractmethod
    def _predict_checked(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        """Evaluate validated structures; return numpy arrays / floats."""

    def calculator(self):
        """An ASE calculator backed by this potential."""
        from matfunnel.potential.calculator import MatfunnelCalculator

        return MatfunnelCalculator(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r})"
