"""Third-party MLIPs with weights built here, for the adapter tests (published weights cannot be downloaded).

MatterSim (``mattersim``): a small M3GNet of the package's own architecture is initialised at random, briefly
fitted to ASE's EMT for Cu/Al (so that relaxations have a physical basin to fall into, not a random slope), and
written with the package's own ``Potential.save`` (its checkpoint format: ``model_name``, ``model``,
``model_args``, optimizer/EMA/scheduler states). Everything after that goes through the package's loaders:
``Potential.from_checkpoint`` for both its torch-sim ``ModelInterface`` (``mattersim.torchsim``) and its ASE
calculator (``MatterSimCalculator``).

The torch-sim side is loadable by spec string::

    load_potential("torchsim:thirdparty_models:mattersim_model", checkpoint=PATH)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: small hyper-parameters of MatterSim's M3GNet (the 1M release uses 4 blocks, 128 units, max_l = max_n = 4)
MATTERSIM_ARGS = {"num_blocks": 2, "units": 32, "max_l": 3, "max_n": 3, "cutoff": 5.0, "threebody_cutoff": 4.0}
#: ridge parameter of the read-out fit, relative to the mean feature variance (keeps the weights O(1))
RIDGE = 1e-5


def _emt_training_set(rng: np.random.Generator, n: int = 48) -> list:
    """Strained, rattled fcc Cu/Al cells of 1-2 atoms (some mixed) labelled with ASE's EMT energies."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    out = []
    for k in range(n):
        el, a0 = [("Cu", 3.61), ("Al", 4.05)][k % 2]
        atoms = bulk(el, "fcc", a=a0 * (0.9 + 0.2 * rng.random()))
        if k % 3:
            atoms = atoms * (2, 1, 1)
            if k % 3 == 2:  # mixed cells
                atoms.numbers[1] = 29 if el == "Al" else 13
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.04 * rng.standard_normal((3, 3))), scale_atoms=True)
        atoms.positions += 0.1 * rng.standard_normal(atoms.positions.shape)
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        out.append(atoms)
    return out


def build_mattersim_checkpoint(path: str | Path, *, seed: int = 0, fit_readout: bool = True) -> Path:
    """Write a small MatterSim checkpoint: random initialisation, read-out fitted to EMT Cu/Al energies.

    Parameters
    ----------
    path
        The ``.pth`` file to write (its folder is created).
    seed
        Seed of the random initialisation and of the fitting cells.
    fit_readout
        Replace the random last linear layer and the Cu/Al energy shifts by a least-squares fit to EMT
        energies (the random message-passing layers stay): a random model has no energy basin, so cells
        would collapse or fly apart in a relaxation. ``False`` keeps every weight random.

    Returns
    -------
    Path
        ``path``, written by ``mattersim.forcefield.potential.Potential.save``.

    Notes
    -----
    The per-atom energy of M3GNet is ``(w . h_i + b) * s_i + shift[Z_i]`` with ``h_i`` the input of the
    last linear layer of the gated read-out and ``s_i`` its sigmoid gate, so a structure's energy is linear
    in ``(w, b, shift)``: one forward pass and a ridge regression fit it, without back-propagation.
    """
    import torch
    from mattersim.datasets.utils.build import build_dataloader
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
    from mattersim.forcefield.potential import Potential, batch_to_dict

    torch.manual_seed(seed)
    model = M3Gnet(device="cpu", **MATTERSIM_ARGS).eval()
    if fit_readout:
        cells = _emt_training_set(np.random.default_rng(seed))
        loader = build_dataloader(cells, only_inference=True, cutoff=MATTERSIM_ARGS["cutoff"],
                                  threebody_cutoff=MATTERSIM_ARGS["threebody_cutoff"], batch_size=len(cells))
        graph = next(iter(loader))
        seen = {}

        def keep_input(module, args, out):
            seen["x"] = args[0]  # returns None: the output is left alone

        hook = model.final.register_forward_hook(keep_input)
        with torch.no_grad():
            model(batch_to_dict(graph, device="cpu"))
            hook.remove()
            x = seen["x"]
            h, s = model.final.g[:-1](x), model.final.sigma(x)
        z = graph.atom_attr.squeeze(1).long()
        per_atom = torch.cat([h * s, s, (z == 29)[:, None].float(), (z == 13)[:, None].float()], dim=1).double()
        feats = torch.zeros(len(cells), per_atom.shape[1], dtype=torch.float64).index_add_(0, graph.batch, per_atom)
        n_atoms = graph.num_atoms.double()[:, None]
        a = (feats / n_atoms).numpy()
        y = np.array([c.info["energy"] / len(c) for c in cells])
        lam = RIDGE * np.trace(a.T @ a) / a.shape[1]
        coef = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y)
        units = MATTERSIM_ARGS["units"]
        with torch.no_grad():
            last = model.final.g[-1].linear
            last.weight.copy_(torch.as_tensor(coef[:units], dtype=last.weight.dtype)[None])
            last.bias.fill_(float(coef[units]))
            model.normalizer.shift[29] = float(coef[units + 1])
            model.normalizer.shift[13] = float(coef[units + 2])
    potential = Potential(model, device="cpu")
    path = Path(path)
    potential.save(str(path))
    return path


def _load_mattersim(checkpoint: str | Path, device: str):
    from mattersim.forcefield.potential import Potential

    return Potential.from_checkpoint(str(checkpoint), device=device, load_training_state=False)


def mattersim_model(checkpoint: str, device: str = "cpu"):
    """MatterSim's own torch-sim ``ModelInterface`` (``mattersim.torchsim.get_torchsim_wrapper``) for a checkpoint.

    Parameters
    ----------
    checkpoint
        A MatterSim ``.pth`` checkpoint.
    device
        Torch device.
    """
    from mattersim.torchsim import get_torchsim_wrapper

    return get_torchsim_wrapper(_load_mattersim(checkpoint, device), device=device)


def mattersim_calculator(checkpoint: str, device: str = "cpu"):
    """MatterSim's own ASE calculator (``MatterSimCalculator``) for a checkpoint."""
    from mattersim.forcefield.potential import MatterSimCalculator

    return MatterSimCalculator(potential=_load_mattersim(checkpoint, device), device=device)
