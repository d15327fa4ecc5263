"""Networks as plain dictionaries (the schema of TOML and JSON network files).

Schema (keys not listed are errors, so typos are caught):

    name = "gene_expression"            # optional
    description = "..."                  # optional
    source = "..."                       # optional, where the parameters come from
    convention = "falling"               # falling | binomial | power (default falling)
    t_end = 10.0                         # time span (default 1)
    dt = 0.001                           # VAN step (default 0.01)
    species = {G = {limit = 2, initial = 1}, P = 60}   # name -> limit or {limit, initial}
    initial = {P = 5}                    # optional, initial counts (default 0)
    [[reactions]]
    name = "production"                  # optional
    reactants = {G = 1}                  # species -> count consumed (optional)
    products = {G = 1, P = 1}            # species -> count produced (optional)
    rate = 10.0                          # a number, or a named form (below)
    convention = "binomial"              # optional: this reaction's own mass-action convention
    hill = {regulator = "P", K = 20.0, n = 2.0, kind = "repression"}   # optional; or a list
    complement = {species = "G_b", total = 3, order = 1}   # optional factor f(total - G_b);
                                         #   or a list; total >= limit of G_b minus 1
    [[conservation]]                     # optional: declared laws (omit to detect them;
    G = 1                                #   `conservation = []` declares there are none)
    total = 1                            # optional, must match the initial state
    parameters = {...}                   # optional, free-form record of the parameters

Rate forms (times in the rates' time unit, rates in 1/time):

    {form = "sinusoidal", c, a, omega, phi = 0}        c (1 + a sin(omega t + phi)), |a| <= 1
    {form = "piecewise_constant", breakpoints = [t1, .., tm], values = [v0, .., vm]}
                                         v0 before t1, v_j from t_j on (m + 1 values)
    {form = "exponential", c0, tau, c_inf = 0}          c_inf + (c0 - c_inf) exp(-t / tau)
    {form = "table", times = [..], values = [..]}       linear between the points, constant
                                                        outside

Species may also be a list of tables {name, limit, initial}. Every error names the field by
its path, e.g. ``reactions[2].rate: must be finite and >= 0, got -1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..network import (
    CONVENTIONS,
    RATE_FORMS,
    Complement,
    Hill,
    NetworkError,
    RateForm,
    Reaction,
    ReactionNetwork,
)

__all__ = ["network_from_dict", "network_to_dict"]

TOP_KEYS = (
    "name",
    "description",
    "source",
    "convention",
    "t_end",
    "dt",
    "species",
    "initial",
    "reactions",
    "conservation",
    "parameters",
)
REACTION_KEYS = ("name", "reactants", "products", "rate", "convention", "hill", "complement")
HILL_KEYS = ("regulator", "K", "n", "kind")
COMPLEMENT_KEYS = ("species", "total", "order")
# form -> (required keys, optional keys); the keys are the fields of the form's class
RATE_FORM_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sinusoidal": (("c", "a", "omega"), ("phi",)),
    "piecewise_constant": (("breakpoints", "values"), ()),
    "exponential": (("c0", "tau"), ("c_inf",)),
    "table": (("times", "values"), ()),
}
LIST_KEYS = ("breakpoints", "times", "values")  # lists of numbers; the other keys are numbers


def _unknown(d: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    extra = [k for k in d if k not in allowed]
    if extra:
        at = f"{where}: " if where else ""
        raise NetworkError(f"{at}unknown key {extra[0]!r}; expected one of {', '.join(allowed)}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise NetworkError(f"{where}: expected a table (mapping), got {type(value).__name__}")
    return value


def _number(value: Any, where: str, *, positive: bool = False, finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NetworkError(f"{where}: must be a number, got {value!r}")
    v = float(value)
    if finite and not math.isfinite(v):
        raise NetworkError(f"{where}: must be finite, got {value!r}")
    if positive and v <= 0:
        raise NetworkError(f"{where}: must be > 0, got {value!r}")
    return v


def _rate_value(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NetworkError(f"{where}: must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise NetworkError(f"{where}: must be finite and >= 0, got {value!r}")
    return v


def _count(value: Any, where: str, minimum: int = 0) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        value, ok = int(value), True
    if not ok or value < minimum:
        raise NetworkError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _species(raw: Any) -> tuple[dict[str, int], dict[str, int]]:
    """species -> (limits, initial counts given with the species)."""
    if isinstance(raw, Mapping):
        items = list(raw.items())
        where_of = {name: f"species.{name}" for name, _ in items}
    elif isinstance(raw, list):
        items, where_of = [], {}
        for i, entry in enumerate(raw):
            entry = _mapping(entry, f"species[{i}]")
            _unknown(entry, ("name", "limit", "initial"), f"species[{i}]")
            if not isinstance(entry.get("name"), str) or not entry["name"]:
                raise NetworkError(f"species[{i}].name: missing or not a string")
            items.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
            where_of[entry["name"]] = f"species[{i}]"
    else:
        raise NetworkError(
            f"species: expected a table name -> limit (or a list of tables), got "
            f"{type(raw).__name__}"
        )
    if not items:
        raise NetworkError("species: the network has no species")
    limits: dict[str, int] = {}
    initial: dict[str, int] = {}
    for name, spec in items:
        where = where_of[name]
        if name in limits:
            raise NetworkError(f"{where}: duplicate species name {name!r}")
        if isinstance(spec, Mapping):
            _unknown(spec, ("limit", "initial"), where)
            if "limit" not in spec:
                raise NetworkError(f"{where}.limit: missing (counts range over 0..limit-1)")
            limits[name] = _count(spec["limit"], f"{where}.limit", minimum=1)
            if "initial" in spec:
                initial[name] = _count(spec["initial"], f"{where}.initial")
        else:
            limits[name] = _count(spec, f"{where} (its limit)", minimum=1)
    return limits, initial


def _stoich(raw: Any, where: str, known: Mapping[str, int]) -> dict[str, int]:
    if raw is None:
        return {}
    raw = _mapping(raw, where)
    out = {}
    for sp, coef in raw.items():
        if sp not in known:
            raise NetworkError(
                f"{where}: unknown species {sp!r}; known species: {', '.join(known)}"
            )
        out[sp] = _count(coef, f"{where}.{sp}")
    return out


def _rate(raw: Any, where: str) -> float | RateForm:
    if isinstance(raw, Mapping):
        form = raw.get("form")
        if form not in RATE_FORM_KEYS:
            raise NetworkError(
                f"{where}.form: unknown rate form {form!r}; known forms: "
                f"{', '.join(RATE_FORM_KEYS)}"
            )
        required, optional = RATE_FORM_KEYS[form]
        _unknown(raw, ("form", *required, *optional), where)
        missing = [k for k in required if k not in raw]
        if missing:
            raise NetworkError(
                f"{where}.{missing[0]}: missing (a {form} rate needs {', '.join(required)})"
            )
        values = {
            key: _numbers(raw[key], f"{where}.{key}")
            if key in LIST_KEYS
            else _number(raw[key], f"{where}.{key}")
            for key in (*required, *optional)
            if key in raw
        }
        rate = RATE_FORMS[form](**values)
        rate.check(where)  # the form's own rules (rates >= 0, increasing times, ...)
        return rate
    if isinstance(raw, str):
        raise NetworkError(
            f"{where}: {raw!r} cannot be read from a file: give a number or a named form such "
            f'as {{form = "sinusoidal", c = 10, a = 0.5, omega = 1, phi = 0}}'
        )
    return _rate_value(raw, where)


def _numbers(raw: Any, where: str) -> tuple[float, ...]:
    if not isinstance(raw, list):
        raise NetworkError(f"{where}: expected a list of numbers, got {raw!r}")
    return tuple(_number(v, f"{where}[{j}]") for j, v in enumerate(raw))


def _one_or_list(raw: Any, where: str, parse: Any) -> Any:
    """A factor table, or a list of them (each then named by its index)."""
    if isinstance(raw, list):
        if not raw:
            raise NetworkError(f"{where}: an empty list; omit the key for no factor")
        return [parse(item, f"{where}[{j}]") for j, item in enumerate(raw)]
    return parse(raw, where)


def _hill(raw: Any, where: str, known: Mapping[str, int]) -> Hill:
    raw = _mapping(raw, where)
    _unknown(raw, HILL_KEYS, where)
    regulator = raw.get("regulator")
    if not isinstance(regulator, str) or not regulator:
        raise NetworkError(f"{where}.regulator: missing; a Hill factor needs a regulator species")
    if regulator not in known:
        raise NetworkError(
            f"{where}.regulator: unknown species {regulator!r}; known species: {', '.join(known)}"
        )
    for key in ("K", "n"):
        if key not in raw:
            raise NetworkError(f"{where}.{key}: missing")
    K = _number(raw["K"], f"{where}.K", positive=True)
    n = _number(raw["n"], f"{where}.n", positive=True)
    kind = raw.get("kind", "repression")
    if kind not in ("activation", "repression"):
        raise NetworkError(f"{where}.kind: must be 'activation' or 'repression', got {kind!r}")
    return Hill(regulator, K, n, kind)


def _complement(raw: Any, where: str, known: Mapping[str, int]) -> Complement:
    raw = _mapping(raw, where)
    _unknown(raw, COMPLEMENT_KEYS, where)
    species = raw.get("species")
    if not isinstance(species, str) or not species:
        raise NetworkError(f"{where}.species: missing; a complement factor needs a species")
    if species not in known:
        raise NetworkError(
            f"{where}.species: unknown species {species!r}; known species: {', '.join(known)}"
        )
    if "total" not in raw:
        raise NetworkError(f"{where}.total: missing (the count of bound plus free copies)")
    total = _count(raw["total"], f"{where}.total")
    order = _count(raw.get("order", 1), f"{where}.order", minimum=1)
    return Complement(species, total, order)


def _reaction(raw: Any, k: int, known: Mapping[str, int]) -> Reaction:
    where = f"reactions[{k}]"
    raw = _mapping(raw, where)
    if "propensity" in raw:
        raise NetworkError(
            f"{where}.propensity: a custom propensity is a Python callable and cannot be read "
            "from a file; build this network in Python"
        )
    _unknown(raw, REACTION_KEYS, where)
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise NetworkError(f"{where}.name: must be a string, got {name!r}")
    reactants = _stoich(raw.get("reactants"), f"{where}.reactants", known)
    products = _stoich(raw.get("products"), f"{where}.products", known)
    if all(reactants.get(s, 0) == products.get(s, 0) for s in set(reactants) | set(products)):
        raise NetworkError(f"{where}: the reaction changes no species (no net change)")
    if "rate" not in raw:
        raise NetworkError(f"{where}.rate: missing")
    rate = _rate(raw["rate"], f"{where}.rate")
    convention = raw.get("convention")
    if convention is not None and convention not in CONVENTIONS:
        raise NetworkError(
            f"{where}.convention: must be one of {CONVENTIONS}, got {convention!r} (omit it for "
            "the network's)"
        )
    hill = complement = None
    if "hill" in raw:
        hill = _one_or_list(raw["hill"], f"{where}.hill", lambda r, w: _hill(r, w, known))
    if "complement" in raw:
        complement = _one_or_list(
            raw["complement"], f"{where}.complement", lambda r, w: _complement(r, w, known)
        )
    return Reaction(
        reactants, products, rate, name, hill=hill, complement=complement, convention=convention
    )


def _conservation(raw: Any, known: Mapping[str, int]) -> list[dict[str, int]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise NetworkError("conservation: expected a list of laws (tables species -> weight)")
    laws = []
    for j, law in enumerate(raw):
        where = f"conservation[{j}]"
        law = _mapping(law, where)
        out = {}
        for sp, w in law.items():
            if sp == "total":
                out["total"] = _count(w, f"{where}.total")
                continue
            if sp not in known:
                raise NetworkError(
                    f"{where}: unknown species {sp!r}; known species: {', '.join(known)}"
                )
            if isinstance(w, bool) or not isinstance(w, (int, float)) or int(w) != w:
                raise NetworkError(f"{where}.{sp}: the weight must be an integer, got {w!r}")
            out[sp] = int(w)
        laws.append(out)
    return laws


def network_from_dict(d: Mapping[str, Any]) -> ReactionNetwork:
    """Build a `ReactionNetwork` from a dictionary in the file schema (module docstring).

    Accepts the output of `network_to_dict` (so networks round-trip) as well as hand-written
    files.

    Raises:
        NetworkError: with the path of the offending field, e.g. ``reactions[2].rate: ...``.
    """
    d = _mapping(d, "network")
    _unknown(d, TOP_KEYS, "")
    if "species" not in d:
        raise NetworkError("species: missing; the network has no species")
    limits, initial = _species(d["species"])
    for sp, v in _mapping(d.get("initial", {}), "initial").items():
        if sp not in limits:
            raise NetworkError(
                f"initial: unknown species {sp!r}; known species: {', '.join(limits)}"
            )
        count = _count(v, f"initial.{sp}")
        if sp in initial and initial[sp] != count:
            raise NetworkError(
                f"initial.{sp}: {count} contradicts species.{sp}.initial = {initial[sp]}"
            )
        initial[sp] = count
    for sp, v in initial.items():
        if v >= limits[sp]:
            raise NetworkError(
                f"initial.{sp}: {v} is outside the count limit {limits[sp]} (counts must be "
                f"< limit); raise the limit of {sp!r}"
            )
    raw_reactions = d.get("reactions")
    if not raw_reactions:
        raise NetworkError("reactions: the network has no reactions")
    if not isinstance(raw_reactions, list):
        raise NetworkError("reactions: expected a list of tables ([[reactions]] in TOML)")
    reactions = [_reaction(r, k, limits) for k, r in enumerate(raw_reactions)]
    convention = d.get("convention", "falling")
    if convention not in CONVENTIONS:
        raise NetworkError(f"convention: must be one of {CONVENTIONS}, got {convention!r}")
    text = {}
    for key in ("name", "description", "source"):
        value = d.get(key, "network" if key == "name" else "")
        if not isinstance(value, str):
            raise NetworkError(f"{key}: must be a string, got {value!r}")
        text[key] = value
    t_end = _number(d.get("t_end", 1.0), "t_end", positive=True)
    dt = _number(d.get("dt", 0.01), "dt", positive=True)
    parameters = _mapping(d.get("parameters", {}), "parameters")
    return ReactionNetwork(
        limits,
        reactions,
        initial,
        name=text["name"],
        convention=convention,
        conservation=_conservation(d.get("conservation"), limits),
        t_end=t_end,
        dt=dt,
        description=text["description"],
        source=text["source"],
        parameters=dict(parameters),
    )


def network_to_dict(network: ReactionNetwork) -> dict[str, Any]:
    """The network in the file schema: JSON-ready, and read back by `network_from_dict`.

    Conservation laws are written out (declared), so the loaded network has the same laws.
    Rates given as Python callables or custom propensities cannot be stored; they are written
    as text and `network_from_dict` rejects them with a message naming the reaction.
    """
    return network.to_dict()
