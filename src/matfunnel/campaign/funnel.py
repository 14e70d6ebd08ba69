"""The whole funnel as one composed jobflow maker.

:class:`FunnelMaker` holds one maker per stage; each stage's logic lives in its own package and the
stages pass typed documents (:mod:`matfunnel.common.documents`)::

    candidates -> relax (batched) -> references -> hull -> [phonon gate] -> DFT gate -> report

Swap a stage by changing a field, e.g. ``dataclasses.replace(funnel, dft_gate=DftGateMaker(engine="vasp"))``.
``matfunnel run`` and ``matfunnel submit`` both build it with :meth:`FunnelMaker.from_spec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jobflow import Flow, Job, Maker

from matfunnel.campaign.loop import LOOP_TRAIN_DEFAULTS, LoopMaker, loop_round
from matfunnel.campaign.report import ReportMaker
from matfunnel.campaign.spec import CampaignSpec, SpecError
from matfunnel.candidates.chemsys import parse_chemsys
from matfunnel.candidates.maker import CandidatesMaker, ReferencesMaker
from matfunnel.dft.gate import DftGateMaker
from matfunnel.hull.maker import HullMaker
from matfunnel.makers.relax import BatchedRelaxMaker, RelaxMaker
from matfunnel.phonons.gate import PhononGateMaker
from matfunnel.potential import DEFAULT_POTENTIAL, UnknownPotential, check_potential_name
from matfunnel.train.maker import FineTuneMaker


@dataclass
class FunnelMaker(Maker):
    """Candidates -> batched MLIP relaxation -> hull -> optional phonon gate -> DFT gate -> report.

    Parameters
    ----------
    name
        The campaign's name (the flow is ``"matfunnel <name>"``).
    candidates
        Generates the candidates.
    relax
        Relaxes the candidates (and, through ``references.relax``, the competing phases).
    references
        The hull's references (Materials Project, or competing phases relaxed here).
    hull
        Energies above the hull.
    phonon_gate
        Optional: dynamically unstable candidates skip DFT.
    dft_gate
        Which candidates go to DFT, and the DFT hull.
    report
        The table, JSON and hull plot.
    loop
        Optional rounds of fine-tuning on the DFT results and re-screening (:mod:`matfunnel.campaign.loop`).
    """

    name: str = "campaign"
    candidates: CandidatesMaker = field(default_factory=CandidatesMaker)
    relax: BatchedRelaxMaker = field(default_factory=lambda: BatchedRelaxMaker(name="relax candidates"))
    references: ReferencesMaker = field(default_factory=ReferencesMaker)
    hull: HullMaker = field(default_factory=lambda: HullMaker(model=DEFAULT_POTENTIAL))
    phonon_gate: PhononGateMaker = field(default_factory=PhononGateMaker)
    dft_gate: DftGateMaker = field(default_factory=DftGateMaker)
    report: ReportMaker = field(default_factory=lambda: ReportMaker(potential=DEFAULT_POTENTIAL))
    loop: LoopMaker = field(default_factory=LoopMaker)

    @classmethod
    def from_spec(cls, spec: CampaignSpec, out_dir: str | None = None,
                  result_cache: str | None = None) -> FunnelMaker:
        """The funnel of a campaign spec.

        Parameters
        ----------
        spec
            The parsed spec (checked here: chemical system and potential name).
        out_dir
            Where the report files go (None: the report job's folder).
        result_cache
            SQLite file of finished relaxations and DFT runs, reused on a rerun (None:
            ``MATFUNNEL_RESULT_CACHE`` where set, e.g. on FireWorks workers).
        """
        spec = resolve(spec)
        pot = spec.potential
        model: str = pot.name or DEFAULT_POTENTIAL  # resolve() has filled it in
        relax = RelaxMaker(name="candidates relax", potential=model, potential_kwargs=dict(pot.kwargs),
                           device=pot.device, fmax=spec.relax.fmax, max_steps=spec.relax.max_steps,
                           relax_cell=spec.relax.relax_cell, optimizer=spec.relax.optimizer,
                           optimizer_config=dict(spec.relax.optimizer_config), result_cache=result_cache,
                           committee_relax=spec.relax.committee_relax)
        batched = BatchedRelaxMaker(name="relax candidates", relax=relax, batch_size=spec.relax.batch_size)
        c, h, d = spec.candidates, spec.hull, spec.dft
        return cls(
            name=spec.name,
            candidates=CandidatesMaker(sources=list(c.sources), structures=spec.structure_paths(),
                                       max_candidates=c.max_candidates, max_sites=c.max_sites,
                                       charge_neutral=c.charge_neutral),
            relax=batched,
            references=ReferencesMaker(references=h.references, competing_max_sites=h.competing_max_sites,
                                       relax=batched),
            hull=HullMaker(model=model, cache_dir=spec.cache_dir_path()),
            phonon_gate=PhononGateMaker.from_options(spec.phonons, model, pot.device, pot.kwargs),
            dft_gate=DftGateMaker(engine=d.engine, threshold=d.threshold, max_candidates=d.max_candidates,
                                  max_sites=d.max_sites, preset=d.preset, settings=dict(d.settings),
                                  result_cache=result_cache, rule=d.rule, k=d.k, min_probability=d.min_probability),
            report=ReportMaker(campaign=spec.name, potential=model, out_dir=out_dir),
            loop=LoopMaker(rounds=spec.loop.rounds, budget=spec.loop.budget, fine_tune=FineTuneMaker(
                base=model, settings={**LOOP_TRAIN_DEFAULTS, **spec.loop.fine_tune}, val_fraction=0.0,
                require=["forces"], root=str(Path(out_dir or ".").resolve() / "fine-tune"))),
        )

    def make(self, chemsys: str) -> Flow:
        """The funnel's flow for ``chemsys`` (``"Al-Li"``); its output is the report."""
        cands = self.candidates.make(chemsys)
        relaxed = self.relax.make(cands.output.structures, cands.output.ids, "candidates")
        refs = self.references.make(chemsys)
        hull = self.hull.make(relaxed.output, refs.output, chemsys)
        phonons = self.phonon_gate.make(relaxed.output, hull.output)
        dft = self.dft_gate.make(relaxed.output, hull.output, phonons.output, chemsys)
        report = self.report.make(cands.output, relaxed.output, hull.output, dft.output, phonons.output)
        for j in (relaxed, refs):
            j.update_metadata({"category": "gpu"}, dynamic=False)
        jobs: list[Flow | Job] = [cands, relaxed, refs, hull, phonons, dft, report]
        if self.loop.rounds > 0:
            # after the first report (so that it exists even when a later round fails)
            rounds = loop_round(self, self.loop, 1, cands.output, [dft.output], [hull.output], [relaxed.output],
                                phonons.output, [], chemsys, after=report.output)
            jobs.append(rounds)
            return Flow(jobs, output=rounds.output, name=f"matfunnel {self.name}")
        return Flow(jobs, output=report.output, name=f"matfunnel {self.name}")


def resolve(spec: CampaignSpec) -> CampaignSpec:
    """Fill run-time defaults (the potential name) and check the spec before any work."""
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


def build_flow(spec: CampaignSpec, out_dir: str | None = None, result_cache: str | None = None) -> Flow:
    """The campaign's flow: ``FunnelMaker.from_spec(spec, ...).make(spec.chemsys)``."""
    funnel = FunnelMaker.from_spec(spec, out_dir=out_dir, result_cache=result_cache)
    return funnel.make(spec.chemsys)
