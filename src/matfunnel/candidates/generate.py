"""``generate_candidates``: prototype/user structures -> substituted, filtered, de-duplicated, capped.

Pipeline (all pure pymatgen, no potential involved):

1. **Sources**: AFLOW prototypes with at most ``max_sites`` sites (source id = AFLOW label) and the
   user's structures (source id = ``user:<label>``), each in any chemical system.
2. **Substitution**: every injective map from the source's species onto the target system's species
   whose score is at least ``substitution_threshold``. Ionic systems (an element of
   :data:`~matfunnel.candidates.chemsys.ANION_ELEMENTS` present) use oxidation-state species: the
   source's from its own decoration or ``Composition.oxi_state_guesses`` (first all-integer guess;
   elements if none), the target's from :func:`~matfunnel.candidates.substitution.target_species`.
   Intermetallics use bare elements. Score = product of ICSD-mined conditional probabilities
   ``p(source | target)`` of the replaced species (kept species: factor 1), see
   :mod:`matfunnel.candidates.substitution`.
3. **Filters**: the candidate must contain every element of the system (``all_elements=True``;
   with False any sub-system with >= 2 elements); in ionic systems with ``charge_neutral`` the
   oxidation states must sum to zero; a composition whose one-state-per-site map is not neutral is
   still kept when pymatgen finds a mixed-valence balance for it (spinel LiMn2O4: Mn3+/Mn4+).
4. **Structure**: species replaced, volume rescaled by reference lattice scaling (the RLS rule of
   pymatgen's ``RLSVolumePredictor``: lengths scale with ``sum r n^(1/3)``, ionic radii when every
   species has one, atomic radii otherwise), then validated (overlap < 0.5 A etc.): invalid ones are
   reported in ``CandidateSet.rejected`` with the reason.
5. **Rank**: score descending, then fewer sites, then candidate id (ascending) -- a total order, so
   the same inputs always give the same list.
6. **De-duplicate** in rank order with StructureMatcher (compared within a reduced formula), keeping
   the best-ranked representative, until ``max_candidates`` unique candidates are kept (**cap**).

Output structures carry plain elements (no oxidation states) and ``properties``: ``candidate_id``,
``label`` (= candidate id), ``role="candidate"``, ``chemsys``, ``formula``, ``source`` (``aflow`` or
``user``), ``source_id``, ``prototype`` (AFLOW tags, or None), ``substitution`` (source species ->
target species, identities included), ``score``, ``rank`` and ``oxidation_states`` (per element,
averaged, charge-balanced, fractional for mixed valence; None for intermetallics).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from os import PathLike
from typing import cast

from monty.json import MSONable
from pymatgen.core import Composition, Element, Species, Structure

from matfunnel.candidates.chemsys import is_ionic, parse_chemsys
from matfunnel.candidates.dedupe import dedupe_ranked
from matfunnel.candidates.filters import check_candidate, net_charge
from matfunnel.candidates.prototypes import load_aflow_prototypes
from matfunnel.candidates.sources import load_user_structures
from matfunnel.candidates.substitution import (
    SubstitutionTable,
    default_table,
    enumerate_maps,
    target_species,
)
from matfunnel.common.errors import StructureError
from matfunnel.common.readers import structure_problem
from matfunnel.common.structures import as_structure
from matfunnel.potential.validate import to_structure

DEFAULT_MAX_SITES = 12
DEFAULT_THRESHOLD = 1e-6
SOURCES = ("aflow", "user")


@dataclass
class CandidateSet(MSONable):
    """Result of :func:`generate_candidates`.

    ``candidates``: ranked structures (see module doc for their ``properties``); ``rejected``:
    generated structures that failed validation (``candidate_id``, ``formula``, ``source_id``,
    ``reason``); ``errors``: user files that could not be used (see ``load_user_structures``);
    ``stats``: counts per stage; ``params``: the arguments used.
    """

    chemsys: list[str]
    candidates: list[Structure] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.candidates)

    def __iter__(self):
        return iter(self.candidates)

    @property
    def ids(self) -> list[str]:
        """The candidates' ids, in rank order."""
        return [s.properties["candidate_id"] for s in self.candidates]

    def as_dict(self) -> dict:
        """The set as a JSON-able dict (structures as their ``as_dict()`` documents)."""
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            "chemsys": list(self.chemsys),
            "candidates": [s.as_dict() for s in self.candidates],
            "rejected": self.rejected,
            "errors": self.errors,
            "stats": self.stats,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CandidateSet:
        """The set from its :meth:`as_dict` document."""
        return cls(
            chemsys=list(d["chemsys"]),
            candidates=[as_structure(s) for s in d["candidates"]],
            rejected=list(d.get("rejected", [])),
            errors=list(d.get("errors", [])),
            stats=dict(d.get("stats", {})),
            params=dict(d.get("params", {})),
        )


# --------------------------------------------------------------------------------------------------
# helpers


def candidate_id(struct: Structure) -> str:
    """``<reduced formula>-<10 hex>``: a hash of the Niggli-reduced cell.

    Lengths/angles to 1e-3, sorted species and fractional coordinates to 1e-3. Depends on the structure only.
    """
    red = struct.get_reduced_structure()
    lat = [round(x, 3) for x in (*red.lattice.abc, *red.lattice.angles)]
    sites = sorted(
        (site.specie.symbol, *[round(round(float(c), 3) % 1.0, 3) for c in site.frac_coords]) for site in red
    )
    payload = json.dumps({"f": struct.composition.reduced_formula, "l": lat, "s": sites}, sort_keys=True)
    return f"{struct.composition.reduced_formula}-{hashlib.sha1(payload.encode()).hexdigest()[:10]}"


def _element(key: str) -> str:
    return Species.from_str(key).symbol if key not in Element.__members__ else key


def _radius(key: str, ionic: bool) -> float | None:
    if ionic:
        try:
            sp = Species.from_str(key)
        except ValueError:
            return None
        if sp.oxi_state is None or sp.oxi_state == 0:
            return None
        with warnings.catch_warnings():  # "No default ionic radius for Mn4+. Using ls data."
            warnings.simplefilter("ignore")
            r = sp.ionic_radius
        return float(r) if r else None
    el = Element(_element(key))
    r = el.atomic_radius or el.atomic_radius_calculated
    return float(r) if r else None


def _rls_factor(counts: dict[str, float], mapping: dict[str, str]) -> float:
    """Linear lattice scale factor from reference lattice scaling (see module doc)."""
    for ionic in (True, False):
        num = den = 0.0
        ok = True
        for key, n in counts.items():
            rs, rt = _radius(key, ionic), _radius(mapping[key], ionic)
            if rs is None or rt is None:
                ok = False
                break
            num += rt * n ** (1 / 3)
            den += rs * n ** (1 / 3)
        if ok and den > 0:
            return num / den
    return 1.0


@lru_cache(maxsize=4096)
def _guess_oxidation(formula: str) -> dict[str, int] | None:
    """First all-integer, all-nonzero oxidation-state guess for a composition (None if none)."""
    comp = Composition(formula)
    if len(comp.elements) < 2:
        return None
    try:
        guesses = comp.oxi_state_guesses(max_sites=-50)
    except Exception:  # noqa: BLE001
        return None
    for g in guesses:
        if all(float(v).is_integer() and v != 0 for v in g.values()):
            return {el: int(v) for el, v in g.items()}
    return None


def _merged(counts, skeys, assign, target_el) -> dict[str, float]:
    """Element amounts of a substituted source (several sites may map to one element)."""
    out: dict[str, float] = {}
    for s_, t in zip(skeys, assign, strict=False):
        out[target_el[t]] = out.get(target_el[t], 0.0) + counts[s_]
    return out


@lru_cache(maxsize=4096)
def _mixed_valence_balanced(formula: str) -> bool:
    """Whether pymatgen finds a charge-balanced assignment allowing mixed valence (e.g. LiMn2O4 as Mn3.5+).

    Substitution maps one oxidation state per site, which alone would reject such phases.
    """
    comp = Composition(formula)
    if len(comp.elements) < 2:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(comp.oxi_state_guesses(max_sites=-50))
    except Exception:  # noqa: BLE001
        return False


def _balanced_oxidation(formula: str) -> dict[str, float]:
    """Average per-element oxidation states of pymatgen's first charge-balanced guess."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (guess, *_) = Composition(formula).oxi_state_guesses(max_sites=-50)
    return {el: round(float(v), 6) for el, v in sorted(guess.items())}


def _site_keys(struct: Structure, ionic: bool) -> list[str]:
    """Per-site source key: a species string ("Mn3+") in ionic mode when known, else the element."""
    if not ionic:
        return [site.specie.symbol for site in struct]
    species = [site.specie for site in struct]
    if all(getattr(sp, "oxi_state", None) for sp in species):
        return [str(Species(sp.symbol, sp.oxi_state)) for sp in species]
    syms = [sp.symbol for sp in species]
    guess = _guess_oxidation(Composition(Counter(syms)).reduced_formula)
    if guess is None:
        return syms
    return [str(Species(s, guess[s])) if s in guess else s for s in syms]


@dataclass
class _Source:
    source: str  # "aflow" | "user"
    source_id: str
    structure: Structure
    prototype: dict | None = None


def _user_object(item, i: int, errors: list[dict]) -> Structure | None:
    """A user's in-memory structure (or ASE Atoms), checked and labelled; None (and an error record) if bad."""
    try:
        s = to_structure(item, f"user#{i}")
    except StructureError as exc:
        errors.append({"file": None, "index": i, "label": f"user#{i}", "error": str(exc)})
        return None
    label = s.properties.get("label") or f"user#{i}"
    problem = structure_problem(s) or check_candidate(s, label)
    if problem:
        errors.append({"file": s.properties.get("source_file"), "index": i, "label": label,
                       "error": str(StructureError(label, problem))})
        return None
    if not s.properties.get("label"):
        s = s.copy()
        s.properties = {**s.properties, "label": f"user{i}-{s.composition.reduced_formula}"}
    return s


def _collect_user(user_structures, errors: list[dict]) -> list[_Source]:
    out, paths = [], []
    items = [user_structures] if isinstance(user_structures, (str, PathLike, Structure)) else list(user_structures)
    structs: list[Structure] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, PathLike)):
            paths.append(item)
            continue
        s = _user_object(item, i, errors)
        if s is not None:
            structs.append(s)
    if paths:
        loaded, errs = load_user_structures(paths)
        structs.extend(loaded)
        errors.extend(errs)
    seen: Counter = Counter()
    for s in structs:
        sid = f"user:{s.properties['label']}"
        seen[sid] += 1
        if seen[sid] > 1:
            sid = f"{sid}#{seen[sid]}"
        out.append(_Source("user", sid, s.copy(), None))
    return out


# --------------------------------------------------------------------------------------------------


def generate_candidates(
    chemsys: str | Iterable[str],
    *,
    user_structures: Sequence[Structure | str | PathLike] | str | PathLike = (),
    max_candidates: int = 50,
    sources: Sequence[str] = SOURCES,
    substitution_threshold: float = DEFAULT_THRESHOLD,
    max_sites: int = DEFAULT_MAX_SITES,
    charge_neutral: bool = True,
    all_elements: bool = True,
    merge_species: bool = True,
) -> CandidateSet:
    """Candidate structures for ``chemsys`` (e.g. ``"Li-Mn-O"``); see the module doc for the steps.

    Parameters
    ----------
    chemsys
        Elements, ``"Li-Mn-O"`` or a list; unknown elements raise ``ValueError``.
    user_structures
        Structures (or ASE Atoms) and/or paths to files/folders (:func:`load_user_structures`); used as
        substitution templates when ``"user"`` is in ``sources``. A user structure already in the system is
        kept as is (score 1.0). Their size is not limited by ``max_sites``. A bad file, block or structure
        is reported in ``errors`` and the others go on; when files were given and none of them holds a
        usable structure, :class:`~matfunnel.candidates.sources.UserStructuresError` is raised.
    max_candidates
        Cap on the returned list (after de-duplication).
    sources
        Any of ``"aflow"`` (bundled AFLOW prototypes) and ``"user"``.
    substitution_threshold
        Minimum substitution score (product of conditional probabilities).
    max_sites
        Largest AFLOW prototype (sites per cell) used as template.
    charge_neutral
        In ionic systems, keep only maps whose oxidation states sum to zero.
    all_elements
        Candidates must contain every element of ``chemsys``; False also admits sub-systems with at least
        two elements (one for a unary system).
    merge_species
        Allow two source species to map onto the same target species (e.g. a quaternary prototype giving a
        ternary candidate); otherwise maps are one-to-one.
    """
    elements = parse_chemsys(chemsys)
    _check_options(sources, max_candidates)
    ionic = is_ionic(elements)
    table = default_table()
    params = {
        "chemsys": "-".join(elements), "max_candidates": max_candidates, "sources": list(sources),
        "substitution_threshold": substitution_threshold, "max_sites": max_sites,
        "charge_neutral": charge_neutral, "all_elements": all_elements,
        "merge_species": merge_species, "ionic": ionic,
    }
    errors: list[dict] = []
    srcs, n_aflow = _gather_sources(sources, max_sites, user_structures, errors)

    targets = _substitution_targets(elements, ionic, table)
    rules = _MapRules(
        target_el={t: _element(t) for t in targets},
        want=set(elements),
        min_el=len(elements) if all_elements else min(2, len(elements)),
        ionic=ionic,
        charge_neutral=charge_neutral,
        table=table,
    )
    raw: list[dict] = []
    for src in srcs:
        raw.extend(_source_maps(src, targets, rules, substitution_threshold, injective=not merge_species))
    rules.stats["maps"] = len(raw)

    # build structures, validate, identify
    built: list[tuple[tuple, Structure]] = []
    rejected: list[dict] = []
    for r in raw:
        s = _built_candidate(r, rules, "-".join(elements))
        if isinstance(s, dict):
            rejected.append(s)
            continue
        built.append(((-float(r["score"]), len(s), s.properties["candidate_id"]), s))
    built.sort(key=lambda x: x[0])
    ranked = [s for _, s in built]

    kept, dup_of, examined = dedupe_ranked(ranked, limit=max_candidates)
    candidates = []
    for rank, i in enumerate(kept):
        s = ranked[i]
        s.properties["rank"] = rank
        s.properties["duplicates"] = sorted(ranked[j].properties["source_id"] for j, k in dup_of.items() if k == i)
        candidates.append(s)

    stats_out = {
        "sources_aflow": n_aflow,
        "sources_user": len(srcs) - n_aflow,
        "user_errors": len(errors),
        "maps_rejected_elements": rules.stats["rejected_elements"],
        "maps_rejected_charge": rules.stats["rejected_charge"],
        "generated": len(raw),
        "invalid": len(rejected),
        "valid": len(ranked),
        "examined": examined,
        "duplicates": len(dup_of),
        "capped": len(ranked) - examined,
        "returned": len(candidates),
    }
    return CandidateSet(list(elements), candidates, rejected, errors, stats_out, params)


def _check_options(sources: Sequence[str], max_candidates: int) -> None:
    """Raise ``ValueError`` for an unknown source or a negative cap."""
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown candidate source(s) {sorted(unknown)}; choose from {SOURCES}")
    if max_candidates < 0:
        raise ValueError("max_candidates must be >= 0")


def _gather_sources(
    sources: Sequence[str],
    max_sites: int,
    user_structures: Sequence[Structure | str | PathLike] | str | PathLike | None,
    errors: list[dict],
) -> tuple[list[_Source], int]:
    """The substitution templates (AFLOW prototypes first, then the user's) and how many are AFLOW's."""
    srcs: list[_Source] = []
    if "aflow" in sources:
        srcs += [_Source("aflow", p.id, p.structure, dict(p.tags)) for p in load_aflow_prototypes(max_sites)]
    n_aflow = len(srcs)
    if "user" in sources and user_structures is not None:
        srcs += _collect_user(user_structures, errors)
    return srcs, n_aflow


def _substitution_targets(elements: list[str], ionic: bool, table: SubstitutionTable) -> list[str]:
    """The target system's species: oxidation-state species in an ionic system, else the elements."""
    if ionic:
        return [str(sp) for el in elements for sp in target_species(el, table)]
    return list(elements)


@dataclass
class _MapRules:
    """What a substitution map is scored and filtered by, and the counts of maps rejected."""

    target_el: dict[str, str]  # target species -> its element
    want: set[str]  # the system's elements
    min_el: int  # fewest elements a candidate may have
    ionic: bool
    charge_neutral: bool
    table: SubstitutionTable
    stats: Counter = field(default_factory=Counter)

    def factor(self, skeys: list[str], i: int, t: str) -> float:
        """The score factor of source species ``skeys[i]`` replaced by target ``t`` (1 when kept)."""
        s = skeys[i]
        same_element = _element(s) == self.target_el[t]
        if s == t or (same_element and (s == _element(s) or t == _element(t))):
            return 1.0
        return self.table.cond_prob(s, t, cations_only=not self.ionic)

    def accept(self, skeys: list[str], counts: dict[str, int], own: set[str] | None, assign) -> bool:
        """Whether the map ``skeys -> assign`` passes the element and charge filters (counting rejections)."""
        target_el = self.target_el
        els = {target_el[t] for t in assign}
        as_given = own is not None and els == own and all(
            _element(s) == target_el[t] for s, t in zip(skeys, assign, strict=False)
        )
        if (len(els) < self.min_el and not as_given) or not els <= self.want:
            self.stats["rejected_elements"] += 1
            return False
        if self.ionic and self.charge_neutral:
            q = net_charge((counts[s], t) for s, t in zip(skeys, assign, strict=False))
            if q is None or abs(q) > 1e-6:
                formula = Composition(_merged(counts, skeys, assign, target_el)).reduced_formula
                if not _mixed_valence_balanced(formula):
                    self.stats["rejected_charge"] += 1
                    return False
        return True


def _source_maps(src: _Source, targets: list[str], rules: _MapRules, threshold: float,
                 injective: bool) -> list[dict]:
    """The accepted substitution maps of one source, each with its site keys, counts and score."""
    keys = _site_keys(src.structure, rules.ionic)
    counts = dict(sorted(Counter(keys).items()))
    skeys = list(counts)
    # a user's own structure is always a candidate as given (if inside the system), even
    # when it does not span every element; substitutions of it must span as usual
    src_els = {_element(k) for k in skeys}
    own = src_els if src.source == "user" and src_els <= rules.want else None
    if len(skeys) < rules.min_el and own is None:
        return []

    def factor(i, t):
        return rules.factor(skeys, i, t)

    def accept(assign):
        return rules.accept(skeys, counts, own, assign)

    return [
        {"src": src, "keys": keys, "counts": counts, "map": dict(zip(skeys, assign, strict=False)), "score": score}
        for assign, score in enumerate_maps(skeys, targets, factor, threshold, accept, injective=injective)
    ]


def _candidate_oxidation(counts: dict[str, int], mapping: dict[str, str], rules: _MapRules,
                         s: Structure) -> dict[str, float] | None:
    """Per-element average oxidation states of a candidate (None for an intermetallic)."""
    if not rules.ionic:
        return None
    tot: defaultdict[str, float] = defaultdict(float)
    num: Counter[str] = Counter()
    for k, n in counts.items():
        t = mapping[k]
        tot[rules.target_el[t]] += n * cast(float, Species.from_str(t).oxi_state)  # target species carry one
        num[rules.target_el[t]] += n
    oxi = {el: round(tot[el] / num[el], 6) for el in sorted(num)}
    if rules.charge_neutral and abs(sum(oxi[el] * num[el] for el in num)) > 1e-6:
        oxi = _balanced_oxidation(s.composition.reduced_formula)  # mixed valence (see filter)
    return oxi


def _built_candidate(r: dict, rules: _MapRules, chemsys: str) -> Structure | dict:
    """The candidate structure of map ``r`` with its properties, or the rejection record when invalid."""
    src, mapping = r["src"], r["map"]
    new_species = [rules.target_el[mapping[k]] for k in r["keys"]]
    s = Structure(src.structure.lattice, new_species, src.structure.frac_coords)
    f = _rls_factor(r["counts"], mapping)
    if abs(f - 1.0) > 1e-9:
        s.scale_lattice(s.volume * f**3)
    cid = candidate_id(s)
    problem = check_candidate(s, cid)
    if problem:
        return {"candidate_id": cid, "formula": s.composition.reduced_formula,
                "source_id": src.source_id, "reason": problem}
    oxi = _candidate_oxidation(r["counts"], mapping, rules, s)
    s.properties = {
        "candidate_id": cid,
        "label": cid,
        "role": "candidate",
        "chemsys": chemsys,
        "formula": s.composition.reduced_formula,
        "source": src.source,
        "source_id": src.source_id,
        "prototype": src.prototype,
        "substitution": dict(mapping),
        "score": float(r["score"]),
        "oxidation_states": oxi,
    }
    if src.source == "user":
        for key in ("source_file", "source_block", "read_warnings"):
            if src.structure.properties.get(key):
                s.properties[key] = src.structure.properties[key]
    return s
