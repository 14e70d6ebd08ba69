"""Potential names: the built-in registry, plug-ins from entry points, and spec strings for any model.

A potential is named by one string, the same in a flow spec, a maker and on the command line:

* a registered name: ``chgnet-0.3.0``, ``sevennet-0``, ``matris-10m-oam``, ... (``matfunnel potentials``
  lists them with their status);
* a name another package registers through the entry-point group ``matfunnel.potentials`` (the entry
  point loads a :class:`PotentialEntry`, or a factory ``(device, **kwargs) -> Potential``);
* ``torchsim:MODULE:CALLABLE``: ``CALLABLE(**kwargs)`` returns a torch-sim ``ModelInterface`` (or the
  callable is the model class), run through :class:`~matfunnel.potential.torchsim.TorchSimPotential`;
* ``ase:MODULE:CALLABLE``: ``CALLABLE(**kwargs)`` returns an ASE calculator, run one structure at a time
  through :class:`~matfunnel.potential.ase_calculator.AseCalculatorPotential`.
* ``committee:NAME,NAME,...``: each NAME any of the above (no committees), at least two, all different; a
  :class:`~matfunnel.potential.committee.CommitteePotential` whose ``predict`` carries every member's energy and
  their spread, and which relaxes with one member (keyword arguments ``relax_with=NAME`` or index, default the
  first, and ``members_kwargs={NAME: {...}}``, each member's own keyword arguments).

Keyword arguments travel beside the name (``potential: {name: ..., kwargs: {...}}`` in a spec,
``potential_kwargs`` in the makers, ``--potential-kwargs JSON`` on the command line).

A model whose weights are not on this machine raises :class:`WeightsMissing` at once, naming the file
and the folder it must go in: nothing here downloads weights.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from matfunnel.potential.base import Potential

#: entry-point group through which other packages add potential names
ENTRY_POINT_GROUP = "matfunnel.potentials"
#: spec-string prefixes for user models
PREFIXES = ("torchsim", "ase")
#: the prefix of committee names (``committee:NAME,NAME,...``)
COMMITTEE = "committee"


class UnknownPotential(ValueError):
    """A potential name that is neither registered nor a valid ``torchsim:``/``ase:`` spec string."""


class PotentialArguments(ValueError):
    """Keyword arguments the model's factory does not take (the message names the model and the arguments)."""


class WeightsMissing(FileNotFoundError):
    """A model's weights are not on this machine; the message names the file and the folder."""


@dataclass(frozen=True)
class PotentialEntry:
    """One registered potential.

    Parameters
    ----------
    name
        The name users type.
    factory
        ``factory(device, **kwargs) -> Potential``.
    summary
        One line for ``matfunnel potentials``.
    requires
        Python packages (import names) the model needs.
    weights
        Returns the weights file the model loads (``None``: built in / no file), so that a missing file
        is reported before anything is loaded.
    hint
        What to do when the weights are missing (where to get them).
    """

    name: str
    factory: Callable[..., Potential]
    summary: str = ""
    requires: tuple[str, ...] = ()
    weights: Callable[[], Path | None] | None = None
    hint: str = ""
    source: str = "matfunnel"

    def missing_packages(self) -> list[str]:
        """Required packages that are not importable here."""
        return [p for p in self.requires if importlib.util.find_spec(p) is None]

    def weights_path(self) -> Path | None:
        """The weights file this entry loads, or ``None`` when it has none of its own."""
        return self.weights() if self.weights is not None else None

    def status(self) -> str:
        """``ready``, ``needs package(s) ...`` or ``needs weights at PATH``."""
        missing = self.missing_packages()
        if missing:
            return f"needs package(s) {', '.join(missing)}"
        try:
            path = self.weights_path()
        except Exception as exc:  # noqa: BLE001 - any failure to locate: report it, not crash the listing
            return f"cannot locate weights ({type(exc).__name__}: {exc})"
        if path is not None and not Path(path).is_file():
            return f"needs weights at {path}"
        return "ready"

    def check_weights(self) -> None:
        """Raise :class:`WeightsMissing` (file and folder named) when the weights file is absent."""
        path = self.weights_path()
        if path is not None and not Path(path).is_file():
            path = Path(path)
            raise WeightsMissing(
                f"potential {self.name!r}: weights file {path.name!r} not found in {str(path.parent)!r}. "
                f"{self.hint or 'Put the file there.'} Nothing is downloaded by matfunnel.")

    def load(self, device: str, **kwargs) -> Potential:
        """Build the potential (clear errors for missing packages or weights)."""
        missing = self.missing_packages()
        if missing:
            raise ModuleNotFoundError(
                f"potential {self.name!r} needs the Python package(s) {', '.join(missing)}; install them "
                f"(pip install {' '.join(PIP_NAMES.get(m, m) for m in missing)})")
        if "checkpoint" not in kwargs:
            self.check_weights()
        try:
            return self.factory(device, **kwargs)
        except TypeError as exc:
            if "keyword argument" not in str(exc):
                raise
            raise PotentialArguments(f"potential {self.name!r} does not accept the keyword arguments "
                                     f"{sorted(kwargs)}: {exc}") from exc


#: pip names of import names that differ
PIP_NAMES = {"torch_sim": "torch-sim-atomistic", "sevenn": "sevenn", "mace": "mace-torch",
             "mattersim": "mattersim", "orb_models": "orb-models", "fairchem": "fairchem-core"}


# --- built-in entries ---------------------------------------------------------------------------------

def _chgnet_ours(device: str, **kw) -> Potential:
    from matfunnel.potential.chgnet.potential import ChgnetPotential

    pot = ChgnetPotential(device=device, **kw)
    # the file our modules' weights come from: a fine-tuned checkpoint, else the wheel's 0.3.0 file
    pot.weights_file = str(kw.get("checkpoint") or _chgnet_weights())
    return pot


def _chgnet_reference(device: str, **kw) -> Potential:
    from matfunnel.potential.chgnet_reference import ChgnetReference

    pot = ChgnetReference(device=device, **kw)
    pot.weights_file, pot.package = str(_chgnet_weights()), "chgnet"
    return pot


def _chgnet_weights() -> Path | None:
    spec = importlib.util.find_spec("chgnet")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained" / "0.3.0" / \
        "chgnet_0.3.0_e29f68s314m37.pth.tar"


def _matris(model: str) -> PotentialEntry:
    def factory(device: str, **kw) -> Potential:
        from matfunnel.potential.matris.potential import MatrisPotential

        return MatrisPotential(device=device, model=model, **kw)

    def weights() -> Path:
        from matfunnel.potential.matris.weights import cached_path

        return cached_path(model)  # the matris 1.0 package's cache file, found as that package finds it

    def hint() -> str:
        from matfunnel.potential.matris.weights import release_url

        return f"Download {release_url(model)} (MatRIS release v1.0.0) into that folder, or pass checkpoint=PATH."

    return PotentialEntry(f"matris-{model}", factory, f"matfunnel's batched MatRIS, {model} weights",
                          weights=weights, hint=hint())


def _sevennet(name: str, modal: str | None = None) -> PotentialEntry:
    """SevenNet through sevenn's own torch-sim interface; the weights ship in (or beside) the sevenn wheel."""

    def weights() -> Path:
        from matfunnel.potential.sevennet import checkpoint_path

        return checkpoint_path(name)

    def factory(device: str, **kw) -> Potential:
        from matfunnel.potential.sevennet import load_sevennet

        if modal is not None:
            kw.setdefault("modal", modal)
        return load_sevennet(name, device, **kw)

    return PotentialEntry(name, factory, f"SevenNet ({name}) via sevenn's torch-sim interface"
                          + (f", modal {modal}" if modal else ""),
                          requires=("sevenn", "torch_sim"), weights=weights,
                          hint="sevenn ships SevenNet-0, -l3i5 and -MF-0 in its wheel; the larger models must be "
                               "downloaded from sevenn's release page by the user.",
                          source="sevenn")


def _builtin() -> dict[str, PotentialEntry]:
    entries = [
        PotentialEntry("chgnet-0.3.0", _chgnet_ours, "matfunnel's batched CHGNet, official 0.3.0 weights",
                       requires=("chgnet",), weights=_chgnet_weights),
        PotentialEntry("chgnet-reference", _chgnet_reference, "the chgnet package itself (parity reference)",
                       requires=("chgnet",), weights=_chgnet_weights),
        _matris("10m-oam"), _matris("10m-mp"), _matris("10m-omat"),
        _sevennet("sevennet-0"), _sevennet("sevennet-l3i5"), _sevennet("sevennet-mf-0", modal="PBE"),
        _sevennet("sevennet-omat"), _sevennet("sevennet-mf-ompa", modal="mpa"), _sevennet("sevennet-omni"),
    ]
    return {e.name: e for e in entries}


BUILTIN: dict[str, PotentialEntry] = _builtin()
#: names registered at run time with :func:`register` (scripts, tests)
REGISTERED: dict[str, PotentialEntry] = {}


def register(name: str, factory: Callable[..., Potential], summary: str = "") -> PotentialEntry:
    """Register ``factory(device, **kwargs) -> Potential`` under ``name`` in this process.

    For packages, the entry-point group :data:`ENTRY_POINT_GROUP` does the same without code at import.
    A built-in name cannot be replaced.
    """
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in potential name")
    entry = PotentialEntry(name, factory, summary, source="register()")
    REGISTERED[name] = entry
    return entry


def plugin_entries() -> dict[str, PotentialEntry]:
    """Entries that installed packages register under :data:`ENTRY_POINT_GROUP`.

    A plug-in that fails to load is listed with its error instead of breaking the registry.
    """
    out: dict[str, PotentialEntry] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not hide the others
            def broken(device: str, _exc=exc, _name=ep.name, **kw) -> Potential:
                raise RuntimeError(f"potential plug-in {_name!r} failed to import: {_exc}") from _exc

            out[ep.name] = PotentialEntry(ep.name, broken, f"(broken plug-in: {type(exc).__name__})",
                                          source=ep.value)
            continue
        if isinstance(obj, PotentialEntry):
            out[ep.name] = obj
        elif callable(obj):
            out[ep.name] = PotentialEntry(ep.name, obj, (obj.__doc__ or "").strip().split("\n")[0],
                                          source=ep.value)
    return out


def entries() -> dict[str, PotentialEntry]:
    """Every name usable here: built-ins, names registered in this process, plug-ins (none shadows a built-in)."""
    return {**plugin_entries(), **REGISTERED, **BUILTIN}


def _import_target(target: str, name: str):
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise UnknownPotential(f"potential {name!r}: expected PREFIX:MODULE:CALLABLE, e.g. "
                               "'torchsim:my_pkg.models:make_model'")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise UnknownPotential(f"potential {name!r}: cannot import module {module!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownPotential(f"potential {name!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UnknownPotential(f"potential {name!r}: {attr!r} in {module!r} is not callable")
    return obj


def committee_members(name: str) -> list[str]:
    """The member names of the committee name ``committee:NAME,NAME,...`` (each checked, nothing loaded).

    Raises
    ------
    UnknownPotential
        Fewer than two members, an empty or repeated member, a committee as a member, or a member name that does
        not resolve (the message names the committee, the member and the member's own error).
    """
    prefix, _, target = name.partition(":")
    if prefix != COMMITTEE:
        raise UnknownPotential(f"{name!r} is not a committee name ('{COMMITTEE}:NAME,NAME,...')")
    members = [m.strip() for m in target.split(",")]
    example = f"e.g. '{COMMITTEE}:chgnet-0.3.0,sevennet-0'"
    if any(not m for m in members):
        raise UnknownPotential(f"committee {name!r}: an empty member name; separate the members' names by single "
                               f"commas, {example}")
    if len(members) < 2:
        raise UnknownPotential(f"committee {name!r}: a committee needs at least 2 members, got {len(members)} "
                               f"({members[0]!r}); {example}")
    repeated = sorted({m for m in members if members.count(m) > 1})
    if repeated:
        raise UnknownPotential(f"committee {name!r}: member {repeated[0]!r} appears {members.count(repeated[0])} "
                               "times; each member may appear once")
    for m in members:
        if m.partition(":")[0] == COMMITTEE:
            raise UnknownPotential(f"committee {name!r}: member {m!r} is a committee; members must be single models")
        try:
            resolve(m)
        except UnknownPotential as exc:
            raise UnknownPotential(f"committee {name!r}: member {m!r}: {exc}") from None
    return members


def _committee_entry(name: str) -> PotentialEntry:
    members = committee_members(name)

    def factory(device: str, *, relax_with: int | str | None = None, members_kwargs: dict | None = None,
                **kwargs) -> Potential:
        from matfunnel.potential.committee import CommitteePotential, primary_index

        if kwargs:
            raise PotentialArguments(
                f"committee {name!r} takes relax_with (a member's name or index) and members_kwargs "
                f"({{member: {{keyword arguments}}}}), not {sorted(kwargs)}; give a member's own arguments as "
                f"members_kwargs={{{members[0]!r}: {{...}}}}")
        per_member = dict(members_kwargs or {})
        unknown = sorted(str(k) for k in per_member if k not in members)
        if unknown or not all(isinstance(v, dict) for v in per_member.values()):
            raise PotentialArguments(f"committee {name!r}: members_kwargs must map member names {members} to dicts "
                                     f"of keyword arguments; got {per_member!r}")
        try:
            primary = primary_index(relax_with, members)
        except ValueError as exc:
            raise PotentialArguments(f"committee {name!r}: {exc}") from None
        found = [resolve(m) for m in members]
        for m, entry in zip(members, found, strict=True):  # every member's packages and weights before loading any
            try:
                missing = entry.missing_packages()
                if missing:
                    raise ModuleNotFoundError(
                        f"potential {m!r} needs the Python package(s) {', '.join(missing)}; install them "
                        f"(pip install {' '.join(PIP_NAMES.get(p, p) for p in missing)})")
                if "checkpoint" not in per_member.get(m, {}):
                    entry.check_weights()
            except (WeightsMissing, ModuleNotFoundError) as exc:
                raise type(exc)(f"committee {name!r}: member {m!r}: {exc}") from exc
        loaded = []
        for m, entry in zip(members, found, strict=True):
            try:
                loaded.append(entry.load(device, **per_member.get(m, {})))
            except (WeightsMissing, ModuleNotFoundError, PotentialArguments, UnknownPotential) as exc:
                raise type(exc)(f"committee {name!r}: member {m!r}: {exc}") from exc
            except Exception as exc:
                exc.add_note(f"(while loading member {m!r} of committee {name!r})")
                raise
        return CommitteePotential(loaded, members, name=name, relax_with=primary)

    return PotentialEntry(name, factory, f"committee of {', '.join(members)}", source="committee")


def resolve(name: str) -> PotentialEntry:
    """The entry for ``name``: registered, plug-in, a ``torchsim:``/``ase:`` spec string, or a committee name."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownPotential(f"a potential name must be a non-empty string, not {name!r}")
    prefix, sep, target = name.partition(":")
    if sep and prefix == COMMITTEE:
        return _committee_entry(name)
    if sep and prefix in PREFIXES:
        make = _import_target(target, name)
        if prefix == "torchsim":
            def factory(device: str, **kw) -> Potential:
                from matfunnel.potential.torchsim import TorchSimPotential

                return TorchSimPotential.from_factory(make, device=device, name=name, **kw)
        else:
            def factory(device: str, **kw) -> Potential:
                from matfunnel.potential.ase_calculator import AseCalculatorPotential

                return AseCalculatorPotential(make(**kw), name=name, device=device)
        return PotentialEntry(name, factory, f"user model ({prefix})", source=target)
    known = entries()
    if name not in known:
        raise UnknownPotential(
            f"unknown potential {name!r}; available: {', '.join(sorted(known))}, or a user model as "
            "'torchsim:MODULE:CALLABLE' / 'ase:MODULE:CALLABLE', or a committee 'committee:NAME,NAME,...' "
            "(see 'matfunnel potentials')")
    return known[name]


@dataclass
class PotentialRow:
    """One line of ``matfunnel potentials``."""

    name: str
    status: str
    summary: str
    source: str
    weights: str | None = None
    extra: dict = field(default_factory=dict)


def describe() -> list[PotentialRow]:
    """Every registered potential with its status (ready, needs a package, needs weights at PATH)."""
    rows = []
    for name, e in sorted(entries().items()):
        try:
            w = e.weights_path() if not e.missing_packages() else None
        except Exception:  # noqa: BLE001
            w = None
        rows.append(PotentialRow(name, e.status(), e.summary, e.source, str(w) if w else None))
    rows.append(PotentialRow(
        f"{COMMITTEE}:NAME,NAME,...", "ready when every member is",
        "a committee of the names above: predict gives every member's energy, their mean and spread per atom; "
        "relaxes with the first member (relax_with=NAME picks another; members_kwargs={NAME: {...}})",
        "matfunnel"))
    return rows


def parse_kwargs(text: str | None) -> dict:
    """Keyword arguments for a potential from the command line: a JSON object, or ``@FILE`` holding one.

    Parameters
    ----------
    text
        ``'{"modal": "mpa"}'``, ``@kwargs.json``, or ``None``/empty for no arguments.

    Returns
    -------
    dict
        The arguments.

    Raises
    ------
    ValueError
        The text (or file) is not a JSON object; the message quotes what was given.
    """
    import json

    if not text:
        return {}
    source = "--potential-kwargs"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text, source = path.read_text(), str(path)
        except OSError as exc:
            raise ValueError(f"--potential-kwargs: cannot read {path}: {exc.strerror or exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not JSON ({exc.msg} at character {exc.pos}): {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(  # noqa: TRY004 - bad user input, reported like the other cases
            f"{source}: expected a JSON object of keyword arguments, got {type(value).__name__}")
    return value


def probe_potential(name: str, kwargs: dict) -> Potential:
    """A registered model for the CPU memory probe's child process: uncalibrated, with an unlimited budget."""
    return resolve(name).load("cpu", **kwargs, calibrate=False, memory_budget=1 << 40)
