"""Reading and writing reaction networks: TOML, JSON and SBML files, dictionaries, specs.

    load_network(path)          a .toml, .json, .xml or .sbml file -> ReactionNetwork
    save_network(net, path)     ReactionNetwork -> .toml, .json, .xml or .sbml file
    network_from_dict(d)        the file schema as a dict -> ReactionNetwork
    network_to_dict(net)        ReactionNetwork -> dict (JSON-ready, round-trips)
    resolve_network(spec)       "toggle_switch", "cascade:L=8", a file path, or an SBML path
                                with count limits "model.xml:P=200" -> ReactionNetwork
    load_sbml(path, limits)     SBML -> ReactionNetwork (needs python-libsbml)
    save_sbml(net, path)        ReactionNetwork -> SBML Level 3

The schema is documented in `nncme.io._dict`; examples/ holds annotated example files. What
SBML is read, its unit and rate conversions and count limits: `nncme.io.sbml`.
"""

from __future__ import annotations

from ._dict import network_from_dict, network_to_dict
from ._files import load_network, resolve_network, save_network
from .sbml import load_sbml, save_sbml

__all__ = [
    "load_network",
    "load_sbml",
    "network_from_dict",
    "network_to_dict",
    "resolve_network",
    "save_network",
    "save_sbml",
]
