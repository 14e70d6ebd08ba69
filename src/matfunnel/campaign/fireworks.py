"""Submit a campaign (or any jobflow Flow) to a FireWorks LaunchPad for cluster execution.

The Flow is converted with jobflow's own :func:`jobflow.managers.fireworks.flow_to_workflow`
(unmodified ``JobFiretask``), after each job has been given a FireWorks *category*
(``spec._category``):

``gpu``
    MLIP relaxations / statics and phonons (names with ``mlip``, ``relax``, ``phonon``, ...).
``dft``
    DFT calculations (names with ``dft``, ``gpaw``, ``vasp``; atomate2 VASP jobs).
``cpu``
    everything else (candidates, hull, the DFT gate, reports, gathering).

A job can choose explicitly with ``job.metadata["category"]`` (or ``["matfunnel_resource"]``)
= ``"gpu" | "dft" | "cpu"``, or an existing ``manager_config["_category"]``. Workers pull only
their categories (``category:`` in ``my_fworker_*.yaml``; see ``workflows/``). Jobs generated at
run time (``Response(replace=...)``) are routed by name, defaulting to their parent's category.

Two things never go into a Firework spec:

* the job store: every ``JobFiretask`` has ``store=None``, so each worker uses the store of
  its own jobflow config (``JOBFLOW_CONFIG_FILE``, ``workflows/jobflow.yaml``);
* the Materials Project API key (``MP_API_KEY`` / ``PMG_MAPI_KEY``): the serialized
  workflow is searched for it (and for api-key fields) before submission, and submission is
  refused with :class:`SecretInWorkflowError` if it is there. Workers read it from their own
  environment.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CATEGORIES = ("gpu", "dft", "cpu")
# job.metadata keys that pin a job's category ("category" is what build_flow sets)
RESOURCE_KEYS = ("matfunnel_resource", "category")
RESOURCE_KEY = RESOURCE_KEYS[0]

# (substring of the job name, category): the LAST matching rule wins. Jobflow name filters are
# case-sensitive; matfunnel's job names are lower case.
NAME_RULES: tuple[tuple[str, str], ...] = (
    ("mlip", "gpu"), ("relax", "gpu"), ("phonon", "gpu"), ("chgnet", "gpu"), ("mace", "gpu"),
    ("force field", "gpu"), ("forcefield", "gpu"),
    ("dft", "dft"), ("gpaw", "dft"), ("vasp", "dft"),
    # cheap bookkeeping, even when its name mentions DFT ("dft gate", "dft hull"): a campaign
    # with no DFT candidates must not wait for a DFT worker to decide that
    ("gate", "cpu"), ("hull", "cpu"), ("report", "cpu"), ("gather", "cpu"), ("pack", "cpu"),
)
DFT_MODULE_PREFIXES = ("atomate2.vasp", "atomate2.cp2k", "atomate2.abinit", "gpaw")

SECRET_ENV_VARS = ("MP_API_KEY", "PMG_MAPI_KEY")
_SECRET_FIELD = re.compile(r"(api[_-]?key|mapi[_-]?key)$", re.IGNORECASE)
_MIN_SECRET_LEN = 6  # shorter values would match by accident


class SubmissionError(RuntimeError):
    """The workflow cannot be submitted."""


class SecretInWorkflowError(SubmissionError):
    """A credential would have been written into a Firework spec."""


# --------------------------------------------------------------------------- categories

def _job_module(job) -> str:
    func = getattr(job, "function", None)
    func = getattr(func, "__wrapped__", func)
    owner = getattr(func, "__self__", None)  # Maker.make bound method: the maker's module
    if owner is not None:
        return type(owner).__module__ or ""
    return getattr(func, "__module__", "") or ""


def _category_by_name(name: str, default: str) -> str:
    name = (name or "").lower()
    cat = default
    for pattern, category in NAME_RULES:
        if pattern in name:
            cat = category
    return cat


def job_category(job) -> str:
    """The FireWorks category (``gpu``, ``dft`` or ``cpu``) a jobflow ``Job`` should run in.

    In order: ``job.metadata["matfunnel_resource"]`` or ``["category"]``; an existing
    ``manager_config["_category"]``; a DFT code's module; the :data:`NAME_RULES`; ``cpu``.
    """
    metadata = job.metadata or {}
    explicit = next((metadata[k] for k in RESOURCE_KEYS if metadata.get(k) is not None), None)
    if explicit is None:
        explicit = (job.config.manager_config or {}).get("_category")
    if explicit is not None:
        if explicit not in CATEGORIES:
            raise SubmissionError(f"job {job.name!r}: category {explicit!r} is not one of {CATEGORIES}")
        return explicit
    if _job_module(job).startswith(DFT_MODULE_PREFIXES):
        return "dft"
    return _category_by_name(job.name, "cpu")


def _set_category(job, category: str, *, name_filter: str | None = None, dynamic: bool) -> None:
    job.update_config({"_set": {"manager_config->_category": category, "pass_manager_config": False}},
                      name_filter=name_filter, dict_mod=True, dynamic=dynamic)


def assign_categories(flow, category_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Set ``manager_config["_category"]`` on every job of ``flow`` (in place).

    Jobs created at run time (``Response(replace/addition/detour)``) are routed too: each job
    carries jobflow *dynamic* config updates -- first its own category as the default, then the
    :data:`NAME_RULES` as name filters -- which jobflow applies to every job it generates
    (and their descendants). ``pass_manager_config`` is switched off so that the parent's
    config does not override them afterwards.

    ``category_map`` re-routes whole categories, e.g. ``{"gpu": "cpu"}`` on a cluster without
    GPU workers. Returns ``{job uuid: category}`` of the static jobs.
    """
    category_map = dict(category_map or {})
    bad = set(category_map.values()) - set(CATEGORIES)
    if bad:
        raise SubmissionError(f"category_map targets {sorted(bad)} are not in {CATEGORIES}")

    def route(cat: str) -> str:
        return category_map.get(cat, cat)

    out = {}
    for job, _parents in flow.iterflow():
        cat = route(job_category(job))
        _set_category(job, cat, dynamic=True)  # default for generated jobs
        for pattern, rule_cat in NAME_RULES:
            _set_category(job, route(rule_cat), name_filter=pattern, dynamic=True)
        _set_category(job, cat, dynamic=False)  # the job itself (the rules above touched it too)
        out[job.uuid] = cat
    return out


# --------------------------------------------------------------------------- secrets

def _secret_values(extra: Iterable[str] = ()) -> list[str]:
    values = [os.environ.get(v) for v in SECRET_ENV_VARS]
    try:  # pymatgen can also hold the key in ~/.config/.pmgrc.yaml
        from pymatgen.core import SETTINGS

        values.append(SETTINGS.get("PMG_MAPI_KEY"))
    except Exception:  # pragma: no cover - pymatgen always importable here
        pass
    values.extend(extra)
    from matfunnel.common.cache import ENV as CACHE_ENV
    from matfunnel.common.cache import is_mongo_uri

    cache = os.environ.get(CACHE_ENV, "")
    if is_mongo_uri(cache):  # the shared result cache's URI may hold a password
        values.append(cache)
    return sorted({v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LEN})


def _secret_fields(obj: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            here = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _SECRET_FIELD.search(k) and v not in (None, "", False):
                found.append(here)
            found.extend(_secret_fields(v, here))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found.extend(_secret_fields(v, f"{path}[{i}]"))
    return found


def check_no_secrets(document: Any, extra_secrets: Iterable[str] = ()) -> None:
    """Raise :class:`SecretInWorkflowError` if ``document`` holds a credential.

    Looks for the values of ``MP_API_KEY`` / ``PMG_MAPI_KEY``, of a MongoDB URI in ``MATFUNNEL_RESULT_CACHE``
    (and of ``extra_secrets``) anywhere
    in its JSON form, and for non-empty fields named like ``api_key`` / ``mp_api_key``.
    The error message never contains the secret itself.
    """
    text = json.dumps(document, default=str)
    for secret in _secret_values(extra_secrets):
        if secret in text:
            raise SecretInWorkflowError(
                "the workflow contains the value of an API key (MP_API_KEY/PMG_MAPI_KEY) or of the result "
                "cache's URI (MATFUNNEL_RESULT_CACHE); a job was given it as an argument. Jobs must read it "
                "from the worker's environment instead."
            )
    fields = _secret_fields(document)
    if fields:
        raise SecretInWorkflowError(f"the workflow has credential fields {fields[:5]}; remove them from the jobs")


# --------------------------------------------------------------------------- conversion

def flow_to_fireworks(flow_or_job, *, category_map: Mapping[str, str] | None = None,
                      name: str | None = None, metadata: dict | None = None):
    """Convert a Flow / Job / list of jobs to a FireWorks ``Workflow`` with categories.

    The conversion is jobflow's ``flow_to_workflow`` with ``store=None``: workers use the job
    store of their own jobflow config. The input flow is not modified.
    """
    from copy import deepcopy

    from jobflow.core.flow import get_flow
    from jobflow.managers.fireworks import flow_to_workflow

    flow = get_flow(deepcopy(flow_or_job))
    assign_categories(flow, category_map)
    kwargs: dict[str, Any] = {"name": name or flow.name}
    if metadata:
        kwargs["metadata"] = metadata
    # jobflow annotates ``store`` as ``JobStore`` but defaults it to None and documents None (the workers' store)
    wf = flow_to_workflow(flow, store=None, **kwargs)  # type: ignore[arg-type]
    for fw in wf.fws:
        for task in fw.tasks:
            if task.get("store", None) is not None:  # pragma: no cover - guarded by store=None
                raise SubmissionError("a job store was embedded in a Firework spec")
        if fw.spec.get("_category") not in CATEGORIES:
            raise SubmissionError(f"firework {fw.name!r} has no category")
    return wf


# --------------------------------------------------------------------------- launchpad

def load_launchpad(launchpad_file: str | Path | None = None):
    """A FireWorks ``LaunchPad`` from a ``my_launchpad.yaml`` (FireWorks' auto-load if None)."""
    from fireworks import LaunchPad

    if launchpad_file is None:
        return LaunchPad.auto_load()
    path = Path(launchpad_file).expanduser()
    if not path.exists():
        raise SubmissionError(f"launchpad file {str(path)!r} not found (template: workflows/my_launchpad.yaml)")
    return LaunchPad.from_file(str(path))


def _as_flow(flow_or_spec):
    """Flow/Job/list -> itself; CampaignSpec or a spec path -> ``build_flow(spec)``."""
    from jobflow import Flow, Job

    if isinstance(flow_or_spec, (Flow, Job, list, tuple)):
        return flow_or_spec, None
    from matfunnel.campaign.spec import CampaignSpec, load_spec

    spec = load_spec(flow_or_spec) if isinstance(flow_or_spec, (str, Path)) else flow_or_spec
    if not isinstance(spec, CampaignSpec):
        raise SubmissionError(f"cannot submit a {type(flow_or_spec).__name__}: "
                              "give a Flow, a Job, a CampaignSpec or a spec path")
    from matfunnel.campaign.funnel import build_flow

    return build_flow(spec), spec


def submit(flow_or_spec, launchpad_file: str | Path | None = None, *, launchpad=None,
           category_map: Mapping[str, str] | None = None, name: str | None = None) -> int:
    """Add a Flow (or a campaign spec / spec path) to a LaunchPad; return the workflow id.

    The workflow id is the FireWorks id of one of its root Fireworks (``lpad get_wflows -i ID``).
    For a campaign whose ``potential.device`` is ``cpu`` (the default) and no ``category_map``,
    MLIP jobs are routed to cpu workers; set ``device: cuda`` in the spec for GPU workers.
    Nothing is run here: start workers with ``rlaunch``/``qlaunch`` (see ``workflows/README.md``).
    """
    flow, spec = _as_flow(flow_or_spec)
    metadata = {"matfunnel": True}
    if spec is not None:
        metadata.update(campaign=spec.name, chemsys=spec.chemsys)
        name = name or f"matfunnel {spec.name} {spec.chemsys}"
        if category_map is None and spec.potential.device == "cpu":
            # the MLIP would run on the CPU anyway: do not hold a GPU node for it
            log.warning("campaign %r has potential.device: cpu -> MLIP jobs go to cpu workers "
                        "(set potential.device: cuda to use GPU workers)", spec.name)
            category_map = {"gpu": "cpu"}
    wf = flow_to_fireworks(flow, category_map=category_map, name=name, metadata=metadata)
    check_no_secrets(wf.to_dict())
    lp = launchpad if launchpad is not None else load_launchpad(launchpad_file)
    root = min(wf.root_fw_ids)  # before add_wf: it renumbers the Fireworks in place
    id_map = lp.add_wf(wf)
    return int(id_map[root])


def submit_campaign(spec_path: str | Path, launchpad_path: str | Path | None = None,
                    category_map: Mapping[str, str] | None = None) -> int:
    """``matfunnel submit flows/<spec>.yaml --launchpad my_launchpad.yaml``: the workflow id."""
    return submit(Path(spec_path), launchpad_path, category_map=category_map)


# --------------------------------------------------------------------------- operations

def recover_lost_runs(launchpad, expiration_secs: int = 4 * 3600, rerun: bool = True) -> list[int]:
    """``lpad detect_lostruns --time S --rerun``: requeue runs whose worker died; their fw ids.

    A RUNNING Firework is *lost* when its launch has not pinged for ``expiration_secs``
    (FireWorks pings every ``PING_TIME_SECS``, one hour by default: keep ``expiration_secs``
    well above it on a real cluster).
    """
    if isinstance(launchpad, (str, Path)):
        launchpad = load_launchpad(launchpad)
    _launch_ids, fw_ids, _inconsistent = launchpad.detect_lostruns(expiration_secs=expiration_secs, rerun=rerun)
    return list(fw_ids)


def rerun_fizzled(launchpad, wf_id: int) -> list[int]:
    """Put every FIZZLED Firework of workflow ``wf_id`` back to READY; their fw ids."""
    if isinstance(launchpad, (str, Path)):
        launchpad = load_launchpad(launchpad)
    wf = launchpad.get_wf_by_fw_id_lzyfw(wf_id)
    fizzled = [fw_id for fw_id, state in wf.fw_states.items() if state == "FIZZLED"]
    for fw_id in fizzled:
        launchpad.rerun_fw(fw_id)
    return fizzled


def workflow_states(launchpad, wf_id: int) -> dict[str, str]:
    """``{firework name: state}`` of a workflow (names are jobflow job names)."""
    if isinstance(launchpad, (str, Path)):
        launchpad = load_launchpad(launchpad)
    wf = launchpad.get_wf_by_fw_id_lzyfw(wf_id)
    return {f"{wf.id_fw[i].name} [{i}]": s for i, s in wf.fw_states.items()}
