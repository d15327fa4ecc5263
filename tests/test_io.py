"""Network files and specs: the examples load and equal their Python twins; round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nncme import (
    Complement,
    Exponential,
    Hill,
    NetworkError,
    PiecewiseConstant,
    Reaction,
    ReactionNetwork,
    Table,
    systems,
)
from nncme.cli import main
from nncme.io import (
    load_network,
    network_from_dict,
    network_to_dict,
    resolve_network,
    save_network,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def assert_same_network(a: ReactionNetwork, b: ReactionNetwork) -> None:
    """Same species, limits, initial state, stoichiometry, rates, factors, conventions, laws,
    grid."""
    assert a.species_names == b.species_names
    np.testing.assert_array_equal(a.limits, b.limits)
    np.testing.assert_array_equal(a.initial_state, b.initial_state)
    np.testing.assert_array_equal(a.reactant_matrix, b.reactant_matrix)
    np.testing.assert_array_equal(a.product_matrix, b.product_matrix)
    assert a.convention == b.convention
    for t in (0.0, 0.37 * a.t_end, a.t_end):
        np.testing.assert_allclose(a.rates(t), b.rates(t), rtol=1e-15)
    assert [r.rate for r in a.reactions] == [r.rate for r in b.reactions]
    assert [r.hills for r in a.reactions] == [r.hills for r in b.reactions]
    assert [r.complements for r in a.reactions] == [r.complements for r in b.reactions]
    assert [r.convention for r in a.reactions] == [r.convention for r in b.reactions]
    assert [(law.name, law.total) for law in a.conservation_laws] == [
        (law.name, law.total) for law in b.conservation_laws
    ]
    assert (a.t_end, a.dt) == (b.t_end, b.dt)


def test_examples_equal_their_python_twins():
    assert_same_network(load_network(EXAMPLES / "toggle_switch.toml"), systems.toggle_switch())
    assert_same_network(load_network(EXAMPLES / "sirs_seasonal.json"), systems.sirs())
    twin = ReactionNetwork(
        {"M": 33, "P": 150},
        [
            Reaction({}, {"M": 1}, 10.0, "transcription", hill=Hill("P", 40.0, 2.0, "repression")),
            Reaction({"M": 1}, {"M": 1, "P": 1}, 5.0, "translation"),
            Reaction({"M": 1}, {}, 1.0, "mrna_decay"),
            Reaction({"P": 1}, {}, 0.5, "protein_decay"),
        ],
        {},
        t_end=20.0,
        dt=0.0005,
    )
    net = load_network(EXAMPLES / "gene_expression_feedback.toml")
    assert_same_network(net, twin)
    assert net.reaction_names == twin.reaction_names
    assert net.name == "gene_expression_feedback" and net.description and net.source
    free = Complement("G_b", 3)
    induced = PiecewiseConstant([5.0], [0.5, 3.0])
    copies = ReactionNetwork(
        {"G_b": 4, "M": 30, "P": 60},
        [
            Reaction({"P": 2}, {"G_b": 1}, 0.005, "bind", complement=free, convention="binomial"),
            Reaction({"G_b": 1}, {"P": 2}, 0.5, "unbind"),
            Reaction({}, {"M": 1}, induced, "transcribe", complement=free),
            Reaction({"M": 1}, {"M": 1, "P": 1}, 2.0, "translate"),
            Reaction({"M": 1}, {}, 1.0, "mrna_decay"),
            Reaction({"P": 1}, {}, 1.0, "protein_decay"),
        ],
        {},
        conservation=[],
        t_end=10.0,
        dt=0.002,
    )
    net = load_network(EXAMPLES / "gene_copies.toml")
    assert_same_network(net, copies)
    assert net.reaction_names == copies.reaction_names


def test_every_example_file_loads_and_compiles():
    files = sorted(EXAMPLES.glob("*.toml")) + sorted(EXAMPLES.glob("*.json"))
    assert len(files) >= 4
    for path in files:
        net = resolve_network(str(path))
        net.compile("cpu")


CATALOGUE_SMALL = {"cascade": {"L": 3}, "reaction_diffusion": {"shape": "2x2"}}


@pytest.mark.parametrize("name", systems.names())
def test_catalogue_round_trips_through_dicts_and_files(name, tmp_path):
    net = systems.get(name, **CATALOGUE_SMALL.get(name, {}))
    back = network_from_dict(json.loads(json.dumps(network_to_dict(net))))
    assert_same_network(net, back)
    assert back.reaction_names == net.reaction_names
    assert back.description == net.description and back.source == net.source
    for suffix in (".toml", ".json"):
        assert_same_network(net, load_network(save_network(net, tmp_path / f"net{suffix}")))


def test_factors_conventions_and_rate_forms_round_trip(tmp_path):
    """Every feature of a reaction the schema holds, through dicts, TOML and JSON."""
    free = Complement("G_b", 3)
    net = ReactionNetwork(
        {"G_b": 4, "P": 30, "M": 20},
        [
            Reaction({"P": 2}, {"G_b": 1}, 0.01, "bind", complement=free, convention="binomial"),
            Reaction({"G_b": 1}, {"P": 2}, 1.0, "unbind"),
            Reaction(
                {},
                {"M": 1},
                PiecewiseConstant([5.0], [2.0, 8.0]),
                "transcribe",
                complement=[free, Complement("G_b", 4, order=2)],
                hill=[Hill("P", 10.0, 2.0, "repression"), Hill("M", 5.0, 1.0, "activation")],
            ),
            Reaction({"M": 1}, {"M": 1, "P": 1}, Table([0, 2], [1.0, 3.0]), "translate"),
            Reaction({"M": 1}, {}, Exponential(2.0, 4.0, 1.0), "m_decay", convention="power"),
            Reaction({"P": 1}, {}, 0.5, "p_decay", hill=[Hill("M", 3.0, 1.0, "activation")]),
        ],
        {"M": 2},
        convention="falling",
        conservation=[],
        t_end=10.0,
    )
    doc = network_to_dict(net)
    assert doc["reactions"][0]["complement"] == {"species": "G_b", "total": 3, "order": 1}
    assert len(doc["reactions"][2]["hill"]) == 2 and len(doc["reactions"][2]["complement"]) == 2
    assert doc["reactions"][4]["convention"] == "power" and "convention" not in doc["reactions"][1]
    assert_same_network(net, network_from_dict(json.loads(json.dumps(doc))))
    for suffix in (".toml", ".json"):
        back = load_network(save_network(net, tmp_path / f"net{suffix}"))
        assert_same_network(net, back)
        assert back.summary() == net.summary()


def test_resolve_network_specs(tmp_path):
    assert resolve_network("toggle_switch").name == "toggle_switch"
    assert resolve_network("cascade:L=8").L == 8
    assert resolve_network("autoregulation:parameter_set=2").parameters["rho_b"] == 40.6
    assert resolve_network("reaction_diffusion:shape=4x4").L == 16
    path = save_network(systems.birth_death(), tmp_path / "bd.json")
    assert resolve_network(path).name == "birth_death"
    assert resolve_network(str(path)).name == "birth_death"
    with pytest.raises(FileNotFoundError, match=r"missing\.toml"):
        resolve_network(str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match="no such network file or catalogue system"):
        resolve_network("some/dir/net")
    with pytest.raises(NetworkError, match="unknown system 'toggle'"):
        resolve_network("toggle")


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\nspecies = {A = \n")
    with pytest.raises(NetworkError, match=r"bad\.toml: invalid TOML"):
        load_network(bad)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(NetworkError, match=r"bad\.json: invalid JSON"):
        load_network(bad)
    with pytest.raises(NetworkError, match=r"unknown file type '\.yaml'"):
        load_network(tmp_path / "net.yaml")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("species = {A = 5}\n[[reactions]]\nreactants = {A = 1}\nrate = -1\n")
    with pytest.raises(NetworkError) as info:
        load_network(wrong)
    assert str(info.value) == f"{wrong}: reactions[0].rate: must be finite and >= 0, got -1"


def test_custom_propensities_are_refused_with_the_reaction_named(tmp_path):
    net = ReactionNetwork(
        {"X": 5},
        [Reaction({}, {"X": 1}, lambda t: 1.0 + t, "drive"), Reaction({"X": 1}, {}, 1.0)],
        {},
    )
    with pytest.raises(NetworkError, match="reaction 'drive'"):
        save_network(net, tmp_path / "x.json")
    with pytest.raises(NetworkError, match=r"reactions\[0\]\.rate: 'callable' cannot be read"):
        network_from_dict(network_to_dict(net))


def test_cli_systems_lists_and_shows(tmp_path, capsys):
    assert main(["systems"]) == 0
    out = capsys.readouterr().out
    for entry in systems.catalogue():
        line = next(x for x in out.splitlines() if x.startswith(entry.name + " "))
        assert f" {entry.species} " in line and f" {entry.reactions} " in line
    assert main(["systems", "cascade", "L=3", "--save", str(tmp_path / "c.toml")]) == 0
    out = capsys.readouterr().out
    assert "cascade: 3 species, 6 reactions" in out and "parameters: L=3" in out
    assert load_network(tmp_path / "c.toml").L == 3
    assert main(["systems", "reaction_diffusion:shape=2x2"]) == 0
    assert "reaction_diffusion: 4 species" in capsys.readouterr().out
    assert main(["systems", "cascade", "L=abc"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "nncme systems: error: cascade: parameter L: expected int, got 'abc'"
    assert main(["show", str(EXAMPLES / "gene_expression_feedback.toml")]) == 0
    assert "Hill-repression(P; K=40, n=2)" in capsys.readouterr().out
