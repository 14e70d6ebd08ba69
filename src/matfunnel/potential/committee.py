"""A committee of potentials: every member's energy on each structure, relaxation with one member.

``load_potential("committee:chgnet-0.3.0,sevennet-0,sevennet-l3i5")`` loads each member by its own registry
name (any name :func:`~matfunnel.potential.registry.resolve` knows, ``torchsim:``/``ase:`` strings included) and
returns a :class:`CommitteePotential`:

* :meth:`~CommitteePotential.predict` runs every member on the structures and returns the *primary* member's
  result dicts, each with a ``"committee"`` record: the members' total energies, the mean and the (population)
  standard deviation of their energies per atom, and the message of every member that failed on that structure.
  Each member runs with ``errors="record"``, so a member that fails on one structure flags that structure and
  leaves the other structures and members alone.
* :meth:`~CommitteePotential.evaluate`, which the batched engine calls every relaxation step, is the primary's
  alone, and the batch budget is the primary's: a committee relaxes a structure with one member, at that
  member's speed. ``relax_with`` (a member's name or index; default the first) chooses it, and
  :meth:`~CommitteePotential.model_info` records the choice with every member's own provenance.

The committee's ``supported_elements`` are those every member covers, so the engine refuses a structure one
member could not score afterwards; ``predict`` leaves that check to each member (the structure is flagged with
the member's message instead).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pymatgen.core import Structure

from matfunnel.potential.base import Evaluation, Potential
from matfunnel.potential.failures import labels_for_predict

#: the prefix of committee names: ``committee:NAME,NAME,...``
PREFIX = "committee"

#: attributes the batched engine and the batch planner read from a potential (``getattr(potential, ..., None)``):
#: the primary member's, since the primary is the member that runs every step
FORWARDED = frozenset({"plan_batches", "max_atoms", "work_estimate", "too_big", "graph_cutoffs", "memory_budget",
                       "bytes_per_item", "max_edges", "max_angles", "calibration", "cutoff", "dtype"})


def primary_index(relax_with: int | str | None, names: Sequence[str]) -> int:
    """The index of the member ``relax_with`` names among ``names`` (``None``: the first).

    Parameters
    ----------
    relax_with
        A member's name as it appears in the committee name, its index (0-based), or ``None``.
    names
        The members' names, in order.

    Returns
    -------
    int
        The member's index.

    Raises
    ------
    ValueError
        ``relax_with`` is neither a member's name nor a valid index; the message lists the members.
    """
    if relax_with is None:
        return 0
    if isinstance(relax_with, int) and not isinstance(relax_with, bool):
        if 0 <= relax_with < len(names):
            return relax_with
        raise ValueError(f"relax_with={relax_with} is not a member index (0..{len(names) - 1}) of the committee "
                         f"{list(names)}")
    if isinstance(relax_with, str) and relax_with in names:
        return list(names).index(relax_with)
    raise ValueError(f"relax_with={relax_with!r} is not a member of the committee; give one of {list(names)} "
                     "or its index")


class CommitteePotential(Potential):
    """Several potentials scoring the same structures; one of them (the primary) relaxes them.

    Parameters
    ----------
    members
        The loaded member potentials, at least two, in order.
    names
        The members' names (default: each member's ``name``); they key the committee records and must differ.
    name
        The committee's name (default ``committee:`` and the member names joined by commas).
    relax_with
        The primary member: its name, its index, or ``None`` for the first. Its results are the committee's
        ``energy``/``forces``/``stress``, and ``evaluate`` (every relaxation step) runs it alone.

    Attributes
    ----------
    members : list[Potential]
        The member potentials, in order.
    member_names : list[str]
        Their names, in order.
    primary : int
        The index of the primary member.
    """

    def __init__(self, members: Sequence[Potential], names: Sequence[str] | None = None, *, name: str | None = None,
                 relax_with: int | str | None = None):
        members = list(members)
        member_names = [str(m.name) for m in members] if names is None else [str(n) for n in names]
        if len(member_names) != len(members):
            raise ValueError(f"{len(member_names)} names for {len(members)} committee members")
        if len(members) < 2:
            raise ValueError(f"a committee needs at least 2 members, got {len(members)}: {member_names}")
        repeated = sorted({n for n in member_names if member_names.count(n) > 1})
        if repeated:
            raise ValueError(f"committee member {repeated[0]!r} appears more than once in {member_names}")
        self.members = members
        self.member_names = member_names
        self.name = name or f"{PREFIX}:{','.join(member_names)}"
        self.primary = primary_index(relax_with, member_names)
        lead = members[self.primary]
        self.device = lead.device
        self.supported_elements = frozenset.intersection(*(frozenset(m.supported_elements) for m in members))
        # the engine checks distances itself unless the primary reports them from its graph with every evaluation
        self.distances_on_graph = bool(getattr(lead, "distances_on_graph", False))
        self.package = "matfunnel"
        self.weights_file = None

    @property
    def primary_potential(self) -> Potential:
        """The member that relaxes (and whose numbers ``predict`` returns)."""
        return self.members[self.primary]

    @property
    def primary_name(self) -> str:
        """The primary member's name."""
        return self.member_names[self.primary]

    def __getattr__(self, attr: str):
        # only called for attributes the committee lacks: the primary's batch-budget attributes (see FORWARDED)
        members = self.__dict__.get("members")
        if attr in FORWARDED and members is not None:
            return getattr(members[self.__dict__["primary"]], attr)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    # --- relaxation: the primary alone ---------------------------------------------------------------------

    def budget_problem(self, n_atoms: int, volume: float) -> str | None:
        """The primary's memory verdict (it is the member that runs every relaxation step)."""
        return self.primary_potential.budget_problem(n_atoms, volume)

    def evaluate(self, numbers: torch.Tensor, positions: torch.Tensor, cells: torch.Tensor, n_atoms: torch.Tensor,
                 *, compute_stress: bool = True) -> Evaluation:
        """The primary member's :meth:`~matfunnel.potential.base.Potential.evaluate` (the other members do not run)."""
        return self.primary_potential.evaluate(numbers, positions, cells, n_atoms, compute_stress=compute_stress)

    def calculator(self):
        """An ASE calculator backed by the primary member alone (for relaxations through ASE)."""
        return self.primary_potential.calculator()

    # --- scoring: every member ---------------------------------------------------------------------------

    def predict(
        self,
        structures: Sequence[Structure] | Structure,
        *,
        labels: Sequence[str] | None = None,
        errors: Literal["raise", "record"] = "raise",
    ) -> list[dict]:
        """Every member's prediction; the primary's result dicts, each with a ``"committee"`` record.

        Parameters
        ----------
        structures
            pymatgen ``Structure`` or ASE ``Atoms`` (a single one may be passed bare; the result is still a list).
        labels
            One name per structure for error messages.
        errors
            ``"raise"``: a structure the primary cannot evaluate raises its ``StructureError`` (as for the
            primary alone); ``"record"``: its result is ``{"error": message, "committee": {...}}``. A structure
            another member fails on is never raised: its record names the member and the message.

        Returns
        -------
        list[dict]
            Per structure the primary's ``energy``, ``forces``, ``stress``, ``magmoms`` (or ``error``) and
            ``committee``: ``members`` (names), ``primary`` (name), ``energies`` (each member's total energy in
            eV, ``None`` where it failed), ``energy_per_atom_mean`` and ``energy_per_atom_std`` (eV/atom, over the
            members that succeeded; the population standard deviation, ``None`` with fewer than two),
            ``errors`` (``{member: message}`` of the members that failed on this structure) and ``n_ok``.
        """
        if errors not in ("raise", "record"):
            raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
        items: list[Any] = list(structures) if isinstance(structures, (list, tuple)) else [structures]
        given = None if labels is None else labels_for_predict(labels, len(items))
        member_labels = None if given is None else [str(lab) for lab in given]
        runs: list[list[dict]] = [[] for _ in self.members]
        # the primary first, in the caller's mode: a structure it cannot evaluate raises before the others run
        runs[self.primary] = self.primary_potential.predict(items, labels=member_labels, errors=errors)
        for k, member in enumerate(self.members):
            if k == self.primary:
                continue
            try:
                runs[k] = member.predict(items, labels=member_labels, errors="record")
            except Exception as exc:  # noqa: BLE001 - a member that fails outright flags every structure, kills none
                runs[k] = [{"error": f"{self.member_names[k]} failed: {type(exc).__name__}: {exc}"}] * len(items)
        return [self._combine([run[i] for run in runs]) for i in range(len(items))]

    def _combine(self, outs: list[dict]) -> dict:
        """The primary's result for one structure with the committee record of ``outs`` (one per member)."""
        energies: list[float | None] = []
        per_atom: list[float] = []
        failed: dict[str, str] = {}
        for name, out in zip(self.member_names, outs, strict=True):
            if "error" in out:
                energies.append(None)
                failed[name] = str(out["error"])
                continue
            energy = float(out["energy"])
            n_atoms = len(np.asarray(out["forces"]).reshape(-1, 3))
            if not np.isfinite(energy) or n_atoms == 0:
                energies.append(None)
                failed[name] = f"{name} returned energy {energy} for {n_atoms} atoms"
                continue
            energies.append(energy)
            per_atom.append(energy / n_atoms)
        record = {
            "members": list(self.member_names),
            "primary": self.primary_name,
            "energies": energies,
            "energy_per_atom_mean": float(np.mean(per_atom)) if per_atom else None,
            "energy_per_atom_std": float(np.std(per_atom)) if len(per_atom) >= 2 else None,
            "errors": failed,
            "n_ok": len(per_atom),
        }
        result = dict(outs[self.primary])
        if self.primary_name in failed and "error" not in result:
            result = {"error": failed[self.primary_name]}
        result["committee"] = record
        return result

    def _predict_checked(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        """Validated structures through :meth:`predict` (each member validates them again for itself)."""
        if errors not in ("raise", "record"):
            raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
        return self.predict(structures, labels=labels, errors="raise" if errors == "raise" else "record")

    # --- provenance -------------------------------------------------------------------------------------

    def model_info(self) -> dict:
        """The committee's provenance: its name, the primary, and every member's own :meth:`model_info`.

        ``weights_sha256`` is a SHA-256 over the members' names and checksums in order (``None`` when a member has
        none), so two committees of the same weights in the same order and the same primary record equal checksums.
        """
        members = [m.model_info() for m in self.members]
        sums = [info.get("weights_sha256") for info in members]
        checksum = None
        if all(sums):
            text = "\n".join(f"{n}:{s}" for n, s in zip(self.member_names, sums, strict=True))
            checksum = hashlib.sha256(text.encode()).hexdigest()
        try:
            version: str | None = importlib.metadata.version("matfunnel")
        except importlib.metadata.PackageNotFoundError:
            version = None
        return {"name": self.name, "package": "matfunnel", "version": version, "weights_sha256": checksum,
                "weights_checksum_of": "members" if checksum else None, "relaxed_with": self.primary_name,
                "primary": self.primary, "members": members}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(members={self.member_names!r}, relax_with={self.primary_name!r}, "
                f"device={self.device!r})")


__all__ = ["FORWARDED", "PREFIX", "CommitteePotential", "primary_index"]
