"""Campaigns: a YAML spec -> a jobflow Flow through the whole funnel -> a report."""

from matfunnel.campaign.spec import CampaignSpec, load_spec

__all__ = ["CampaignSpec", "load_spec"]
