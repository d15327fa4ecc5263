"""Reading and writing reaction networks: TOML and JSON files, dictionaries, specs.

    load_network(path)          a .toml or .json file -> ReactionNetwork
    save_network(net, path)     ReactionNetwork -> .toml or .json file
    network_from_dict(d)        the file schema as a dict -> ReactionNetwork
    network_to_dict(net)        ReactionNetwork -> dict (JSON-ready, round-trips)
    resolve_network(spec)       "toggle_switch", "cascade:L=8" or a file path -> ReactionNetwork

The schema is documented in `nncme.io._dict`; examples/ holds annotated example files.
"""

from __future__ import annotations

from ._dict import network_from_dict, network_to_dict
from ._files import load_network, resolve_network, save_network

__all__ = [
    "load_network",
    "network_from_dict",
    "network_to_dict",
    "resolve_network",
    "save_network",
]
