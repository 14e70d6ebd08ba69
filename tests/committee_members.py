"""A committee member that fails on purpose, loadable by spec string for ``tests/test_committee.py``::

    load_potential("ase:committee_members:picky_lj", refuse="Li")

ASE's own Lennard-Jones calculator that raises for every structure containing the element ``refuse`` and counts
its calls (``calc.calls``), so a test can see which structures a committee sent to it.
"""

from __future__ import annotations

from ase.calculators.calculator import all_changes
from ase.calculators.lj import LennardJones


class PickyLJ(LennardJones):
    """Lennard-Jones that refuses structures containing ``refuse`` (``ValueError``) and counts ``calculate`` calls."""

    def __init__(self, refuse: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.refuse = refuse
        self.calls = 0

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        self.calls += 1
        if self.refuse is not None and atoms is not None and self.refuse in atoms.get_chemical_symbols():
            raise ValueError(f"picky_lj refuses structures containing {self.refuse}")
        super().calculate(atoms, properties, system_changes)


def picky_lj(refuse: str | None = None, sigma: float = 2.0, epsilon: float = 0.01, rc: float = 5.0) -> PickyLJ:
    """A :class:`PickyLJ` (sigma 2 A, epsilon 10 meV, cutoff 5 A: finite numbers for any sane cell)."""
    return PickyLJ(refuse=refuse, sigma=sigma, epsilon=epsilon, rc=rc)
