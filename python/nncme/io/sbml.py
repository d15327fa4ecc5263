"""SBML import and export (python-libsbml): `load_sbml(path, limits)` and `save_sbml(net, path)`.

SBML Level 2 and 3 core is read with python-libsbml (`pip install python-libsbml`, or
`pip install 'nncme[sbml]'`). Function definitions and initial assignments are expanded by
libsbml's converters first.

Units. Counts are molecules. A species' substance unit (its own, else the model's; Level 2's
default `substance` is the mole, a Level 3 model without one is read as counting `item`s)
gives m, the molecules per unit of substance: 1 for `item` (or `dimensionless`), and
N_A * multiplier * 10^scale for `mole` (N_A = 6.02214076e23 /mol, exact in the SI). An
initial amount a becomes a*m molecules and an initial concentration x in a compartment of
size V becomes x*V*m (so the volume unit needs no conversion: x is substance per volume unit),
rounded to a whole number with a warning if that moves it by more than 1e-6. Time keeps the
model's unit.

Kinetic laws. A law is the reaction's rate v in extent units per time (extent: the model's
extentUnits in Level 3, its substance unit in Level 2), written in the species symbols, which
stand for concentrations n/(m V), or for amounts n/m where hasOnlySubstanceUnits is set. It is
read as a sum of terms, each a product of constants (numbers; parameters, local ones
shadowing global ones; compartment sizes; constant or boundary species), powers S^r of
species, Hill factors (any number), and optionally one factor (C + A sin(omega*time + phi)).
Any algebraically equal spelling is accepted: compartment*(kf*A*B - kr*C), 1/(1 + (x/K)^h),
Vmax*S/(Km + S) (= mass action in S times the repression factor Km/(Km + S)). A Hill factor
is x^h/(K^h + x^h) (activation) or K^h/(K^h + x^h) (repression) of one species x; its K is
converted to molecules, K*s_x with s_x as below. Positive terms are forward reactions,
negative ones reverse reactions: a reversible law kf*A*B - kr*C becomes two reactions,
`<id>_fwd` and `<id>_rev`, and a law that cannot be split into such terms is refused.

Mass action. In each term, every species the reaction consumes appears to the power of its
stoichiometry; a species in the law that it does not consume (a modifier, e.g. the gene of
transcription) is a catalyst: it is put on both sides with its power.

Stochastic rate constants. A term k' * prod_i S_i^{r_i} (k' the product of its constants) has
the propensity

    a(n) = c * prod_i n_i (n_i - 1) ... (n_i - r_i + 1),   c = m_ext * k' / prod_i s_i^{r_i},

with s_i = m_i V_i (concentration) or m_i (amount) the molecules per unit of S_i's symbol and
m_ext the molecules per extent unit. For the usual law k*[A]*[B]*V in moles this is
c = k / (N_A V)^(order - 1), and for 2A -> ... with v = k*[A]^2*V it is
a = (k / (N_A V)) * n_A (n_A - 1) (Gillespie 1977). The falling factorial counts ordered
reactant tuples, so no 1/r! appears: "falling" is the convention in which this conversion is
exact, and it is the convention of the networks `load_sbml` returns. With
`convention="binomial"` the same propensities are written as C(n, r) with c * prod_i r_i!;
with `convention="power"` a power S^r is instead read literally as n^r (for laws written as
propensities in molecule counts, such as those `save_sbml` writes for power-convention
networks). A law already written as a falling factorial in counts, c*P*(P - 1)/2 (SBML's own
example of a discrete model), is read as it stands.

Count limits. SBML has none, and the box 0 <= n_i < M_i decides what a solver can represent,
so they are the caller's choice: `limits={"P": 200, ...}` (species id -> M), else the limits
that nncme wrote into the file, else, for a species bounded by a conservation law with
non-negative weights (gene states), the exact bound total // weight + 1, else
`default_limit`; a species left without one is an error that says how to give it. Wherever
a network file is named (`nncme fsp/ssa/run/show`, `resolve_network`), append them to the
file name: `model.xml:P=200,M=60` (`default_limit=100` for the rest).

Refused, with a NetworkError naming the element: events, rules (assignment, rate,
algebraic), initial assignments that libsbml cannot expand, non-constant compartments,
conversion factors, fast reactions, delays, piecewise and other functions of species or time,
kinetic laws that are neither mass action nor mass action times Hill factors (times the
sinusoidal factor), fractional stoichiometry or stoichiometryMath, required SBML packages.
(A Level 3 stoichiometry marked constant="false" is read as its value: only the rules and
events that are refused anyway could change it.)

Export (`save_sbml`) writes Level 3 Version 1: one compartment `cell` of size 1, species in
molecule counts (substance unit `item`, hasOnlySubstanceUnits), each kinetic law the
propensity itself in local parameters: c*A*(A - 1) (falling), c*A*(A - 1)/2 (binomial) or
c*A^2 (power), times x^n/(K^n + x^n) or K^n/(K^n + x^n), times (1 + a*sin(omega*time + phi)).
An annotation in the namespace `urn:nncme:sbml:1` keeps what SBML has no place for: count
limits, convention, t_end, dt, conservation laws, description, source, parameters, and the
exact value of any number that libsbml's 15-digit output would round, so network -> SBML ->
network gives the same network.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from ..conservation import detect_conservation_laws
from ..network import (
    CONVENTIONS,
    Hill,
    NetworkError,
    RateForm,
    Reaction,
    ReactionNetwork,
    Sinusoidal,
)
from ..paths import atomic_write

__all__ = ["AVOGADRO", "NAMESPACE", "load_sbml", "save_sbml"]

AVOGADRO = 6.02214076e23  # 1/mol, exact since the 2019 SI
NAMESPACE = "urn:nncme:sbml:1"
SBML_SUFFIXES = (".xml", ".sbml")
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOL = 1e-9  # exponents and shifts are compared with this tolerance


def _libsbml() -> Any:
    try:
        import libsbml
    except ImportError:
        raise ImportError(
            "SBML files need python-libsbml: pip install python-libsbml "
            "(or pip install 'nncme[sbml]')"
        ) from None
    return libsbml


# ============================================================================== reading
@dataclass
class _Symbols:
    """What the names in a kinetic law stand for.

    constants: id -> value (None: declared without a value). scales: id of a species that
    changes -> its molecules per unit of its symbol (m V or m). ext: molecules per extent unit.
    """

    constants: dict[str, float | None]
    scales: dict[str, float]
    ext: float

    def with_locals(self, local: Mapping[str, float | None]) -> _Symbols:
        constants = {**self.constants, **local}
        scales = {k: v for k, v in self.scales.items() if k not in local}
        return _Symbols(constants, scales, self.ext)


Consts = list[tuple[float, float]]  # constant factors (value, power)


@dataclass
class _HillDenominator:
    """C + D x^h, with C and D kept as constant factors so that K^h/(K^h + x^h) cancels."""

    x: str
    h: float
    K: float  # in x's symbol units
    C: Consts
    D: Consts


@dataclass
class _Term:
    """One term of a kinetic law as it is read: the product of its factors.

    Constant factors are kept apart (not multiplied out) until the Hill factors have been
    taken out, so that v*K^n/(K^n + x^n) gives v exactly, not v*K^n/K^n.
    """

    consts: Consts = field(default_factory=list)
    powers: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    shifts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    hills: list[_HillDenominator] = field(default_factory=list)
    wave: tuple[float, float, float] | None = None  # a, omega, phi

    @property
    def coef(self) -> float:
        return math.prod(v**e for v, e in self.consts)

    def divide(self, consts: Consts) -> None:
        for v, e in consts:
            if (v, e) in self.consts:
                self.consts.remove((v, e))
            else:
                self.consts.append((v, -e))


@dataclass
class LawTerm:
    """One reaction's worth of a kinetic law, in nncme's terms.

    forward: True for the reaction as written, False for its reverse.
    rate: c in 1/time (a number, or `Sinusoidal` when the law has the sinusoidal factor).
    orders: species -> mass-action order (the reactant stoichiometry in nncme).
    hills: Hill factors (K in molecules).
    """

    forward: bool
    rate: float | Sinusoidal
    orders: dict[str, int]
    hills: list[Hill]


def _node_text(node: Any) -> str:
    return _libsbml().formulaToL3String(node)


def _is_constant(node: Any, sym: _Symbols) -> bool:
    libsbml = _libsbml()
    t = node.getType()
    if t == libsbml.AST_NAME:
        return node.getName() not in sym.scales
    if t == libsbml.AST_NAME_TIME or t == libsbml.AST_FUNCTION_DELAY:
        return False
    return all(_is_constant(node.getChild(i), sym) for i in range(node.getNumChildren()))


_UNARY = {
    "exp": math.exp,
    "ln": math.log,
    "abs": abs,
    "floor": math.floor,
    "ceiling": math.ceil,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}


def _evaluate(node: Any, sym: _Symbols, where: str) -> float:
    """The value of a constant expression (numbers, parameters, sizes, + - * / ^ exp ln ...)."""
    try:
        value = _eval(node, sym, where)
    except (ArithmeticError, TypeError) as exc:
        raise NetworkError(f"{where}: {_node_text(node)!r} cannot be evaluated ({exc})") from None
    if not math.isfinite(value):
        raise NetworkError(f"{where}: {_node_text(node)!r} is {value}")
    return value


def _eval(node: Any, sym: _Symbols, where: str) -> float:
    libsbml = _libsbml()
    t = node.getType()
    kids = [node.getChild(i) for i in range(node.getNumChildren())]

    def ev(k: Any) -> float:
        return _eval(k, sym, where)

    if node.isNumber():
        return float(node.getValue())
    if t == libsbml.AST_NAME:
        if node.getName() not in sym.constants:
            raise NetworkError(f"{where}: unknown name {node.getName()!r}")
        value = sym.constants[node.getName()]
        if value is None:
            raise NetworkError(f"{where}: {node.getName()!r} has no value")
        return value
    if t == libsbml.AST_NAME_AVOGADRO:
        return AVOGADRO
    if t == libsbml.AST_CONSTANT_PI:
        return math.pi
    if t == libsbml.AST_CONSTANT_E:
        return math.e
    if t == libsbml.AST_PLUS:
        return math.fsum(ev(k) for k in kids)
    if t == libsbml.AST_MINUS:
        return -ev(kids[0]) if len(kids) == 1 else ev(kids[0]) - ev(kids[1])
    if t == libsbml.AST_TIMES:
        return math.prod(ev(k) for k in kids)
    if t == libsbml.AST_DIVIDE:
        return ev(kids[0]) / ev(kids[1])
    if t in (libsbml.AST_POWER, libsbml.AST_FUNCTION_POWER):
        return _power(ev(kids[0]), ev(kids[1]), where)
    if t == libsbml.AST_FUNCTION_ROOT:
        return _power(ev(kids[1]), 1.0 / ev(kids[0]), where)
    if t == libsbml.AST_FUNCTION_LOG:
        return math.log(ev(kids[1]), ev(kids[0]))
    name = node.getName() or ""
    if name in _UNARY and len(kids) == 1:
        return float(_UNARY[name](ev(kids[0])))
    raise NetworkError(f"{where}: {_unsupported(node)}")


def _unsupported(node: Any) -> str:
    libsbml = _libsbml()
    t = node.getType()
    if t == libsbml.AST_FUNCTION_PIECEWISE:
        what = "piecewise"
    elif t == libsbml.AST_FUNCTION_DELAY:
        what = "delay"
    elif t == libsbml.AST_NAME_TIME:
        what = "time outside the factor (1 + a*sin(omega*time + phi))"
    else:
        what = f"{_node_text(node)!r}"
    return (
        f"{what} is not supported in a kinetic law (nncme reads mass action, times Hill "
        f"factors x^n/(K^n + x^n) or K^n/(K^n + x^n), times (1 + a*sin(omega*time + phi)))"
    )


def _shifted_species(node: Any, sym: _Symbols, where: str) -> tuple[str, int] | None:
    """(S, j) if node is S - j with S a species and j a whole number >= 1 (a falling factor)."""
    libsbml = _libsbml()
    if node.getType() != libsbml.AST_MINUS or node.getNumChildren() != 2:
        return None
    s, j = node.getChild(0), node.getChild(1)
    if s.getType() != libsbml.AST_NAME or s.getName() not in sym.scales:
        return None
    if not _is_constant(j, sym):
        return None
    shift = _evaluate(j, sym, where)
    if shift < 1 or shift != int(shift):
        return None
    return s.getName(), int(shift)


def _has(node: Any, kind: int) -> bool:
    if node.getType() == kind:
        return True
    return any(_has(node.getChild(i), kind) for i in range(node.getNumChildren()))


def _has_time(node: Any) -> bool:
    return _has(node, _libsbml().AST_NAME_TIME)


def _power(value: float, e: float, where: str) -> float:
    if (value < 0 and e != int(e)) or (value == 0 and e < 0):
        raise NetworkError(f"{where}: {value:g}^{e:g} is not a real number")
    return value**e


Factors = list[tuple[Any, float]]


def _expand(
    node: Any, exponent: float, sym: _Symbols, where: str, split: bool = False
) -> list[tuple[int, Factors]]:
    """node^exponent as a sum of signed products of factors (node, power).

    Sums are multiplied out at power 1, except falling factors S - j and sums with a sine in
    them (the sinusoidal factor, unless `split`); sums at any other power stay factors (Hill
    denominators).
    """
    libsbml = _libsbml()
    t = node.getType()
    kids = [node.getChild(i) for i in range(node.getNumChildren())]
    # Products, quotients and powers are taken apart even when constant, so that the
    # constants K and n of K^n stay visible (Hill K is then read exactly).
    if t == libsbml.AST_TIMES:
        out: list[tuple[int, Factors]] = [(1, [])]
        for k in kids:
            out = [
                (s1 * s2, f1 + f2) for s1, f1 in out for s2, f2 in _expand(k, exponent, sym, where)
            ]
        return out
    if t == libsbml.AST_DIVIDE:
        den = _expand(kids[1], -exponent, sym, where)
        return [
            (s1 * s2, f1 + f2)
            for s1, f1 in _expand(kids[0], exponent, sym, where)
            for s2, f2 in den
        ]
    if t in (libsbml.AST_POWER, libsbml.AST_FUNCTION_POWER, libsbml.AST_FUNCTION_ROOT):
        base, power = (kids[1], kids[0]) if t == libsbml.AST_FUNCTION_ROOT else (kids[0], kids[1])
        if not _is_constant(power, sym):
            raise NetworkError(f"{where}: {_unsupported(node)}")
        p = _evaluate(power, sym, where)
        p = 1.0 / p if t == libsbml.AST_FUNCTION_ROOT else p
        is_sum = base.getType() in (libsbml.AST_PLUS, libsbml.AST_MINUS)
        if is_sum and exponent * p != 1 and not _is_constant(base, sym):
            return [(1, [(base, exponent * p)])]  # a Hill denominator, or refused later
        return _expand(base, exponent * p, sym, where)
    if _is_constant(node, sym):
        return [(1, [(node, exponent)])]
    keep_sum = not split and (
        _shifted_species(node, sym, where) is not None or _has(node, libsbml.AST_FUNCTION_SIN)
    )
    if t == libsbml.AST_PLUS and exponent == 1 and not keep_sum:
        return [term for k in kids for term in _expand(k, 1.0, sym, where)]
    if t == libsbml.AST_MINUS and len(kids) == 1 and exponent in (1, -1):
        return [(-sign, f) for sign, f in _expand(kids[0], exponent, sym, where)]
    if t == libsbml.AST_MINUS and exponent == 1 and not keep_sum:
        neg = [(-sign, f) for sign, f in _expand(kids[1], 1.0, sym, where)]
        return _expand(kids[0], 1.0, sym, where) + neg
    return [(1, [(node, exponent)])]


def _read_term(factors: Factors, sym: _Symbols, where: str) -> _Term:
    """Sort a product's factors into constant, species powers, falling factors, Hill, wave."""
    libsbml = _libsbml()
    term = _Term()
    for node, e in factors:
        t = node.getType()
        shifted = _shifted_species(node, sym, where)
        if _is_constant(node, sym):
            value = _evaluate(node, sym, where)
            _power(value, e, where)  # a real number
            term.consts.append((value, e))
        elif t == libsbml.AST_NAME:
            term.powers[node.getName()] += e
        elif shifted is not None and e == 1:
            term.shifts[shifted[0]].append(shifted[1])
        elif t in (libsbml.AST_PLUS, libsbml.AST_MINUS) and e == -1 and not _has_time(node):
            term.hills.append(_hill_denominator(node, sym, where))
        elif t in (libsbml.AST_PLUS, libsbml.AST_MINUS) and e == 1 and _has_time(node):  # wave
            if term.wave is not None:
                raise NetworkError(f"{where}: more than one sinusoidal factor")
            scale, term.wave = _sinusoid(node, sym, where)
            term.consts.append((scale, 1.0))
        else:
            raise NetworkError(f"{where}: {_unsupported(node)}")
    return term


def _hill_denominator(node: Any, sym: _Symbols, where: str) -> _HillDenominator:
    """C + D*x^h, the denominator of a Hill factor with K^h = C/D."""
    constants, hill = [], None
    for sign, factors in _expand(node, 1.0, sym, where):
        term = _read_term(factors, sym, where)
        if term.shifts or term.hills or term.wave or sign * term.coef <= 0:
            break
        if not term.powers:
            constants.append(term.consts)
            continue
        if hill is not None or len(term.powers) != 1:
            break
        hill = term
    else:
        if hill is not None and constants and next(iter(hill.powers.values())) > 0:
            ((x, h),) = hill.powers.items()
            C = (
                constants[0]
                if len(constants) == 1
                else [(math.fsum(_prod(c) for c in constants), 1.0)]
            )
            return _HillDenominator(x, h, _hill_constant(C, hill.consts, h), C, hill.consts)
    raise NetworkError(
        f"{where}: the denominator {_node_text(node)!r} is not that of a Hill factor "
        "(K^n + x^n, or 1 + (x/K)^n, of one species x)"
    )


def _prod(consts: Consts) -> float:
    return math.prod(v**e for v, e in consts)


def _hill_constant(C: Consts, D: Consts, h: float) -> float:
    """K from K^h = C/D, read off exactly when the law spells it K^h + x^h or 1 + (x/K)^h."""
    if len(C) == 1 and C[0][1] == h and not D:
        return C[0][0]
    if len(D) == 1 and D[0][1] == -h and _prod(C) == 1.0:
        return D[0][0]
    return (_prod(C) / _prod(D)) ** (1.0 / h)


def _sinusoid(node: Any, sym: _Symbols, where: str) -> tuple[float, tuple[float, float, float]]:
    """C + A*sin(omega*time + phi) -> (C, (A/C, omega, phi))."""
    libsbml = _libsbml()
    const, wave = 0.0, None
    bad = NetworkError(
        f"{where}: {_node_text(node)!r}: time enters a kinetic law only as the factor "
        "(1 + a*sin(omega*time + phi))"
    )
    for sign, factors in _expand(node, 1.0, sym, where, split=True):
        coef, sines = 1.0, []
        for f, e in factors:
            if _is_constant(f, sym):
                coef *= _power(_evaluate(f, sym, where), e, where)
            elif f.getType() == libsbml.AST_FUNCTION_SIN and e == 1 and wave is None:
                sines.append(f.getChild(0))
            else:
                raise bad
        if not sines:
            const += sign * coef
        elif len(sines) == 1 and wave is None:
            wave = (sign * coef, *_linear_in_time(sines[0], sym, where, bad))
        else:
            raise bad
    if wave is None or const <= 0:
        raise bad
    amplitude, omega, phi = wave
    return const, (amplitude / const, omega, phi)


def _linear_in_time(node: Any, sym: _Symbols, where: str, bad: Exception) -> tuple[float, float]:
    libsbml = _libsbml()
    omega, phi = 0.0, 0.0
    for sign, factors in _expand(node, 1.0, sym, where):
        coef, times = 1.0, 0
        for f, e in factors:
            if _is_constant(f, sym):
                coef *= _power(_evaluate(f, sym, where), e, where)
            elif f.getType() == libsbml.AST_NAME_TIME and e == 1:
                times += 1
            else:
                raise bad
        if times > 1:
            raise bad
        if times:
            omega += sign * coef
        else:
            phi += sign * coef
    return omega, phi


def _whole(value: float, where: str, what: str) -> int:
    if value < -_TOL or abs(value - round(value)) > _TOL:
        raise NetworkError(f"{where}: {what} is {value:g}; mass action needs a whole power")
    return round(value)


def kinetic_law_terms(
    math_ast: Any,
    sym: _Symbols,
    consumed: tuple[Mapping[str, int], Mapping[str, int]],
    convention: str,
    where: str,
) -> list[LawTerm]:
    """Translate a kinetic law (MathML AST) into nncme terms: rate, orders, Hill factors.

    Args:
        math_ast: the libsbml ASTNode of the law.
        sym: what its names stand for.
        consumed: species -> stoichiometry consumed by the reaction as written (SBML
            reactants) and by its reverse (SBML products); a species' mass-action order must
            equal it, and it decides which side of a Hill regulator's power is mass action.
        convention: the mass-action convention of the network being built.
        where: the element named in errors.

    Returns:
        One `LawTerm` per term of the law (see the module docstring for the conversion).

    Raises:
        NetworkError: naming `where`, for a law that is not mass action times Hill factors.
    """
    out = []
    for sign, factors in _expand(math_ast, 1.0, sym, where):
        term = _read_term(factors, sym, where)
        if term.coef < 0:
            sign = -sign
            term.consts.append((-1.0, 1.0))
        forward = sign > 0
        need = consumed[0] if forward else consumed[1]
        hills = [_hill(term, d, need.get(d.x, 0), sym, where) for d in term.hills]
        orders, rate = _mass_action(term, need, sym, convention, where)
        if term.wave is not None:
            a, omega, phi = term.wave
            rate = Sinusoidal(rate, a, omega, phi)
        out.append(LawTerm(forward, rate, orders, hills))
    return out


def _hill(term: _Term, d: _HillDenominator, consumed: int, sym: _Symbols, where: str) -> Hill:
    """Take one Hill factor 1/(C + D x^h) out of a term: activation if x^h is left in the
    numerator beyond x's mass-action order (its consumed stoichiometry), else repression."""
    x, h = d.x, d.h
    power = term.powers.get(x, 0.0)
    if abs(power - h - consumed) < _TOL:
        term.powers[x] = power - h
        kind = "activation"
        term.divide(d.D)  # x^h / (C + D x^h) = (1/D) x^h / (K^h + x^h)
    elif abs(power - consumed) < _TOL:
        kind = "repression"
        term.divide(d.C)  # 1 / (C + D x^h) = (1/C) K^h / (K^h + x^h)
    else:
        raise NetworkError(
            f"{where}: {x}^{power:g} over (K^{h:g} + {x}^{h:g}) is neither activation nor "
            f"repression times mass action of order {consumed} in {x}"
        )
    return Hill(x, sym.scales[x] * d.K, h, kind)  # K in molecules


def _mass_action(
    term: _Term, consumed: Mapping[str, int], sym: _Symbols, convention: str, where: str
) -> tuple[dict[str, int], float]:
    """Orders and the rate c in the convention (module docstring: Stochastic rate constants)."""
    orders: dict[str, int] = {}
    rate = sym.ext * term.coef
    for x in dict.fromkeys([*consumed, *term.powers, *term.shifts]):
        power = _whole(term.powers.get(x, 0.0), where, f"the power of {x}")
        shifts = sorted(term.shifts.get(x, []))
        if shifts:
            order = len(shifts) + 1
            if power != 1 or shifts != list(range(1, order)):
                raise NetworkError(
                    f"{where}: the factors of {x} are not a falling factorial "
                    f"{x}*({x} - 1)*...*({x} - r + 1)"
                )
            if sym.scales[x] != 1.0:
                raise NetworkError(
                    f"{where}: {x} - 1 is a falling factor only when {x} counts molecules "
                    f"(its symbol is {sym.scales[x]:g} molecules)"
                )
            if convention == "power":
                raise NetworkError(
                    f"{where}: a falling factorial in {x} cannot be written in the power "
                    "convention; load with convention='falling'"
                )
        else:
            order = power
            rate /= sym.scales[x] ** order
        if x in consumed and order != consumed[x]:
            raise NetworkError(
                f"{where}: not mass action: {x} is consumed with stoichiometry {consumed[x]} "
                f"but the law has order {order} in it"
            )
        if order:
            orders[x] = order
        if convention == "binomial":
            rate *= math.factorial(order)
    return orders, rate


def _reactions(rid: str, terms: list[LawTerm], reactants: dict, products: dict) -> list[Reaction]:
    """nncme reactions of one SBML reaction: reactants = law orders (catalysts on both sides)."""
    n_fwd = sum(t.forward for t in terms)
    n_rev = len(terms) - n_fwd
    out, counters = [], {True: 0, False: 0}
    for t in terms:
        counters[t.forward] += 1
        consumed, made = (reactants, products) if t.forward else (products, reactants)
        if len(terms) == 1:
            name = rid
        else:
            count = n_fwd if t.forward else n_rev
            name = f"{rid}_{'fwd' if t.forward else 'rev'}"
            name += str(counters[t.forward]) if count > 1 else ""
        produced = dict(made)
        for x, order in t.orders.items():
            produced[x] = produced.get(x, 0) + order - consumed.get(x, 0)
        produced = {x: v for x, v in produced.items() if v}
        out.append(Reaction(dict(t.orders), produced, t.rate, name, hill=_one_or_many(t.hills)))
    return out


# --------------------------------------------------------------------- model-level reading
def _annotation(sbase: Any, name: str) -> Any:
    """The child `name` in nncme's namespace of an element's annotation, or None."""
    ann = sbase.getAnnotation()
    if ann is None:
        return None
    for i in range(ann.getNumChildren()):
        child = ann.getChild(i)
        if child.getURI() == NAMESPACE and child.getName() == name:
            return child
    return None


def _attr(node: Any, key: str) -> str | None:
    if node is None or not node.hasAttr(key):
        return None
    return node.getAttrValue(key)


def _children(node: Any, name: str) -> list[Any]:
    if node is None:
        return []
    kids = [node.getChild(i) for i in range(node.getNumChildren())]
    return [k for k in kids if k.getName() == name]


def _exact_values(sbase: Any, element: str) -> dict[str, float]:
    """Exact values nncme recorded for parameters whose 15-digit text rounds them."""
    out = {}
    for child in _children(_annotation(sbase, element), "value"):
        out[child.getAttrValue("id")] = float(child.getAttrValue("value"))
    return out


def _value(element: Any, exact: Mapping[str, float]) -> float | None:
    if not element.isSetValue():
        return None
    value = element.getValue()
    recorded = exact.get(element.getId())
    if recorded is not None and float(f"{recorded:.15g}") == value:  # not edited since
        return recorded
    return value


def _molecules_per_unit(model: Any, units: str, where: str) -> float:
    """Molecules in one unit `units` of substance (see the module docstring)."""
    libsbml = _libsbml()
    base = {"item": 1.0, "dimensionless": 1.0, "mole": AVOGADRO, "avogadro": AVOGADRO}
    definition = model.getUnitDefinition(units)
    if definition is None:
        if units in base:
            return base[units]
        if units == "substance" and model.getLevel() < 3:
            return AVOGADRO  # SBML Level 2's built-in default substance unit is the mole
        raise NetworkError(f"{where}: unknown substance unit {units!r}")
    factor, counted = 1.0, 0.0
    for i in range(definition.getNumUnits()):
        u = definition.getUnit(i)
        kind = libsbml.UnitKind_toString(u.getKind())
        e = u.getExponentAsDouble()
        factor *= (u.getMultiplier() * 10.0 ** u.getScale()) ** e
        if kind not in base:
            raise NetworkError(
                f"{where}: substance unit {units!r} is in {kind}, not a count of molecules "
                "(mole or item)"
            )
        if kind != "dimensionless":
            factor *= base[kind] ** e
            counted += e
    if counted not in (0.0, 1.0):
        raise NetworkError(f"{where}: substance unit {units!r} is not an amount of substance")
    return factor


def _substance_units(model: Any, species: Any = None) -> str:
    if species is not None and species.isSetSubstanceUnits():
        return species.getSubstanceUnits()
    if model.getLevel() >= 3:
        return model.getSubstanceUnits() if model.isSetSubstanceUnits() else "item"
    return "substance"


def _refuse_unsupported(doc: Any, model: Any) -> None:
    declared = doc.getNamespaces()  # packages the file uses (libsbml adds internal ones)
    uris = {declared.getURI(i) for i in range(declared.getLength())} - {doc.getURI()}
    for i in range(doc.getNumPlugins() if doc.getLevel() >= 3 else 0):
        plugin = doc.getPlugin(i)
        if plugin.getURI() in uris and doc.getPkgRequired(plugin.getPackageName()):
            raise NetworkError(
                f"the SBML package {plugin.getPackageName()!r} is required; nncme reads SBML core"
            )
    if model.getNumEvents():
        event = model.getEvent(0)
        raise NetworkError(f"event {event.getId() or '#0'!r}: events are not supported")
    if model.getNumRules():
        rule = model.getRule(0)
        kind = (
            "assignment rule"
            if rule.isAssignment()
            else "rate rule"
            if rule.isRate()
            else "algebraic rule"
        )
        target = rule.getVariable() if not rule.isAlgebraic() else _node_text(rule.getMath())
        raise NetworkError(f"{kind} for {target!r}: rules are not supported")
    if model.getNumInitialAssignments():
        symbol = model.getInitialAssignment(0).getSymbol()
        raise NetworkError(f"initial assignment for {symbol!r} could not be evaluated")
    for c in model.getListOfCompartments():
        if not c.getConstant():
            raise NetworkError(
                f"compartment {c.getId()!r}: non-constant compartments are not supported"
            )
    if model.getLevel() >= 3 and model.isSetConversionFactor():
        raise NetworkError("the model's conversionFactor is not supported")
    for s in model.getListOfSpecies():
        if model.getLevel() >= 3 and s.isSetConversionFactor():
            raise NetworkError(f"species {s.getId()!r}: conversionFactor is not supported")


def _convert(doc: Any, option: str) -> None:
    libsbml = _libsbml()
    props = libsbml.ConversionProperties()
    props.addOption(option, True)
    if doc.convert(props) != libsbml.LIBSBML_OPERATION_SUCCESS:
        raise NetworkError(f"libsbml could not {option} (see the document's errors)")


def _read_document(path: Path) -> Any:
    libsbml = _libsbml()
    doc = libsbml.readSBMLFromFile(str(path))
    for i in range(doc.getNumErrors()):
        error = doc.getError(i)
        if error.getSeverity() >= libsbml.LIBSBML_SEV_ERROR:
            message = " ".join(error.getMessage().split())
            raise NetworkError(f"invalid SBML (line {error.getLine()}): {message}")
    if doc.getModel() is None:
        raise NetworkError("the SBML document has no model")
    _convert(doc, "expandFunctionDefinitions")
    if doc.getModel().getNumInitialAssignments():  # what stays unexpanded is refused by name
        props = libsbml.ConversionProperties()
        props.addOption("expandInitialAssignments", True)
        doc.convert(props)
    return doc


@dataclass
class _Species:
    id: str
    count: int  # initial molecules


def _species(model: Any) -> tuple[list[_Species], _Symbols]:
    """The changing species with their initial counts, and the symbol table of the model."""
    constants: dict[str, float | None] = {}
    exact = _exact_values(model, "network")
    for p in model.getListOfParameters():
        constants[p.getId()] = _value(p, exact)
    sizes = {}
    for c in model.getListOfCompartments():
        sizes[c.getId()] = c.getSize() if c.isSetSize() else None
        constants[c.getId()] = sizes[c.getId()]
    extent = model.getExtentUnits() if model.getLevel() >= 3 and model.isSetExtentUnits() else None
    ext = _molecules_per_unit(model, extent or _substance_units(model), "the model's extent unit")
    out, scales = [], {}
    for s in model.getListOfSpecies():
        sid = s.getId()
        where = f"species {sid!r}"
        m = _molecules_per_unit(model, _substance_units(model, s), where)
        comp = model.getCompartment(s.getCompartment())
        volume = sizes.get(s.getCompartment())
        flat = comp is not None and comp.getSpatialDimensionsAsDouble() == 0
        amounts = s.getHasOnlySubstanceUnits() or flat
        if s.isSetInitialAmount():
            amount = s.getInitialAmount()
        elif s.isSetInitialConcentration():
            if volume is None and not flat:
                raise NetworkError(f"{where}: its compartment {s.getCompartment()!r} has no size")
            amount = s.getInitialConcentration() * (1.0 if flat else volume)
        else:
            raise NetworkError(f"{where}: no initial amount or concentration")
        if not amounts and volume is None:
            raise NetworkError(f"{where}: its compartment {s.getCompartment()!r} has no size")
        scale = m * (1.0 if amounts else volume)
        if s.getBoundaryCondition() or s.getConstant():  # fixed: a constant in the laws
            constants[sid] = amount if amounts else amount / volume
            continue
        scales[sid] = scale
        out.append(_Species(sid, _initial_count(amount * m, where)))
    return out, _Symbols(constants, scales, ext)


def _initial_count(molecules: float, where: str) -> int:
    if not math.isfinite(molecules) or molecules < -0.5:
        raise NetworkError(f"{where}: initial amount is {molecules:g} molecules")
    count = round(molecules)
    if abs(molecules - count) > 1e-6 * max(1.0, molecules):
        warnings.warn(
            f"{where}: the initial amount is {molecules:.6g} molecules, rounded to {count}",
            stacklevel=4,
        )
    return int(count)


def _stoichiometry(model: Any, reaction: Any, variable: set[str]) -> tuple[dict, dict]:
    sides = []
    for refs in (reaction.getListOfReactants(), reaction.getListOfProducts()):
        side: dict[str, int] = {}
        for ref in refs:
            sid = ref.getSpecies()
            where = f"reaction {reaction.getId()!r}, species {sid!r}"
            if model.getSpecies(sid) is None:
                raise NetworkError(f"{where}: no such species in the model")
            if model.getLevel() < 3 and ref.isSetStoichiometryMath():
                raise NetworkError(f"{where}: stoichiometryMath is not supported")
            value = ref.getStoichiometry()
            if not math.isfinite(value) or value < 0 or value != int(value):
                raise NetworkError(
                    f"{where}: stoichiometry {value:g} is not a whole number (fractional "
                    "stoichiometry is not supported)"
                )
            if sid in variable:
                side[sid] = side.get(sid, 0) + int(value)
        sides.append({k: v for k, v in side.items() if v})
    return sides[0], sides[1]


def _local_parameters(law: Any) -> dict[str, float | None]:
    exact = _exact_values(law.getParentSBMLObject(), "reaction")
    params = law.getListOfLocalParameters() if law.getLevel() >= 3 else law.getListOfParameters()
    return {p.getId(): _value(p, exact) for p in params}


def _network_reactions(model: Any, sym: _Symbols, convention: str) -> list[Reaction]:
    out = []
    for r in model.getListOfReactions():
        rid = r.getId()
        where = f"reaction {rid!r}"
        if r.isSetFast() and r.getFast():
            raise NetworkError(f"{where}: fast reactions are not supported")
        law = r.getKineticLaw()
        if law is None or law.getMath() is None:
            raise NetworkError(f"{where}: no kinetic law")
        reactants, products = _stoichiometry(model, r, set(sym.scales))
        local = sym.with_locals(_local_parameters(law))
        terms = kinetic_law_terms(law.getMath(), local, (reactants, products), convention, where)
        reactions = _reactions(rid, terms, reactants, products)
        name = _attr(_annotation(r, "reaction"), "name")
        if name and len(reactions) == 1:
            reactions[0].name = name
        out.extend(reactions)
    return out


def _limits(
    species: list[_Species],
    reactions: list[Reaction],
    given: Mapping[str, int],
    written: Mapping[str, int],
    default_limit: int | None,
    path: Path,
) -> dict[str, int]:
    """Count limits: given, else written by nncme, else bounded by a law, else the default."""
    ids = [s.id for s in species]
    unknown = [k for k in given if k not in ids]
    if unknown:
        raise NetworkError(
            f"limits: unknown species {unknown[0]!r}; species that change: {', '.join(ids)}"
        )
    change = np.zeros((len(reactions), len(ids)), dtype=np.int64)
    for k, r in enumerate(reactions):
        for i, sid in enumerate(ids):
            change[k, i] = r.products.get(sid, 0) - r.reactants.get(sid, 0)
    initial = np.array([s.count for s in species], dtype=np.int64)
    bounded: dict[str, int] = {}
    for w in detect_conservation_laws(change) if reactions else []:
        if (w >= 0).all():
            total = int(w @ initial)
            for i in np.nonzero(w)[0]:
                bound = total // int(w[i]) + 1
                bounded[ids[i]] = min(bound, bounded.get(ids[i], bound))
    out, missing = {}, []
    for sid in ids:
        limit = given.get(sid, written.get(sid, bounded.get(sid, default_limit)))
        if limit is None:
            missing.append(sid)
        else:
            out[sid] = limit
    if missing:
        shown = missing[:3]
        more = ", ..." if len(missing) > 3 else ""
        in_python = ", ".join(f"{s!r}: N" for s in shown) + more
        in_spec = ",".join(f"{s}=N" for s in shown) + more.replace(", ", ",")
        raise NetworkError(
            f"SBML has no count limits and none is known for {', '.join(missing)}: give "
            f"limits={{{in_python}}} in Python, or name the file as {path}:{in_spec} "
            "(counts range over 0..N-1; default_limit=N sets every species not named)"
        )
    return out


def load_sbml(
    path: str | Path,
    limits: Mapping[str, int] | None = None,
    *,
    default_limit: int | None = None,
    convention: str | None = None,
) -> ReactionNetwork:
    """Read an SBML file as a `ReactionNetwork` (what is read and how: the module docstring).

    Args:
        path: an SBML file (Level 2 or 3 core).
        limits: species id -> count limit M (counts 0..M-1) for the species that change.
        default_limit: the limit of a species that `limits`, the file's nncme annotation and
            the conservation laws leave without one (None: such a species is an error).
        convention: the mass-action convention of the network: None (the one nncme wrote into
            the file, else "falling", in which the stochastic conversion is exact), "falling",
            "binomial" (the same propensities, rates times prod r!) or "power" (S^r read as
            n^r).

    Returns:
        The network: the species that change (ids as names), reactions (reversible ones split),
        initial counts, t_end and dt from the file's nncme annotation (else 1 and 0.01).

    Raises:
        ImportError: python-libsbml is not installed (the message gives the pip command).
        FileNotFoundError: no such file.
        NetworkError: an unsupported or invalid model; the message starts with the file name
            and names the element, e.g. ``m.xml: reaction 'r3': piecewise is not supported ...``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such SBML file: {path}")
    try:
        return _load(path, dict(limits or {}), default_limit, convention)
    except NetworkError as exc:
        raise NetworkError(f"{path}: {exc}") from None


def _load(
    path: Path, limits: dict[str, int], default_limit: int | None, convention: str | None
) -> ReactionNetwork:
    doc = _read_document(path)
    model = doc.getModel()
    _refuse_unsupported(doc, model)
    meta = _annotation(model, "network")
    convention = convention or _attr(meta, "convention") or "falling"
    if convention not in CONVENTIONS:
        raise NetworkError(f"convention: must be one of {CONVENTIONS}, got {convention!r}")
    species, sym = _species(model)
    if not species:
        raise NetworkError("the model has no species that change")
    reactions = _network_reactions(model, sym, convention)
    written = {}
    for s in model.getListOfSpecies():
        limit = _attr(_annotation(s, "species"), "limit")
        if limit is not None:
            written[s.getId()] = int(limit)
    limit_of = _limits(species, reactions, limits, written, default_limit, path)
    names = {}
    for s in model.getListOfSpecies():
        names[s.getId()] = _attr(_annotation(s, "species"), "name") or s.getId()
    if any(names[s.id] != s.id for s in species):
        reactions = [_renamed(r, names) for r in reactions]
    conservation = None
    if meta is not None:
        conservation = []
        for law in _children(meta, "law"):
            ids, weights = law.getAttrValue("species").split(), law.getAttrValue("weights")
            conservation.append({names[s]: int(w) for s, w in zip(ids, weights.split())})
    text = {k: _attr(meta, k) for k in ("name", "description", "source", "t_end", "dt")}
    recorded = _children(meta, "parameters")
    if recorded and recorded[0].getNumChildren():
        parameters = json.loads(recorded[0].getChild(0).getCharacters())
    else:
        parameters = {p.getId(): sym.constants[p.getId()] for p in model.getListOfParameters()}
    return ReactionNetwork(
        {names[s.id]: limit_of[s.id] for s in species},
        reactions,
        {names[s.id]: s.count for s in species},
        name=text["name"] or model.getId() or path.stem,
        convention=convention,  # type: ignore[arg-type]
        conservation=conservation,
        t_end=float(text["t_end"] or 1.0),
        dt=float(text["dt"] or 0.01),
        description=text["description"] if text["description"] is not None else model.getName(),
        source=text["source"] if text["source"] is not None else f"SBML file {path.name}",
        parameters=parameters,
    )


def _one_or_many(hills: list[Hill]) -> Hill | list[Hill] | None:
    """`Reaction.hill` as a network written by hand holds it: None, one Hill, or a list."""
    return None if not hills else hills[0] if len(hills) == 1 else list(hills)


def _renamed(r: Reaction, names: Mapping[str, str]) -> Reaction:
    hills = [Hill(names[h.regulator], h.K, h.n, h.kind) for h in r.hills]
    reactants = {names[k]: v for k, v in r.reactants.items()}
    products = {names[k]: v for k, v in r.products.items()}
    return Reaction(reactants, products, r.rate, r.name, hill=_one_or_many(hills))


# ============================================================================== writing
def _sbml_ids(names: list[str], taken: set[str]) -> list[str]:
    """Valid, unique SBML ids for names (names that are valid ids are kept)."""
    out = []
    for name in names:
        sid = re.sub(r"\W", "_", name)
        if not _ID.match(sid):
            sid = "_" + sid
        while sid in taken:
            sid += "_"
        taken.add(sid)
        out.append(sid)
    return out


class _Writer:
    """Builds kinetic-law ASTs and the annotations of one document."""

    def __init__(self) -> None:
        self.sbml = _libsbml()

    def name(self, sid: str) -> Any:
        node = self.sbml.ASTNode(self.sbml.AST_NAME)
        node.setName(sid)
        return node

    def number(self, value: int) -> Any:
        node = self.sbml.ASTNode(self.sbml.AST_INTEGER)
        node.setValue(int(value))
        return node

    def apply(self, kind: str, *children: Any) -> Any:
        node = self.sbml.ASTNode(getattr(self.sbml, f"AST_{kind}"))
        for child in children:
            node.addChild(child)
        return node

    def time(self) -> Any:
        node = self.sbml.ASTNode(self.sbml.AST_NAME_TIME)
        node.setName("time")
        return node


def _annotate(sbase: Any, element: str, attrs: Mapping[str, Any], body: str = "") -> None:
    text = " ".join(f"{k}={quoteattr(str(v))}" for k, v in attrs.items() if v is not None)
    xml = f"<nncme:{element} xmlns:nncme={quoteattr(NAMESPACE)} {text}"
    xml += f">{body}</nncme:{element}>" if body else "/>"
    sbase.appendAnnotation(xml)


def _local(law: Any, pid: str, value: float, exact: dict[str, float]) -> None:
    p = law.createLocalParameter()
    p.setId(pid)
    p.setValue(float(value))
    if float(f"{value:.15g}") != value:  # libsbml writes 15 digits: keep the exact double
        exact[pid] = float(value)


def _values(exact: Mapping[str, float]) -> str:
    return "".join(
        f"<nncme:value id={quoteattr(k)} value={quoteattr(repr(v))}/>" for k, v in exact.items()
    )


def _law(
    w: _Writer, r: Reaction, ids: Mapping[str, str], convention: str, law: Any, taken: set[str]
) -> tuple[Any, dict[str, float]]:
    """The propensity of r in molecule counts as a MathML AST, with its local parameters, and
    the exact values of those that libsbml's 15-digit output would round."""

    def pid(base: str) -> str:
        while base in taken:
            base = "p_" + base
        return base

    exact: dict[str, float] = {}
    convention = r.convention or convention  # written out, so the reader needs no convention
    rate = r.rate
    c = rate.c if isinstance(rate, Sinusoidal) else float(rate)
    _local(law, pid("c"), c, exact)
    factors = [w.name(pid("c"))]
    divisor = 1
    for sp, order in r.reactants.items():
        x = ids[sp]
        if convention == "power":
            factors.append(
                w.name(x) if order == 1 else w.apply("POWER", w.name(x), w.number(order))
            )
            continue
        factors.append(w.name(x))
        factors.extend(w.apply("MINUS", w.name(x), w.number(j)) for j in range(1, order))
        divisor *= math.factorial(order) if convention == "binomial" else 1
    for i, h in enumerate(r.hills):
        K_id, n_id = (pid(f"{key}{i + 1}" if len(r.hills) > 1 else key) for key in ("K", "n"))
        _local(law, K_id, h.K, exact)
        _local(law, n_id, h.n, exact)

        def hill_power(base: Any, n_id: str = n_id) -> Any:
            return w.apply("POWER", base, w.name(n_id))

        x = ids[h.regulator]
        top = hill_power(w.name(x)) if h.kind == "activation" else hill_power(w.name(K_id))
        bottom = w.apply("PLUS", hill_power(w.name(K_id)), hill_power(w.name(x)))
        factors.append(w.apply("DIVIDE", top, bottom))
    if isinstance(rate, Sinusoidal):
        for key in ("a", "omega", "phi"):
            _local(law, pid(key), getattr(rate, key), exact)
        phase = w.apply(
            "PLUS", w.apply("TIMES", w.name(pid("omega")), w.time()), w.name(pid("phi"))
        )
        wave = w.apply("TIMES", w.name(pid("a")), w.apply("FUNCTION_SIN", phase))
        factors.append(w.apply("PLUS", w.number(1), wave))
    product = factors[0] if len(factors) == 1 else w.apply("TIMES", *factors)
    if divisor > 1:
        product = w.apply("DIVIDE", product, w.number(divisor))
    return product, exact


def _check_writable(r: Reaction, convention: str) -> None:
    """Refuse, naming the reaction, what `save_sbml` cannot write so that `load_sbml` reads
    the same propensities back: SBML laws are read here as mass action times Hill factors
    (times a sinusoid), so a complement factor (total - x), a rate form other than the
    sinusoid (it would need events or piecewise MathML) and a power-law reaction of order two
    or more in a network of another convention (x^2 reads back as x(x-1)) have no faithful
    form."""
    where = f"reaction {r.name!r}"
    hint = "; save the network as .toml or .json, which hold it"
    if r.propensity is not None or (callable(r.rate) and not isinstance(r.rate, RateForm)):
        raise NetworkError(f"{where}: its rate or propensity is a Python callable{hint}")
    if not isinstance(r.rate, (int, float, Sinusoidal)):
        raise NetworkError(f"{where}: rate form {type(r.rate).__name__} has no SBML law here{hint}")
    if r.complements:
        raise NetworkError(f"{where}: complement factors are not written to SBML{hint}")
    own = r.convention or convention
    order = max(r.reactants.values(), default=0)
    if own != convention and "power" in (own, convention) and order > 1:
        raise NetworkError(
            f"{where}: a {own!r} law of order > 1 in a {convention!r} network reads back in the "
            f"network's convention (x^2 and x(x-1) are read by the convention){hint}"
        )


def save_sbml(network: ReactionNetwork, path: str | Path) -> Path:
    """Write a network as SBML Level 3 Version 1 (the module docstring says how).

    Returns:
        The path written.

    Raises:
        NetworkError: a reaction with a custom propensity or a rate given as a Python callable
            (naming the reaction): SBML has no place for them.
    """
    libsbml = _libsbml()
    path = Path(path)
    for r in network.reactions:
        _check_writable(r, network.convention)
    doc = libsbml.SBMLDocument(3, 1)
    model = doc.createModel()
    taken: set[str] = set()
    (model_id,) = _sbml_ids([network.name], set())
    model.setId(model_id)
    model.setName(network.name)
    for key in ("SubstanceUnits", "ExtentUnits"):
        getattr(model, f"set{key}")("item")
    species_ids = _sbml_ids(network.species_names, taken)
    ids = dict(zip(network.species_names, species_ids))
    (cell,) = _sbml_ids(["cell"], taken)
    comp = model.createCompartment()
    comp.setId(cell)
    comp.setSize(1.0)
    comp.setSpatialDimensions(3)
    comp.setConstant(True)
    for sp, sid, limit, n0 in zip(
        network.species_names, species_ids, network.limits, network.initial_state
    ):
        s = model.createSpecies()
        s.setId(sid)
        s.setCompartment(cell)
        s.setInitialAmount(float(n0))
        s.setSubstanceUnits("item")
        s.setHasOnlySubstanceUnits(True)
        s.setBoundaryCondition(False)
        s.setConstant(False)
        _annotate(s, "species", {"limit": int(limit), "name": sp if sp != sid else None})
    writer = _Writer()
    reaction_ids = _sbml_ids(network.reaction_names, set(taken))
    for r, rid in zip(network.reactions, reaction_ids):
        reaction = model.createReaction()
        reaction.setId(rid)
        reaction.setReversible(False)
        reaction.setFast(False)  # required in Level 3 Version 1
        for side, create in (
            (r.reactants, reaction.createReactant),
            (r.products, reaction.createProduct),
        ):
            for sp, coef in side.items():
                if coef:
                    ref = create()
                    ref.setSpecies(ids[sp])
                    ref.setStoichiometry(float(coef))
                    ref.setConstant(True)
        regulators = dict.fromkeys(h.regulator for h in r.hills)  # once each, in order
        for x in regulators:
            if x not in r.reactants and x not in r.products:
                reaction.createModifier().setSpecies(ids[x])
        law = reaction.createKineticLaw()
        ast, exact = _law(writer, r, ids, network.convention, law, set(species_ids) | {cell})
        law.setMath(ast)
        if r.name != rid or exact:
            _annotate(
                reaction, "reaction", {"name": r.name if r.name != rid else None}, _values(exact)
            )
    laws = ""
    for conserved in network.conservation_laws:
        pairs = zip(network.species_names, conserved.weights)
        used = [(ids[sp], int(w)) for sp, w in pairs if w]
        species = quoteattr(" ".join(sid for sid, _ in used))
        weights = quoteattr(" ".join(str(w) for _, w in used))
        laws += f"<nncme:law species={species} weights={weights}/>"
    params = network.to_dict()["parameters"]
    if params:
        laws += f"<nncme:parameters>{escape(json.dumps(params))}</nncme:parameters>"
    _annotate(
        model,
        "network",
        {
            "name": network.name,
            "convention": network.convention,
            "t_end": repr(float(network.t_end)),
            "dt": repr(float(network.dt)),
            "description": network.description,
            "source": network.source,
        },
        laws,
    )
    notes = "".join(f"<p>{escape(t)}</p>" for t in (network.description, network.source) if t)
    if notes:
        model.setNotes(f'<body xmlns="http://www.w3.org/1999/xhtml">{notes}</body>')
    text = libsbml.writeSBMLToString(doc)
    if not text:
        raise NetworkError(f"{path}: libsbml could not write the document")
    with atomic_write(path) as f:  # never half a file, as for every file nncme writes
        f.write(text)
    return path
