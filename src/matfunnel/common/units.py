"""Unit conversions shared by every layer (the bottom of the package: it imports nothing of matfunnel)."""

from __future__ import annotations

#: 1 eV/A^3 in GPa
EV_A3_TO_GPA = 160.21766208
