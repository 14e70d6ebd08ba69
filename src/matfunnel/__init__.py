"""matfunnel: a high-throughput materials-discovery funnel.

Stages (data flows one way): potential -> engine -> makers -> candidates / hull / dft /
phonons / benchmark -> campaign -> cli.
"""

__version__ = "0.1.0"
