"""matfunnel's own batched CHGNet (0.3.0 architecture and weights).

* :func:`~matfunnel.potential.chgnet.graph.build_graph` - batched atom/bond graph in pure torch
* :class:`~matfunnel.potential.chgnet.model.CHGNetModel` - the network (energy, forces, stress, magmoms)
* :func:`~matfunnel.potential.chgnet.weights.load_checkpoint` - official checkpoint -> model
* :class:`~matfunnel.potential.chgnet.potential.ChgnetPotential` - the ``chgnet-0.3.0`` Potential
"""

from matfunnel.potential.chgnet.graph import GraphBatch, build_graph
from matfunnel.potential.chgnet.model import CHGNetModel, Config
from matfunnel.potential.chgnet.potential import ChgnetPotential
from matfunnel.potential.chgnet.weights import CheckpointError, checkpoint_path, load_checkpoint

__all__ = ["CHGNetModel", "CheckpointError", "ChgnetPotential", "Config", "GraphBatch", "build_graph",
           "checkpoint_path", "load_checkpoint"]
