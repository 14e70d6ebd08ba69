"""Strict option schemas (pydantic v2) and their problems as readable ``key.path: problem`` lines.

A user's options (a campaign spec, GPAW overrides, the phonon gate) are checked against a
:class:`StrictOptions` model before any work: no coercion (``"false"`` is not a boolean, ``"300"`` is not an
integer, ``true`` is not a number), finite numbers in documented ranges, enumerations, and no unknown keys.
:func:`describe` turns a :class:`pydantic.ValidationError` into one line per problem, each naming its key path.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

#: at most this many unknown keys are named in one message
MAX_KEYS_SHOWN = 10

__all__ = ["StrictOptions", "ValidationError", "a_kind", "describe", "one_of", "show", "yaml_type"]


class StrictOptions(BaseModel):
    """Base of the option schemas: strict types, unknown keys refused, every field required.

    The defaults are not here: they stay on the makers, and the caller fills them in before validating.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """A validator: the value must be one of ``choices`` (exactly, case included)."""

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")
        return value

    return check


_YAML_TYPES = {dict: "mapping", list: "list", tuple: "list", str: "string", int: "integer", float: "number",
               bool: "boolean", type(None): "null", datetime.date: "date", datetime.datetime: "date and time"}


def yaml_type(value: Any) -> str:
    """The YAML name of a value's type (``mapping``, ``list``, ``string``, ...)."""
    return _YAML_TYPES.get(type(value), type(value).__name__)


def a_kind(value: Any) -> str:
    """``"a list"``, ``"an integer"``, ... : the YAML type of ``value`` with its article."""
    noun = yaml_type(value)
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def show(value: Any, n: int = 40) -> str:
    """A short ``repr`` of a scalar for a message (at most ``n`` characters)."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _path(prefix: str, loc: Sequence[Any]) -> str:
    out = prefix
    for part in loc:
        if part == "[key]":
            out += " (a key)"
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: Any) -> str:
    kind, value = err["type"], err.get("input")
    if kind in ("model_type", "dict_type", "model_attributes_type", "dataclass_type"):
        return f"must be a mapping (key: value), not {a_kind(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, not {a_kind(value)}"
    if kind == "missing":
        return "is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:] if msg[:1].isupper() and msg[1:2].islower() else msg
    if kind == "string_type" and isinstance(value, bool):
        msg += " (quote it: YAML reads unquoted yes/no/on/off as true/false)"
    elif kind == "string_type" and isinstance(value, (int, float, datetime.date)):
        msg += " (quote it to give text)"
    if isinstance(value, (str, int, float, bool, type(None), datetime.date)):
        msg += f" (got {show(value)}, {a_kind(value)})" if kind.endswith("_type") else f" (got {show(value)})"
    return msg


def _known_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str] | None:
    """The field names of the (nested) model at ``loc``, or None where ``loc`` is not a model."""
    cls: Any = model
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        cls = field.annotation
    return sorted(cls.model_fields)


def describe(exc: ValidationError, model: type[BaseModel], prefix: str = "", top: str = "options") -> list[str]:
    """One ``key.path: problem`` line per problem of ``exc``; unknown keys grouped per section.

    Parameters
    ----------
    exc
        The error of ``model.model_validate``.
    model
        The schema validated against (to list the known keys of a section with unknown ones).
    prefix
        Key path of the model's root in the user's document (``"dft.settings"``), or ``""``.
    top
        What the root is called where it has no key path (``"campaign spec"``).

    Returns
    -------
    list[str]
        The problems, in the schema's order.
    """
    lines: list[str] = []
    unknown: dict[tuple, list[str]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(show(loc[-1]) if not isinstance(loc[-1], str) else loc[-1])
            continue
        if err["type"] == "missing" and len(loc) == 1 and not prefix and isinstance(loc[0], str):
            field = model.model_fields.get(loc[0])
            example = f" (e.g. {field.examples[0]!r})" if field is not None and field.examples else ""
            lines.append(f"needs {loc[0]!r}{example}")
            continue
        lines.append(f"{_path(prefix, loc)}: {_message(err)}")
    for parent, keys in unknown.items():
        where = _path(prefix, parent)
        section = f"section {where!r}" if where else top
        known = _known_at(model, parent)
        shown = sorted(keys)[:MAX_KEYS_SHOWN] + ([f"... {len(keys) - MAX_KEYS_SHOWN} more"]
                                                   if len(keys) > MAX_KEYS_SHOWN else [])
        lines.append(f"unknown key(s) {shown} in {section}" + (f"; known: {known}" if known else ""))
    return lines
