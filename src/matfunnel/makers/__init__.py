"""jobflow makers wrapping the engine: batched relax/static, MD and phonons."""

from matfunnel.makers.md import MDMaker
from matfunnel.makers.phonon import PhononMaker
from matfunnel.makers.relax import RelaxMaker, StaticMaker

__all__ = ["MDMaker", "PhononMaker", "RelaxMaker", "StaticMaker"]
