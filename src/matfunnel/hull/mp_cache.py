"""Materials Project GGA/GGA+U entries of a chemical system via mp-api, cached on disk.

One cache file per sorted chemical system (``Fe-Li-O__GGA_GGA+U.json.gz``) holding the
entries exactly as MP returned them plus retrieval metadata. A second call for the same
chemical system reads the file and makes no request. The API key is only handed to
``MPRester``: it is never logged, written to the cache or put into returned metadata, and
is masked out of error messages.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monty.json import MontyDecoder, MontyEncoder
from pymatgen.core import Composition, Element
from pymatgen.entries.computed_entries import ComputedStructureEntry

__all__ = [
    "THERMO_TYPE",
    "MPFetchError",
    "cache_path",
    "default_cache_dir",
    "fetch_mp_entries",
    "normalize_chemsys",
]

log = logging.getLogger(__name__)

THERMO_TYPE = "GGA_GGA+U"  # MP's mixed GGA/GGA+U hull with MP2020 corrections
CACHE_FORMAT = 1


class MPFetchError(RuntimeError):
    """The Materials Project could not be queried (message has the API key masked)."""


def normalize_chemsys(chemsys: str | Iterable[str] | Composition) -> list[str]:
    """Sorted unique element symbols of ``"Li-Fe-O"``, ``["Li", "Fe", "O"]`` or a Composition."""
    if isinstance(chemsys, Composition):
        symbols = [el.symbol for el in chemsys.elements]
    elif isinstance(chemsys, str):
        symbols = [s.strip() for s in chemsys.split("-") if s.strip()]
    else:
        symbols = [str(s) for s in chemsys]
    out = sorted({Element(s).symbol for s in symbols})
    if not out:
        raise ValueError(f"empty chemical system: {chemsys!r}")
    return out


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/matfunnel/mp``, i.e. ``~/.cache/matfunnel/mp`` by default."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "matfunnel" / "mp"


def cache_path(chemsys, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache file for ``chemsys`` (sorted, so "O-Fe" and "Fe-O" share one)."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return directory / f"{'-'.join(normalize_chemsys(chemsys))}__{THERMO_TYPE}.json.gz"


def _mask(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _read_cache(path: Path) -> tuple[list[ComputedStructureEntry], dict[str, Any]] | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable MP cache file %s: %s", path, exc)
        return None
    if doc.get("format") != CACHE_FORMAT or doc.get("thermo_type") != THERMO_TYPE:
        return None
    entries = [MontyDecoder().process_decoded(d) for d in doc["entries"]]
    meta = {k: v for k, v in doc.items() if k != "entries"}
    return entries, meta


def _write_cache(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename so a concurrent reader never sees a half-written file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as fh:
            json.dump(doc, fh, cls=MontyEncoder)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _query_mp(elements: list[str], api_key: str) -> list[ComputedStructureEntry]:
    from mp_api.client import MPRester  # heavy import, only when MP is really queried

    with MPRester(api_key, mute_progress_bars=True) as mpr:
        return list(
            mpr.get_entries_in_chemsys(
                elements,
                compatible_only=True,
                additional_criteria={"thermo_types": [THERMO_TYPE]},
            )
        )


def fetch_mp_entries(
    chemsys,
    api_key: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    refresh: bool = False,
) -> tuple[list[ComputedStructureEntry], dict[str, Any]]:
    """MP GGA/GGA+U entries of ``chemsys`` and all its subsystems, from cache or mp-api.

    Returns ``(entries, meta)``; meta keys: ``chemsys``, ``thermo_type``, ``retrieved_at``
    (ISO UTC), ``n_entries``, ``source`` ("mp-api"), ``cache_file``, ``cache_hit``.
    ``refresh=True`` ignores an existing cache file. Raises MPFetchError (key masked) if
    the query fails.
    """
    elements = normalize_chemsys(chemsys)
    path = cache_path(elements, cache_dir)
    if not refresh and path.exists():
        cached = _read_cache(path)
        if cached is not None:
            entries, meta = cached
            log.info("MP entries for %s read from cache %s", meta["chemsys"], path)
            return entries, {**meta, "cache_file": str(path), "cache_hit": True}

    if not api_key:
        raise MPFetchError("no Materials Project API key given")
    log.info("querying the Materials Project for %s entries of %s", THERMO_TYPE, "-".join(elements))
    try:
        entries = _query_mp(elements, api_key)
    except Exception as exc:  # network, auth, server: report without the key
        raise MPFetchError(_mask(f"{type(exc).__name__}: {exc}", api_key)) from None

    meta = {
        "format": CACHE_FORMAT,
        "source": "mp-api",
        "chemsys": "-".join(elements),
        "thermo_type": THERMO_TYPE,
        "retrieved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_entries": len(entries),
    }
    doc = {**meta, "entries": [e.as_dict() for e in entries]}
    if api_key in json.dumps(doc, cls=MontyEncoder):  # paranoia: never persist the key
        raise MPFetchError("refusing to cache a response that contains the API key")
    _write_cache(path, doc)
    return entries, {**meta, "cache_file": str(path), "cache_hit": False}
