"""Per-element reference energies (CHGNet's composition model) refitted to another code's energy scale.

A CHGNet energy is a sum over atoms of a learned site energy plus a fixed reference energy of the atom's
element (``atom_ref``, fitted to the Materials Project's VASP energies). GPAW's PAW energies sit on a different
scale: per element, a constant offset that no force or stress sees. Fine-tuning on those energies as they are
would spend the first steps (and the network's capacity) on the offsets.

:func:`refit_references` removes them first: it solves, by least squares over the training frames (per atom,
so every frame counts alike), for the change of ``atom_ref`` of the elements present that brings the model's
energies onto the labels. The elements the data holds in a fixed ratio only (one compound, e.g. a phonopy
dataset) cannot be told apart: the minimum-norm change is taken, which splits the offset over them evenly.

The energy modes of a fine-tuning run (:class:`matfunnel.train.config.TrainConfig` ``energy``):

``"refit"``
    refit the references to the labels, then train on energies, forces and stresses (the default for labels
    from GPAW or of unknown origin);
``"as_is"``
    train on the energies as they are (VASP labels on the Materials Project's scale, like CHGNet's own data);
``"forces_only"``
    no energy term: forces, stresses and magnetic moments only (the references stay as they were).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from matfunnel.train.frames import Frame
from matfunnel.train.models import Trainable, references

ENERGY_MODES: tuple[str, ...] = ("refit", "as_is", "forces_only")
"""The ways a fine-tuning run treats energies (see the module docstring)."""


def composition_matrix(frames: Sequence[Frame], n_elements: int) -> np.ndarray:
    """Counts of each element (columns ``Z - 1``) in each frame (rows), float64."""
    counts = np.zeros((len(frames), n_elements))
    for row, frame in enumerate(frames):
        for z in frame.structure.atomic_numbers:
            counts[row, int(z) - 1] += 1
    return counts


def refit_references(model: Trainable, frames: Sequence[Frame], predicted: Sequence[float]) -> dict[str, float]:
    """Shift ``model.atom_ref`` so that the model's energies best match the frames' energies; in place.

    Parameters
    ----------
    model
        A CHGNet or MatRIS model: its per-element reference energies (:func:`matfunnel.train.models.references`)
        are changed.
    frames
        The training frames that have energies.
    predicted
        The model's total energy (eV) of each frame before the refit, in the same order.

    Returns
    -------
    dict
        The change of each element's reference energy (eV/atom), by element symbol.
    """
    from pymatgen.core import Element

    if len(frames) != len(predicted):
        raise ValueError(f"{len(frames)} frames but {len(predicted)} predicted energies")
    if not frames:
        return {}
    atom_ref: torch.Tensor = references(model)
    counts = composition_matrix(frames, int(atom_ref.shape[0]))
    present = np.flatnonzero(counts.sum(0))
    n_atoms = counts.sum(1)
    labels = np.array([f.energy for f in frames], dtype=np.float64)
    residual = (labels - np.asarray(predicted, dtype=np.float64)) / n_atoms  # eV/atom to be explained
    a = counts[:, present] / n_atoms[:, None]
    delta, *_ = np.linalg.lstsq(a, residual, rcond=None)  # minimum norm where the ratios do not separate
    with torch.no_grad():
        shift = torch.zeros_like(atom_ref)
        shift[torch.as_tensor(present)] = torch.as_tensor(delta, dtype=atom_ref.dtype)
        atom_ref.add_(shift.to(atom_ref.device))
    return {Element.from_Z(int(z) + 1).symbol: float(d) for z, d in zip(present, delta, strict=True)}
