"""Reading small YAML files that a user hands over (campaign specs): bounded, plain data only.

:func:`load_yaml_file` refuses, with one message naming the file and the problem (and a line, never the
file's text):

- anything but a regular file (a folder, ``/dev/zero``, a pipe) and a file over ``max_bytes``;
- text that is not UTF-8 or not valid YAML;
- anchors (``&a``) and aliases (``*a``), so no "billion laughs" can expand, and merge keys (``<<``);
- explicit tags (``!!python/object``, ``!custom``): only plain values, mappings and lists;
- nesting deeper than ``max_depth`` and duplicate keys in a mapping (the later one would silently win).

Numbers in exponent form without a dot or exponent sign (``1e-3``, ``5e2``) are numbers, as in YAML 1.2.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

#: the largest file read (bytes); a campaign spec is a few hundred bytes
MAX_BYTES = 1_000_000
#: the deepest nesting of mappings and lists
MAX_DEPTH = 32

# the resolved tags of plain YAML values; everything else (python/*, binary, set, omap, merge) is refused
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq",
                                                           "timestamp"))


class YamlInputError(ValueError):
    """A YAML file cannot be read as plain data; the message names the file and the problem."""


class _Refused(Exception):
    """Raised inside the loader; turned into a :class:`YamlInputError` naming the file."""


def _line(event_or_node: Any) -> str:
    mark = getattr(event_or_node, "start_mark", None)
    return f" (line {mark.line + 1})" if mark is not None else ""


class _PlainLoader(yaml.SafeLoader):
    """A safe loader that refuses anchors, aliases, tags, deep nesting and duplicate keys."""

    max_depth = MAX_DEPTH

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102 - yaml.composer.Composer hook
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(f"uses anchors (&) or aliases (*){_line(event)}; they are not allowed here "
                           "(write the values out)")
        if getattr(event, "tag", None) not in (None, "!") and event.tag not in _PLAIN_TAGS:
            raise _Refused(f"uses an explicit YAML tag{_line(event)}; only plain values, mappings and lists "
                           "are allowed")
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise _Refused(f"nests mappings/lists deeper than {self.max_depth} levels{_line(event)}")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node.tag not in _PLAIN_TAGS:
            what = "a merge key (<<)" if node.tag.endswith(":merge") else "a value of a non-plain YAML type"
            raise _Refused(f"uses {what}{_line(node)}; only plain values, mappings and lists are allowed")
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # noqa: D102 - SafeConstructor hook
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise _Refused(f"uses a list or mapping as a key{_line(key_node)}") from None
            if duplicate:
                raise _Refused(f"has the key {_short(key)} twice in one mapping{_line(key_node)} "
                               "(duplicate key: which one is meant?)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 reads 1e-3 and 1.0e6 as numbers; PyYAML's YAML 1.1 resolver reads them as text
_PlainLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+|[-+]?\.[0-9][0-9_]*[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


_FastLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # LibYAML where PyYAML was built with it


def _check_events(text: str, max_depth: int) -> None:
    """Refuse aliases, anchors and deep nesting from the event stream alone (LibYAML, before composing).

    PyYAML's own scanner costs O(depth^2) on deeply nested flow lists (``[[[[...``), so the nesting is
    bounded here first, by the C parser where there is one.
    """
    depth = 0
    for event in yaml.parse(text, Loader=_FastLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(f"uses anchors (&) or aliases (*){_line(event)}; they are not allowed here "
                           "(write the values out)")
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > max_depth:
                raise _Refused(f"nests mappings/lists deeper than {max_depth} levels{_line(event)}")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def read_text_bounded(path: str | Path, what: str = "file", max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes.

    Parameters
    ----------
    path
        The file.
    what
        What the file is, for the messages (``"campaign spec"``).
    max_bytes
        The largest size read.

    Returns
    -------
    str
        The file's text.

    Raises
    ------
    YamlInputError
        Naming the file: missing, not a regular file, too large, unreadable or not UTF-8.
    """
    name = f"{what} {str(path)!r}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise YamlInputError(f"{name} not found") from None
    except OSError as exc:
        raise YamlInputError(f"{name} cannot be read ({exc.strerror or type(exc).__name__})") from None
    except ValueError:  # a NUL character in the path
        raise YamlInputError(f"{name} is not a usable path") from None
    if not stat.S_ISREG(st.st_mode):
        raise YamlInputError(f"{name} is not a regular file")
    if st.st_size > max_bytes:
        raise YamlInputError(f"{name} is too large ({st.st_size / 1e6:.1f} MB; at most {max_bytes / 1e6:g} MB)")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise YamlInputError(f"{name} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > max_bytes:
        raise YamlInputError(f"{name} is too large (over {max_bytes / 1e6:g} MB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlInputError(f"{name} is not UTF-8 text (bad byte at offset {exc.start})") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The problem and its line, without the snippet of the file that PyYAML's message quotes."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return " ".join(p for p in (exc.context, exc.problem) if p) + where
    return type(exc).__name__


def load_yaml_file(path: str | Path, what: str = "file", max_bytes: int = MAX_BYTES,
                   max_depth: int = MAX_DEPTH) -> Any:
    """Plain data (mappings, lists, strings, numbers, booleans, null, dates) from a YAML file.

    Parameters
    ----------
    path
        The file.
    what
        What the file is, for the messages (``"campaign spec"``).
    max_bytes
        The largest size read.
    max_depth
        The deepest nesting of mappings and lists.

    Returns
    -------
    Any
        The document (``None`` for an empty file).

    Raises
    ------
    YamlInputError
        One message naming the file and the problem (see the module doc).
    """
    text = read_text_bounded(path, what, max_bytes)
    name = f"{what} {str(path)!r}"
    loader = _PlainLoader(text)
    loader.max_depth = max_depth
    try:
        _check_events(text, max_depth)
        return loader.get_single_data()
    except _Refused as exc:
        raise YamlInputError(f"{name} {exc}") from None
    except yaml.YAMLError as exc:
        raise YamlInputError(f"{name} is not valid YAML: {_yaml_problem(exc)}") from None
    except (ValueError, OverflowError) as exc:  # int() of 5000 digits, a date out of range
        what_value = "an integer with too many digits" if "digits" in str(exc) else "a value out of range"
        raise YamlInputError(f"{name} has {what_value} ({type(exc).__name__})") from None
    except RecursionError:
        raise YamlInputError(f"{name} nests too deeply") from None
    finally:
        loader.dispose()
