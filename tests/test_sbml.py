"""SBML import and export: each imported model equals the same network written in nncme.

Models are built with libsbml inside the tests, or read from the BioModels- and COPASI-style
files in tests/data; every import is checked against a twin network written directly in nncme
(propensities on the whole box, and the FSP solution), the catalogue round-trips through SBML
with identical propensities, and every unsupported construct gives its error.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nncme import (
    Complement,
    Exponential,
    Hill,
    NetworkError,
    PiecewiseConstant,
    Reaction,
    ReactionNetwork,
    Sinusoidal,
    systems,
)
from nncme.cli import main
from nncme.exact import FSPSettings, solve_fsp
from nncme.io import load_network, load_sbml, resolve_network, save_network, save_sbml
from nncme.io.sbml import AVOGADRO
from nncme.results import Result

from .test_io import CATALOGUE_SMALL, assert_same_network

libsbml = pytest.importorskip("libsbml", reason="SBML needs python-libsbml (make setup has it)")

DATA = Path(__file__).resolve().parent / "data"
NANO = AVOGADRO * 1e-9  # molecules per nmol


# ----------------------------------------------------------------------------------- helpers
def sbml_model(
    path: Path,
    species: dict[str, float],
    reactions: list[tuple],
    *,
    params: dict[str, float] | None = None,
    volume: float = 1.0,
    nmol: bool = False,
    edit=None,
) -> Path:
    """Write an SBML L3V1 model built with libsbml.

    Args:
        species: id -> initial value: molecule counts (amounts in `item`), or with `nmol`
            concentrations in nM (substance nmol, hasOnlySubstanceUnits false).
        reactions: (id, reactants, products, law in L3 infix, local parameters).
        params: global parameters.
        volume: size of the compartment `cell` (litres with `nmol`).
        edit: a function of the libsbml Model for anything else.
    """
    doc = libsbml.SBMLDocument(3, 1)
    model = doc.createModel()
    model.setId("model")
    unit = model.createUnitDefinition()
    unit.setId("amount")
    u = unit.createUnit()
    u.setKind(libsbml.UNIT_KIND_MOLE if nmol else libsbml.UNIT_KIND_ITEM)
    u.setScale(-9 if nmol else 0)
    u.setExponent(1)
    u.setMultiplier(1)
    model.setSubstanceUnits("amount")
    model.setExtentUnits("amount")
    cell = model.createCompartment()
    cell.setId("cell")
    cell.setSize(volume)
    cell.setConstant(True)
    for sid, value in species.items():
        s = model.createSpecies()
        s.setId(sid)
        s.setCompartment("cell")
        s.setHasOnlySubstanceUnits(not nmol)
        s.setBoundaryCondition(False)
        s.setConstant(False)
        (s.setInitialConcentration if nmol else s.setInitialAmount)(value)
    for pid, value in (params or {}).items():
        p = model.createParameter()
        p.setId(pid)
        p.setValue(value)
        p.setConstant(True)
    for rid, reactants, products, law, local in reactions:
        r = model.createReaction()
        r.setId(rid)
        r.setReversible(False)
        r.setFast(False)
        for side, create in ((reactants, r.createReactant), (products, r.createProduct)):
            for sid, coef in side.items():
                ref = create()
                ref.setSpecies(sid)
                ref.setStoichiometry(coef)
                ref.setConstant(True)
        kl = r.createKineticLaw()
        math_ast = libsbml.parseL3Formula(law)
        assert math_ast is not None, libsbml.getLastParseL3Error()
        kl.setMath(math_ast)
        for pid, value in local.items():
            p = kl.createLocalParameter()
            p.setId(pid)
            p.setValue(value)
    if edit is not None:
        edit(model)
    assert libsbml.writeSBMLToFile(doc, str(path)) == 1
    return path


def box_states(net: ReactionNetwork, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Every state of the box, or 20000 uniform draws from it when it is larger than 50000."""
    if net.state_space_size() <= 50_000:
        grids = np.indices(net.limits).reshape(net.L, -1).T
    else:
        grids = rng.integers(0, net.limits, size=(20_000, net.L))
    return torch.as_tensor(grids, dtype=torch.int64)


def assert_same_propensities(a: ReactionNetwork, b: ReactionNetwork, rtol: float = 0.0) -> None:
    """Both networks' propensities agree on every state of the box (at t = 0 and later)."""
    assert a.species_names == b.species_names
    np.testing.assert_array_equal(a.limits, b.limits)
    states = box_states(a, np.random.default_rng(0))
    for t in (0.0, 0.37 * a.t_end):
        pa, pb = a.propensities(states, t).numpy(), b.propensities(states, t).numpy()
        if rtol:
            np.testing.assert_allclose(pa, pb, rtol=rtol, atol=0)
        else:
            np.testing.assert_array_equal(pa, pb)


def assert_same_fsp(a: ReactionNetwork, b: ReactionNetwork, times=(0.0, 0.5, 2.0)) -> None:
    ra = solve_fsp(a, times, FSPSettings(quiet=True))
    rb = solve_fsp(b, times, FSPSettings(quiet=True))
    np.testing.assert_allclose(ra.marginals, rb.marginals, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ra.joint, rb.joint, rtol=0, atol=1e-12)


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(NetworkError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------- mass action
@pytest.mark.parametrize("units", ["counts", "concentrations"])
def test_mass_action_of_orders_0_to_2_converts_rates_exactly(units, tmp_path):
    nmol = units == "concentrations"
    volume = 2e-15 if nmol else 1.0
    omega = NANO * volume if nmol else 1.0  # molecules per unit of the species symbols
    initial = {"A": 3, "B": 2, "C": 0}
    k = {"k0": 2.0, "k1": 0.7, "k2": 0.05, "k3": 0.02}
    path = sbml_model(
        tmp_path / "m.xml",
        {s: n / omega for s, n in initial.items()},
        [
            ("birth", {}, {"A": 1}, "cell * k0", {}),
            ("decay", {"A": 1}, {}, "cell * k1 * A", {}),
            ("binding", {"A": 1, "B": 1}, {"C": 1}, "cell * k2 * A * B", {}),
            ("dimerization", {"A": 2}, {"B": 1}, "cell * k3 * A^2", {}),
        ],
        params=k,
        volume=volume,
        nmol=nmol,
    )
    limits = {"A": 12, "B": 9, "C": 7}
    net = load_sbml(path, limits)
    # c = k / (N_A V)^(order - 1) in the falling convention (omega = N_A V per nmol here).
    twin = ReactionNetwork(
        limits,
        [
            Reaction({}, {"A": 1}, k["k0"] * omega, "birth"),
            Reaction({"A": 1}, {}, k["k1"], "decay"),
            Reaction({"A": 1, "B": 1}, {"C": 1}, k["k2"] / omega, "binding"),
            Reaction({"A": 2}, {"B": 1}, k["k3"] / omega, "dimerization"),
        ],
        initial,
    )
    assert net.convention == "falling" and net.reaction_names == twin.reaction_names
    np.testing.assert_allclose(net.rates(), twin.rates(), rtol=1e-14)
    np.testing.assert_array_equal(net.initial_state, twin.initial_state)
    assert_same_propensities(net, twin, rtol=1e-13)
    assert_same_fsp(net, twin)
    binomial = load_sbml(path, limits, convention="binomial")  # C(n, 2) with c * 2!
    assert binomial.convention == "binomial"
    assert binomial.rates()[3] == pytest.approx(2 * k["k3"] / omega, rel=1e-14)
    assert_same_propensities(binomial, net, rtol=1e-14)


def test_falling_factorial_laws_are_read_as_they_stand(tmp_path):
    def model(law: str) -> Path:
        return sbml_model(tmp_path / "d.xml", {"A": 4}, [("pairs", {"A": 2}, {}, law, {"c": 3.0})])

    literal = load_sbml(model("c * A * (A - 1) / 2"), {"A": 9})  # SBML's discrete example
    assert literal.convention == "falling" and literal.rates()[0] == 1.5
    power = load_sbml(model("c * A^2"), {"A": 9}, convention="power")
    assert power.convention == "power" and power.rates()[0] == 3.0
    states = box_states(power)
    n = states[:, 0].double()
    np.testing.assert_allclose(power.propensities(states)[:, 0], 3.0 * n**2 * (n >= 2))
    np.testing.assert_allclose(literal.propensities(states)[:, 0], 1.5 * n * (n - 1))
    assert "cannot be written in the power convention" in error(
        load_sbml, model("c * A * (A - 1)"), {"A": 9}, convention="power"
    )
    assert "not a falling factorial" in error(load_sbml, model("c * A * (A - 2)"), {"A": 9})


# ---------------------------------------------------------------------------------- Hill
HILL_SPELLINGS = [
    ("v * P^n / (K^n + P^n)", "activation"),
    ("v * P^n / (P^n + K^n)", "activation"),
    ("v * (P/K)^n / (1 + (P/K)^n)", "activation"),
    ("v * K^n / (K^n + P^n)", "repression"),
    ("v / (1 + (P/K)^n)", "repression"),
    ("v / (1 + P^n / K^n)", "repression"),
]


@pytest.mark.parametrize("units", ["counts", "concentrations"])
@pytest.mark.parametrize("law,kind", HILL_SPELLINGS)
def test_hill_activation_and_repression_in_any_spelling(law, kind, units, tmp_path):
    nmol = units == "concentrations"
    omega = NANO * 1e-15 if nmol else 1.0
    v, K, n = 6.0, 3.0, 2.5
    path = sbml_model(
        tmp_path / "h.xml",
        {"M": 0.0, "P": 2 / omega},
        [
            ("transcription", {}, {"M": 1}, f"cell * {law}", {"v": v, "K": K, "n": n}),
            ("translation", {}, {"P": 1}, "cell * kp * M", {"kp": 2.0}),
            ("decay", {"P": 1}, {}, "cell * Vm * P / (Km + P)", {"Vm": 1.5, "Km": 4.0}),
        ],
        volume=1e-15 if nmol else 1.0,
        nmol=nmol,
    )
    net = load_sbml(path, {"M": 6, "P": 12})
    twin = ReactionNetwork(
        {"M": 6, "P": 12},
        [
            Reaction({}, {"M": 1}, v * omega, "transcription", hill=Hill("P", K * omega, n, kind)),
            Reaction({"M": 1}, {"M": 1, "P": 1}, 2.0, "translation"),  # M is a catalyst
            # Michaelis-Menten is mass action times repression: (Vm/Km) P * Km/(Km + P)
            Reaction({"P": 1}, {}, 1.5 / 4.0, "decay", hill=Hill("P", 4.0 * omega, 1.0)),
        ],
        {"P": 2},
    )
    for r, s in zip(net.reactions, twin.reactions):
        assert (r.hill is None) == (s.hill is None)
        if r.hill is not None:
            assert (r.hill.regulator, r.hill.kind) == (s.hill.regulator, s.hill.kind)
            assert r.hill.K == pytest.approx(s.hill.K, rel=1e-14) and r.hill.n == s.hill.n
    assert_same_propensities(net, twin, rtol=1e-13)


def test_two_hill_factors_multiply(tmp_path):
    """A law with two Hill denominators is one reaction with two Hill factors."""
    path = sbml_model(
        tmp_path / "h2.xml",
        {"A": 0, "B": 0, "X": 0},
        [
            ("r", {}, {"X": 1}, "k / (1 + (A/K)^2) / (1 + (B/K)^2)", {"k": 1.5, "K": 2}),
            ("a", {}, {"A": 1}, "ka", {"ka": 1.0}),
            ("b", {}, {"B": 1}, "kb", {"kb": 2.0}),
        ],
    )
    net = load_sbml(path, default_limit=4)
    twin = ReactionNetwork(
        {"A": 4, "B": 4, "X": 4},
        [
            Reaction(
                {},
                {"X": 1},
                1.5,
                "r",
                hill=[Hill("A", 2.0, 2.0, "repression"), Hill("B", 2.0, 2.0, "repression")],
            ),
            Reaction({}, {"A": 1}, 1.0, "a"),
            Reaction({}, {"B": 1}, 2.0, "b"),
        ],
        {"A": 0, "B": 0, "X": 0},
    )
    assert_same_propensities(net, twin, rtol=1e-14)


# ------------------------------------------------------------------ parameters, reversibility
def test_local_parameters_shadow_global_ones(tmp_path):
    path = sbml_model(
        tmp_path / "p.xml",
        {"A": 2},
        [
            ("birth", {}, {"A": 1}, "k", {"k": 5.0}),  # the local k
            ("death", {"A": 1}, {}, "k * A", {}),  # the global k
        ],
        params={"k": 0.25},
    )
    np.testing.assert_array_equal(load_sbml(path, {"A": 30}).rates(), [5.0, 0.25])


@pytest.mark.parametrize("law", ["cell * (kf * A * B - kr * C)", "(kf * A * B - kr * C) * cell"])
def test_reversible_reaction_splits_into_two(law, tmp_path):
    omega = NANO * 1e-15
    path = sbml_model(
        tmp_path / "rev.xml",
        {"A": 3 / omega, "B": 2 / omega, "C": 0.0},
        [("binding", {"A": 1, "B": 1}, {"C": 1}, law, {"kf": 0.3, "kr": 0.9})],
        volume=1e-15,
        nmol=True,
    )
    net = load_sbml(path)  # A + C and B + C are conserved: the limits follow from the laws
    twin = ReactionNetwork(
        {"A": 4, "B": 3, "C": 3},
        [
            Reaction({"A": 1, "B": 1}, {"C": 1}, 0.3 / omega, "binding_fwd"),
            Reaction({"C": 1}, {"A": 1, "B": 1}, 0.9, "binding_rev"),
        ],
        {"A": 3, "B": 2},
    )
    assert net.reaction_names == twin.reaction_names
    assert_same_propensities(net, twin, rtol=1e-13)
    assert_same_fsp(net, twin)


def test_a_law_that_cannot_be_split_is_refused(tmp_path):
    path = sbml_model(
        tmp_path / "bad.xml",
        {"A": 3, "B": 0},
        [("r", {"A": 1}, {"B": 1}, "kf * A - kr * A", {"kf": 1, "kr": 0.5})],
    )
    message = error(load_sbml, path, default_limit=5)
    assert "reaction 'r': not mass action: B is consumed with stoichiometry 1" in message


def test_sinusoidal_rates_in_two_spellings(tmp_path):
    for law in ("c * (1 + a * sin(w * time + phi))", "c + c * a * sin(phi + time * w)"):
        path = sbml_model(
            tmp_path / "s.xml",
            {"X": 0},
            [("birth", {}, {"X": 1}, law, {"c": 4, "a": 0.5, "w": 2, "phi": 0.1})],
        )
        rate = load_sbml(path, {"X": 10}).reactions[0].rate
        assert isinstance(rate, Sinusoidal)
        assert (rate.c, rate.a, rate.omega, rate.phi) == pytest.approx((4, 0.5, 2, 0.1), rel=1e-15)


# ------------------------------------------------------------------------------------ units
def test_units_amounts_and_rounding(tmp_path):
    path = sbml_model(
        tmp_path / "u.xml",
        {"A": 1.0},
        [("d", {"A": 1}, {}, "cell*k*A", {"k": 1})],
        volume=1e-15,
        nmol=True,
    )
    with pytest.warns(UserWarning, match=r"species 'A': the initial amount is 0\.602214 mol"):
        assert load_sbml(path, {"A": 3}).initial_state[0] == 1

    def grams(model):
        model.getUnitDefinition("amount").getUnit(0).setKind(libsbml.UNIT_KIND_GRAM)

    path = sbml_model(
        tmp_path / "g.xml", {"A": 1}, [("d", {"A": 1}, {}, "k*A", {"k": 1})], edit=grams
    )
    assert "substance unit 'amount' is in gram, not a count" in error(load_sbml, path, {"A": 3})


def test_level_2_default_substance_is_the_mole(tmp_path):
    doc = libsbml.SBMLDocument(2, 4)
    model = doc.createModel()
    model.setId("l2")
    model.createCompartment().setId("cell")
    model.getCompartment(0).setSize(1.0)
    s = model.createSpecies()
    s.setId("X")
    s.setCompartment("cell")
    s.setInitialAmount(5 / AVOGADRO)  # mol
    r = model.createReaction()
    r.setId("decay")
    r.createReactant().setSpecies("X")
    law = r.createKineticLaw()
    law.setMath(libsbml.parseL3Formula("k * X * cell"))
    law.createParameter().setId("k")
    law.getParameter(0).setValue(0.5)
    libsbml.writeSBMLToFile(doc, str(tmp_path / "l2.xml"))
    net = load_sbml(tmp_path / "l2.xml", {"X": 6})
    assert net.initial_state.tolist() == [5] and net.rates().tolist() == [0.5]


# ----------------------------------------------------------------------------------- limits
def test_count_limits_from_argument_file_laws_default_and_spec(tmp_path):
    path = sbml_model(
        tmp_path / "lim.xml",
        {"G": 1, "G_on": 0, "P": 2},
        [
            ("on", {"G": 1, "P": 1}, {"G_on": 1}, "k * G * P", {"k": 0.1}),
            ("off", {"G_on": 1}, {"G": 1, "P": 1}, "k * G_on", {"k": 0.5}),
            ("make", {}, {"P": 1}, "k * G", {"k": 3.0}),
        ],
    )
    message = error(load_sbml, path)
    assert (
        f"none is known for P: give limits={{'P': N}} in Python, or name the file as {path}:P=N"
        in message
    )
    net = load_sbml(path, {"P": 20})
    assert net.limits.tolist() == [2, 2, 20]  # the gene states from G + G_on = 1
    assert load_sbml(path, default_limit=7).limits.tolist() == [2, 2, 7]
    assert load_sbml(path, {"G": 5}, default_limit=7).limits.tolist() == [5, 2, 7]
    assert "limits: unknown species 'Q'" in error(load_sbml, path, {"Q": 3})
    assert resolve_network(f"{path}:P=12").limits.tolist() == [2, 2, 12]
    assert resolve_network(f"{path}:default_limit=9,G_on=3").limits.tolist() == [2, 3, 9]
    assert "SPECIES=LIMIT pairs" in error(resolve_network, f"{path}:P=many")
    assert "initial['P'] = 2 is outside the count limit 2" in error(load_sbml, path, {"P": 2})


# --------------------------------------------------------------------------------- refusals
def _event(model):
    event = model.createEvent()
    event.setId("pulse")
    event.setUseValuesFromTriggerTime(True)
    trigger = event.createTrigger()
    trigger.setMath(libsbml.parseL3Formula("time > 1"))
    trigger.setPersistent(True)
    trigger.setInitialValue(False)
    assignment = event.createEventAssignment()
    assignment.setVariable("A")
    assignment.setMath(libsbml.parseL3Formula("5"))


def _rule(kind):
    def edit(model):
        rule = getattr(model, f"create{kind}")()
        rule.setMath(libsbml.parseL3Formula("2 * k"))
        if kind != "AlgebraicRule":
            rule.setVariable("A")

    return edit


def _compartment_varies(model):
    model.getCompartment("cell").setConstant(False)


def _fast(model):
    model.getReaction("r").setFast(True)


def _package(model):
    doc = model.getSBMLDocument()
    doc.enablePackage(libsbml.CompExtension.getXmlnsL3V1V1(), "comp", True)
    doc.setPackageRequired("comp", True)


REFUSED = [
    ("k * A", _event, "event 'pulse': events are not supported"),
    ("k * A", _rule("AssignmentRule"), "assignment rule for 'A': rules are not supported"),
    ("k * A", _rule("RateRule"), "rate rule for 'A': rules are not supported"),
    ("k * A", _rule("AlgebraicRule"), "algebraic rule for '2 \\* k'"),
    ("k * A", _compartment_varies, "compartment 'cell': non-constant compartments"),
    ("k * A", _fast, "reaction 'r': fast reactions are not supported"),
    ("k * A", _package, "the SBML package 'comp' is required"),
    ("k * delay(A, 1)", None, "reaction 'r': delay is not supported"),
    ("piecewise(k, A > 2, 0) * A", None, "reaction 'r': piecewise is not supported"),
    ("k * A / (1 + A + B)", None, "reaction 'r': the denominator '1 \\+ A \\+ B' is not"),
    ("k * exp(-A)", None, "reaction 'r': 'exp\\(-A\\)' is not supported"),
    ("k * A * time", None, "reaction 'r': time outside the factor"),
    ("k * A^2", None, "reaction 'r': not mass action: A is consumed with stoichiometry 1"),
    ("k * A^0.5 * A^0.5 * B^0.5", None, "reaction 'r': the power of B is 0.5"),
]


@pytest.mark.parametrize("law,edit,message", REFUSED)
def test_unsupported_constructs_are_refused_naming_the_element(law, edit, message, tmp_path):
    path = sbml_model(
        tmp_path / "x.xml",
        {"A": 1, "B": 1},
        [("r", {"A": 1}, {"B": 1}, law, {})],
        params={"k": 1.0},
        edit=edit,
    )
    with pytest.raises(NetworkError, match=f"^{path}: {message}"):
        load_sbml(path, default_limit=4)


def test_fractional_stoichiometry_and_missing_laws_are_refused(tmp_path):
    def half(model):
        model.getReaction("r").getProduct(0).setStoichiometry(0.5)

    def no_law(model):
        model.getReaction("r").unsetKineticLaw()

    for edit, message in ((half, "stoichiometry 0.5 is not a whole number"), (no_law, "no kin")):
        path = sbml_model(
            tmp_path / "f.xml", {"A": 1, "B": 1}, [("r", {"A": 1}, {"B": 1}, "A", {})], edit=edit
        )
        assert message in error(load_sbml, path, default_limit=4)


def test_missing_libsbml_names_the_pip_command(tmp_path, monkeypatch):
    path = save_sbml(systems.birth_death(), tmp_path / "bd.xml")
    monkeypatch.setitem(sys.modules, "libsbml", None)
    with pytest.raises(ImportError, match="pip install python-libsbml"):
        load_sbml(path)
    with pytest.raises(ImportError, match="pip install python-libsbml"):
        save_network(systems.birth_death(), tmp_path / "again.sbml")


# ---------------------------------------------------------------- published-style models
def toggle_switch_twin() -> ReactionNetwork:
    """tests/data/toggle_switch_gardner2000.xml written in nncme (molecule counts)."""
    return ReactionNetwork(
        {"U": 30, "V": 30},
        [
            Reaction({}, {"U": 1}, 12.0, "U_synthesis", hill=Hill("V", 3.5, 2.5, "repression")),
            Reaction({"U": 1}, {}, 1.0, "U_degradation"),
            Reaction({}, {"V": 1}, 10.0, "V_synthesis", hill=Hill("U", 4.0, 1.0, "repression")),
            Reaction({"V": 1}, {}, 0.8, "V_degradation"),  # the local delta
        ],
        {"U": 5},
    )


def gene_expression_twin() -> ReactionNetwork:
    """tests/data/gene_expression_dimerization.xml written in nncme: nM in 1 fL."""
    omega = NANO * 1e-15  # molecules per nM
    return ReactionNetwork(
        {"G": 2, "M": 8, "P": 16, "P2": 8},
        [
            Reaction(
                {"G": 1},
                {"G": 1, "M": 1},
                0.5,
                "transcription",
                hill=Hill("P2", 10.0 * omega, 2.0, "repression"),
            ),
            Reaction({"M": 1}, {"M": 1, "P": 1}, 0.8, "translation"),
            Reaction({"M": 1}, {}, 0.3, "mRNA_decay"),
            Reaction({"P": 1}, {}, 1.2 / 20.0, "protein_decay", hill=Hill("P", 20.0 * omega, 1.0)),
            Reaction({"P": 2}, {"P2": 1}, 0.04 / omega, "dimerization_fwd"),
            Reaction({"P2": 1}, {"P": 2}, 0.04 * 5.0, "dimerization_rev"),  # k_off = k_on K_diss
            Reaction({"P2": 1}, {}, 0.05, "dimer_decay"),
        ],
        {"G": 1, "M": 2},
    )


@pytest.mark.parametrize(
    "file,limits,twin",
    [
        ("toggle_switch_gardner2000.xml", {"U": 30, "V": 30}, toggle_switch_twin),
        ("gene_expression_dimerization.xml", {"M": 8, "P": 16, "P2": 8}, gene_expression_twin),
    ],
)
def test_published_style_models_equal_their_twins(file, limits, twin, tmp_path):
    net, twin = load_sbml(DATA / file, limits), twin()
    assert net.reaction_names == twin.reaction_names
    np.testing.assert_array_equal(net.initial_state, twin.initial_state)
    np.testing.assert_allclose(net.rates(), twin.rates(), rtol=1e-14)
    assert [law.name for law in net.conservation_laws] == [
        law.name for law in twin.conservation_laws
    ]
    assert_same_propensities(net, twin, rtol=1e-13)
    assert_same_fsp(net, twin)
    again = load_sbml(save_sbml(net, tmp_path / "again.xml"))  # and it survives a round trip
    assert_same_network(again, net)
    assert_same_propensities(again, net)


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", systems.names())
def test_catalogue_round_trips_through_sbml(name, tmp_path):
    net = systems.get(name, **CATALOGUE_SMALL.get(name, {}))
    path = save_sbml(net, tmp_path / f"{name}.xml")
    doc = libsbml.readSBMLFromFile(str(path))
    doc.setConsistencyChecks(libsbml.LIBSBML_CAT_UNITS_CONSISTENCY, False)
    doc.checkConsistency()
    problems = [doc.getError(i) for i in range(doc.getNumErrors())]
    assert not [e.getMessage() for e in problems if e.getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    back = load_sbml(path)
    assert_same_network(back, net)
    assert back.reaction_names == net.reaction_names
    assert (back.name, back.description, back.source) == (net.name, net.description, net.source)
    assert_same_propensities(back, net)


def test_network_files_dispatch_on_the_suffix(tmp_path):
    net = systems.autoregulation()
    for suffix in (".xml", ".sbml", ".SBML"):
        path = save_network(net, tmp_path / f"net{suffix}")
        assert "<sbml" in path.read_text()
        assert_same_network(load_network(path), net)
        assert_same_network(resolve_network(str(path)), net)
    drive = ReactionNetwork({"X": 5}, [Reaction({}, {"X": 1}, lambda t: 1.0 + t, "drive")], {})
    assert "reaction 'drive'" in error(save_network, drive, tmp_path / "x.xml")
    with pytest.raises(FileNotFoundError, match=r"missing\.xml"):
        resolve_network(str(tmp_path / "missing.xml:X=3"))


def test_cli_shows_and_solves_an_sbml_model(tmp_path, capsys):
    spec = f"{DATA / 'toggle_switch_gardner2000.xml'}:U=30,V=30"
    assert main(["show", spec]) == 0
    out = capsys.readouterr().out
    assert "toggle_switch_gardner2000: 2 species, 4 reactions" in out
    assert "U_synthesis: 0 -> U  @ 12 * Hill-repression(V; K=3.5, n=2.5)" in out
    times = [0.0, 0.5, 2.0]
    argv = ["fsp", spec, "--times", "0,0.5,2", "--out", str(tmp_path / "fsp"), "--quiet"]
    assert main([*argv, "--no-plots"]) == 0
    result = Result.load(tmp_path / "fsp")
    exact = solve_fsp(toggle_switch_twin(), times, FSPSettings(quiet=True))
    np.testing.assert_allclose(result.marginals, exact.marginals, rtol=0, atol=1e-12)
    assert math.isclose(result.means[-1, 0], exact.means[-1, 0], rel_tol=1e-12)


def test_boundary_and_constant_species_are_constants_of_the_laws(tmp_path):
    def fixed(model):
        s = model.getSpecies("S")
        s.setBoundaryCondition(True)

    omega = NANO * 1e-15
    path = sbml_model(
        tmp_path / "b.xml",
        {"S": 4.0, "A": 0.0},  # S: 4 nM, held fixed
        [("feed", {"S": 1}, {"A": 1}, "cell * k * S", {"k": 0.5})],
        volume=1e-15,
        nmol=True,
        edit=fixed,
    )
    net = load_sbml(path, {"A": 5})
    assert net.species_names == ["A"]
    assert net.reactions[0].reactants == {} and net.rates()[0] == pytest.approx(2.0 * omega)
    assert "limits: unknown species 'S'; species that change: A" in error(load_sbml, path, {"S": 3})


# ------------------------------------------------------------- the network file's richer forms
def test_several_hill_factors_and_reaction_conventions_round_trip(tmp_path):
    """Two Hill factors on one reaction and per-reaction conventions (binomial in a falling
    network) come back with the same propensities and the same FSP solution."""
    net = ReactionNetwork(
        {"A": 12, "B": 10, "R": 6},
        [
            Reaction(
                {},
                {"A": 1},
                3.0,
                "make_A",
                hill=[Hill("R", 2.0, 2.0, "repression"), Hill("B", 4.0, 1.5, "activation")],
            ),
            Reaction({"A": 2}, {"B": 1}, 0.05, "pair", convention="binomial"),
            Reaction({"B": 2}, {"B": 1}, 0.02, "fall"),
            Reaction({"A": 1}, {}, 0.4, "decay_A"),
            Reaction({"B": 1}, {}, 0.3, "decay_B"),
            Reaction({}, {"R": 1}, 1.0, "make_R"),
            Reaction({"R": 1}, {}, 0.5, "decay_R"),
        ],
        {"A": 2, "B": 1, "R": 1},
        name="two_hills",
        t_end=2.0,
    )
    back = load_sbml(save_sbml(net, tmp_path / "two_hills.xml"))
    assert len(back.reactions[0].hills) == 2
    assert_same_propensities(back, net, rtol=1e-14)
    assert_same_fsp(back, net)


@pytest.mark.parametrize(
    "reaction, said",
    [
        (Reaction({}, {"X": 1}, 1.0, "r", complement=Complement("X", 7)), "complement"),
        (Reaction({}, {"X": 1}, PiecewiseConstant([1.0], [1.0, 2.0]), "r"), "PiecewiseConstant"),
        (Reaction({}, {"X": 1}, Exponential(2.0, 1.0), "r"), "Exponential"),
        (Reaction({"X": 2}, {}, 1.0, "r", convention="power"), "'power' law of order > 1"),
    ],
)
def test_what_sbml_cannot_hold_is_refused_naming_the_reaction(reaction, said, tmp_path):
    net = ReactionNetwork({"X": 8}, [reaction, Reaction({"X": 1}, {}, 1.0, "d")], {"X": 1})
    text = error(save_sbml, net, tmp_path / "x.xml")
    assert "reaction 'r'" in text and said in text and ".toml" in text
    assert not (tmp_path / "x.xml").exists()
