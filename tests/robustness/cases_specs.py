"""Hostile campaign specs (group ``specs``): each is loaded through ``load_spec`` or ``CampaignSpec.from_dict``.

A bad spec must be refused up front, before any work, with one message that names the file or the key path
(``relax.fmax``) and the problem; a good spec must load with exactly the values it gives and the makers'
defaults for the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness import Case, cli

from matfunnel.campaign.spec import CampaignSpec, load_spec
from matfunnel.candidates.maker import CandidatesMaker, ReferencesMaker
from matfunnel.dft.gate import DftGateMaker
from matfunnel.makers.relax import BatchedRelaxMaker, RelaxMaker

GROUP = "specs"
FLOWS = Path(__file__).resolve().parents[2] / "flows"


def _write(tmp: Path, text: str | bytes, name: str = "spec.yaml") -> Path:
    path = tmp / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _bad_yaml(cid: str, text: str | bytes, *match: str, note: str = "", setup=None) -> Case:
    """A spec file that must be refused quickly, naming ``match`` (key path or file name, and the problem)."""
    return Case(id=f"specs-{cid}", group=GROUP, run=lambda tmp, _: load_spec(_write(tmp, text)),
                expect="error", match=match, quick=True, note=note, setup=setup, seconds=30)


def _bad_dict(cid: str, d: dict, *match: str, note: str = "") -> Case:
    """A spec mapping that ``CampaignSpec.from_dict`` must refuse quickly."""
    return Case(id=f"specs-{cid}", group=GROUP, run=lambda tmp, _: CampaignSpec.from_dict(d, base_dir=tmp),
                expect="error", match=match, quick=True, note=note)


def _ok_yaml(cid: str, text: str, check, setup=None, note: str = "") -> Case:
    """A spec file that must load, with the values ``check`` verifies."""
    return Case(id=f"specs-{cid}", group=GROUP, run=lambda tmp, _: load_spec(_write(tmp, text)),
                expect="ok", check=check, quick=True, setup=setup, note=note)


def _diff(spec: Any, want: dict[str, Any]) -> str | None:
    """``None`` when every dotted attribute of ``spec`` equals ``want``; else the mismatches."""
    bad = []
    for path, value in want.items():
        got = spec
        for part in path.split("."):
            got = getattr(got, part)
        if got != value or type(got) is not type(value):
            bad.append(f"{path}={got!r} (want {value!r})")
    return "; ".join(bad) or None


DEFAULTS = {
    "name": "campaign",
    "candidates.sources": list(CandidatesMaker().sources), "candidates.structures": [],
    "candidates.max_candidates": CandidatesMaker.max_candidates, "candidates.max_sites": CandidatesMaker.max_sites,
    "candidates.charge_neutral": CandidatesMaker.charge_neutral,
    "potential.name": None, "potential.device": "cpu", "potential.kwargs": {},
    "relax.fmax": RelaxMaker.fmax, "relax.max_steps": RelaxMaker.max_steps, "relax.relax_cell": RelaxMaker.relax_cell,
    "relax.batch_size": BatchedRelaxMaker.batch_size,
    "hull.references": ReferencesMaker.references, "hull.competing_max_sites": ReferencesMaker.competing_max_sites,
    "hull.cache_dir": None,
    "dft.engine": DftGateMaker.engine, "dft.threshold": DftGateMaker.threshold,
    "dft.max_candidates": DftGateMaker.max_candidates, "dft.max_sites": DftGateMaker.max_sites,
    "dft.preset": DftGateMaker.preset, "dft.settings": {},
    "phonons.enabled": False,
}


def _check_quickstart(spec) -> str | None:
    return _diff(spec, {**DEFAULTS, "name": "quickstart", "chemsys": "Al-Li", "candidates.sources": ["aflow"],
                        "candidates.max_candidates": 8, "candidates.max_sites": 4, "relax.fmax": 0.05,
                        "relax.max_steps": 200, "relax.batch_size": 8, "hull.references": "offline",
                        "hull.competing_max_sites": 2, "dft.engine": "gpaw", "dft.threshold": 0.05,
                        "dft.max_candidates": 2, "dft.max_sites": 4, "dft.preset": "quick",
                        "base_dir": str(FLOWS)})


def _check_li_mn_o(spec) -> str | None:
    return _diff(spec, {**DEFAULTS, "name": "li-mn-o", "chemsys": "Li-Mn-O", "candidates.sources": ["aflow", "user"],
                        "candidates.max_candidates": 40, "candidates.max_sites": 14,
                        "candidates.charge_neutral": True, "relax.fmax": 0.05, "relax.max_steps": 300,
                        "relax.relax_cell": True, "relax.batch_size": 32, "hull.references": "auto",
                        "hull.competing_max_sites": 4, "dft.engine": "vasp", "dft.threshold": 0.05,
                        "dft.max_candidates": 10, "dft.max_sites": None, "dft.preset": "standard",
                        "phonons.enabled": True, "phonons.threshold": 0.05, "phonons.max_candidates": 10,
                        "phonons.min_length": 12.0, "phonons.max_supercell_atoms": 400, "phonons.relax": True})


def _check_minimal(spec) -> str | None:
    bad = _diff(spec, {**DEFAULTS, "chemsys": "Li-Mn-O"})
    if bad:
        return bad
    if spec.structure_paths() != []:
        return f"structure_paths() = {spec.structure_paths()} (want [])"
    return None


FULL = """\
name: full_Run-1.v2
chemsys: Al-Li
candidates:
  sources: [aflow, user]
  structures: [inputs/a.cif, inputs]
  max_candidates: 12
  max_sites: 6
  charge_neutral: false
potential:
  name: chgnet-0.3.0
  device: cuda:1
  kwargs: {compile: false, tag: x}
relax:
  fmax: 0.02
  max_steps: 1000
  relax_cell: false
  batch_size: 4
hull:
  references: offline
  competing_max_sites: 3
  cache_dir: cache/mp
phonons:
  enabled: true
  threshold: 0.1
  max_candidates: 3
  min_length: 10
  max_supercell_atoms: 200
  displacement: 0.02
  relax: false
  relax_fmax: 0.01
  imaginary_tol: 0.2
  mesh: 30
dft:
  engine: gpaw
  threshold: 0.02
  max_candidates: 0
  max_sites: 8
  preset: standard
  settings: {ecut: 450, kpt_density: 3.5, smearing: marzari-vanderbilt, spin: "off", kpts: [2, 2, 2]}
"""


def _setup_inputs(tmp: Path) -> None:
    (tmp / "inputs").mkdir()
    (tmp / "inputs" / "a.cif").write_text("data_x\n")


def _check_full(spec) -> str | None:
    base = Path(spec.base_dir)
    bad = _diff(spec, {
        "name": "full_Run-1.v2", "chemsys": "Al-Li", "candidates.sources": ["aflow", "user"],
        "candidates.structures": ["inputs/a.cif", "inputs"], "candidates.max_candidates": 12,
        "candidates.max_sites": 6, "candidates.charge_neutral": False, "potential.name": "chgnet-0.3.0",
        "potential.device": "cuda:1", "potential.kwargs": {"compile": False, "tag": "x"}, "relax.fmax": 0.02,
        "relax.max_steps": 1000, "relax.relax_cell": False, "relax.batch_size": 4, "hull.references": "offline",
        "hull.competing_max_sites": 3, "phonons.enabled": True, "phonons.threshold": 0.1,
        "phonons.max_candidates": 3, "phonons.min_length": 10.0, "phonons.max_supercell_atoms": 200,
        "phonons.displacement": 0.02, "phonons.relax": False, "phonons.relax_fmax": 0.01,
        "phonons.imaginary_tol": 0.2, "phonons.mesh": 30.0, "dft.engine": "gpaw", "dft.threshold": 0.02,
        "dft.max_candidates": 0, "dft.max_sites": 8, "dft.preset": "standard",
        "dft.settings": {"ecut": 450, "kpt_density": 3.5, "smearing": "marzari-vanderbilt", "spin": "off",
                         "kpts": [2, 2, 2]}})
    if bad:
        return bad
    paths = [Path(p).resolve() for p in spec.structure_paths()]
    if paths != [(base / "inputs" / "a.cif").resolve(), (base / "inputs").resolve()]:
        return f"structure_paths() = {paths}"
    if (base / str(spec.hull.cache_dir)).resolve() != (base / "cache" / "mp").resolve():
        return f"hull.cache_dir = {spec.hull.cache_dir!r} does not resolve to cache/mp in the spec's folder"
    d = json.loads(json.dumps(spec.as_dict()))
    if d["relax"]["fmax"] != 0.02 or d["dft"]["settings"]["ecut"] != 450 or d["phonons"]["mesh"] != 30.0:
        return f"as_dict() lost values: {d}"
    return None


def _roundtrip(tmp: Path, _: Any) -> tuple:
    spec = CampaignSpec.from_dict({"chemsys": "Li-O", "relax": {"fmax": 0.1}, "dft": {"preset": "standard"}},
                                  base_dir=tmp)
    return spec, CampaignSpec.from_dict(json.loads(json.dumps(spec.as_dict())))


def _check_roundtrip(pair) -> str | None:
    a, b = pair
    return None if a == b else f"from_dict(as_dict()) changed the spec: {a} -> {b}"


def _symlink_inside(tmp: Path) -> None:
    _setup_inputs(tmp)
    os.symlink(tmp / "inputs", tmp / "link")


def _symlink_outside(tmp: Path) -> None:
    os.symlink("/etc", tmp / "etc_link")


def _nested(depth: int) -> str:
    return "chemsys: Li-O\nrelax: " + "[" * depth + "]" * depth + "\n"


# the audit's "billion laughs": 10 levels of 9 aliases under a key the old code accepted (potential.kwargs)
BOMB = "chemsys: Li-O\npotential:\n  kwargs:\n    a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    {chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9))


def _bomb(tmp: Path, _: Any) -> dict:
    return load_spec(_write(tmp, BOMB)).as_dict()  # as_dict: what 'matfunnel run' writes to spec.json


def _cli_run(text: str):
    def run(tmp: Path, _: Any):
        return cli(["run", str(_write(tmp, text)), "--run-dir", str(tmp / "run")])
    return run


CASES: list[Case] = [
    # ---------------------------------------------------------------- valid specs load with their values
    Case(id="specs-ok-quickstart", group=GROUP, run=lambda tmp, _: load_spec(FLOWS / "quickstart.yaml"),
         expect="ok", check=_check_quickstart, quick=True),
    Case(id="specs-ok-li-mn-o", group=GROUP, run=lambda tmp, _: load_spec(FLOWS / "li-mn-o.yaml"),
         expect="ok", check=_check_li_mn_o, quick=True),
    _ok_yaml("ok-minimal", "chemsys: Li-Mn-O\n", _check_minimal),
    _ok_yaml("ok-every-section", FULL, _check_full, setup=_setup_inputs),
    _ok_yaml("ok-int-for-float", "chemsys: Li-O\nrelax: {fmax: 1}\ndft: {threshold: 0}\n",
             lambda s: _diff(s, {"relax.fmax": 1.0, "dft.threshold": 0.0}),
             note="an integer where a float is due is the same number"),
    _ok_yaml("ok-exponent-numbers", "chemsys: Li-O\nrelax: {fmax: 5e-2}\ndft: {settings: {ecut: 4.5e2}}\n",
             lambda s: _diff(s, {"relax.fmax": 0.05, "dft.settings": {"ecut": 450.0}}),
             note="YAML 1.2 reads 5e-2 as a number (PyYAML's YAML 1.1 reads it as text)"),
    _ok_yaml("ok-empty-sections", "chemsys: Al\nrelax:\ndft: {}\nphonons:\n",
             lambda s: _diff(s, {**DEFAULTS, "chemsys": "Al"}), note="an empty section means its defaults"),
    _ok_yaml("ok-empty-values", "chemsys: Li-O\ncandidates:\n  structures:\npotential:\n  kwargs:\ndft:\n  settings:\n",
             lambda s: _diff(s, {"candidates.structures": [], "potential.kwargs": {}, "dft.settings": {}}),
             note="a key whose entries are all commented out is empty, not null"),
    _ok_yaml("ok-json-text", json.dumps({"name": "tiny", "chemsys": "Al-Li", "hull": {"references": "offline"}}),
             lambda s: _diff(s, {"name": "tiny", "chemsys": "Al-Li", "hull.references": "offline"})),
    _ok_yaml("ok-symlink-inside", "chemsys: Al-Li\ncandidates: {structures: [link/a.cif]}\n",
             lambda s: None if Path(s.structure_paths()[0]).resolve() == Path(s.base_dir, "inputs/a.cif").resolve()
             else f"structure_paths() = {s.structure_paths()}", setup=_symlink_inside,
             note="a symlink that stays inside the spec's folder is fine"),
    _ok_yaml("ok-negative-threshold", "chemsys: Li-O\ndft: {threshold: -0.02}\n",
             lambda s: _diff(s, {"dft.threshold": -0.02}), note="below-hull-only gating is a legitimate choice"),
    _ok_yaml("ok-unicode-comment", "# Li–Mn–O, für Ångström-Fans\nchemsys: Li-Mn-O  # ✓\nname: lmo\n",
             lambda s: _diff(s, {"chemsys": "Li-Mn-O", "name": "lmo"})),
    Case(id="specs-ok-roundtrip", group=GROUP, run=_roundtrip, expect="ok", check=_check_roundtrip, quick=True,
         note="spec.json of a run (as_dict) parses back to the same spec"),

    # ---------------------------------------------------------------- relax
    _bad_yaml("fmax-negative", "chemsys: Li-O\nrelax: {fmax: -0.05}\n", "relax.fmax", "greater than"),
    _bad_yaml("fmax-zero", "chemsys: Li-O\nrelax: {fmax: 0}\n", "relax.fmax", "greater than"),
    _bad_yaml("fmax-nan", "chemsys: Li-O\nrelax: {fmax: .nan}\n", "relax.fmax", "finite"),
    _bad_yaml("fmax-inf", "chemsys: Li-O\nrelax: {fmax: .inf}\n", "relax.fmax", "finite"),
    _bad_yaml("fmax-text", "chemsys: Li-O\nrelax: {fmax: '0.05'}\n", "relax.fmax", "number"),
    _bad_yaml("fmax-huge", "chemsys: Li-O\nrelax: {fmax: 50}\n", "relax.fmax", "less than"),
    _bad_yaml("steps-zero", "chemsys: Li-O\nrelax: {max_steps: 0}\n", "relax.max_steps", "greater than"),
    _bad_yaml("steps-fraction", "chemsys: Li-O\nrelax: {max_steps: 2.5}\n", "relax.max_steps", "integer"),
    _bad_yaml("steps-text", "chemsys: Li-O\nrelax: {max_steps: '300'}\n", "relax.max_steps", "integer"),
    _bad_yaml("steps-bool", "chemsys: Li-O\nrelax: {max_steps: true}\n", "relax.max_steps", "integer"),
    _bad_yaml("steps-huge", "chemsys: Li-O\nrelax: {max_steps: 1000000000000000000000000000000}\n",
              "relax.max_steps", "less than"),
    _bad_yaml("batch-negative", "chemsys: Li-O\nrelax: {batch_size: -1}\n", "relax.batch_size", "greater than"),
    _bad_yaml("relax-cell-string", "chemsys: Li-O\nrelax: {relax_cell: 'false'}\n", "relax.relax_cell", "boolean",
              note="'false' is a string; coercing it would turn the cell relaxation on"),
    _bad_yaml("relax-not-mapping", "chemsys: Li-O\nrelax: 5\n", "relax", "mapping"),
    # ---------------------------------------------------------------- candidates
    _bad_yaml("charge-neutral-string", "chemsys: Li-O\ncandidates: {charge_neutral: 'no'}\n",
              "candidates.charge_neutral", "boolean"),
    _bad_yaml("source-typo", "chemsys: Li-O\ncandidates: {sources: [aflow, usr]}\n", "candidates.sources", "aflow"),
    _bad_yaml("sources-string", "chemsys: Li-O\ncandidates: {sources: aflow}\n", "candidates.sources", "list"),
    _bad_yaml("sources-empty", "chemsys: Li-O\ncandidates: {sources: []}\n", "candidates.sources", "at least"),
    _bad_yaml("max-candidates-zero", "chemsys: Li-O\ncandidates: {max_candidates: 0}\n",
              "candidates.max_candidates", "greater than"),
    _bad_yaml("max-sites-negative", "chemsys: Li-O\ncandidates: {max_sites: -3}\n", "candidates.max_sites",
              "greater than"),
    _bad_yaml("structures-string", "chemsys: Li-O\ncandidates: {structures: inputs}\n",
              "candidates.structures", "list"),
    _bad_yaml("structures-root", "chemsys: Li-O\ncandidates: {structures: [/]}\n",
              "candidates.structures", "absolute"),
    _bad_yaml("structures-dotdot", "chemsys: Li-O\ncandidates: {structures: [../elsewhere]}\n",
              "candidates.structures", "outside the spec"),
    _bad_yaml("structures-symlink-escape", "chemsys: Li-O\ncandidates: {structures: [etc_link/passwd]}\n",
              "candidates.structures", "outside the spec", setup=_symlink_outside),
    _bad_yaml("structures-number", "chemsys: Li-O\ncandidates: {structures: [3]}\n", "candidates.structures",
              "string"),
    _bad_yaml("structures-without-user", "chemsys: Li-O\ncandidates: {sources: [aflow], structures: [a.cif]}\n",
              "candidates.structures", "user", note="the files would be ignored without a word"),
    # ---------------------------------------------------------------- chemsys and name
    _bad_yaml("chemsys-number", "chemsys: 3\n", "chemsys", "string"),
    _bad_yaml("chemsys-unknown-element", "chemsys: Li-Xx\n", "chemsys", "Xx"),
    _bad_yaml("chemsys-duplicate", "chemsys: Li-Li-O\n", "chemsys", "twice"),
    _bad_yaml("chemsys-too-many", "chemsys: Li-Na-K-Rb-Cs-Be-Mg-Ca-Sr\n", "chemsys", "at most"),
    _bad_yaml("chemsys-nobelium-bool", "chemsys: No\n", "chemsys", "quote",
              note="YAML 1.1 reads an unquoted No (nobelium) as false"),
    _bad_yaml("chemsys-lowercase", "chemsys: li-mn-o\n", "chemsys", "element"),
    _bad_yaml("chemsys-missing", "name: x\nrelax: {fmax: 0.1}\n", "spec.yaml", "chemsys"),
    _bad_yaml("empty-file", "", "spec.yaml", "chemsys"),
    _bad_yaml("name-traversal", "chemsys: Li-O\nname: ../../x\n", "name", "letters"),
    _bad_yaml("name-absolute", "chemsys: Li-O\nname: /tmp/evil\n", "name", "letters"),
    _bad_yaml("name-hidden", "chemsys: Li-O\nname: .hidden\n", "name", "start"),
    _bad_yaml("name-too-long", "chemsys: Li-O\nname: " + "a" * 300 + "\n", "name", "long"),
    _bad_yaml("name-date", "chemsys: Li-O\nname: 2024-01-01\n", "name", "string",
              note="YAML reads an unquoted date as a date, not as the text"),
    # ---------------------------------------------------------------- potential
    _bad_yaml("device-form", "chemsys: Li-O\npotential: {device: gpu0}\n", "potential.device", "cuda"),
    _bad_yaml("potential-name-number", "chemsys: Li-O\npotential: {name: 42}\n", "potential.name", "string"),
    _bad_yaml("kwargs-list", "chemsys: Li-O\npotential: {kwargs: [1, 2]}\n", "potential.kwargs", "mapping"),
    _bad_yaml("kwargs-int-key", "chemsys: Li-O\npotential: {kwargs: {1: a}}\n", "potential.kwargs", "string"),
    # ---------------------------------------------------------------- hull
    _bad_yaml("competing-negative", "chemsys: Li-O\nhull: {competing_max_sites: -1}\n", "hull.competing_max_sites",
              "greater than", note="-1 was accepted and silently broke the hull"),
    _bad_yaml("cache-dir-absolute", "chemsys: Li-O\nhull: {cache_dir: /tmp/mp}\n", "hull.cache_dir", "absolute"),
    _bad_yaml("cache-dir-dotdot", "chemsys: Li-O\nhull: {cache_dir: ../../mp}\n", "hull.cache_dir",
              "outside the spec"),
    _bad_yaml("references-case", "chemsys: Li-O\nhull: {references: MP}\n", "hull.references", "offline"),
    # ---------------------------------------------------------------- dft
    _bad_yaml("dft-preset", "chemsys: Li-O\ndft: {preset: fast}\n", "dft.preset", "quick"),
    _bad_yaml("dft-ecut-negative", "chemsys: Li-O\ndft: {settings: {ecut: -5}}\n", "dft.settings.ecut",
              "greater than"),
    _bad_yaml("dft-ecut-huge", "chemsys: Li-O\ndft: {settings: {ecut: 1.0e6}}\n", "dft.settings.ecut", "less than"),
    _bad_yaml("dft-settings-typo", "chemsys: Li-O\ndft: {settings: {encut: 500}}\n", "dft.settings", "encut"),
    _bad_yaml("dft-smearing", "chemsys: Li-O\ndft: {settings: {smearing: gaussian}}\n", "dft.settings.smearing",
              "fermi-dirac"),
    _bad_yaml("dft-kpts", "chemsys: Li-O\ndft: {settings: {kpts: [2, 0, 2]}}\n", "dft.settings.kpts",
              "greater than"),
    _bad_yaml("dft-spin-yaml-bool", "chemsys: Li-O\ndft: {settings: {spin: off}}\n", "dft.settings.spin", "quote",
              note="YAML reads unquoted off as false; refuse rather than guess"),
    _bad_yaml("dft-threshold-low", "chemsys: Li-O\ndft: {threshold: -5}\n", "dft.threshold", "greater than"),
    _bad_yaml("dft-threshold-inf", "chemsys: Li-O\ndft: {threshold: .inf}\n", "dft.threshold", "finite"),
    _bad_yaml("dft-max-candidates", "chemsys: Li-O\ndft: {max_candidates: -1}\n", "dft.max_candidates",
              "greater than"),
    _bad_dict("dft-engine", {"chemsys": "Li-O", "dft": {"engine": "abinit"}}, "dft.engine", "gpaw"),
    # ---------------------------------------------------------------- phonons
    _bad_yaml("phonons-min-length", "chemsys: Li-O\nphonons: {min_length: 0}\n", "phonons.min_length",
              "greater than"),
    _bad_yaml("phonons-enabled-string", "chemsys: Li-O\nphonons: {enabled: 'yes'}\n", "phonons.enabled",
              "boolean"),
    _bad_yaml("phonons-supercell-huge", "chemsys: Li-O\nphonons: {max_supercell_atoms: 1000000000}\n",
              "phonons.max_supercell_atoms", "less than"),
    # ---------------------------------------------------------------- structure of the spec
    _bad_yaml("unknown-top-key", "chemsys: Li-O\nfmax: 0.1\n", "fmax", "unknown key"),
    _bad_dict("unknown-section-key", {"chemsys": "Li-O", "relax": {"fmaxx": 0.1}}, "relax", "fmaxx"),
    _bad_yaml("duplicate-key", "chemsys: Li-O\nrelax:\n  fmax: 0.1\n  fmax: 0.2\n", "fmax", "duplicate"),
    _bad_yaml("duplicate-section", "chemsys: Li-O\nrelax: {fmax: 0.1}\nrelax: {max_steps: 5}\n", "relax",
              "duplicate"),
    _bad_yaml("base-dir-in-file", "chemsys: Li-O\nbase_dir: /\ncandidates: {structures: [etc/passwd]}\n",
              "base_dir", "spec"),
    _bad_yaml("all-problems-at-once", "chemsys: Li-O\nname: ../x\nrelax: {fmax: -1}\ndft: {preset: fast}\n",
              "name", "relax.fmax", "dft.preset", note="every problem in one message, not only the first"),
    _bad_yaml("top-level-list", "- chemsys: Li-O\n", "spec.yaml", "mapping"),
    _bad_yaml("yaml-syntax", "chemsys: Li-O\nrelax: {fmax: 0.1\n", "spec.yaml", "YAML"),
    _bad_yaml("not-utf8", b"chemsys: Li-O\nname: \xff\xfe\n", "spec.yaml", "UTF-8"),
    # ---------------------------------------------------------------- hostile YAML
    Case(id="specs-alias-bomb", group=GROUP, run=_bomb, expect="error", match=("spec.yaml", "alias"), quick=True,
         seconds=60, note="a 'billion laughs' of 10 levels of 9 aliases (9^10 strings once expanded)"),
    _bad_yaml("anchor-merge", "chemsys: Li-O\nbase: &b {fmax: 0.1}\nrelax:\n  <<: *b\n", "spec.yaml", "anchor"),
    _bad_yaml("python-tag", "chemsys: Li-O\nname: !!python/object/apply:os.getpid []\n", "spec.yaml", "tag"),
    _bad_yaml("custom-tag", "chemsys: !elements Li-O\n", "spec.yaml", "tag"),
    _bad_yaml("too-large", "chemsys: Li-O\n" + "# padding\n" * 200000,
              "spec.yaml", "large"),
    _bad_yaml("deep-nesting", _nested(50000), "spec.yaml", "nest"),
    _bad_yaml("nesting-100", _nested(100), "spec.yaml", "deeper"),
    _bad_yaml("huge-integer", "chemsys: Li-O\nrelax: {max_steps: " + "9" * 100000 + "}\n", "spec.yaml",
              "integer"),
    Case(id="specs-dev-zero", group=GROUP, run=lambda tmp, _: load_spec("/dev/zero"), expect="error",
         match=("/dev/zero", "regular file"), quick=True, note="reading it would never end"),
    Case(id="specs-directory", group=GROUP, run=lambda tmp, _: load_spec(tmp), expect="error",
         match=("regular file",), quick=True),
    # ---------------------------------------------------------------- through the CLI: refused before any work
    Case(id="specs-cli-bad-fmax", group=GROUP, run=_cli_run("chemsys: Al\nrelax: {fmax: -1}\n"), expect="error",
         match=("relax.fmax", "greater than"), seconds=120, note="exit 2 with one line, nothing started"),
    Case(id="specs-cli-bad-preset", group=GROUP,
         run=_cli_run("chemsys: Al\ncandidates: {max_candidates: 1, max_sites: 1}\nhull: {references: offline}\n"
                      "dft: {engine: gpaw, preset: accurate}\n"),
         expect="error", match=("dft.preset", "quick"), seconds=120,
         note="the audit: a bad preset failed only after all the MLIP work"),
]
