"""Bad network definitions get one clear error that names the field (issue 2's list).

Each case is checked through the Python API and through the file loader (dict and TOML), and
the test reads the message, not just the exception type.
"""

from __future__ import annotations

import math

import pytest

from nncme import Hill, NetworkError, Reaction, ReactionNetwork, Sinusoidal
from nncme.io import load_network, network_from_dict


def _net(reactions=None, species=None, initial=None, **kw) -> ReactionNetwork:
    species = {"A": 10, "B": 10} if species is None else species
    reactions = [Reaction({"A": 1}, {"B": 1}, 1.0, "convert")] if reactions is None else reactions
    return ReactionNetwork(species, reactions, initial or {}, **kw)


def _doc(**over) -> dict:
    doc = {
        "species": {"A": {"limit": 10, "initial": 2}, "B": 10},
        "reactions": [
            {"name": "convert", "reactants": {"A": 1}, "products": {"B": 1}, "rate": 1.0},
            {"name": "back", "reactants": {"B": 1}, "products": {"A": 1}, "rate": 0.5},
        ],
    }
    doc.update(over)
    return doc


def _error(fn, *args, **kw) -> str:
    with pytest.raises(NetworkError) as info:
        fn(*args, **kw)
    return str(info.value)


# --------------------------------------------------------------------------------- rates
@pytest.mark.parametrize("rate", [-1.0, math.nan, math.inf])
def test_bad_rates_python(rate):
    msg = _error(_net, [Reaction({"A": 1}, {"B": 1}, rate, "convert")])
    assert msg == f"reaction 'convert' (reactions[0]): rate: must be finite and >= 0, got {rate!r}"


def test_bad_time_dependent_rates_python():
    msg = _error(_net, [Reaction({"A": 1}, {"B": 1}, Sinusoidal(-2.0, 0.5, 1.0), "convert")])
    assert "reactions[0]): rate.c: must be finite and >= 0, got -2.0" in msg
    msg = _error(_net, [Reaction({"A": 1}, {"B": 1}, Sinusoidal(2.0, 1.5, 1.0), "convert")])
    assert "reactions[0]): rate.a: the amplitude must satisfy |a| <= 1, got 1.5" in msg


@pytest.mark.parametrize(
    "rate,message",
    [
        (-1, "reactions[1].rate: must be finite and >= 0, got -1"),
        (math.nan, "reactions[1].rate: must be finite and >= 0, got nan"),
        (math.inf, "reactions[1].rate: must be finite and >= 0, got inf"),
        ("fast", "reactions[1].rate: 'fast' cannot be read from a file"),
        (True, "reactions[1].rate: must be a number, got True"),
        ({"form": "sinusoidal", "c": -1, "a": 0.1, "omega": 1}, "reactions[1].rate.c: must be"),
        ({"form": "sinusoidal", "c": 1, "a": 2, "omega": 1}, "reactions[1].rate.a: the ampl"),
        ({"form": "sinusoidal", "c": 1, "a": 0.1}, "reactions[1].rate.omega: missing"),
        ({"form": "cosine", "c": 1}, "reactions[1].rate.form: unknown rate form 'cosine'"),
    ],
)
def test_bad_rates_file(rate, message):
    doc = _doc()
    doc["reactions"][1]["rate"] = rate
    assert message in _error(network_from_dict, doc)


# ------------------------------------------------------------------------ unknown species
def test_unknown_species_python():
    msg = _error(_net, [Reaction({"A": 1}, {"C": 1}, 1.0, "convert")])
    assert msg == (
        "reaction 'convert' (reactions[0]): products names unknown species 'C'; known species: A, B"
    )
    assert _error(_net, initial={"Z": 1}) == "initial: unknown species 'Z'"
    msg = _error(_net, conservation=[{"A": 1, "Q": 1}])
    assert msg == "conservation[0]: unknown species 'Q'"


def test_unknown_species_file():
    doc = _doc()
    doc["reactions"][1]["products"] = {"C": 1}
    assert _error(network_from_dict, doc) == (
        "reactions[1].products: unknown species 'C'; known species: A, B"
    )
    assert "initial: unknown species 'Z'" in _error(network_from_dict, _doc(initial={"Z": 1}))
    doc = _doc()
    doc["reactions"][0]["hill"] = {"regulator": "Q", "K": 1, "n": 1}
    assert _error(network_from_dict, doc).startswith(
        "reactions[0].hill.regulator: unknown species 'Q'"
    )


# -------------------------------------------------------------------------- no net change
def test_no_net_change():
    msg = _error(_net, [Reaction({"A": 1}, {"A": 1}, 1.0, "idle")])
    assert msg == "reaction 'idle' (reactions[0]): the reaction changes no species (no net change)"
    doc = _doc()
    doc["reactions"][1]["products"] = {"B": 1}
    assert _error(network_from_dict, doc) == (
        "reactions[1]: the reaction changes no species (no net change)"
    )


# ------------------------------------------------------------------ initial outside limits
def test_initial_state_outside_limits():
    msg = _error(_net, initial={"A": 10})
    assert msg == (
        "initial['A'] = 10 is outside the count limit 10 (counts must be < limit); "
        "raise the limit of 'A'"
    )
    assert _error(_net, initial={"A": -1}) == "initial['A']: must be a non-negative integer, got -1"
    doc = _doc(initial={"B": 12})
    assert _error(network_from_dict, doc) == (
        "initial.B: 12 is outside the count limit 10 (counts must be < limit); "
        "raise the limit of 'B'"
    )
    doc = _doc()
    doc["species"]["A"]["initial"] = 1.5
    assert _error(network_from_dict, doc) == ("species.A.initial: must be an integer >= 0, got 1.5")


# ------------------------------------------------------- conservation total vs the limits
def test_conservation_total_the_limits_cannot_hold():
    msg = _error(_net, initial={"A": 2}, conservation=[{"A": 1, "B": 1, "total": 30}])
    assert msg == (
        "conservation[0].total: A + B = 30 cannot be held by states within the count limits "
        "(A < 10, B < 10: they allow 0..18); raise the limits"
    )
    # reachable range but no state: 2 A + 2 B is always even
    msg = _error(_net, initial={"A": 2}, conservation=[{"A": 2, "B": 2, "total": 7}])
    assert "conservation[0].total: 2 A + 2 B = 7 cannot be held" in msg
    assert "no state reaches it" in msg
    msg = _error(_net, initial={"A": 2}, conservation=[{"A": 1, "B": 1, "total": 5}])
    assert msg == "conservation[0] (A + B): declared total 5 differs from the initial state's 2"
    doc = _doc(conservation=[{"A": 1, "B": 1, "total": 40}])
    assert _error(network_from_dict, doc).startswith(
        "conservation[0].total: A + B = 40 cannot be held"
    )
    msg = _error(_net, conservation=[{"A": 1}])
    assert msg == "conservation[0] (A) is not conserved by reaction 'convert'"


# -------------------------------------------------------------- Hill without a regulator
def test_hill_without_regulator():
    hill = Hill("", 5.0, 2.0)
    msg = _error(_net, [Reaction({"A": 1}, {"B": 1}, 1.0, "convert", hill=hill)])
    assert msg == "reaction 'convert' (reactions[0]): hill factor needs a regulator species"
    doc = _doc()
    doc["reactions"][0]["hill"] = {"K": 5.0, "n": 2.0}
    assert _error(network_from_dict, doc) == (
        "reactions[0].hill.regulator: missing; a Hill factor needs a regulator species"
    )
    doc["reactions"][0]["hill"] = {"regulator": "A", "K": -5.0, "n": 2.0}
    assert _error(network_from_dict, doc) == "reactions[0].hill.K: must be > 0, got -5.0"
    doc["reactions"][0]["hill"] = {"regulator": "A", "K": 5.0, "n": 2.0, "kind": "both"}
    assert "reactions[0].hill.kind: must be 'activation' or 'repression'" in _error(
        network_from_dict, doc
    )


# ------------------------------------------- factors and conventions of one reaction (file)
@pytest.mark.parametrize(
    "key,value,message",
    [
        (
            "convention",
            "factorial",
            "reactions[0].convention: must be one of ('falling', 'binomial', 'power'), got "
            "'factorial' (omit it for the network's)",
        ),
        (
            "hill",
            [{"regulator": "A", "K": 1, "n": 1}, {"regulator": "B", "K": 1, "n": -2}],
            "reactions[0].hill[1].n: must be > 0, got -2",
        ),
        ("hill", [], "reactions[0].hill: an empty list; omit the key for no factor"),
        (
            "complement",
            {"species": "Q", "total": 3},
            "reactions[0].complement.species: unknown species 'Q'; known species: A, B",
        ),
        (
            "complement",
            {"species": "B"},
            "reactions[0].complement.total: missing (the count of bound plus free copies)",
        ),
        (
            "complement",
            {"species": "B", "total": 9, "order": 0},
            "reactions[0].complement.order: must be an integer >= 1, got 0",
        ),
        (
            "complement",
            [{"species": "B", "total": 9}, {"species": "B", "total": 2.5}],
            "reactions[0].complement[1].total: must be an integer >= 0, got 2.5",
        ),
        (
            "complement",
            {"species": "B", "total": 9, "copies": 2},
            "reactions[0].complement: unknown key 'copies'; expected one of species, total, order",
        ),
        (
            "complement",  # total below B's largest count 9: the network's own check
            {"species": "B", "total": 5},
            "reaction 'convert' (reactions[0]): complement.total: 5 is below the largest count 9 "
            "of 'B' in the box, where 5 - B would be negative; lower the limit of 'B' to 6",
        ),
    ],
)
def test_reaction_factors_and_conventions_in_files(key, value, message):
    doc = _doc()
    doc["reactions"][0][key] = value
    assert _error(network_from_dict, doc).startswith(message)


# -------------------------------------------------------------------------- empty network
def test_empty_network():
    assert _error(_net, []) == "reactions: the network has no reactions"
    assert _error(ReactionNetwork, {}, [], {}) == "species: the network has no species"
    assert _error(network_from_dict, {}) == "species: missing; the network has no species"
    assert _error(network_from_dict, _doc(species={})) == "species: the network has no species"
    assert _error(network_from_dict, _doc(reactions=[])) == (
        "reactions: the network has no reactions"
    )


# --------------------------------------------------------------------- the file as a whole
def test_file_loader_names_the_file_and_field(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text(
        """
species = {A = 10, B = 10}
[[reactions]]
reactants = {A = 1}
products = {B = 1}
rate = 1.0
[[reactions]]
reactants = {B = 1}
products = {A = 1}
rate = 1.0
[[reactions]]
reactants = {A = 1}
rate = -1
"""
    )
    assert _error(load_network, path) == (
        f"{path}: reactions[2].rate: must be finite and >= 0, got -1"
    )


@pytest.mark.parametrize(
    "over,message",
    [
        ({"rat": 1}, "unknown key 'rat'; expected one of name, description"),
        ({"convention": "mass"}, "convention: must be one of ('falling', 'binomial', 'power')"),
        ({"t_end": 0}, "t_end: must be > 0, got 0"),
        ({"dt": "small"}, "dt: must be a number, got 'small'"),
        ({"species": {"A": 0, "B": 3}}, "species.A (its limit): must be an integer >= 1, got 0"),
        ({"species": [{"limit": 3}]}, "species[0].name: missing or not a string"),
        ({"reactions": {"a": 1}}, "reactions: expected a list of tables"),
        ({"conservation": {"A": 1}}, "conservation: expected a list of laws"),
    ],
)
def test_top_level_errors(over, message):
    assert message in _error(network_from_dict, _doc(**over))


def test_reaction_level_errors():
    doc = _doc()
    doc["reactions"][0]["reactants"] = {"A": -2}
    assert _error(network_from_dict, doc) == (
        "reactions[0].reactants.A: must be an integer >= 0, got -2"
    )
    doc = _doc()
    doc["reactions"][0]["rates"] = 1.0
    assert "reactions[0]: unknown key 'rates'; expected one of name, reactants" in _error(
        network_from_dict, doc
    )
    doc = _doc()
    del doc["reactions"][0]["rate"]
    assert _error(network_from_dict, doc) == "reactions[0].rate: missing"
