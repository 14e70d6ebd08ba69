"""pymatgen ``Structure.as_dict()`` documents without pymatgen's per-site work.

An engine writes two structure documents per input: the initial structure and the final one. pymatgen's
``as_dict`` builds the lattice's parameter dictionary once per *site* (then deletes it) and recomputes the
species' dictionaries and labels per site: about 1.3 ms for a 30-atom structure, and building a ``Structure``
at the final geometry first costs as much again. On a GPU that host time is a relaxation step's worth of
device time per structure, spent while the device waits.

:class:`SiteTable` takes what does not depend on the geometry (species entries, labels, charge, properties)
from a structure once; :meth:`SiteTable.initial` is then the structure's own ``as_dict()``, equal to it, and
:meth:`SiteTable.at` the document of the same sites at a new lattice and Cartesian positions.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Structure


class SiteTable:
    """The geometry-independent parts of ``structure.as_dict()`` (an ordered structure: one species per site)."""

    __slots__ = ("structure", "species", "labels", "charge", "constraints")

    def __init__(self, structure: Structure):
        self.structure = structure
        self.charge = structure.charge
        kinds: dict = {}
        species, labels = [], []
        for site in structure:
            comp = site.species
            if len(comp) != 1:
                raise ValueError("SiteTable needs an ordered structure (one species per site)")
            key = tuple(comp.items())  # (species, occupancy): equal species share one entry
            entry = kinds.get(key)
            if entry is None:
                entry = kinds[key] = (_species_entries(comp), site.species_string)
            species.append(entry[0])
            label = getattr(site, "_label", None)  # pymatgen's site.label: its own label, else the species string
            labels.append(entry[1] if label is None else label)
        self.species, self.labels = species, labels
        sd = structure.site_properties.get("selective_dynamics")
        #: per site, the properties the final structure keeps: constraints, which do not depend on the geometry
        self.constraints = None if sd is None else [
            {} if v is None else {"selective_dynamics": np.asarray(v).tolist()} for v in sd]

    def initial(self) -> dict:
        """``structure.as_dict()`` (equal to it, site properties included; dictionaries are fresh copies)."""
        s = self.structure
        lattice = s.lattice.as_dict(verbosity=1)
        del lattice["@module"], lattice["@class"]
        sites = [{"species": [dict(e) for e in sp], "abc": f, "properties": dict(site.properties), "label": lab,
                  "xyz": x}
                 for site, sp, lab, f, x in zip(s, self.species, self.labels, s.frac_coords.tolist(),
                                                s.cart_coords.tolist(), strict=True)]
        return self._doc(lattice, sites)

    def at(self, lattice: np.ndarray, cart: np.ndarray) -> dict:
        """The document of these sites at ``lattice`` (rows are vectors) and Cartesian ``cart`` positions.

        Equal to building the ``Structure`` there and calling ``as_dict`` (to rounding in the derived numbers:
        fractional coordinates, lattice parameters). Site properties are not carried over, since they describe the
        initial geometry (forces, magnetic moments), except ``selective_dynamics``: the constraint still holds.
        """
        lattice = np.asarray(lattice, dtype=float)
        cart = np.asarray(cart, dtype=float)
        frac = cart @ np.linalg.inv(lattice)
        abc = np.linalg.norm(lattice, axis=1)
        angles = []
        for i, j in ((1, 2), (0, 2), (0, 1)):
            c = float(np.dot(lattice[i], lattice[j]) / (abc[i] * abc[j]))
            angles.append(float(np.degrees(np.arccos(max(-1.0, min(1.0, c))))))
        lat = {"matrix": lattice.tolist(), "pbc": (True, True, True), "a": float(abc[0]), "b": float(abc[1]),
               "c": float(abc[2]), "alpha": angles[0], "beta": angles[1], "gamma": angles[2],
               "volume": float(abs(np.linalg.det(lattice)))}
        props = self.constraints or [{}] * len(self.labels)
        sites = [{"species": [dict(e) for e in sp], "abc": f, "properties": dict(p), "label": lab, "xyz": x}
                 for sp, lab, f, x, p in zip(self.species, self.labels, frac.tolist(), cart.tolist(), props,
                                             strict=False)]
        return self._doc(lat, sites)

    def _doc(self, lattice: dict, sites: list) -> dict:
        s = self.structure
        return {"@module": type(s).__module__, "@class": type(s).__name__, "charge": self.charge,
                "lattice": lattice, "properties": dict(s.properties), "sites": sites}


def _species_entries(comp) -> list[dict]:
    """A site's ``species`` entries as ``PeriodicSite.as_dict`` writes them."""
    out = []
    for sp, occu in comp.items():
        d = sp.as_dict()
        del d["@module"], d["@class"]
        d["occu"] = occu
        out.append(d)
    return out


def structure_dict(template: Structure | SiteTable, lattice: np.ndarray, cart: np.ndarray) -> dict:
    """``template``'s sites at a new lattice and Cartesian positions, as ``Structure.as_dict()`` would write them."""
    table = template if isinstance(template, SiteTable) else SiteTable(template)
    return table.at(lattice, cart)


def initial_dict(structure) -> dict:
    """``structure.as_dict()`` (fast path for an ordered structure), ``{}`` for anything that is not a Structure."""
    if not isinstance(structure, Structure):
        return {}
    try:
        return SiteTable(structure).initial()
    except ValueError:  # disordered: pymatgen's own
        return structure.as_dict()


__all__ = ["SiteTable", "initial_dict", "structure_dict"]
