"""matfunnel's own MatRIS: the MatRIS architecture on batched graphs, loading MatRIS checkpoints.

``load_potential("matris-10m-oam", checkpoint=PATH)`` (or ``matris-10m-mp``, ``matris-10m-omat``).
"""

from matfunnel.potential.matris.config import PUBLISHED, MatrisConfig
from matfunnel.potential.matris.model import MatrisModel
from matfunnel.potential.matris.weights import (
    CHECKPOINT_FILES,
    MatrisCheckpointError,
    MatrisCheckpointMissing,
    load_checkpoint,
    model_from_dict,
    release_url,
)

__all__ = [
    "CHECKPOINT_FILES", "PUBLISHED", "MatrisCheckpointError", "MatrisCheckpointMissing", "MatrisConfig",
    "MatrisModel", "load_checkpoint", "model_from_dict", "release_url",
]
