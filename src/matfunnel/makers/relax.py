"""Batched MLIP makers: one job evaluates or relaxes a whole list of structures."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from jobflow import Flow, Maker, Response, job
from pymatgen.core import Structure

from matfunnel.common.cache import active_cache, result_key
from matfunnel.common.errors import StructureError
from matfunnel.common.structures import as_structure, is_atoms
from matfunnel.engine import RelaxResult, relax_batched, relax_structures
from matfunnel.engine.documents import initial_dict
from matfunnel.engine.inputs import check_relax_settings, labels_for
from matfunnel.engine.optimizers import resolve as resolve_optimizer
from matfunnel.potential import DEFAULT_POTENTIAL, load_potential
from matfunnel.potential.committee import PREFIX as COMMITTEE_PREFIX
from matfunnel.potential.committee import CommitteePotential
from matfunnel.potential.validate import structure_label


def decode_inputs(structures, labels) -> tuple[list, list[str], dict[int, str]]:
    """Decode the makers' inputs.

    Returns the structure documents decoded, one label per structure, and the error of each input that is not a
    structure at all (it gets an error document; the others go on).
    """
    given = labels_for(labels, len(structures))
    out, names, errors = [], [], {}
    for i, (s, lab) in enumerate(zip(structures, given, strict=False)):
        problem = None
        if isinstance(s, dict) and INPUT_ERROR in s:  # an input make() could not convert (see portable_inputs)
            problem = str(s[INPUT_ERROR])
            lab = lab or s.get("label")
        elif isinstance(s, dict):
            try:
                s = Structure.from_dict(s)
            except Exception as exc:  # noqa: BLE001 - any malformed document: that input's error
                problem = f"not a pymatgen Structure document ({type(exc).__name__}: {exc})"
        if lab is None:
            lab = structure_label(s, i) if isinstance(s, Structure) else f"structure#{i}"
        if problem is not None:
            errors[i] = f"structure {lab!r}: {problem}"
        out.append(s)
        names.append(lab)
    return out, names, errors


#: key of the placeholder that stands for an input :func:`portable_inputs` could not convert
INPUT_ERROR = "matfunnel_input_error"


def portable_inputs(structures):
    """The makers' inputs in a form jobflow can serialise: ASE ``Atoms`` become ``Structure`` before the job exists.

    An ``Atoms`` that cannot be converted (not periodic, no cell) becomes a placeholder carrying its problem, which
    the job reports as that input's error while the others go on. Anything else passes unchanged (references to
    other jobs' outputs included).
    """
    if not isinstance(structures, (list, tuple)):
        return structures
    out = []
    for i, s in enumerate(structures):
        if is_atoms(s):
            try:
                s = as_structure(s, f"{s.get_chemical_formula()}#{i}")
            except StructureError as exc:
                s = {INPUT_ERROR: exc.problem, "label": exc.label}
        out.append(s)
    return out


def is_committee(name: str) -> bool:
    """Whether the potential name ``name`` is a committee's (``committee:A,B,...``)."""
    return str(name).split(":", 1)[0].strip() == COMMITTEE_PREFIX


def committee_records(pot: CommitteePotential, docs: list[dict]) -> None:
    """Every member's energy at each relaxed structure of ``docs``, as ``doc["committee"]`` (in place).

    One :meth:`~matfunnel.potential.committee.CommitteePotential.predict` call (``errors="record"``) over the
    documents that have a final structure and an energy; a member that fails on a structure leaves its record
    flagged (``errors``, ``None`` energy), the document stays. Documents without an energy get no record.
    """
    todo = [d for d in docs if d.get("energy") is not None and d.get("final_structure")]
    if not todo:
        return
    structures = [as_structure(d["final_structure"], d["label"]) for d in todo]
    try:
        outs = pot.predict(structures, labels=[d["label"] for d in todo], errors="record")
    except Exception as exc:  # noqa: BLE001 - the committee must never cost the relaxations
        for d in todo:
            d["committee"] = {"members": list(pot.member_names), "primary": pot.primary_name,
                              "energies": [None] * len(pot.members), "energy_per_atom_mean": None,
                              "energy_per_atom_std": None, "n_ok": 0,
                              "errors": dict.fromkeys(pot.member_names, f"{type(exc).__name__}: {exc}")}
        return
    for d, out in zip(todo, outs, strict=True):
        d["committee"] = out["committee"]


#: who relaxes a committee's structures: ``primary`` (one member relaxes, every member scores the result) or ``all``
#: (each member also relaxes every structure itself, from the same input, and its energy is its own minimum's)
COMMITTEE_RELAX = ("primary", "all")


def member_relaxations(pot: CommitteePotential, docs: list[dict], structures: list[Structure],
                       relax: Callable[..., list]) -> None:
    """Each non-primary member relaxes ``structures`` itself; its own minimum's energy goes into the records.

    ``docs`` (with committee records from :func:`committee_records`) and ``structures`` (their inputs) are in the
    same order; ``relax(structures, potential, labels)`` relaxes (the maker's engine and settings). Per record,
    ``energies`` then hold every member's energy at its own relaxed structure (the primary's: its relaxation's),
    ``energies_at_primary`` the members' energies at the primary's structure, ``relaxed_by`` is ``"all"`` and
    ``member_steps`` each member's steps. A member whose relaxation fails or does not converge has no energy
    there and its message in ``errors``; the document stays. The mean and spread are recomputed.
    """
    pairs = [(d, s) for d, s in zip(docs, structures, strict=True) if d.get("committee")]
    if not pairs:
        return
    labels = [str(d["label"]) for d, _ in pairs]
    why = ""
    for d, _ in pairs:
        rec = d["committee"]
        rec["energies_at_primary"] = list(rec["energies"])
        rec["relaxed_by"] = "all"
        rec["member_steps"] = {rec["primary"]: d.get("n_steps")}
    for k, (name, member) in enumerate(zip(pot.member_names, pot.members, strict=True)):
        if k == pot.primary:
            continue
        try:
            results = relax([s for _, s in pairs], member, labels)
        except Exception as exc:  # noqa: BLE001 - a member that fails outright flags every structure, kills none
            results = [None] * len(pairs)
            why = f"{name} relaxation failed: {type(exc).__name__}: {exc}"
        for (d, _), r in zip(pairs, results, strict=True):
            rec = d["committee"]
            rec["member_steps"][name] = None if r is None else r.n_steps
            problem = why if r is None else (r.error or (None if r.converged else
                                                         f"{name} relaxation not converged in {r.n_steps} steps"))
            rec["energies"][k] = None if problem else float(r.energy)
            if problem:
                rec["errors"][name] = problem
    for d, s in pairs:
        rec = d["committee"]
        n = len(s)
        per_atom = [e / n for e in rec["energies"] if e is not None]
        rec.update(n_ok=len(per_atom), energy_per_atom_mean=float(np.mean(per_atom)) if per_atom else None,
                   energy_per_atom_std=float(np.std(per_atom)) if len(per_atom) >= 2 else None)


def _failed(label: str, error: str, potential: str) -> dict:
    return {**RelaxResult(label=label, formula="", initial_structure={}, error=error).as_dict(),
            "potential": potential, "cached": False}


@dataclass
class RelaxMaker(Maker):
    """Relax a batch of structures with an MLIP (FIRE + Frechet cell filter).

    Returns one document per structure (see :class:`matfunnel.engine.RelaxResult`), in input order; an input
    that cannot be relaxed (not a structure, disordered, overlapping atoms, ...) gets a document with its
    ``error`` and the others go on. ``engine="batched"`` (default) relaxes all structures together on the
    potential's device with in-flight refill (:func:`matfunnel.engine.relax_batched`); ``engine="ase"`` runs
    ASE's FIRE one structure after another (the reference path). Both give the same results, so cached
    results are shared between them. ``symmetry`` keeps each structure's space group during the relaxation.
    Atoms fixed by ``selective_dynamics`` stay fixed in both engines.

    With ``trajectory_every`` > 0 (batched engine) each document carries the relaxation's path, at most
    ``max_frames`` frames. The output (all documents) goes to the job store's additional ``data`` store
    (GridFS in production), so thousands of structures per job never meet MongoDB's 16 MB document limit;
    ``store.get_output(uuid, load=True)`` and downstream jobs see the list as usual.

    With a result cache (:mod:`matfunnel.common.cache`) every finished structure is committed as soon as it leaves
    the batch, and a rerun after a crash reuses it; failures raised by the potential itself (out of memory)
    are not kept, so a rerun tries them again.

    With a committee potential (``committee:A,B,...``) the primary member relaxes, and then every member scores
    the relaxed structures (one :meth:`~matfunnel.potential.committee.CommitteePotential.predict` call): each
    document gets a ``committee`` record (:func:`committee_records`). A member that fails on a structure flags
    its record (``errors``) and the document stays. The cache keeps a document with its complete record; one
    whose record has a member's error is kept without it, and a rerun scores it again without relaxing it.
    With ``committee_relax="all"`` every other member also relaxes each structure from the same input, at the
    cost of one relaxation per member, and the record holds each member's energy at its own minimum
    (:func:`member_relaxations`).
    """

    name: str = "mlip relax"
    potential: str = DEFAULT_POTENTIAL
    #: keyword arguments of the potential's factory (JSON values), e.g. ``{"modal": "PBE"}``
    potential_kwargs: dict = field(default_factory=dict)
    device: str = "cpu"
    fmax: float = 0.05
    max_steps: int = 500
    relax_cell: bool = True
    #: the optimizer (:mod:`matfunnel.engine.optimizers`: ``fire``, ``lbfgs``; None: the engine's default, FIRE)
    optimizer: str | None = None
    #: its parameters, ASE's names (e.g. ``{"alpha": 10, "curvature_check": true}`` for ``lbfgs``)
    optimizer_config: dict = field(default_factory=dict)
    progress: bool = True
    engine: str = "batched"
    symmetry: bool = False
    max_atoms: int | None = None
    trajectory_every: int = 0
    max_frames: int = 100
    #: SQLite file of finished results (None: ``MATFUNNEL_RESULT_CACHE`` if set; see :mod:`matfunnel.common.cache`)
    result_cache: str | None = None
    #: a committee's relaxations: ``primary`` (one member) or ``all`` (every member, see :data:`COMMITTEE_RELAX`)
    committee_relax: str = "primary"

    def make(self, structures: Any, labels: Any = None):
        """The job that relaxes ``structures`` (named ``labels``); its output is one document per structure.

        ``structures`` may hold pymatgen ``Structure`` objects, their dicts or ASE ``Atoms`` (converted here, before
        the job is built: jobflow serialises its inputs).
        """
        return self.relax_job(portable_inputs(structures), labels)

    def _checked_method(self):
        """The optimizer's method, after checking every setting (a bad one fails at once, before any work)."""
        if self.engine not in ("batched", "ase"):
            raise ValueError(f"unknown relaxation engine {self.engine!r} (batched or ase)")
        if self.engine == "ase" and (self.symmetry or self.trajectory_every):
            raise ValueError("symmetry-constrained relaxation and trajectories need engine='batched'")
        check_relax_settings(self.fmax, self.max_steps)
        method, _ = resolve_optimizer(self.optimizer, self.optimizer_config or None)
        if self.committee_relax not in COMMITTEE_RELAX:
            raise ValueError(f"committee_relax must be one of {', '.join(COMMITTEE_RELAX)}, "
                             f"not {self.committee_relax!r}")
        if self.committee_relax == "all" and not is_committee(self.potential):
            raise ValueError(f"committee_relax='all' needs a committee potential (committee:A,B), "
                             f"not {self.potential!r}")
        return method

    def _settings(self, method_name: str) -> dict:
        """What determines a relaxation's result (its cache key), beside the structure."""
        settings = {"potential": self.potential,
                    **({"potential_kwargs": self.potential_kwargs} if self.potential_kwargs else {}),
                    "fmax": self.fmax, "max_steps": self.max_steps, "relax_cell": self.relax_cell}
        if method_name != "fire" or self.optimizer_config:  # FIRE with ASE's parameters keeps the keys it always had
            settings["optimizer"] = [method_name, dict(self.optimizer_config)]
        if self.symmetry:  # only when set, so keys of unconstrained relaxations stay what they were
            settings["symmetry"] = True
        if self.trajectory_every:
            settings["trajectory"] = [self.trajectory_every, self.max_frames]
        if self.committee_relax == "all":
            settings["committee_relax"] = "all"
        return settings

    def _relax(self, structures: list, potential, labels: list[str], method_name: str,
               on_result: Callable | None = None, record_path: bool = True) -> list:
        """``structures`` relaxed with ``potential`` by the maker's engine and settings.

        ``record_path``: with the trajectories and the batch cap (the documents' own relaxation).
        """
        kw: dict[str, Any] = dict(labels=labels, fmax=self.fmax, max_steps=self.max_steps, relax_cell=self.relax_cell,
                                  progress=self.progress, on_result=on_result, optimizer=method_name,
                                  config=self.optimizer_config or None)
        if self.engine == "ase":
            return relax_structures(structures, potential, **kw)
        if record_path:
            kw.update(max_atoms=self.max_atoms, trajectory_every=self.trajectory_every, max_frames=self.max_frames)
        return relax_batched(structures, potential, symmetry=self.symmetry, **kw)

    @job(data=True)
    def relax_job(self, structures: list[Structure], labels: list[str] | None = None) -> list[dict]:
        """Relax ``structures`` (named ``labels``); one document per structure, in input order."""
        method = self._checked_method()
        structures, labels, bad = decode_inputs(structures, labels)
        cache = active_cache(self.result_cache)
        settings = self._settings(method.name)
        keys = [None if i in bad else result_key("mlip-relax", s, settings) for i, s in enumerate(structures)]
        docs: list[dict | None] = [None] * len(structures)
        for i, error in bad.items():
            docs[i] = _failed(labels[i], error, self.potential)
        if cache is not None:  # results identified by their inputs: finished work is reused
            for i, k in enumerate(keys):
                hit = cache.get(k) if k is not None else None
                if hit is not None:
                    docs[i] = {**hit, "label": labels[i], "cached": True}
        todo = [i for i, d in enumerate(docs) if d is None]
        # a committee's documents carry every member's energy at the relaxed structure (cached ones included)
        rescore = [i for i, d in enumerate(docs) if is_committee(self.potential) and d is not None
                   and i not in bad and "committee" not in d and d.get("energy") is not None]
        pot = load_potential(self.potential, self.device, **self.potential_kwargs) if todo or rescore else None
        if todo:
            assert pot is not None
            model = pot.model_info()

            def finished(j: int, result) -> None:  # committed as soon as each structure is done
                i = todo[j]
                doc = {**result.as_dict(), "potential": self.potential, "model": model, "cached": False}
                docs[i] = doc
                key = keys[i]
                if cache is not None and key is not None and not result.data.get("potential_error"):
                    cache.put(key, "mlip-relax", doc)  # a committee's record is added below, then cached again

            self._relax([structures[i] for i in todo], pot, [labels[i] for i in todo], method.name, finished)
        if isinstance(pot, CommitteePotential):
            scored = [*rescore, *todo]
            members = None if self.committee_relax != "all" else (
                lambda structs, member, names: self._relax(structs, member, names, method.name, record_path=False))
            self._committee(pot, [cast(dict, docs[i]) for i in scored], [keys[i] for i in scored], cache,
                            [structures[i] for i in scored], members)
        return cast(list[dict], docs)  # every input has its document by now

    @staticmethod
    def _committee(pot: CommitteePotential, docs: list[dict], keys: list, cache, structures: list | None = None,
                   relax_members: Callable[..., list] | None = None) -> None:
        """Add the committee records to ``docs`` (in place) and keep the complete ones in the result cache.

        With ``relax_members`` (``committee_relax="all"``) the other members relax ``structures`` too
        (:func:`member_relaxations`) before the records are kept.
        """
        committee_records(pot, docs)
        if relax_members is not None:
            assert structures is not None
            member_relaxations(pot, docs, structures, relax_members)
        for doc, key in zip(docs, keys, strict=True):
            # a record with a member's error is not kept: a rerun scores that structure again (not relaxes)
            if cache is not None and key is not None and "committee" in doc and not doc["committee"]["errors"]:
                cache.put(key, "mlip-relax", {**doc, "cached": False})


@dataclass
class StaticMaker(Maker):
    """Energy, forces, stress and magmoms of a batch of structures."""

    name: str = "mlip static"
    potential: str = DEFAULT_POTENTIAL
    #: keyword arguments of the potential's factory (JSON values), e.g. ``{"modal": "PBE"}``
    potential_kwargs: dict = field(default_factory=dict)
    device: str = "cpu"

    def make(self, structures: Any, labels: Any = None):
        """The job that evaluates ``structures`` (named ``labels``; ASE ``Atoms`` are converted before it is built)."""
        return self.static_job(portable_inputs(structures), labels)

    @job(data=True)
    def static_job(self, structures: list[Structure], labels: list[str] | None = None) -> list[dict]:
        """Evaluate ``structures`` (named ``labels``); one document per structure, in input order."""
        structures, labels, bad = decode_inputs(structures, labels)
        good = [i for i in range(len(structures)) if i not in bad]
        t0 = time.perf_counter()
        pot = load_potential(self.potential, self.device, **self.potential_kwargs)
        outs = dict(zip(good, pot.predict([structures[i] for i in good], labels=[labels[i] for i in good],
                                          errors="record"), strict=False)) if good else {}
        docs: list[dict[str, Any]] = []
        for i, (s, lab) in enumerate(zip(structures, labels, strict=False)):
            if i in bad:
                docs.append({"label": lab, "formula": "", "structure": {}, "potential": self.potential,
                             "error": bad[i]})
                continue
            o = outs[i]
            doc = {"label": lab, "formula": s.composition.reduced_formula if isinstance(s, Structure) else "",
                   "structure": initial_dict(s), "potential": self.potential, "model": pot.model_info(),
                   "error": o.get("error")}
            if "energy" in o:
                doc.update(energy=float(o["energy"]), e_per_atom=float(o["energy"]) / len(s),
                           forces=np.asarray(o["forces"]).tolist(), stress=np.asarray(o["stress"]).tolist(),
                           magmoms=np.asarray(o["magmoms"]).tolist())
            docs.append(doc)
        for d in docs:
            d["wall_time"] = (time.perf_counter() - t0) / max(len(docs), 1)
        return docs


@dataclass
class BatchedRelaxMaker(Maker):
    """Relax any number of structures as one :class:`RelaxMaker` job per ``batch_size`` structures.

    The job replaces itself (a dynamic jobflow ``Response``) by the batch jobs, each marked
    ``metadata["category"] = "gpu"`` for FireWorks routing, and a ``gather`` job whose output is every
    relaxation document, in input order.

    Parameters
    ----------
    name
        The job's name; the batch jobs are ``"<label> relax <k>"``.
    relax
        The maker of each batch.
    batch_size
        Structures per batch job.
    """

    name: str = "relax"
    relax: RelaxMaker = field(default_factory=RelaxMaker)
    batch_size: int = 32

    @job
    def make(self, structures: list, ids: list[str], label: str = "structures"):
        """Relax ``structures`` (named ``ids``); ``label`` names the batch jobs."""
        if not structures:
            return []
        return Response(replace=self.batches(structures, ids, label))

    def batches(self, structures: list, ids: list[str], label: str) -> Flow:
        """The batch jobs and the gather job, as a flow whose output is all documents in order."""
        size = max(1, int(self.batch_size))
        jobs = []
        for start in range(0, len(structures), size):
            j = self.relax.make(structures[start:start + size], ids[start:start + size])
            j.name = f"{label} relax {start // size + 1}"
            j.update_metadata({"category": "gpu"}, dynamic=False)
            jobs.append(j)
        gather = gather_job([j.output for j in jobs])
        return Flow([*jobs, gather], output=gather.output, name=f"{label} relaxation")


@job(name="gather", data=True)
def gather_job(parts: list[list]) -> list:
    """Concatenate the outputs of the batch jobs, in order.

    The result goes to the ``data`` store: a large campaign's documents together pass MongoDB's 16 MB document limit.
    """
    return [doc for part in parts for doc in part]
