"""jobflow makers wrapping the engine: batched relax/static and MD (phonons: :mod:`matfunnel.phonons`)."""

from matfunnel.makers.md import MDMaker
from matfunnel.makers.relax import RelaxMaker, StaticMaker

__all__ = ["MDMaker", "RelaxMaker", "StaticMaker"]
