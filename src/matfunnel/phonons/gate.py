"""The optional phonon gate of a campaign: dynamically unstable candidates do not go to DFT.

After the hull, candidates within ``phonons.threshold`` eV/atom of the hull (at most
``phonons.max_candidates``, lowest first) get an MLIP phonon check (:class:`PhononMaker`, a "gpu"
job). :func:`phonon_gate_job` returns::

    {"enabled": bool, "decisions": {candidate id: "stable" | "unstable: <reason>" | "skipped: <why>"},
     "results": [compact phonon documents]}

and :func:`unstable_ids` gives the candidates the DFT gate must drop. Spec section (YAML)::

    phonons:
      enabled: true
      threshold: 0.05        # eV/atom above hull
      max_candidates: 10
      min_length: 12.0       # Angstrom, supercell width
      max_supercell_atoms: 400
      relax: true            # tight symmetric relaxation first (fmax 0.005 eV/A)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from jobflow import Flow, Response, job

from matfunnel.phonons.stability import IMAGINARY_TOL

#: document keys kept in the gate's output (band/DOS arrays stay out of the campaign report)
COMPACT_KEYS = ("label", "formula", "potential", "supercell_matrix", "n_supercell_atoms", "n_displacements",
                "free_energy_300k", "entropy_300k", "heat_capacity_300k", "omega_max_thz", "omega_max_k",
                "min_frequency_thz", "dynamically_stable", "stability", "relaxation", "wall_time", "error")


@dataclass
class PhononGateOptions:
    enabled: bool = False
    threshold: float = 0.05  # eV/atom above hull
    max_candidates: int = 10
    min_length: float = 12.0  # Angstrom
    max_supercell_atoms: int = 400
    displacement: float = 0.01  # Angstrom
    relax: bool = True
    relax_fmax: float = 0.005  # eV/A
    imaginary_tol: float = IMAGINARY_TOL  # THz
    mesh: float = 50.0  # phonopy mesh length (a gate needs the sign of the frequencies, not converged S/F)

    @classmethod
    def from_spec(cls, spec: dict) -> "PhononGateOptions":
        d = spec.get("phonons") or {}
        if not isinstance(d, dict):
            d = asdict(d)
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise ValueError(f"unknown key(s) {sorted(bad)} in section 'phonons'; known: {sorted(known)}")
        return cls(**d)


def select_for_phonons(candidate_docs: list, hull: dict, opts: PhononGateOptions) -> tuple[list[str], dict]:
    """Ids that get a phonon check (lowest e_above_hull first) and the reasons for the others."""
    rows = {r["entry_id"]: r for r in hull.get("rows", [])}
    skipped, eligible = {}, []
    for d in candidate_docs:
        cid = d["label"]
        row = rows.get(cid)
        if row is None or row.get("e_above_hull") is None or d.get("final_structure") is None:
            skipped[cid] = "skipped: no hull energy"
        elif row["e_above_hull"] > opts.threshold:
            skipped[cid] = f"skipped: above phonon threshold ({row['e_above_hull']:.3f} > {opts.threshold} eV/atom)"
        else:
            eligible.append((row["e_above_hull"], cid))
    eligible.sort()
    chosen = [cid for _, cid in eligible[: opts.max_candidates]]
    for _, cid in eligible[opts.max_candidates:]:
        skipped[cid] = f"skipped: beyond phonons.max_candidates={opts.max_candidates}"
    return chosen, skipped


def verdict(doc: dict) -> str:
    if doc.get("dynamically_stable") is None:
        return f"skipped: phonon check failed ({doc.get('error')})"
    if doc["dynamically_stable"]:
        return "stable"
    return f"unstable: {doc['stability']['reason']}"


def unstable_ids(gate_output: dict | None) -> dict[str, str]:
    """``{candidate id: decision}`` for the candidates found dynamically unstable (to drop from DFT)."""
    if not gate_output or not gate_output.get("enabled"):
        return {}
    return {cid: dec for cid, dec in gate_output["decisions"].items() if dec.startswith("unstable")}


@job(name="phonon gate")
def phonon_gate_job(candidate_docs: list, hull: dict, spec: dict):
    """Phonon-check the candidates near the hull (a dynamic jobflow Response)."""
    from matfunnel.makers.phonon import PhononMaker
    from matfunnel.potential import DEFAULT_POTENTIAL

    opts = PhononGateOptions.from_spec(spec)
    if not opts.enabled:
        return {"enabled": False, "decisions": {}, "results": []}
    chosen, skipped = select_for_phonons(candidate_docs, hull, opts)
    if not chosen:
        return {"enabled": True, "decisions": skipped, "results": []}
    pot = spec.get("potential") or {}
    maker = PhononMaker(potential=pot.get("name") or DEFAULT_POTENTIAL, device=pot.get("device", "cpu"),
                        potential_kwargs=dict(pot.get("kwargs") or {}),
                        relax=opts.relax, relax_fmax=opts.relax_fmax, displacement=opts.displacement,
                        min_length=opts.min_length, max_supercell_atoms=opts.max_supercell_atoms,
                        imaginary_tol=opts.imaginary_tol, mesh=opts.mesh, band_npoints=21, dos_points=101)
    structures = {d["label"]: d["final_structure"] for d in candidate_docs}
    j = maker.make([structures[c] for c in chosen], chosen)
    j.name = "phonons"
    j.metadata = {**(j.metadata or {}), "category": "gpu"}
    collect = phonon_verdicts_job(j.output, skipped)
    return Response(replace=Flow([j, collect], output=collect.output, name="phonon gate"))


@job(name="phonon verdicts")
def phonon_verdicts_job(docs: list, skipped: dict) -> dict:
    decisions = dict(skipped)
    for d in docs:
        decisions[d["label"]] = verdict(d)
    return {"enabled": True, "decisions": decisions,
            "results": [{k: d.get(k) for k in COMPACT_KEYS} for d in docs]}


def phonon_gate(candidate_docs: list, hull: dict, spec: dict) -> dict:
    """The gate run in-process, without jobflow (for scripts and notebooks)."""
    from matfunnel.makers.phonon import PhononMaker
    from matfunnel.potential import DEFAULT_POTENTIAL, load_potential

    opts = PhononGateOptions.from_spec(spec)
    chosen, decisions = select_for_phonons(candidate_docs, hull, opts)
    pot_opts = spec.get("potential") or {}
    name, device = pot_opts.get("name") or DEFAULT_POTENTIAL, pot_opts.get("device", "cpu")
    maker = PhononMaker(potential=name, device=device, potential_kwargs=dict(pot_opts.get("kwargs") or {}), relax=opts.relax, relax_fmax=opts.relax_fmax,
                        displacement=opts.displacement, min_length=opts.min_length,
                        max_supercell_atoms=opts.max_supercell_atoms, imaginary_tol=opts.imaginary_tol,
                        mesh=opts.mesh, band_npoints=21, dos_points=101)
    structures = {d["label"]: d["final_structure"] for d in candidate_docs}
    pot = load_potential(name, device, **(pot_opts.get("kwargs") or {}))
    from pymatgen.core import Structure

    docs = [maker.run_one(Structure.from_dict(structures[c]), c, pot).as_dict() for c in chosen]
    for d in docs:
        decisions[d["label"]] = verdict(d)
    return {"enabled": True, "decisions": decisions, "results": [{k: d.get(k) for k in COMPACT_KEYS} for d in docs]}
