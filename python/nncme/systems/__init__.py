"""The catalogue of built-in reaction networks (DESIGN section 5).

Each system is a function of keyword parameters with documented defaults that returns a
`ReactionNetwork`; its docstring and the network's `description`, `source` and `parameters`
state where the parameters come from, the propensity convention, the count limits and the time
grid. Use:

    >>> import nncme.systems as systems
    >>> systems.names()[:3]
    ['birth_death', 'birth_death_sinusoidal', 'toggle_switch']
    >>> net = systems.get("cascade", L=8)
    >>> name, params = systems.parse_spec("autoregulation:parameter_set=2")
    >>> name, params
    ('autoregulation', {'parameter_set': '2'})
    >>> systems.get(name, **params).parameters["rho_b"]
    40.6

Parameters given as text (from the command line or a spec such as "cascade:L=8") are converted
to the type of the parameter's default.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..network import NetworkError, ReactionNetwork
from .autoregulation import autoregulation
from .birth_death import birth_death
from .birth_death_sinusoidal import birth_death_sinusoidal
from .cascade import cascade
from .mapk import RATES as MAPK_RATES
from .mapk import mapk
from .reaction_diffusion import reaction_diffusion
from .schlogl import schlogl
from .self_replicator import self_replicator
from .sirs import sirs
from .toggle_switch import toggle_switch

__all__ = [
    "SystemEntry",
    "autoregulation",
    "birth_death",
    "birth_death_sinusoidal",
    "cascade",
    "catalogue",
    "defaults",
    "get",
    "mapk",
    "names",
    "parse_spec",
    "reaction_diffusion",
    "schlogl",
    "self_replicator",
    "sirs",
    "toggle_switch",
]

_BUILDERS: dict[str, Callable[..., ReactionNetwork]] = {
    "birth_death": birth_death,
    "birth_death_sinusoidal": birth_death_sinusoidal,
    "toggle_switch": toggle_switch,
    "schlogl": schlogl,
    "autoregulation": autoregulation,
    "cascade": cascade,
    "sirs": sirs,
    "self_replicator": self_replicator,
    "mapk": mapk,
    "reaction_diffusion": reaction_diffusion,
}

# Keyword-only extras a builder takes through **kwargs: name -> default.
_EXTRA_PARAMETERS: dict[str, dict[str, Any]] = {"mapk": dict(MAPK_RATES)}


@dataclass(frozen=True)
class SystemEntry:
    """One catalogue entry.

    Attributes:
        name: the catalogue name (`get(name)`).
        description: one line.
        species, reactions: L and K at the default parameters.
        parameters: parameter name -> default value.
    """

    name: str
    description: str
    species: int
    reactions: int
    parameters: dict[str, Any]


def names() -> list[str]:
    """The catalogue's system names, in catalogue order."""
    return list(_BUILDERS)


def _builder(name: str) -> Callable[..., ReactionNetwork]:
    try:
        return _BUILDERS[name]
    except KeyError:
        hint = (
            _did_you_mean(name, list(_BUILDERS)) or f"; the catalogue has: {', '.join(_BUILDERS)}"
        )
        raise NetworkError(f"unknown system {name!r}{hint}") from None


def _did_you_mean(word: str, choices: list[str]) -> str:
    """The hint "; did you mean 'x'?" for the choice closest to a misspelt name (case aside).

    Empty when no choice is close.
    """
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def _signature(name: str) -> dict[str, inspect.Parameter]:
    params = inspect.signature(_builder(name)).parameters
    return {k: p for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}


def defaults(name: str) -> dict[str, Any]:
    """Parameter name -> default value of system `name`."""
    out = {k: p.default for k, p in _signature(name).items()}
    out.update(_EXTRA_PARAMETERS.get(name, {}))
    return out


def _coerce(name: str, key: str, value: Any, default: Any, annotation: str) -> Any:
    """Convert text to the parameter's type (taken from its default or annotation)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() == "none":
        return None
    if "str" in annotation:  # the builder parses its own text (e.g. a lattice shape)
        return text
    try:
        if isinstance(default, bool) or annotation == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int) or (
            default is None and "int" in annotation and "float" not in annotation
        ):
            as_float = float(text)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        if isinstance(default, float) or (default is None and "float" in annotation):
            return float(text)
    except ValueError:
        kind = "true/false" if isinstance(default, bool) else type(default).__name__
        if default is None:
            kind = annotation.replace(" | None", "")
        raise NetworkError(f"{name}: parameter {key}: expected {kind}, got {value!r}") from None
    return text


def get(name: str, **params: Any) -> ReactionNetwork:
    """Build catalogue system `name` with the given parameters (defaults for the others).

    Args:
        name: a catalogue name (see `names()`).
        **params: parameters of that system; text values are converted to the parameter's
            type, so `get("cascade", L="8")` works.

    Raises:
        NetworkError: unknown system or parameter, a value of the wrong type, or an invalid
            network; the message names the system and the parameter.
    """
    sig = _signature(name)
    extra = _EXTRA_PARAMETERS.get(name, {})
    converted = {}
    for key, value in params.items():
        if key in sig:
            p = sig[key]
            annotation = p.annotation if isinstance(p.annotation, str) else str(p.annotation)
            converted[key] = _coerce(name, key, value, p.default, annotation)
        elif key in extra:
            converted[key] = _coerce(name, key, value, extra[key], "float")
        else:
            known = [*sig, *extra]
            hint = _did_you_mean(key, known) or f"; parameters: {', '.join(known)}"
            raise NetworkError(f"{name}: unknown parameter {key!r}{hint}")
    try:
        return _builder(name)(**converted)
    except NetworkError:
        raise
    except (TypeError, ValueError) as exc:  # a value of a type the builder cannot use
        raise NetworkError(f"{name}: {exc}") from None


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split "name" or "name:key=value,key=value" into the name and its text parameters.

    A value may itself hold commas only inside brackets, e.g. "reaction_diffusion:shape=4x4".
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    params: dict[str, str] = {}
    if rest.strip():
        for item in _split_top_level(rest):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise NetworkError(
                    f"{spec!r}: parameters must be key=value pairs separated by commas, "
                    f"got {item!r}"
                )
            params[key.strip()] = value.strip()
    return name, params


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in (s.strip() for s in items) if item]


@cache
def _default_size(name: str) -> tuple[int, int, str]:
    net = get(name)
    return net.L, net.K, net.description


def catalogue() -> list[SystemEntry]:
    """Every system with its one-line description, L and K at defaults, and parameters."""
    out = []
    for name in _BUILDERS:
        L, K, description = _default_size(name)
        out.append(SystemEntry(name, description, L, K, defaults(name)))
    return out
