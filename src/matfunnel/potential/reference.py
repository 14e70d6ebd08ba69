"""``chgnet-reference``: the ``chgnet`` package's own model with its bundled 0.3.0 weights.

Kept forever as the parity reference for matfunnel's own implementation.
"""

from __future__ import annotations

import warnings

import numpy as np
from pymatgen.core import Structure

from matfunnel.potential.base import Potential
from matfunnel.potential.errors import StructureError


class ChgnetReference(Potential):
    name = "chgnet-reference"

    def __init__(self, device: str = "cpu", version: str = "0.3.0", batch_size: int = 16):
        from chgnet.model import CHGNet

        self.device = device
        self.batch_size = batch_size
        self.model = CHGNet.load(model_name=version, use_device=device, verbose=False)
        self.model.eval()
        self.supported_elements = frozenset(range(1, self.model.composition_model.fc.in_features + 1)) \
            if hasattr(self.model.composition_model, "fc") else frozenset(range(1, 95))

    def _predict_checked(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        try:
            outs = self._run(structures)
        except Exception:  # one bad structure must not kill the batch: retry one by one
            outs = []
            for s, label in zip(structures, labels):
                try:
                    outs.extend(self._run([s]))
                except Exception as exc:  # noqa: BLE001
                    err = StructureError(label, f"chgnet failed: {exc}")
                    if errors == "raise":
                        raise err from exc
                    outs.append({"error": str(err)})
        return outs

    def _run(self, structures: list[Structure]) -> list[dict]:
        with warnings.catch_warnings():  # chgnet warns about a tensor->scalar conversion on every call
            warnings.simplefilter("ignore", UserWarning)
            preds = self.model.predict_structure(structures, task="efsm", batch_size=self.batch_size)
        if isinstance(preds, dict):
            preds = [preds]
        results = []
        for s, p in zip(structures, preds):
            n = len(s)
            e = float(p["e"]) * n  # chgnet predicts energy per atom
            res = {
                "energy": e,
                "forces": np.asarray(p["f"], dtype=float).reshape(n, 3),
                "stress": np.asarray(p["s"], dtype=float).reshape(3, 3),
                "magmoms": np.asarray(p["m"], dtype=float).reshape(n),
            }
            if not np.isfinite(res["energy"]) or not np.all(np.isfinite(res["forces"])):
                raise StructureError(s.properties.get("label", s.formula), "the potential returned NaN")
            results.append(res)
        return results
