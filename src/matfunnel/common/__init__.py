"""Pieces every layer shares, at the bottom of the package.

Units, structure coercion, errors, the embedded store and the result cache. Nothing here imports another
matfunnel package.
"""
