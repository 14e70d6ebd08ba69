"""jobflow makers wrapping the engine."""

from matfunnel.makers.relax import RelaxMaker, StaticMaker

__all__ = ["RelaxMaker", "StaticMaker"]
