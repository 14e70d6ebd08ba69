"""SevenNet models by name, through sevenn's own torch-sim interface.

SevenNet-0, SevenNet-l3i5 and SevenNet-MF-0 ship inside the ``sevenn`` wheel; the larger models are
looked for in the wheel's folder and in ``~/.cache/sevennet`` and never downloaded here.
"""

from __future__ import annotations

from pathlib import Path

#: matfunnel name -> (folder in sevenn's pretrained_potentials, file)
CHECKPOINTS = {
    "sevennet-0": ("SevenNet_0__11Jul2024", "checkpoint_sevennet_0.pth"),
    "sevennet-l3i5": ("SevenNet_l3i5", "checkpoint_l3i5.pth"),
    "sevennet-mf-0": ("SevenNet_MF_0", "checkpoint_sevennet_mf_0.pth"),
    "sevennet-mf-ompa": ("SevenNet_MF_ompa", "checkpoint_sevennet_mf_ompa.pth"),
    "sevennet-omat": ("SevenNet_omat", "checkpoint_sevennet_omat.pth"),
    "sevennet-omni": ("SevenNet_omni", "checkpoint_sevennet_omni.pth"),
}


def checkpoint_path(name: str) -> Path:
    """Where the checkpoint of ``name`` is (the wheel's folder, else ``~/.cache/sevennet``, else the former)."""
    import importlib.util

    folder, file = CHECKPOINTS[name]
    spec = importlib.util.find_spec("sevenn")
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise ModuleNotFoundError("the sevenn package is not installed")
    base = Path(next(iter(locations))) / "pretrained_potentials"
    for cand in (base / folder / file, Path.home() / ".cache" / "sevennet" / folder / file):
        if cand.is_file():
            return cand
    return base / folder / file


def load_sevennet(name: str, device: str = "cpu", modal: str | None = None, **kwargs):
    """A :class:`~matfunnel.potential.torchsim.TorchSimPotential` running SevenNet ``name``."""
    from sevenn.torchsim import SevenNetModel

    from matfunnel.potential.torchsim import TorchSimPotential

    path = checkpoint_path(name)
    model = SevenNetModel(str(path), modal=modal, device=device)
    name_kwargs = {"modal": modal} if modal else {}
    return TorchSimPotential(model, name=name, name_kwargs=name_kwargs, package="sevenn",
                             weights_file=str(path), **kwargs)
