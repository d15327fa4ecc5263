"""Network files (TOML, JSON, SBML) and the one resolver of network specifications."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..network import NetworkError, ReactionNetwork
from ..paths import atomic_write, check_input_file, check_output_file
from ._dict import network_from_dict, network_to_dict
from .sbml import SBML_SUFFIXES, load_sbml, save_sbml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_network", "resolve_network", "save_network"]

SUFFIXES = (".toml", ".json", *SBML_SUFFIXES)
# An SBML file with count limits appended: "model.xml:P=200,M=60,default_limit=100".
SBML_SPEC = re.compile(r"(?P<path>.+?\.(?:xml|sbml)):(?P<limits>.*)\Z", re.IGNORECASE)


def load_network(path: str | Path) -> ReactionNetwork:
    """Read a network from a .toml or .json file (schema: `nncme.io._dict`) or from SBML
    (.xml, .sbml; `nncme.io.sbml`, which needs the count limits in the file or given to
    `load_sbml` or `resolve_network`).

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: no such file, a directory, or
            a file that cannot be read.
        NetworkError: unreadable file or invalid network; the message starts with the file
            name and names the offending field, e.g. ``net.toml: reactions[2].rate: ...``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES and not path.is_dir():  # a directory: check_input_file says so
        raise NetworkError(f"{path}: unknown file type {suffix!r}; use {', '.join(SUFFIXES)}")
    check_input_file(path, "network file")
    if suffix in SBML_SUFFIXES:
        return load_sbml(path)
    try:
        if suffix == ".toml":
            with path.open("rb") as f:
                data = tomllib.load(f)
        else:
            with path.open(encoding="utf-8") as f:
                data = json.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise NetworkError(f"{path}: invalid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise NetworkError(f"{path}: invalid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise NetworkError(f"{path}: not a text file: {exc}") from None
    try:
        return network_from_dict(data)
    except NetworkError as exc:
        raise NetworkError(f"{path}: {exc}") from None


def save_network(network: ReactionNetwork, path: str | Path) -> Path:
    """Write a network to .json, .toml or SBML (.xml, .sbml; read back by `load_network`).

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise NetworkError(f"{path}: unknown file type {suffix!r}; use {', '.join(SUFFIXES)}")
    check_output_file(path, "network file")
    if suffix in SBML_SUFFIXES:
        return save_sbml(network, path)
    d = network_to_dict(network)
    bad = [r["name"] for r in d["reactions"] if "propensity" in r or isinstance(r.get("rate"), str)]
    if bad:
        raise NetworkError(
            f"reaction {bad[0]!r}: its rate or propensity is a Python callable and cannot be "
            "written to a file"
        )
    text = json.dumps(d, indent=2) + "\n" if suffix == ".json" else _to_toml(d)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fh.write(text)
    return path


def resolve_network(spec: str | Path) -> ReactionNetwork:
    """A network from a catalogue spec or a file path.

    Args:
        spec: a catalogue name with optional parameters ("toggle_switch", "cascade:L=8",
            "autoregulation:parameter_set=2", "reaction_diffusion:shape=4x4,kinetics=
            birth_death"), a path to a .toml/.json/.xml/.sbml network file, or an SBML path
            with count limits appended ("model.xml:P=200,M=60", "model.xml:default_limit=100":
            species id -> limit, counts 0..limit-1; see `nncme.io.sbml.load_sbml`).

    Raises:
        NetworkError: unknown system or parameter, invalid file or network.
        FileNotFoundError: a path to a missing file.
        IsADirectoryError: a path to a directory.
    """
    from .. import systems  # systems build networks; io must not import them at load time

    text = str(spec)
    sbml = SBML_SPEC.match(text) if not isinstance(spec, Path) else None
    if sbml is not None:
        limits = _limits(sbml["limits"], text)
        default = limits.pop("default_limit", None)
        return load_sbml(sbml["path"], limits, default_limit=default)
    if isinstance(spec, Path) or text.lower().endswith(SUFFIXES):
        return load_network(text)
    name, params = systems.parse_spec(text)
    if name not in systems.names():
        if Path(text).exists():  # another suffix, or a directory: load_network says which
            return load_network(text)
        if "/" in name or "." in name:
            raise FileNotFoundError(f"no such network file or catalogue system: {text}")
    return systems.get(name, **params)


def _limits(text: str, spec: str) -> dict[str, int]:
    """The count limits appended to an SBML path: "P=200,M=60" -> {"P": 200, "M": 60}."""
    out = {}
    for item in (s.strip() for s in text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip().isdigit() or int(value) < 1:
            raise NetworkError(
                f"{spec}: count limits after the file name must be SPECIES=LIMIT pairs (whole "
                f"numbers >= 1) separated by commas, got {item!r}"
            )
        out[key.strip()] = int(value)
    return out


# ------------------------------------------------------------------------------ TOML writing
def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "_-" for c in key):
        return key
    return json.dumps(key)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        items = [(k, x) for k, x in v.items() if x is not None]
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in items) + "}"
    raise NetworkError(f"cannot write {type(v).__name__} value {v!r} to TOML")


def _to_toml(d: Mapping[str, Any]) -> str:
    lines = ["# nncme reaction network (schema: nncme.io); edit and load with nncme.io"]
    for key in ("name", "description", "source", "convention", "t_end", "dt"):
        if d.get(key) not in (None, ""):
            lines.append(f"{key} = {_toml_value(d[key])}")
    laws = d.get("conservation")
    if laws is not None and not laws:
        lines.append("conservation = []  # declared: the network has no conservation law")
    lines.append("")
    lines.append("[species]  # name = {limit (counts 0..limit-1), initial}")
    initial = d.get("initial", {})
    for sp, limit in d["species"].items():
        lines.append(
            f"{_toml_key(sp)} = {{limit = {int(limit)}, initial = {int(initial.get(sp, 0))}}}"
        )
    for r in d["reactions"]:
        lines.append("")
        lines.append("[[reactions]]")
        for key in ("name", "reactants", "products", "rate", "convention", "hill", "complement"):
            if key in r and r[key] not in (None, {}):
                lines.append(f"{key} = {_toml_value(r[key])}")
    for law in laws or []:
        lines.append("")
        lines.append("[[conservation]]")
        lines.extend(f"{_toml_key(sp)} = {int(w)}" for sp, w in law.items())
    params = {k: v for k, v in d.get("parameters", {}).items() if v is not None}
    if params:
        lines.append("")
        lines.append("[parameters]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in params.items())
    return "\n".join(lines) + "\n"
