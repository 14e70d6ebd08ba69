"""Campaigns: a YAML spec -> :class:`FunnelMaker` -> a jobflow Flow through the whole funnel -> a report.

This package only wires the stages together (each stage's logic lives in its own package) and does the
I/O: specs, the run folder, the report files, FireWorks submission.
"""

from matfunnel.campaign.funnel import FunnelMaker, build_flow
from matfunnel.campaign.spec import CampaignSpec, load_spec

__all__ = ["CampaignSpec", "FunnelMaker", "build_flow", "load_spec"]
