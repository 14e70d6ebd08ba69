"""Hostile structure files (group ``files``): CIF, POSCAR, JSON and folders given as a campaign's user structures.

Every case goes through ``matfunnel.candidates.sources.load_user_structures`` (what ``candidates.structures``
reaches) or the candidates job itself (``CandidatesMaker.make`` under jobflow's ``run_locally``). A good file
must load exactly as written (species, lattice, coordinates); a bad file must give one error naming the file
(and the CIF block or JSON item) and the problem, without quoting the file's contents; in a mixed set the good
files still load and each bad one is reported.

``_strict(paths)`` is how a single-file case is judged: the loader's reported errors are raised as one
exception (the loader itself raises when nothing at all is usable), so old and new code are judged on the
same messages; a file that loads without a reported problem is a result where an error was due.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np
from harness import Case
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from matfunnel.candidates.sources import load_user_structures

GROUP = "files"
SECRET = "TOP-SECRET-7f3a9c"  # in files whose contents must never reach an error message


class ReportedErrors(ValueError):
    """The errors the loader reported for the case's files, raised so the harness can judge them."""


# -- reference structures and writers ---------------------------------------------------------------------


def li2o() -> Structure:
    """Anti-fluorite Li2O, conventional cell (12 atoms), a little distorted so the cell is not trivially cubic."""
    li = [[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)]
    o = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    lat = Lattice.from_parameters(4.61, 4.65, 4.58, 90.0, 91.5, 89.0)
    return Structure(lat, ["Li"] * 8 + ["O"] * 4, li + o)


def li2o_cubic() -> Structure:
    """Cubic anti-fluorite Li2O (12 atoms), for the symmetry-written CIF."""
    li = [[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)]
    o = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(4.61), ["Li"] * 8 + ["O"] * 4, li + o)


def _poscar_text(s: Structure) -> str:
    from pymatgen.io.vasp import Poscar

    return Poscar(s).get_str(significant_figures=10)


def _cif_text(s: Structure, symprec: float | None = None) -> str:
    return str(CifWriter(s, symprec=symprec))


def _write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


_CELL = """_cell_length_a 4.61
_cell_length_b 4.61
_cell_length_c 4.61
_cell_angle_alpha {alpha}
_cell_angle_beta 90
_cell_angle_gamma 90
"""


def _cif_block(name: str, sites: list[tuple[str, str, float, float, float]], alpha: float = 90,
               occ: float | None = None, cell: bool = True) -> str:
    """A hand-written P1 CIF block (``sites``: label, type symbol, x, y, z)."""
    text = f"data_{name}\n_symmetry_space_group_name_H-M 'P 1'\n"
    if cell:
        text += _CELL.format(alpha=alpha)
    text += "loop_\n _symmetry_equiv_pos_as_xyz\n 'x, y, z'\n"
    if sites:
        cols = ["label", "type_symbol", "fract_x", "fract_y", "fract_z"] + (["occupancy"] if occ is not None else [])
        text += "loop_\n" + "".join(f" _atom_site_{c}\n" for c in cols)
        for lab, sym, x, y, z in sites:
            text += f" {lab} {sym} {x} {y} {z}" + (f" {occ}" if occ is not None else "") + "\n"
    return text


def _li2o_sites() -> list[tuple[str, str, float, float, float]]:
    s = li2o_cubic()
    return [(f"{site.specie.symbol}{i}", site.specie.symbol, *map(float, site.frac_coords)) for i, site in enumerate(s)]


# -- checks ------------------------------------------------------------------------------------------------


def _same(got: Structure, want: Structure, tol: float = 1e-4) -> str | None:
    """None when ``got`` is ``want``: same species on the same fractional coordinates, same lattice."""
    if len(got) != len(want):
        return f"{len(got)} atoms loaded, {len(want)} written"
    if not np.allclose(got.lattice.matrix, want.lattice.matrix, atol=tol):
        return f"lattice {got.lattice.abc}/{got.lattice.angles} != written {want.lattice.abc}/{want.lattice.angles}"

    def key(s):
        return sorted((site.specie.symbol, *np.round(np.mod(site.frac_coords + tol, 1.0) - tol, 4)) for site in s)

    for a, b in zip(key(got), key(want), strict=True):
        if a[0] != b[0] or not np.allclose(a[1:], b[1:], atol=10 * tol):
            return f"site {a} loaded where {b} was written"
    return None


def _strict(paths) -> list[Structure]:
    """Load ``paths``; any reported error is raised (one message with all of them)."""
    structs, errors = load_user_structures(paths)
    if errors:
        raise ReportedErrors("; ".join(str(e.get("error")) for e in errors))
    return structs


def _loads_as(*want: Structure):
    """A check: exactly these structures were loaded, in this order, with no error."""

    def check(structs) -> str | None:
        if len(structs) != len(want):
            return f"{len(structs)} structures loaded, {len(want)} expected"
        for s, w in zip(structs, want, strict=True):
            problem = _same(s, w)
            if problem:
                return problem
        return None

    return check


def _mixed(want_good: dict[str, Structure], want_bad: dict[str, tuple[str, ...]]):
    """A check of ``(structures, errors)``: the good files load exactly; each bad one is reported with its words."""

    def check(result) -> str | None:
        structs, errors = result
        by_file: dict[str, list[Structure]] = {}
        for s in structs:
            by_file.setdefault(Path(s.properties["source_file"]).name, []).append(s)
        if sorted(by_file) != sorted(want_good):
            return f"loaded from {sorted(by_file)}, expected {sorted(want_good)}"
        for name, want in want_good.items():
            problem = _same(by_file[name][0], want)
            if problem:
                return f"{name}: {problem}"
        texts = [str(e.get("error", "")) for e in errors]
        for name, words in want_bad.items():
            hits = [t for t in texts if name in t]
            if not hits:
                return f"no error names {name} (errors: {texts})"
            for w in words:
                if not any(w.lower() in t.lower() for t in hits):
                    return f"the error for {name} lacks {w!r}: {hits}"
        if len(errors) != len(want_bad):
            return f"{len(errors)} errors, expected {len(want_bad)}: {texts}"
        if any(SECRET in t for t in texts):
            return "an error message quotes a file's contents"
        return None

    return check


# -- case builders -----------------------------------------------------------------------------------------


def _bad(cid: str, name: str, content: str | bytes, *problem: str, note: str = "", quick: bool = True) -> Case:
    """One bad file given alone: one clear error naming ``name`` and the problem."""

    def setup(tmp: Path) -> Path:
        return _write(tmp, name, content)

    return Case(id=f"files-{cid}", group=GROUP, run=lambda tmp, path: _strict([path]), expect="error",
                match=(Path(name).name, *problem), setup=setup, quick=quick, seconds=30, note=note)


def _good(cid: str, name: str, content_of, want_of, note: str = "") -> Case:
    """One good file: it must load exactly as ``want_of()`` with no error."""

    def setup(tmp: Path) -> Path:
        return _write(tmp, name, content_of())

    return Case(id=f"files-{cid}", group=GROUP, run=lambda tmp, path: _strict([path]), expect="ok",
                check=_loads_as(*want_of()), setup=setup, quick=True, seconds=30, note=note)


def _poscar_lines(mutate) -> str:
    lines = _poscar_text(li2o()).splitlines()
    return "\n".join(mutate(lines)) + "\n"


# -- special cases -----------------------------------------------------------------------------------------


def _json_entry() -> str:
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    return json.dumps(ComputedStructureEntry(li2o(), -42.0, entry_id="mine-1").as_dict())


def _contcar_with_velocities() -> str:
    text = _poscar_text(li2o())
    return text + "\n" + "".join("  0.01 0.00 -0.02\n" for _ in range(12))


def _poscar_volume_scale() -> str:
    s = li2o()
    lines = _poscar_text(s).splitlines()
    lines[1] = f"-{s.volume:.10f}"  # a negative scale is the cell volume
    return "\n".join(lines) + "\n"


def _poscar_cartesian_selective() -> str:
    s = li2o()
    head = _poscar_text(s).splitlines()[:7]
    body = ["Selective dynamics", "Cartesian"] + [f"{x:.10f} {y:.10f} {z:.10f} T T F" for x, y, z in s.cart_coords]
    return "\n".join(head + body) + "\n"


def _cif_with_metadata_and_uncertainties() -> str:
    meta = "data_global\n_journal_name_full 'J. Imaginary Chem.'\n_publ_section_title\n;\nLi2O revisited\n;\n"
    block = _cif_text(li2o_cubic()).replace("4.61000000", "4.6100(3)")
    block = block.replace(" Li  Li", " Li  Li1+").replace(" O  O", " O  O2-")
    return meta + block


def _mixed_folder(tmp: Path) -> Path:
    d = tmp / "inputs"
    _write(d, "good.cif", _cif_text(li2o()))
    _write(d, "good_POSCAR", _poscar_text(li2o()))
    _write(d, "dummy.cif", _cif_block("dummy", [("X1", "X", 0, 0, 0), ("Li1", "Li", 0.5, 0.5, 0.5)]))
    _write(d, "garbage.vasp", "<html>not a structure</html>\n")
    _write(d, "empty.json", "")
    _write(d, "README.txt", "notes, not a structure: ignored\n")
    _write(d, "sub/nested.json", json.dumps(li2o().as_dict()))
    return d


def _two_block_cif() -> str:
    return _cif_text(li2o()) + "\n" + _cif_block("broken_cell", _li2o_sites(), alpha=0)


def _json_list_one_bad() -> str:
    bad = li2o().as_dict()
    bad["sites"][0]["species"][0]["element"] = "Xx"
    return json.dumps([li2o().as_dict(), bad])


def _symlink_out(tmp: Path) -> Path:
    outside = _write(tmp, "private/passwd", f"root:x:0:0:{SECRET}:/root:/bin/bash\n")
    d = tmp / "inputs"
    _write(d, "good.cif", _cif_text(li2o()))
    (d / "secret.cif").symlink_to(outside)
    return d


def _explicit_symlink(tmp: Path) -> Path:
    outside = _write(tmp, "private/shadow", f"root:{SECRET}:19000:0:99999:7:::\n")
    link = tmp / "structure.cif"
    link.symlink_to(outside)
    return link


def _run_explicit_symlink(tmp: Path, link: Path):
    try:
        return _strict([link])
    except Exception as exc:
        if SECRET in str(exc):
            return f"error quotes the file's contents: {exc}"  # a result where a clean error was due
        raise


def _evil_module(tmp: Path, nested: bool) -> Path:
    mod = tmp / "evilmod_files_case"
    mod.mkdir()
    marker = tmp / "IMPORTED"
    _write(mod, "__init__.py", f"open({str(marker)!r}, 'w').write('imported')\n"
                               "class Payload:\n    @classmethod\n    def from_dict(cls, d):\n        return cls()\n")
    payload = {"@module": "evilmod_files_case", "@class": "Payload"}
    if nested:
        doc = li2o().as_dict()
        doc["sites"][0]["properties"] = {"tag": payload}
    else:
        doc = payload
    return _write(tmp, "evil.json", json.dumps(doc))


def _run_evil(tmp: Path, path: Path):
    sys.path.insert(0, str(tmp))
    try:
        try:
            result = _strict([path])
        finally:
            imported = (tmp / "IMPORTED").exists()
        if imported:
            return "the file's @module was imported"
        return result
    except Exception:
        if (tmp / "IMPORTED").exists():
            return "the file's @module was imported (then failed)"
        raise


def _deep_tree(tmp: Path) -> Path:
    d = tmp / "inputs"
    _write(d, "level1/good.cif", _cif_text(li2o()))
    _write(d, "level1/level2/level3/level4/deep.cif", _cif_text(li2o()))
    (d / "loop").symlink_to(d)  # a link back to the folder itself
    (d / "level1" / "up").symlink_to(tmp)  # and one out of it
    return d


def _many_files(tmp: Path) -> Path:
    d = tmp / "many"
    d.mkdir()
    text = _poscar_text(li2o())
    for i in range(1001):
        (d / f"s{i:04d}.vasp").write_text(text)
    return d


def _huge_sparse(tmp: Path) -> Path:
    path = tmp / "huge.cif"
    with open(path, "wb") as fh:
        fh.write(b"data_huge\n")
        fh.truncate(200 * 2**20)  # 200 MB, sparse: costs nothing to make
    return path


def _gzip_bomb(tmp: Path) -> Path:
    path = tmp / "bomb.cif.gz"
    with gzip.open(path, "wb", compresslevel=9) as fh:
        block = b"# padding\n" * 100_000
        for _ in range(60):  # 60 MB of text once unpacked
            fh.write(block)
    return path


def _symmetry_bomb() -> str:
    sites = "".join(f" C{i} C {0.001 * (i % 997):.4f} {0.0007 * (i % 991):.4f} {0.0003 * i % 1:.4f}\n"
                    for i in range(3000))
    return ("data_bomb\n_symmetry_space_group_name_H-M 'F m -3 m'\n_symmetry_Int_Tables_number 225\n"
            + _CELL.format(alpha=90).replace("4.61", "300.0")
            + "loop_\n _atom_site_label\n _atom_site_type_symbol\n _atom_site_fract_x\n _atom_site_fract_y\n"
            " _atom_site_fract_z\n" + sites)


def _many_blocks() -> str:
    one = _cif_block("b{}", [("Li1", "Li", 0, 0, 0), ("O1", "O", 0.5, 0.5, 0.5)])
    return "\n".join(one.replace("b{}", f"b{i}") for i in range(1500))


def _block_flood() -> str:
    sites = [(f"C{i}", "C", round(0.013 * i, 4), round(0.029 * i % 1, 4), round(0.007 * i, 4)) for i in range(30)]
    one = _cif_block("f{}", sites).replace("'P 1'", "'F m -3 m'").replace(
        "loop_\n _symmetry_equiv_pos_as_xyz\n 'x, y, z'\n", "").replace("4.61", "300.0")
    return "\n".join(one.replace("f{}", f"f{i}") for i in range(100))


def _huge_folder(tmp: Path) -> Path:
    d = tmp / "crowded"
    d.mkdir()
    for i in range(20_500):
        (d / f"n{i}.txt").touch()
    return d


def _fifo(tmp: Path) -> Path:
    path = tmp / "pipe.cif"
    os.mkfifo(path)
    return path


def _unreadable(tmp: Path) -> Path:
    path = _write(tmp, "locked.cif", _cif_text(li2o()))
    path.chmod(0)
    return path


def _candidates_job(tmp: Path, paths: list[Path]):
    """The candidates job of a campaign (user structures only), run with jobflow's ``run_locally``."""
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    from matfunnel.candidates.maker import CandidatesMaker

    job = CandidatesMaker(sources=["user"], structures=[str(p) for p in paths], max_candidates=5).make("Li-O")
    responses = run_locally(job, store=JobStore(MemoryStore()), log=False, ensure_success=False)
    out = responses.get(job.uuid, {}).get(1)
    if out is None or out.output is None:
        raise RuntimeError("the candidates job failed (see its log); no output")
    return out.output


def _mixed_job_setup(tmp: Path) -> list[Path]:
    return [_write(tmp, "good.cif", _cif_text(li2o())),
            _write(tmp, "dummy.vasp", _poscar_text(li2o()).replace("Li O", "Li Qq", 1))]


def _check_mixed_job(doc) -> str | None:
    if not doc.ids:
        return "no candidate from the good file"
    if any(Path(str(p.get("source_file"))).name != "good.cif" for p in doc.provenance):
        return f"candidates from other files: {[p.get('source_file') for p in doc.provenance]}"
    texts = [str(e.get("error")) for e in doc.errors]
    if not any("dummy.vasp" in t and "element" in t for t in texts):
        return f"dummy.vasp not reported as a bad element: {texts}"
    return None


def _all_bad_spec(tmp: Path) -> Path:
    _write(tmp, "inputs/nocell.cif", _cif_block("nocell", _li2o_sites(), cell=False))
    _write(tmp, "inputs/dummy.vasp", _poscar_text(li2o()).replace("Li O", "Li Qq", 1))
    spec = {"name": "allbad", "chemsys": "Li-O",
            "candidates": {"sources": ["user"], "structures": ["inputs"], "max_candidates": 2},
            "hull": {"references": "offline", "competing_max_sites": 2}, "dft": {"engine": "none"}}
    return _write(tmp, "spec.yaml", json.dumps(spec))


def _run_cli(tmp: Path, spec: Path):
    from harness import cli

    return cli(["run", str(spec), "--run-dir", str(tmp / "run")])


# -- the corpus --------------------------------------------------------------------------------------------

CASES: list[Case] = [
    # good files load exactly as written
    _good("good-cif", "li2o.cif", lambda: _cif_text(li2o()), lambda: [li2o()]),
    _good("good-cif-symmetry", "li2o_sym.cif", lambda: _cif_text(li2o_cubic(), symprec=0.01),
          lambda: [li2o_cubic()], note="written with symmetry: expanded to the 12 atoms"),
    _good("good-cif-metadata-uncertainties", "published.cif", _cif_with_metadata_and_uncertainties,
          lambda: [li2o_cubic()], note="a global metadata block, 4.6100(3) numbers, Li1+/O2- type symbols"),
    _good("good-poscar", "POSCAR", lambda: _poscar_text(li2o()), lambda: [li2o()]),
    _good("good-poscar-cartesian-selective", "li2o.vasp", _poscar_cartesian_selective, lambda: [li2o()]),
    _good("good-poscar-volume-scale", "vol.poscar", _poscar_volume_scale, lambda: [li2o()]),
    _good("good-contcar-velocities", "CONTCAR", _contcar_with_velocities, lambda: [li2o()]),
    _good("good-json-structure", "li2o.json", lambda: json.dumps(li2o().as_dict()), lambda: [li2o()]),
    _good("good-json-entry", "entry.json", _json_entry, lambda: [li2o()]),
    _good("good-json-list", "two.json", lambda: json.dumps([li2o().as_dict(), li2o_cubic().as_dict()]),
          lambda: [li2o(), li2o_cubic()]),
    _good("good-cif-gz", "li2o.cif.gz", lambda: gzip.compress(_cif_text(li2o()).encode()), lambda: [li2o()]),
    # mixed sets: good ones load, each bad one is reported
    Case(id="files-mixed-folder", group=GROUP, setup=_mixed_folder, quick=True, seconds=30,
         run=lambda tmp, d: load_user_structures(d), expect="ok",
         check=_mixed({"good.cif": li2o(), "good_POSCAR": li2o(), "nested.json": li2o()},
                      {"dummy.cif": ("element",), "garbage.vasp": ("POSCAR",), "empty.json": ("empty",)})),
    Case(id="files-cif-bad-second-block", group=GROUP, quick=True, seconds=30,
         setup=lambda tmp: _write(tmp, "two_blocks.cif", _two_block_cif()),
         run=lambda tmp, p: load_user_structures([p]), expect="ok",
         check=_mixed({"two_blocks.cif": li2o()}, {"two_blocks.cif": ("broken_cell", "alpha")})),
    Case(id="files-json-list-one-bad", group=GROUP, quick=True, seconds=30,
         setup=lambda tmp: _write(tmp, "list.json", _json_list_one_bad()),
         run=lambda tmp, p: load_user_structures([p]), expect="ok",
         check=_mixed({"list.json": li2o()}, {"list.json": ("item 1", "element")})),
    Case(id="files-folder-symlink-out", group=GROUP, setup=_symlink_out, quick=True, seconds=30,
         run=lambda tmp, d: load_user_structures(d), expect="ok",
         check=_mixed({"good.cif": li2o()}, {"secret.cif": ("outside",)}),
         note="a link in the folder to a file outside it is not followed"),
    Case(id="files-candidates-job-mixed", group=GROUP, setup=_mixed_job_setup, seconds=60,
         run=_candidates_job, expect="ok", check=_check_mixed_job,
         note="a user file with an unknown species must not kill the candidates job"),
    Case(id="files-cli-every-file-bad", group=GROUP, setup=_all_bad_spec, run=_run_cli, expect="error",
         match=("nocell.cif", "_cell_length", "dummy.vasp", "element"), seconds=120,
         note="matfunnel run with user structures only, every file bad: one error naming each file"),
    # unknown / dummy species
    _bad("cif-dummy-X", "dummy.cif", _cif_block("dummy", [("X1", "X", 0, 0, 0), ("Li1", "Li", 0.5, 0.5, 0.5)]),
         "element"),
    _bad("cif-unknown-Qq", "qq.cif", _cif_block("qq", [("Qq1", "Qq", 0, 0, 0), ("O1", "O", 0.5, 0.5, 0.5)]),
         "element"),
    _bad("poscar-dummy-Xx", "xx.vasp", _poscar_text(li2o()).replace("Li O", "Li Xx", 1), "element"),
    _bad("json-dummy-X", "x.json", json.dumps(Structure(Lattice.cubic(4), ["X0+", "Li"],
                                                        [[0, 0, 0], [0.5, 0.5, 0.5]]).as_dict()), "element"),
    # POSCAR misreads that pymatgen only warns about
    _bad("poscar-no-symbols", "vasp4_POSCAR", _poscar_lines(lambda ls: ls[:5] + ls[6:]), "symbols",
         note="pymatgen reads it as hydrogen (or from the comment line)"),
    _bad("poscar-species-count-mismatch", "mismatch.vasp",
         _poscar_lines(lambda ls: ls[:5] + ["Li O F"] + ls[6:]), "counts"),
    _bad("poscar-short-coordinates", "short.vasp", _poscar_lines(lambda ls: ls[:-2]), "coordinate lines"),
    _bad("poscar-extra-coordinates", "long.vasp",
         _poscar_lines(lambda ls: [*ls, ls[-1], ls[-1]]), "coordinate lines"),
    _bad("poscar-nan-coordinate", "nan.vasp", _poscar_lines(lambda ls: ls[:-1] + ["nan 0.5 0.5 O"]), "NaN"),
    _bad("poscar-zero-scale", "zero.vasp", _poscar_lines(lambda ls: ls[:1] + ["0.0"] + ls[2:]), "scale"),
    _bad("poscar-flat-cell", "flat.vasp",
         _poscar_lines(lambda ls: ls[:4] + ["0.0 0.0 0.0"] + ls[5:]), "degenerate"),
    _bad("poscar-billion-atoms", "billion.vasp", _poscar_lines(lambda ls: ls[:6] + ["1000000000 4"] + ls[7:]),
         "limit", note="a count of 10^9 atoms must not allocate anything"),
    # CIF problems that crashed or were vague
    _bad("cif-alpha-zero", "alpha0.cif", _cif_block("abc", _li2o_sites(), alpha=0), "abc", "alpha"),
    _bad("cif-no-atom-sites", "nosites.cif", _cif_block("empty_cell", []), "no atom sites"),
    _bad("cif-no-cell", "nocell.cif", _cif_block("nocell", _li2o_sites(), cell=False), "_cell_length"),
    _bad("cif-not-a-cif", "garbage.cif", "this is not a CIF file\n<html>oops</html>\n", "not a CIF"),
    _bad("cif-text-coordinates", "textcoord.cif",
         _cif_block("tc", [("Li1", "Li", 0, 0, 0)]).replace(" Li1 Li 0 0 0", " Li1 Li abc 0 0"), "not a number"),
    _bad("cif-partial-occupancy", "partial.cif", _cif_block("half", _li2o_sites(), occ=0.5), "occup"),
    _bad("cif-occupancy-over-one", "crowded.cif",
         _cif_block("crowded", [("Li1", "Li", 0, 0, 0), ("Li2", "Li", 0, 0, 0), ("O1", "O", 0.5, 0.5, 0.5)], occ=0.7),
         "occup", note="two 0.7 occupancies on one site: pymatgen only warns"),
    _bad("cif-overlapping-atoms", "overlap.cif",
         _cif_block("ov", [("Li1", "Li", 0, 0, 0), ("O1", "O", 0.01, 0, 0)]), "closer than"),
    _bad("cif-symmetry-bomb", "bomb.cif", _symmetry_bomb(), "atom", note="3000 sites x 192 operations"),
    _bad("cif-many-blocks", "blocks.cif", _many_blocks(), "data blocks", "limit"),
    _bad("cif-block-flood", "flood.cif", _block_flood(), "positions", "limit",
         note="100 blocks of 30 sites x 192 operations: each under the block limit, far over in all"),
    _bad("poscar-named-cif", "misnamed.cif", _poscar_text(li2o()), "not a CIF"),
    # JSON
    Case(id="files-json-module-import", group=GROUP, setup=lambda tmp: _evil_module(tmp, nested=False),
         run=_run_evil, expect="error", match=("evil.json", "refused"), quick=True, seconds=30,
         note="an @module naming an importable module with a side effect"),
    Case(id="files-json-nested-module-import", group=GROUP, setup=lambda tmp: _evil_module(tmp, nested=True),
         run=_run_evil, expect="error", match=("evil.json", "refused"), quick=True, seconds=30,
         note="the @module hides in a site property (pymatgen decodes those with MontyDecoder)"),
    _bad("json-invalid", "broken.json", '{"lattice": [[1, 0, 0], ', "JSON"),
    _bad("json-deep-nesting", "deep.json", "[" * 200_000 + "]" * 200_000, "nested"),
    _bad("json-empty-list", "nothing.json", "[]", "empty list"),
    _bad("json-nan-lattice", "nanlat.json",
         json.dumps({**li2o().as_dict(), "lattice": {"matrix": [[float("nan"), 0, 0], [0, 4, 0], [0, 0, 4]]}}),
         "finite"),
    _bad("json-not-structure", "config.json", json.dumps({"relax": {"fmax": 0.05}}), "Structure"),
    # bytes that are not a structure file
    _bad("empty-file", "empty.cif", "", "empty"),
    _bad("whitespace-file", "blank_POSCAR", "\n   \n\t\n", "empty"),
    _bad("binary-garbage", "random.vasp", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
         "binary"),
    _bad("non-utf8", "latin1.cif", _cif_text(li2o()).replace("# generated", "# r\u00e9sum\u00e9").encode("latin-1"),
         "UTF-8"),
    _bad("long-line", "oneline.vasp", "Li2O " + "1.0 " * 400_000 + "\n", "characters long"),
    _bad("unknown-extension", "li2o.xyz", "2\nLi2O\nLi 0 0 0\nO 1 1 1\n", "unknown structure file type"),
    Case(id="files-huge-file", group=GROUP, setup=_huge_sparse, run=lambda tmp, p: _strict([p]), expect="error",
         match=("huge.cif", "too large"), quick=True, seconds=30),
    Case(id="files-gzip-bomb", group=GROUP, setup=_gzip_bomb, run=lambda tmp, p: _strict([p]), expect="error",
         match=("bomb.cif.gz", "too large"), quick=True, seconds=30),
    _bad("gzip-truncated", "cut.cif.gz", gzip.compress(_cif_text(li2o()).encode())[:-200], "truncated",
         note="a cut download must not load as the atoms before the cut"),
    Case(id="files-fifo", group=GROUP, setup=_fifo, run=lambda tmp, p: _strict([p]), expect="error",
         match=("pipe.cif", "regular file"), quick=True, seconds=15, note="opening a FIFO would block forever"),
    Case(id="files-nul-in-path", group=GROUP, run=lambda tmp, _: _strict([str(tmp / "bad\x00name.cif")]),
         expect="error", match=("name.cif", "not a valid path"), quick=True, seconds=30),
    Case(id="files-missing", group=GROUP, run=lambda tmp, _: _strict([tmp / "nowhere.cif"]), expect="error",
         match=("nowhere.cif", "not found"), quick=True, seconds=30),
    Case(id="files-explicit-symlink-system-file", group=GROUP, setup=_explicit_symlink, run=_run_explicit_symlink,
         expect="error", match=("structure.cif", "not a CIF"), quick=True, seconds=30,
         note="the error must not quote the linked file"),
    # folders
    Case(id="files-folder-deep-tree", group=GROUP, setup=_deep_tree, quick=True, seconds=30,
         run=lambda tmp, d: load_user_structures(d), expect="ok",
         check=_mixed({"good.cif": li2o()}, {"level3": ("deeper",)}),
         note="scan bounded in depth, a symlink loop and a link out of the folder not followed"),
    Case(id="files-folder-huge-listing", group=GROUP, setup=_huge_folder, run=lambda tmp, d: _strict([d]),
         expect="error", match=("crowded", "entries"), quick=True, seconds=60,
         note="20,500 entries: the scan stops at its cap instead of listing them all"),
    Case(id="files-dir-named-cif", group=GROUP, setup=lambda tmp: (tmp / "looks_like.cif").mkdir() or
         tmp / "looks_like.cif", run=lambda tmp, p: _strict([p]), expect="error",
         match=("looks_like.cif", "no structure files"), quick=True, seconds=30),
    Case(id="files-folder-too-many", group=GROUP, setup=_many_files, run=lambda tmp, d: _strict([d]),
         expect="error", match=("many", "limit"), quick=True, seconds=60),
]

if os.geteuid() != 0:  # root reads a chmod-000 file anyway: the case cannot fail there
    CASES.append(Case(id="files-unreadable", group=GROUP, setup=_unreadable, run=lambda tmp, p: _strict([p]),
                      expect="error", match=("locked.cif", "permission"), quick=True, seconds=30))
