"""Build the funnel of a campaign as one jobflow ``Flow``."""

from __future__ import annotations

from jobflow import Flow

from matfunnel.campaign import jobs
from matfunnel.campaign.spec import CampaignSpec, SpecError
from matfunnel.phonons.gate import phonon_gate_job
from matfunnel.potential import DEFAULT_POTENTIAL, UnknownPotential, check_potential_name


def resolve(spec: CampaignSpec) -> CampaignSpec:
    """Fill run-time defaults (the potential name) and check the spec before any work."""
    from matfunnel.candidates import parse_chemsys

    try:
        elements = parse_chemsys(spec.chemsys)
    except ValueError as exc:
        raise SpecError(f"campaign {spec.name!r}: {exc}") from exc
    spec.chemsys = "-".join(elements)
    spec.potential.name = spec.potential.name or DEFAULT_POTENTIAL
    try:
        check_potential_name(spec.potential.name)
    except UnknownPotential as exc:
        raise SpecError(f"campaign {spec.name!r}: {exc}") from exc
    return spec


def build_flow(spec: CampaignSpec, out_dir: str | None = None) -> Flow:
    """candidates -> relax (batched) -> references -> hull -> [phonon gate] -> DFT gate -> report."""
    spec = resolve(spec)
    d = spec.as_dict()
    cands = jobs.candidates_job(d)
    relaxed = jobs.relax_candidates_job(cands.output, d)
    refs = jobs.references_job(d)
    hull = jobs.hull_job(relaxed.output, refs.output, d)
    phon = phonon_gate_job(relaxed.output, hull.output, d)
    dft = jobs.dft_gate_job(relaxed.output, hull.output, d, phon.output)
    report = jobs.report_job(cands.output, relaxed.output, hull.output, dft.output, d, out_dir, phon.output)
    for j in (relaxed, refs):
        j.metadata = {**(j.metadata or {}), "category": "gpu"}
    return Flow([cands, relaxed, refs, hull, phon, dft, report], output=report.output, name=f"matfunnel {spec.name}")
