"""Relaxation and dynamics over many structures.

``relax_structures`` drives ASE's FIRE + FrechetCellFilter one structure at a time with failure
isolation; the batched torch engine replaces it behind the same result documents.
"""

from matfunnel.engine.ase_relax import RelaxResult, relax_structure, relax_structures

__all__ = ["RelaxResult", "relax_structure", "relax_structures"]
