"""The Matbench Discovery data files: registry, cached download with md5 check and resume, readers.

The registry mirrors the public ``matbench_discovery/data-files.yml`` of the Matbench Discovery
project (github.com/janosh/matbench-discovery, commit 02c292dbc95fb54b688f7100137d96c3244a4090):
same file keys, relative paths, figshare file ids and md5 sums. Files are looked up, in order, in

1. ``data_dir`` (``--data-dir``: a folder with local copies, either ``<path>`` or just the file name),
2. the package data (the MP elemental reference entries ship with matfunnel),
3. the cache ``$MATFUNNEL_DATA_DIR`` (default ``<user cache dir>/matfunnel/matbench-discovery``),

and downloaded into the cache otherwise: streamed to ``<file>.part`` with a progress bar, resumed
with an HTTP ``Range`` request when a partial file is there, md5-checked, then moved into place.
Without network (or with ``MATFUNNEL_OFFLINE=1``) :class:`DataUnavailableError` is raised at once,
naming the missing file, its URL and where to put a copy.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import cast

log = logging.getLogger(__name__)

DATA_DIR_ENV = "MATFUNNEL_DATA_DIR"
OFFLINE_ENV = "MATFUNNEL_OFFLINE"
FIGSHARE_ARTICLE = "https://figshare.com/articles/dataset/22715158"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One file of the benchmark: registry key, relative path, figshare file id, md5."""

    key: str
    path: str
    figshare_id: int
    md5: str
    description: str

    @property
    def name(self) -> str:
        """The file's name (the last part of its path)."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        """The figshare download URL."""
        return f"https://figshare.com/ndownloader/files/{self.figshare_id}"

    @property
    def urls(self) -> list[str]:
        """Download URLs to try in order (figshare's API endpoint as fallback)."""
        return [self.url, f"https://api.figshare.com/v2/file/download/{self.figshare_id}"]


def _files(*items: DataFile) -> dict[str, DataFile]:
    return {f.key: f for f in items}


#: the data files a matbench-discovery run and its scoring need
DATA_FILES: dict[str, DataFile] = _files(
    DataFile("wbm_initial_structures", "wbm/2022-10-19-wbm-init-structs.jsonl.gz", 53161835,
             "b809f101dd42a745ec2baabe7eb16f11", "unrelaxed WBM structures (pymatgen Structure dicts)"),
    DataFile("wbm_summary", "wbm/2023-12-13-wbm-summary.csv.gz", 64706751,
             "1555268d3aa59d20262cb9d01ce0994b",
             "WBM DFT properties: MP2020 formation energy, hull distance, unique_prototype, ..."),
    DataFile("wbm_computed_structure_entries", "wbm/2022-10-19-wbm-computed-structure-entries.jsonl.gz",
             53161832, "655b7a9c368e136dd8747f1ef8002e7a", "WBM DFT-relaxed structures and energies"),
    DataFile("mp_elemental_ref_entries", "mp/2023-02-07-mp-elemental-reference-entries.json.gz", 40387775,
             "6e93b6f38d6e27d6c811d3cafb23a070", "lowest-energy MP ComputedEntry per element"),
    DataFile("mp_computed_structure_entries", "mp/2023-02-07-mp-computed-structure-entries.json.gz",
             40344436, "76fc748db6b175bb80de4c276d27c235", "all MP ComputedStructureEntries (2023-02-07)"),
    DataFile("wbm_dft_geo_opt_symprec_1e_5", "wbm/dft-geo-opt-symprec=1e-5-moyo=0.3.1.csv.gz", 52066796,
             "f20d2ca1cabbc4bfb2bdf0f7698a2e75", "symmetry of the WBM DFT-relaxed structures (moyopy)"),
)

#: files that ship inside the matfunnel package (same bytes as the figshare file)
_PACKAGED = {"mp_elemental_ref_entries": "2023-02-07-mp-elemental-reference-entries.json.gz"}


class DataUnavailableError(RuntimeError):
    """A benchmark data file is missing and cannot be downloaded."""


class ChecksumError(RuntimeError):
    """A file's md5 differs from the registry's."""


def default_data_dir() -> Path:
    """``$MATFUNNEL_DATA_DIR``, else ``<user cache dir>/matfunnel/matbench-discovery``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("matfunnel"))
    except ImportError:  # pragma: no cover - platformdirs comes with jupyter/pymatgen stacks
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "matfunnel"
    return base / "matbench-discovery"


def md5sum(path: str | os.PathLike) -> str:
    """The MD5 hex digest of the file at ``path``."""
    h = hashlib.md5()  # noqa: S324 - integrity check against published sums, not security
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".md5ok")


def verify(path: str | os.PathLike, md5: str | None, *, stamp: bool = True) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has ``md5``.

    A verified file gets a ``<name>.md5ok`` stamp (size, mtime, md5) so that multi-GB files are
    hashed once, not on every use.
    """
    if not md5:
        return
    path = Path(path)
    st = path.stat()
    key = f"{st.st_size} {st.st_mtime_ns} {md5}"
    stamp_file = _stamp(path)
    try:
        if stamp and stamp_file.read_text().strip() == key:
            return
    except OSError:
        pass
    got = md5sum(path)
    if got != md5:
        raise ChecksumError(f"{path}: md5 {got} != expected {md5}")
    if stamp:
        with contextlib.suppress(OSError):  # read-only data dir: fine, hash again next time
            stamp_file.write_text(key)


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def download(url: str, dest: str | os.PathLike, *, md5: str | None = None, progress: bool = True,
             timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check ``md5``, return ``dest``.

    A partial ``<dest>.part`` left by an interrupted download is continued with an HTTP Range
    request; a server that ignores the range (200 instead of 206) makes it start over. On md5
    mismatch the partial file is deleted and :class:`ChecksumError` raised.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "matfunnel", "Accept-Encoding": "identity"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - registry URLs (https) or tests
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range beyond the end: the partial file is complete
            resp = None
        else:
            raise
    if resp is not None:
        with resp:
            status = getattr(resp, "status", 200)
            mode = "ab" if (have and status == 206) else "wb"
            if mode == "wb":
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=dest.name, leave=False)
            try:
                with open(part, mode) as fh:
                    for block in iter(lambda: resp.read(_CHUNK), b""):
                        fh.write(block)
                        if bar is not None:
                            bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
    if md5:
        got = md5sum(part)
        if got != md5:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"download of {url} has md5 {got}, expected {md5}; partial file removed")
    os.replace(part, dest)
    if md5:
        verify(dest, md5)  # writes the stamp
    return dest


def _missing_message(f: DataFile, where: Path, data_dir: Path | None, reason: str) -> str:
    places = [str(where / f.path)]
    if data_dir is not None:
        places.insert(0, f"{data_dir / f.path} (or {data_dir / f.name})")
    return (
        f"Matbench Discovery data file {f.key!r} ({f.name}) is not available: {reason}.\n"
        f"  download it from {f.url} (figshare article {FIGSHARE_ARTICLE}, md5 {f.md5})\n"
        f"  and put it at {' or '.join(places)}, or pass --data-dir / set ${DATA_DIR_ENV}."
    )


def _packaged(key: str) -> Path | None:
    if key not in _PACKAGED:
        return None
    return Path(str(resources.files("matfunnel") / "data" / _PACKAGED[key]))


def locate(key: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """Where a local copy of ``key`` is, without downloading (None if there is none)."""
    f = DATA_FILES[key]
    cands: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir)
        cands += [d / f.path, d / f.name]
    packaged = _packaged(key)
    if packaged is not None:
        cands.append(packaged)
    cands.append(default_data_dir() / f.path)
    for c in cands:
        if c.is_file():
            return c
    return None


def fetch(key: str, data_dir: str | os.PathLike | None = None, *, download_missing: bool = True,
          progress: bool = True, check: bool = True, timeout: float = 30.0) -> Path:
    """Path of data file ``key``, downloading it into the cache on first use.

    Raises :class:`DataUnavailableError` (with where to get the file and where to put it) when
    there is no local copy and the download is impossible, and :class:`ChecksumError` when a
    local copy has the wrong md5.
    """
    if key not in DATA_FILES:
        raise KeyError(f"unknown data file {key!r}; known: {', '.join(DATA_FILES)}")
    f = DATA_FILES[key]
    found = locate(key, data_dir)
    if found is not None:
        if check:
            verify(found, f.md5, stamp=found != _packaged(key))  # never write into the package
        return found
    cache = default_data_dir()
    ddir = Path(data_dir) if data_dir is not None else None
    if not download_missing or _offline():
        why = "no local copy and downloads are disabled" + (f" (${OFFLINE_ENV})" if _offline() else "")
        raise DataUnavailableError(_missing_message(f, cache, ddir, why))
    dest = cache / f.path
    errors = []
    for url in f.urls:
        try:
            log.info("downloading %s from %s to %s", f.key, url, dest)
            return download(url, dest, md5=f.md5, progress=progress, timeout=timeout)
        except ChecksumError:
            raise
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            errors.append(f"{url}: {exc}")
    raise DataUnavailableError(_missing_message(f, cache, ddir, "download failed (" + "; ".join(errors) + ")"))


# ----------------------------------------------------------------------------------- readers
def _open_text(path: str | os.PathLike):
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def load_wbm_summary(path: str | os.PathLike):
    """The WBM summary as a DataFrame indexed by ``material_id``."""
    import pandas as pd

    df = pd.read_csv(path)
    if "material_id" in df:
        df = df.set_index("material_id", drop=False)
        df.index.name = "material_id"
    if "unique_prototype" in df:
        df["unique_prototype"] = df["unique_prototype"].map(_as_bool).astype(bool)
    return df


def _as_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v) if v == v else False  # NaN -> False


_STRUCT_KEYS = ("initial_structure", "structure", "init_structure")


def _records(path: str | os.PathLike) -> Iterator[dict]:
    """Records (one dict per material) of a .jsonl[.gz|.bz2] or pandas-style .json[.gz|.bz2]."""
    name = str(path)
    stem = name.removesuffix(".gz").removesuffix(".bz2")
    with _open_text(path) as fh:
        if stem.endswith(".jsonl"):
            for line in fh:
                if line.strip():
                    yield json.loads(line)
            return
        data = json.load(fh)
    if isinstance(data, list):  # orient="records"
        yield from data
        return
    if "data" in data and "columns" in data:  # orient="split"
        idx = data.get("index") or [None] * len(data["data"])
        for i, row in zip(idx, data["data"], strict=False):
            rec = dict(zip(data["columns"], row, strict=False))
            rec.setdefault("material_id", i)
            yield rec
        return
    # orient="columns" (pandas' default): {column: {row_id: value}}
    cols = list(data)
    rows = list(data[cols[0]])
    for r in rows:
        rec = {c: data[c].get(r) for c in cols}
        rec.setdefault("material_id", r)
        yield rec


def iter_structures(path: str | os.PathLike, ids: Iterable[str] | None = None,
                    keys: tuple[str, ...] = _STRUCT_KEYS) -> Iterator[tuple[str, dict]]:
    """``(material_id, structure dict)`` for every record (or only ``ids``) of a structures file.

    The structure is taken from the first of ``keys`` present; for computed-structure-entry files
    the entry's ``structure`` is used.
    """
    wanted = set(ids) if ids is not None else None
    for rec in _records(path):
        mid = rec.get("material_id")
        if wanted is not None and mid not in wanted:
            continue
        struct = next((rec[k] for k in keys if rec.get(k) is not None), None)
        if struct is None:
            entry = rec.get("computed_structure_entry") or rec.get("cse") or rec.get("entry")
            if isinstance(entry, dict):
                struct = entry.get("structure")
                mid = mid or entry.get("entry_id")
        if struct is None:
            raise KeyError(f"{path}: record {mid!r} has no structure (keys {sorted(rec)})")
        yield cast(str, mid), struct  # Matbench Discovery records carry their material id
        if wanted is not None:
            wanted.discard(mid)
            if not wanted:
                return


def load_structures(path, ids=None, keys: tuple[str, ...] = _STRUCT_KEYS) -> dict[str, dict]:
    """Structures of a structures file (or only ``ids``), material id -> structure dict."""
    return dict(iter_structures(path, ids, keys))


def load_dft_structures(path, ids=None) -> dict[str, dict]:
    """DFT-relaxed WBM structures (from the computed-structure-entries file), id -> dict."""
    return dict(iter_structures(path, ids, keys=("structure", "relaxed_structure")))
