"""``chgnet-reference``: the ``chgnet`` package's own model with its bundled 0.3.0 weights.

Kept forever as the parity reference for matfunnel's own implementation. ``dtype="float64"`` runs the
same model in double precision (chgnet's dtype constants are switched while it predicts): the yardstick
for float32 rounding noise, the reference's own included.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np
from pymatgen.core import Structure

from matfunnel.common.errors import StructureError
from matfunnel.potential.base import Potential


def parity_errors(ref: dict, ours: dict, n_atoms: int) -> dict:
    """Max differences between chgnet's output dict for one structure and matfunnel's result dict for it.

    Chgnet's dict has ``e`` per atom, ``f``, ``s``, ``m``; matfunnel's ``energy`` total, ``forces``, ``stress``,
    ``magmoms``.
    """
    return {
        "energy": abs(float(ref["e"]) - ours["energy"] / n_atoms),
        "forces": float(np.abs(ref["f"] - ours["forces"]).max()),
        "stress": float(np.abs(ref["s"] - ours["stress"]).max()),
        "magmoms": float(np.abs(ref["m"] - ours["magmoms"]).max()),
    }


class ChgnetReference(Potential):
    """The ``chgnet`` package's own CHGNet (pretrained ``version``), in float32 or float64, as a potential."""

    name = "chgnet-reference"

    def __init__(self, device: str = "cpu", version: str = "0.3.0", batch_size: int = 16,
                 dtype: str = "float32"):
        from chgnet.model import CHGNet

        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', not {dtype!r}")
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype
        self.model = CHGNet.load(model_name=version, use_device=device, verbose=False)
        self.model.eval()
        # nn.Module.__getattr__ is typed ``Tensor | Module``: chgnet's submodule as Any
        composition: Any = self.model.composition_model
        if dtype == "float64":
            self.model.double()
            # the composition model's one-hot counts are built in float32 whatever the weights' dtype
            get_energy = composition._get_energy
            composition._get_energy = lambda feas: get_energy(feas.double())
        self.supported_elements = frozenset(range(1, composition.fc.in_features + 1)) \
            if hasattr(composition, "fc") else frozenset(range(1, 95))

    def _predict_checked(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        try:
            outs = self._run(structures)
        except Exception:  # one bad structure must not kill the batch: retry one by one
            outs = []
            for s, label in zip(structures, labels, strict=False):
                try:
                    outs.extend(self._run([s]))
                except Exception as exc:  # noqa: BLE001
                    err = StructureError(label, f"chgnet failed: {exc}")
                    if errors == "raise":
                        raise err from exc
                    outs.append({"error": str(err)})
        return outs

    def predict_raw(self, structures: list[Structure]) -> list[dict]:
        """Chgnet's own output dicts (``e`` per atom, ``f``, ``s`` in GPa, ``m``), one per structure."""
        precision = _chgnet_float64() if self.dtype == "float64" else contextlib.nullcontext()
        with warnings.catch_warnings(), precision:
            warnings.simplefilter("ignore", UserWarning)  # a tensor->scalar conversion warning on every call
            preds = self.model.predict_structure(structures, task="efsm", batch_size=self.batch_size)
        return [preds] if isinstance(preds, dict) else preds

    def _run(self, structures: list[Structure]) -> list[dict]:
        preds = self.predict_raw(structures)
        results = []
        for s, p in zip(structures, preds, strict=False):
            n = len(s)
            e = float(p["e"]) * n  # chgnet predicts energy per atom
            res: dict[str, Any] = {
                "energy": e,
                "forces": np.asarray(p["f"], dtype=float).reshape(n, 3),
                "stress": np.asarray(p["s"], dtype=float).reshape(3, 3),
                "magmoms": np.asarray(p["m"], dtype=float).reshape(n),
            }
            if not np.isfinite(res["energy"]) or not np.all(np.isfinite(res["forces"])):
                raise StructureError(s.properties.get("label", s.formula), "the potential returned NaN")
            results.append(res)
        return results


@contextlib.contextmanager
def _chgnet_float64():
    """Chgnet builds its graphs and outputs in the dtype of three module constants: float64 while inside."""
    import chgnet.graph.converter as conv
    import chgnet.graph.crystalgraph as cg
    import chgnet.model.model as mm
    import torch

    saved = [(m, m.TORCH_DTYPE) for m in (conv, cg, mm)]
    try:
        for m, _ in saved:
            m.TORCH_DTYPE = torch.float64
        yield
    finally:
        for m, dt in saved:
            m.TORCH_DTYPE = dt
