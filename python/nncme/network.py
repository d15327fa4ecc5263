"""Reaction networks: species, reactions, propensities, time-dependent rates, limits and laws.

A `ReactionNetwork` is validated when it is made (every error names the offending field) and
compiles once per device and dtype to the dense and sparse tensors that the operators take
(`CompiledNetwork`). Propensities follow DESIGN section 1: mass action in one of three
conventions (per network, or per reaction), times any number of factors (Hill activation or
repression of a regulator, and complement factors f(total - x) of implicit species such as free
gene copies), or a user callable; a reaction whose product state leaves the box 0 <= n_i < M_i
does not fire there. Time-dependent rates are named forms (`Sinusoidal`, `PiecewiseConstant`,
`Exponential`, `Table`: files can hold them, and each gives the SSA an exact bound) or
callables.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from .conservation import (
    ConservationLaw,
    FeasibilityTables,
    detect_conservation_laws,
    law_name,
)

__all__ = [
    "CONVENTIONS",
    "FACTOR_KINDS",
    "RATE_FORMS",
    "CompiledNetwork",
    "Complement",
    "Exponential",
    "Hill",
    "NetworkError",
    "PiecewiseConstant",
    "RateForm",
    "RateFunction",
    "Reaction",
    "ReactionNetwork",
    "Sinusoidal",
    "Species",
    "Table",
    "check_times",
]

Convention = Literal["falling", "binomial", "power"]
CONVENTIONS: tuple[str, ...] = ("falling", "binomial", "power")  # index = kernel code
# Kinds of the propensity factors beyond mass action; index = kernel code (factor_params[:, 0]).
FACTOR_KINDS: tuple[str, ...] = ("activation", "repression", "complement")


class NetworkError(ValueError):
    """A reaction network definition is invalid; the message names the offending field."""


@dataclass(frozen=True)
class Species:
    """A species with its count limit: counts range over 0 .. limit-1."""

    name: str
    limit: int


@dataclass(frozen=True)
class Hill:
    """Hill factor of one regulator species x, multiplying the mass-action propensity.

    activation: x^n / (K^n + x^n); repression: K^n / (K^n + x^n). K in molecules, n unitless.
    """

    regulator: str
    K: float
    n: float
    kind: Literal["activation", "repression"] = "repression"


@dataclass(frozen=True)
class Complement:
    """The mass-action factor of an implicit species: f(total - x, order) for a species x.

    For a state that is not a species of its own, such as the free copies of a gene with
    `total` copies of which x are bound: the free count is total - x, and a reaction that uses
    `order` free copies gets the factor f(total - x, order) in the reaction's convention (falling
    (m)(m-1)..(m-order+1), binomial C(m, order) or power m^order, m = total - x), as if the free
    copies were a reactant. The network checks that total - x >= 0 over the whole box
    (total >= limit of x minus 1), so the factor is never asked of a negative count.
    """

    species: str
    total: int
    order: int = 1


class RateForm:
    """A named time-dependent rate c(t) (1/time) that network files can hold.

    Every form evaluates at one time (`form(t)`) and at many (`at`, a tensor of times, for the
    SSA), gives an exact upper bound on an interval (`max_on`, for thinning in the SSA), the
    times where it jumps or kinks (`discontinuities`, where FSP restarts its integrator), a text
    (`describe`) and its file table (`to_dict`, read back by `nncme.io`). `check` raises a
    NetworkError naming the offending field.
    """

    FORM: ClassVar[str] = ""

    def __call__(self, t: float) -> float:
        return float(self.at(torch.tensor([float(t)], dtype=torch.float64))[0])

    def at(self, t: torch.Tensor) -> torch.Tensor:
        """(m,) float64 times -> (m,) rates."""
        raise NotImplementedError

    def max_on(self, t0: float, t1: float) -> float:
        """The supremum of the rate on [t0, t1] (used by thinning in the SSA)."""
        raise NotImplementedError

    def discontinuities(self) -> tuple[float, ...]:
        """Times where the rate or its time derivative jumps (FSP integrates between them)."""
        return ()

    def describe(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """{"form": FORM, field: value, ...}, tuples as lists (as TOML and JSON hold them)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            "form": self.FORM,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
        }

    def check(self, where: str) -> None:
        """Raise NetworkError naming `where.field` for an invalid parameter."""


@dataclass(frozen=True)
class Sinusoidal(RateForm):
    """Rate c * (1 + a * sin(omega * t + phi)); c in 1/time, omega in 1/time, |a| <= 1."""

    FORM: ClassVar[str] = "sinusoidal"
    c: float
    a: float
    omega: float
    phi: float = 0.0

    def __call__(self, t: float) -> float:
        return self.c * (1.0 + self.a * math.sin(self.omega * t + self.phi))

    def at(self, t: torch.Tensor) -> torch.Tensor:
        return self.c * (1.0 + self.a * torch.sin(self.omega * t + self.phi))

    def max_on(self, t0: float, t1: float) -> float:
        """An upper bound of the rate on [t0, t1] (its maximum over all t)."""
        return self.c * (1.0 + abs(self.a))

    def describe(self) -> str:
        return f"{self.c:g}*(1 + {self.a:g}*sin({self.omega:g}*t + {self.phi:g}))"

    def check(self, where: str) -> None:
        _check_positive(self.c, f"{where}.c")
        if not (_is_number(self.a) and math.isfinite(self.a) and abs(self.a) <= 1):
            raise NetworkError(f"{where}.a: the amplitude must satisfy |a| <= 1, got {self.a!r}")
        for key in ("omega", "phi"):
            _check_finite(getattr(self, key), f"{where}.{key}")


@dataclass(frozen=True)
class PiecewiseConstant(RateForm):
    """A rate that jumps at given times: values[0] before breakpoints[0], values[j] from
    breakpoints[j-1] (inclusive) to breakpoints[j], values[-1] from breakpoints[-1] on.

    breakpoints: (m,) strictly increasing times; values: (m+1,) rates >= 0 (1/time).
    """

    FORM: ClassVar[str] = "piecewise_constant"
    breakpoints: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "breakpoints", _as_tuple(self.breakpoints))
        object.__setattr__(self, "values", _as_tuple(self.values))

    def _piece(self, t: float) -> int:
        return bisect.bisect_right(self.breakpoints, t)

    def __call__(self, t: float) -> float:
        return self.values[self._piece(float(t))]

    def at(self, t: torch.Tensor) -> torch.Tensor:
        bp = torch.tensor(self.breakpoints, dtype=t.dtype, device=t.device)
        values = torch.tensor(self.values, dtype=t.dtype, device=t.device)
        return values[torch.searchsorted(bp, t.contiguous(), right=True)]

    def max_on(self, t0: float, t1: float) -> float:
        return max(self.values[self._piece(t0) : self._piece(t1) + 1])

    def discontinuities(self) -> tuple[float, ...]:
        return self.breakpoints

    def describe(self) -> str:
        pieces = [f"{self.values[0]:g}"]
        pieces += [f"{v:g} from t={b:g}" for b, v in zip(self.breakpoints, self.values[1:])]
        return "piecewise " + ", ".join(pieces)

    def check(self, where: str) -> None:
        _check_increasing(self.breakpoints, f"{where}.breakpoints", minimum=0)
        if len(self.values) != len(self.breakpoints) + 1:
            raise NetworkError(
                f"{where}.values: needs one more value than breakpoints ({len(self.breakpoints)}"
                f" breakpoints, so {len(self.breakpoints) + 1} values), got {len(self.values)}"
            )
        for j, v in enumerate(self.values):
            _check_positive(v, f"{where}.values[{j}]")


@dataclass(frozen=True)
class Exponential(RateForm):
    """Rate c_inf + (c0 - c_inf) * exp(-t / tau): decay (c_inf = 0) or relaxation to c_inf.

    c0: the rate at t = 0 and c_inf as t -> inf (1/time, >= 0); tau: time constant (> 0).
    """

    FORM: ClassVar[str] = "exponential"
    c0: float
    tau: float
    c_inf: float = 0.0

    def __call__(self, t: float) -> float:
        return self.c_inf + (self.c0 - self.c_inf) * math.exp(-t / self.tau)

    def at(self, t: torch.Tensor) -> torch.Tensor:
        return self.c_inf + (self.c0 - self.c_inf) * torch.exp(-t / self.tau)

    def max_on(self, t0: float, t1: float) -> float:
        return max(self(t0), self(t1))  # monotone in t

    def describe(self) -> str:
        if self.c_inf == 0:
            return f"{self.c0:g}*exp(-t/{self.tau:g})"
        return f"{self.c_inf:g} + ({self.c0:g} - {self.c_inf:g})*exp(-t/{self.tau:g})"

    def check(self, where: str) -> None:
        _check_positive(self.c0, f"{where}.c0")
        _check_positive(self.c_inf, f"{where}.c_inf")
        _check_positive(self.tau, f"{where}.tau", allow_zero=False)


@dataclass(frozen=True)
class Table(RateForm):
    """A tabulated rate: linear interpolation between (times[j], values[j]), and the first or
    last value outside the table.

    times: (m,) strictly increasing; values: (m,) rates >= 0 (1/time).
    """

    FORM: ClassVar[str] = "table"
    times: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "times", _as_tuple(self.times))
        object.__setattr__(self, "values", _as_tuple(self.values))

    def __call__(self, t: float) -> float:
        return float(np.interp(float(t), self.times, self.values))

    def at(self, t: torch.Tensor) -> torch.Tensor:
        times = torch.tensor(self.times, dtype=t.dtype, device=t.device)
        values = torch.tensor(self.values, dtype=t.dtype, device=t.device)
        if times.shape[0] == 1:
            return values.expand_as(t).clone()
        hi = torch.searchsorted(times, t.contiguous(), right=True).clamp(1, times.shape[0] - 1)
        lo = hi - 1
        w = ((t - times[lo]) / (times[hi] - times[lo])).clamp(0.0, 1.0)
        return values[lo] + w * (values[hi] - values[lo])

    def max_on(self, t0: float, t1: float) -> float:
        inside = [v for s, v in zip(self.times, self.values) if t0 < s < t1]
        return max([self(t0), self(t1), *inside])  # linear between knots: a knot or an end

    def discontinuities(self) -> tuple[float, ...]:
        return self.times

    def describe(self) -> str:
        return "table " + ", ".join(f"({s:g}, {v:g})" for s, v in zip(self.times, self.values))

    def check(self, where: str) -> None:
        if not self.times:
            raise NetworkError(f"{where}.times: give at least one time")
        _check_increasing(self.times, f"{where}.times")
        if len(self.values) != len(self.times):
            raise NetworkError(
                f"{where}.values: needs one value per time ({len(self.times)}), got "
                f"{len(self.values)}"
            )
        for j, v in enumerate(self.values):
            _check_positive(v, f"{where}.values[{j}]")


RATE_FORMS: dict[str, type[RateForm]] = {
    cls.FORM: cls for cls in (Sinusoidal, PiecewiseConstant, Exponential, Table)
}


@dataclass(frozen=True)
class RateFunction:
    """A user rate c(t) in 1/time with an upper bound `max_rate` for exact thinning in the SSA."""

    fn: Callable[[float], float]
    max_rate: float | None = None

    def __call__(self, t: float) -> float:
        return float(self.fn(t))

    def max_on(self, t0: float, t1: float) -> float:
        if self.max_rate is None:
            raise NetworkError(
                "a time-dependent rate given as a plain callable has no upper bound; wrap it as "
                "RateFunction(fn, max_rate=...) so the SSA can use exact thinning"
            )
        return self.max_rate

    def describe(self) -> str:
        return getattr(self.fn, "__name__", "callable")


Rate = float | int | RateForm | RateFunction | Callable[[float], float]
# A custom propensity: (states (B, L) float64 counts, t) -> (B,) propensities, rate included.
PropensityFn = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass
class Reaction:
    """One reaction: reactants -> products at `rate`.

    The propensity is rate(t) * prod_i f(n_i, r_i) * prod of the factors, with f the mass-action
    factor of the reaction's convention.

    Args:
        reactants: species name -> stoichiometric coefficient (molecules consumed).
        products: species name -> coefficient (molecules produced).
        rate: a constant c (1/time), a named form (`Sinusoidal`, `PiecewiseConstant`,
            `Exponential`, `Table`), a `RateFunction`, or a callable t -> c(t).
        name: a label used in messages and reports.
        hill: a Hill factor of a regulator, or a sequence of them (their product), multiplying
            the mass-action term.
        complement: a `Complement` factor f(total - x, order) of an implicit species, or a
            sequence of them.
        convention: this reaction's mass-action convention ("falling", "binomial", "power");
            None: the network's.
        propensity: a custom callable (states (B, L) float64, t) -> (B,) that replaces mass
            action, rate and factors entirely (the slow general path). The truncation rule
            still applies. Set `time_dependent=True` if it depends on t.
        time_dependent: only for custom propensities; named forms and callables are detected.
        propensity_max: an upper bound of a time-dependent custom propensity (SSA thinning).
    """

    reactants: Mapping[str, int]
    products: Mapping[str, int]
    rate: Rate = 1.0
    name: str = ""
    hill: Hill | Sequence[Hill] | None = None
    propensity: PropensityFn | None = None
    time_dependent: bool = False
    propensity_max: float | None = None
    complement: Complement | Sequence[Complement] | None = None
    convention: Convention | None = None

    @property
    def hills(self) -> tuple[Hill, ...]:
        """The Hill factors as a tuple (empty for none)."""
        return _factor_tuple(self.hill, Hill)

    @property
    def complements(self) -> tuple[Complement, ...]:
        """The complement factors as a tuple (empty for none)."""
        return _factor_tuple(self.complement, Complement)

    @property
    def has_time_dependent_rate(self) -> bool:
        if self.propensity is not None:
            return self.time_dependent
        return not isinstance(self.rate, (int, float))

    def rate_at(self, t: float) -> float:
        rate = self.rate
        return float(rate) if isinstance(rate, (int, float)) else float(rate(t))

    def describe(self) -> str:
        def side(d: Mapping[str, int]) -> str:
            return " + ".join(f"{v if v != 1 else ''}{k}" for k, v in d.items() if v) or "0"

        text = f"{side(self.reactants)} -> {side(self.products)}"
        if self.propensity is not None:
            return f"{text}  [custom propensity]"
        rate = self.rate
        r = f"{rate:g}" if isinstance(rate, (int, float)) else getattr(rate, "describe", str)()
        factors = "".join(
            f" * Hill-{h.kind}({h.regulator}; K={h.K:g}, n={h.n:g})" for h in self.hills
        )
        for c in self.complements:
            free = f"{c.total} - {c.species}"
            factors += f" * ({free})" if c.order == 1 else f" * f({free}, order {c.order})"
        convention = f"  [{self.convention}]" if self.convention is not None else ""
        return f"{text}  @ {r}{factors}{convention}"


def _factor_tuple(value: Any, kind: type) -> tuple:
    if value is None:
        return ()
    if isinstance(value, kind):
        return (value,)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value)
    return (value,)  # the network's validation names what it is


@dataclass
class CompiledNetwork:
    """The network as the tensors the operators take, on one device and dtype.

    Sparse reaction table (the operators' form, O(nnz) per state): reaction k owns rows
    rxn_ptr[k]:rxn_ptr[k+1] of rxn_entries, each (species, reactant order, net change) for a
    species that reaction k consumes or changes. Sparse factor table: reaction k owns rows
    factor_ptr[k]:factor_ptr[k+1] of factor_index and factor_params, one per factor beyond mass
    action (most reactions own none).

    Attributes:
        rxn_ptr: (K+1,) int64.  rxn_entries: (nnz, 3) int64.
        reactants: (K, L) int64 dense reactant orders.  change: (K, L) int64 net changes s_k.
        limits: (L,) int64 count limits M_i.
        convention: (K,) int64 mass-action convention per reaction: 0 falling factorial,
            1 binomial, 2 power.
        factor_ptr: (K+1,) int64.  factor_index: (F,) int64 species of each factor.
        factor_params: (F, 3) float rows (kind, a, b): kind 0 Hill activation or 1 Hill
            repression with a = K (molecules), b = n; kind 2 complement with a = total, b =
            order (f(total - x, order) in the reaction's convention).
        constant_rates: (K,) float, the rates when none depends on time.
        custom: reaction indices with a custom propensity callable.
        cons_*: conservation laws laid out for the samplers (see FeasibilityTables).
    """

    network: ReactionNetwork
    device: torch.device
    dtype: torch.dtype
    rxn_ptr: torch.Tensor
    rxn_entries: torch.Tensor
    reactants: torch.Tensor
    change: torch.Tensor
    limits: torch.Tensor
    convention: torch.Tensor
    factor_ptr: torch.Tensor
    factor_index: torch.Tensor
    factor_params: torch.Tensor
    constant_rates: torch.Tensor | None
    custom: tuple[int, ...]
    cons_weights: torch.Tensor
    cons_totals: torch.Tensor
    cons_law_meta: torch.Tensor
    cons_group_meta: torch.Tensor
    cons_table: torch.Tensor

    def rates(self, t: float) -> torch.Tensor:
        """(K,) rate constants at time t on this device and dtype."""
        if self.constant_rates is not None:
            return self.constant_rates
        return torch.as_tensor(self.network.rates(t), dtype=self.dtype, device=self.device)

    @property
    def num_species(self) -> int:
        return self.limits.shape[0]

    @property
    def num_reactions(self) -> int:
        return self.rxn_ptr.shape[0] - 1

    def operator_args(self, t: float) -> tuple:
        """The network arguments shared by the propensity and transition operators."""
        return (
            self.rxn_ptr,
            self.rxn_entries,
            self.limits,
            self.rates(t),
            self.convention,
            self.factor_ptr,
            self.factor_index,
            self.factor_params,
        )


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise NetworkError(f"{where}: species names must be non-empty strings, got {name!r}")
    return name


def _check_count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise NetworkError(f"{where}: must be a non-negative integer, got {value!r}")
    if value < 0:
        raise NetworkError(f"{where}: must be a non-negative integer, got {value!r}")
    return int(value)


def _check_positive(value: Any, where: str, allow_zero: bool = True) -> float:
    if not _is_number(value):  # float() would take "3" and True
        raise NetworkError(f"{where}: must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        need = ">= 0" if allow_zero else "> 0"
        raise NetworkError(f"{where}: must be finite and {need}, got {value!r}")
    return v


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_finite(value: Any, where: str) -> float:
    if not _is_number(value) or not math.isfinite(float(value)):
        raise NetworkError(f"{where}: must be a finite number, got {value!r}")
    return float(value)


def _check_increasing(values: Any, where: str, minimum: float | None = None) -> None:
    """A sequence of finite numbers, strictly increasing (and >= minimum if given)."""
    if not isinstance(values, tuple):
        raise NetworkError(f"{where}: must be a list of numbers, got {values!r}")
    for j, v in enumerate(values):
        _check_finite(v, f"{where}[{j}]")
        if minimum is not None and v < minimum:
            raise NetworkError(f"{where}[{j}]: must be >= {minimum:g}, got {v!r}")
        if j and v <= values[j - 1]:
            raise NetworkError(
                f"{where}: must be strictly increasing, got {values[j - 1]!r} then {v!r}"
            )


def _as_tuple(values: Any) -> Any:
    """A list or array as a tuple (hashable, comparable); anything else as given, for `check`."""
    if isinstance(values, (str, bytes, Mapping)):
        return values
    try:
        return tuple(values.tolist() if isinstance(values, np.ndarray) else values)
    except TypeError:
        return values


class ReactionNetwork:
    """A stochastic reaction network with count limits, initial state and natural time grid.

    Args:
        species: names with count limits, as a mapping name -> limit M (counts 0..M-1) or a
            sequence of `Species`.
        reactions: the reactions.
        initial: initial counts per species (missing species start at 0).
        name: a short identifier.
        convention: mass-action convention: "falling" (n(n-1)..(n-r+1), the default),
            "binomial" (C(n, r)) or "power" (n^r); the default of reactions that do not set
            their own.
        conservation: None to detect linear conservation laws from the stoichiometry, or a list
            of declared laws, each a mapping species -> integer weight (optionally with a key
            "total" that must match the initial state). [] declares that there are none.
        t_end: natural end time of a study (time units of the rates).
        dt: natural time step of the VAN.
        description, source: documentation (what the system is, where parameters come from).
        parameters: the named parameters the network was built from, for reports.

    Raises:
        NetworkError: naming the offending field, for any invalid definition.
    """

    def __init__(
        self,
        species: Mapping[str, int] | Sequence[Species],
        reactions: Sequence[Reaction],
        initial: Mapping[str, int] | None = None,
        *,
        name: str = "network",
        convention: Convention = "falling",
        conservation: Sequence[Mapping[str, int]] | None = None,
        t_end: float = 1.0,
        dt: float = 0.01,
        description: str = "",
        source: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.source = source
        self.parameters = dict(parameters or {})
        self.species = self._validate_species(species)
        self.species_names = [s.name for s in self.species]
        self._index = {s: i for i, s in enumerate(self.species_names)}
        if convention not in CONVENTIONS:
            raise NetworkError(f"convention: must be one of {CONVENTIONS}, got {convention!r}")
        self.convention: Convention = convention
        self.reactions = list(reactions)
        if not self.reactions:
            raise NetworkError("reactions: the network has no reactions")
        self._validate_reactions()
        self.limits = np.array([s.limit for s in self.species], dtype=np.int64)
        self.reactant_matrix, self.product_matrix = self._stoichiometry()
        self.change_matrix = self.product_matrix - self.reactant_matrix
        self.initial_state = self._validate_initial(initial or {})
        self.t_end = _check_positive(t_end, "t_end", allow_zero=False)
        self.dt = _check_positive(dt, "dt", allow_zero=False)
        if self.dt > self.t_end:
            raise NetworkError(f"dt: {self.dt:g} is larger than t_end {self.t_end:g}")
        self.conservation_laws = self._conservation(conservation)
        self._feasibility: FeasibilityTables | None = None
        self._compiled: dict[tuple[str, torch.dtype], CompiledNetwork] = {}

    # ----------------------------------------------------------------------------- validation
    @staticmethod
    def _validate_species(species: Mapping[str, int] | Sequence[Species]) -> list[Species]:
        if isinstance(species, Mapping):
            items = list(species.items())
        else:
            items = []
            for i, s in enumerate(species):
                if not isinstance(s, Species):
                    raise NetworkError(f"species[{i}]: expected Species(name, limit), got {s!r}")
                items.append((s.name, s.limit))
        if not items:
            raise NetworkError("species: the network has no species")
        out, seen = [], set()
        for i, (name, limit) in enumerate(items):
            _check_name(name, f"species[{i}]")
            if name in seen:
                raise NetworkError(f"species[{i}]: duplicate species name {name!r}")
            seen.add(name)
            limit = _check_count(limit, f"species {name!r}: limit")
            if limit < 1:
                raise NetworkError(f"species {name!r}: limit must be >= 1 (counts 0..limit-1)")
            out.append(Species(name, limit))
        return out

    def _where(self, k: int) -> str:
        r = self.reactions[k]
        return f"reaction {r.name!r} (reactions[{k}])" if r.name else f"reactions[{k}]"

    def _validate_reactions(self) -> None:
        names = set()
        for k, r in enumerate(self.reactions):
            if not isinstance(r, Reaction):
                raise NetworkError(f"reactions[{k}]: expected a Reaction, got {type(r).__name__}")
            if not r.name:
                r.name = f"R{k}"
            if r.name in names:
                raise NetworkError(f"{self._where(k)}: duplicate reaction name")
            names.add(r.name)
            where = self._where(k)
            for side in ("reactants", "products"):
                for sp, coef in getattr(r, side).items():
                    if sp not in self._index:
                        raise NetworkError(
                            f"{where}: {side} names unknown species {sp!r}; known species: "
                            f"{', '.join(self.species_names)}"
                        )
                    _check_count(coef, f"{where}: {side}[{sp!r}]")
            net = {
                s: r.products.get(s, 0) - r.reactants.get(s, 0)
                for s in set(r.reactants) | set(r.products)
            }
            if all(v == 0 for v in net.values()):
                raise NetworkError(f"{where}: the reaction changes no species (no net change)")
            self._validate_rate(r, where)
            if r.convention is not None and r.convention not in CONVENTIONS:
                raise NetworkError(
                    f"{where}: convention must be one of {CONVENTIONS} (or None for the "
                    f"network's), got {r.convention!r}"
                )
            self._validate_hills(r, where)
            self._validate_complements(r, where)

    def _validate_hills(self, r: Reaction, where: str) -> None:
        hills = r.hills
        for j, h in enumerate(hills):
            label = "hill" if isinstance(r.hill, Hill) else f"hill[{j}]"
            if not isinstance(h, Hill):
                raise NetworkError(f"{where}: {label}: expected a Hill(...), got {h!r}")
            if not h.regulator:
                raise NetworkError(f"{where}: {label} factor needs a regulator species")
            if h.regulator not in self._index:
                raise NetworkError(
                    f"{where}: {label}.regulator: {h.regulator!r} is not a species of the "
                    f"network; known species: {', '.join(self.species_names)}"
                )
            _check_positive(h.K, f"{where}: {label}.K", allow_zero=False)
            _check_positive(h.n, f"{where}: {label}.n", allow_zero=False)
            if h.kind not in ("activation", "repression"):
                raise NetworkError(
                    f"{where}: {label}.kind: must be 'activation' or 'repression', got {h.kind!r}"
                )

    def _validate_complements(self, r: Reaction, where: str) -> None:
        for j, c in enumerate(r.complements):
            label = "complement" if isinstance(r.complement, Complement) else f"complement[{j}]"
            if not isinstance(c, Complement):
                raise NetworkError(f"{where}: {label}: expected a Complement(...), got {c!r}")
            if c.species not in self._index:
                raise NetworkError(
                    f"{where}: {label}.species: {c.species!r} is not a species of the network; "
                    f"known species: {', '.join(self.species_names)}"
                )
            total = _check_count(c.total, f"{where}: {label}.total")
            order = _check_count(c.order, f"{where}: {label}.order")
            if order < 1:
                raise NetworkError(f"{where}: {label}.order: must be >= 1, got {c.order!r}")
            top = self.limits_of(c.species) - 1
            if total < top:  # the factor would be asked of total - x < 0
                raise NetworkError(
                    f"{where}: {label}.total: {total} is below the largest count {top} of "
                    f"{c.species!r} in the box, where {total} - {c.species} would be negative; "
                    f"lower the limit of {c.species!r} to {total + 1} (counts 0..{total}) or "
                    "raise the total"
                )

    def limits_of(self, species: str) -> int:
        """The count limit M of one species (counts 0..M-1)."""
        return self.species[self.index(species)].limit

    @staticmethod
    def _validate_rate(r: Reaction, where: str) -> None:
        if r.propensity is not None:
            if not callable(r.propensity):
                raise NetworkError(f"{where}: propensity must be callable")
            if r.propensity_max is not None:
                _check_positive(r.propensity_max, f"{where}: propensity_max")
            return
        rate = r.rate
        if isinstance(rate, bool):
            raise NetworkError(f"{where}: rate must be a number or a function of t, got {rate!r}")
        if isinstance(rate, (int, float)):
            _check_positive(rate, f"{where}: rate")
        elif isinstance(rate, RateForm):
            rate.check(f"{where}: rate")
        elif callable(rate):
            _check_positive(rate(0.0), f"{where}: rate at t=0")
        else:
            raise NetworkError(f"{where}: rate must be a number or a function of t, got {rate!r}")

    def _stoichiometry(self) -> tuple[np.ndarray, np.ndarray]:
        K, L = len(self.reactions), len(self.species)
        reac = np.zeros((K, L), dtype=np.int64)
        prod = np.zeros((K, L), dtype=np.int64)
        for k, r in enumerate(self.reactions):
            for sp, c in r.reactants.items():
                reac[k, self._index[sp]] = int(c)
            for sp, c in r.products.items():
                prod[k, self._index[sp]] = int(c)
        return reac, prod

    def _validate_initial(self, initial: Mapping[str, int]) -> np.ndarray:
        state = np.zeros(len(self.species), dtype=np.int64)
        for sp, v in initial.items():
            if sp not in self._index:
                raise NetworkError(f"initial: unknown species {sp!r}")
            v = _check_count(v, f"initial[{sp!r}]")
            limit = self.limits[self._index[sp]]
            if v >= limit:
                raise NetworkError(
                    f"initial[{sp!r}] = {v} is outside the count limit {limit} "
                    f"(counts must be < limit); raise the limit of {sp!r}"
                )
            state[self._index[sp]] = v
        return state

    def _conservation(self, declared: Sequence[Mapping[str, int]] | None) -> list[ConservationLaw]:
        if declared is None:
            weights = detect_conservation_laws(self.change_matrix)
            totals = [None] * len(weights)
        else:
            weights, totals = [], []
            for j, law in enumerate(declared):
                w = np.zeros(self.L, dtype=np.int64)
                total = None
                for sp, v in law.items():
                    if sp == "total":
                        total = int(v)
                        continue
                    if sp not in self._index:
                        raise NetworkError(f"conservation[{j}]: unknown species {sp!r}")
                    if isinstance(v, bool) or int(v) != v:
                        raise NetworkError(f"conservation[{j}][{sp!r}]: weight must be an integer")
                    w[self._index[sp]] = int(v)
                if not w.any():
                    raise NetworkError(f"conservation[{j}]: all weights are zero")
                broken = np.nonzero(self.change_matrix @ w)[0]
                if broken.size:
                    raise NetworkError(
                        f"conservation[{j}] ({law_name(w, self.species_names)}) is not conserved "
                        f"by reaction {self.reactions[int(broken[0])].name!r}"
                    )
                weights.append(w)
                totals.append(total)
        laws = []
        for j, (w, total) in enumerate(zip(weights, totals)):
            initial_total = int(w @ self.initial_state)
            name = law_name(w, self.species_names)
            if total is not None:
                self._check_total_fits(j, w, total, name)
            if total is not None and total != initial_total:
                raise NetworkError(
                    f"conservation[{j}] ({name}): declared total {total} differs from the "
                    f"initial state's {initial_total}"
                )
            laws.append(ConservationLaw(w, initial_total, name))
        if laws:
            tables = FeasibilityTables.build(laws, self.limits)
            if not tables.feasible_start():
                raise NetworkError(
                    "conservation: the totals "
                    + ", ".join(f"{law.name} = {law.total}" for law in laws)
                    + " cannot be held by states within the count limits; raise the limits"
                )
        return laws

    def _check_total_fits(self, j: int, w: np.ndarray, total: int, name: str) -> None:
        """A declared total must be reachable by some state in the box (else: which limits)."""
        lo = int(np.minimum(w, 0) @ (self.limits - 1))
        hi = int(np.maximum(w, 0) @ (self.limits - 1))
        law = ConservationLaw(w, total, name)
        if lo <= total <= hi and FeasibilityTables.build([law], self.limits).feasible_start():
            return
        span = f"they allow {lo}..{hi}" if not lo <= total <= hi else "no state reaches it"
        involved = ", ".join(
            f"{s.name} < {s.limit}" for s, wi in zip(self.species, w.tolist()) if wi
        )
        raise NetworkError(
            f"conservation[{j}].total: {name} = {total} cannot be held by states within the "
            f"count limits ({involved}: {span}); raise the limits"
        )

    # ------------------------------------------------------------------------------ queries
    @property
    def L(self) -> int:
        """Number of species."""
        return len(self.species)

    @property
    def K(self) -> int:
        """Number of reactions."""
        return len(self.reactions)

    @property
    def reaction_names(self) -> list[str]:
        return [r.name for r in self.reactions]

    @property
    def free_dimensions(self) -> int:
        """The counts that vary on their own beyond a switch: the species whose limit exceeds
        2, less the conservation laws among those alone (a gene's on/off pair adds none; a
        law that ties two counts, as in dimerisation, leaves one)."""
        wide = self.limits > 2
        tied = sum(1 for law in self.conservation_laws if wide[law.weights != 0].all())
        return max(0, int(wide.sum()) - tied)

    @property
    def is_time_dependent(self) -> bool:
        return any(r.has_time_dependent_rate for r in self.reactions)

    def sampling_order(self) -> list[str]:
        """The species order an autoregressive model samples this network in best.

        A model that keeps conservation laws samples each law's last species as what remains
        of the total, so that species' count is a deterministic function of those before it.
        Where that is a reservoir such as a substrate (S = total - SE - P), the model learns
        small, nearly independent counts first; where it is a small count such as a product
        (P = total - S - SE) the model must learn a conditional that shifts with every count
        before it, and a small model smears it (Michaelis-Menten: P's std 1.6x the exact one,
        benchmarks/results/defaults_cpu_s19_mm.json). So the species of the laws keep the
        positions they hold together, filled in order of increasing initial count (a tie keeps
        the file's order); the others stay where the file puts them. Unchanged where there are
        no laws or a reaction has a custom propensity (it reads the state by position).
        """
        names = list(self.species_names)
        if not self.conservation_laws or any(r.propensity is not None for r in self.reactions):
            return names
        in_law = np.zeros(self.L, dtype=bool)
        for law in self.conservation_laws:
            in_law |= law.weights != 0
        slots = np.flatnonzero(in_law).tolist()
        by_count = sorted(slots, key=lambda i: (int(self.initial_state[i]), i))
        for slot, i in zip(slots, by_count):
            names[slot] = self.species_names[i]
        return names

    def reordered(self, names: Sequence[str]) -> ReactionNetwork:
        """The same network with its species in the order `names` (a permutation of
        `species_names`): the same reactions, laws, initial state and time grid."""
        if sorted(names) != sorted(self.species_names):
            raise NetworkError(
                f"reordered: {list(names)} is not an order of the species {self.species_names}"
            )
        if list(names) == self.species_names:
            return self
        species = [self.species[self._index[s]] for s in names]
        return self.rebuilt(species=species, parameters=self.parameters)

    def rebuilt(
        self,
        *,
        species: Sequence[Species] | None = None,
        reactions: Sequence[Reaction] | None = None,
        initial: Mapping[str, int] | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> ReactionNetwork:
        """A new network with the parts given replaced and the rest kept (convention, time
        grid, texts); the laws keep their weights, their totals follow the initial state."""
        laws = [
            {s: int(w) for s, w in zip(self.species_names, law.weights) if w}
            for law in self.conservation_laws
        ]
        if initial is None:
            initial = {s: int(v) for s, v in zip(self.species_names, self.initial_state)}
        return ReactionNetwork(
            list(species if species is not None else self.species),
            list(reactions if reactions is not None else self.reactions),
            initial,
            name=self.name,
            convention=self.convention,
            conservation=laws,
            t_end=self.t_end,
            dt=self.dt,
            description=self.description,
            source=self.source,
            parameters=parameters,
        )

    def index(self, species: str) -> int:
        """Position of a species in the state vector."""
        try:
            return self._index[species]
        except KeyError:
            raise NetworkError(f"unknown species {species!r}") from None

    def rates(self, t: float = 0.0) -> np.ndarray:
        """(K,) float64 rate constants at time t (1 for reactions with a custom propensity)."""
        return np.array(
            [1.0 if r.propensity is not None else r.rate_at(t) for r in self.reactions],
            dtype=np.float64,
        )

    def rate_bounds(self, t0: float, t1: float) -> np.ndarray:
        """(K,) upper bounds of the rate constants on [t0, t1], for thinning."""
        out = np.empty(self.K)
        for k, r in enumerate(self.reactions):
            if r.propensity is not None or isinstance(r.rate, (int, float)):
                out[k] = r.rate_at(t0) if r.propensity is None else 1.0
            elif hasattr(r.rate, "max_on"):
                out[k] = r.rate.max_on(t0, t1)
            else:
                raise NetworkError(
                    f"{self._where(k)}: its time-dependent rate has no upper bound; give it as "
                    "RateFunction(fn, max_rate=...) or a named form such as Sinusoidal(...)"
                )
        return out

    def rate_discontinuities(self, t0: float, t1: float) -> list[float]:
        """Sorted times in (t0, t1) where some named rate form jumps or kinks.

        Integrators with error control step across them badly (a jump inside a step is an
        error no step size resolves cheaply), so FSP integrates between them.
        """
        times = {
            float(b)
            for r in self.reactions
            if r.propensity is None and isinstance(r.rate, RateForm)
            for b in r.rate.discontinuities()
            if t0 < b < t1
        }
        return sorted(times)

    def reaction_convention(self, k: int) -> int:
        """The kernel code (index into CONVENTIONS) of reaction k's mass-action convention."""
        return CONVENTIONS.index(self.reactions[k].convention or self.convention)

    def box_limited_change(self) -> np.ndarray:
        """(K, L) net changes s_k, 0 where the model itself caps the growth: reaction k carries
        a complement factor of species i whose total is i's largest count M_i - 1, so at that
        count the factor is 0 and a larger box would not let k fire. What is left is growth that
        only the count limits stop (the box boundary checks of the results read this)."""
        change = self.change_matrix.copy()
        for k, r in enumerate(self.reactions):
            for c in r.complements:
                i = self._index[c.species]
                if c.total == self.limits[i] - 1 and change[k, i] > 0:
                    change[k, i] = 0
        return change

    @property
    def feasibility(self) -> FeasibilityTables:
        """Conservation-law reachability tables for autoregressive samplers."""
        if self._feasibility is None:
            self._feasibility = FeasibilityTables.build(self.conservation_laws, self.limits)
        return self._feasibility

    def state_space_size(self) -> int:
        """Number of states in the box (Python int; may be astronomically large)."""
        return math.prod(int(m) for m in self.limits)

    def in_box(self, states: np.ndarray) -> np.ndarray:
        """(B, L) -> (B,) bool, whether every count lies in 0..M_i-1."""
        states = np.asarray(states)
        return np.all((states >= 0) & (states < self.limits), axis=-1)

    def max_exit_rate_bound(self, t: float = 0.0) -> float:
        """An upper bound of the total propensity sum_k a_k(n) over the box at time t.

        Mass-action terms are bounded at the largest counts of the box, complement factors at
        the smallest (f(total - 0)) and Hill factors by 1; the first-order VAN step needs
        dt * sum_k a_k(n) < 1 at the states it visits.
        """
        total = 0.0
        rates = self.rates(t)
        for k, r in enumerate(self.reactions):
            if r.propensity is not None:
                return math.inf
            conv = self.reaction_convention(k)
            factor = 1.0
            for i in np.nonzero(self.reactant_matrix[k])[0]:
                n = int(self.limits[i]) - 1
                order = int(self.reactant_matrix[k, i])
                factor *= _mass_action_scalar(n, order, conv)
            for c in r.complements:
                factor *= _mass_action_scalar(int(c.total), int(c.order), conv)
            total += rates[k] * factor
        return total

    # ----------------------------------------------------------------------------- compiling
    def compile(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
    ) -> CompiledNetwork:
        """The operator tensors on `device` in `dtype` (cached)."""
        device = torch.device(device or "cpu")
        key = (str(device), dtype)
        if key not in self._compiled:
            self._compiled[key] = self._compile(device, dtype)
        return self._compiled[key]

    def _compile(self, device: torch.device, dtype: torch.dtype) -> CompiledNetwork:
        K = self.K
        ptr, entries = [0], []
        for k in range(K):
            involved = np.nonzero(self.reactant_matrix[k] | (self.change_matrix[k] != 0))[0]
            for i in involved:
                entries.append(
                    (int(i), int(self.reactant_matrix[k, i]), int(self.change_matrix[k, i]))
                )
            ptr.append(len(entries))
        factor_ptr, factor_index, factor_params = self._factor_table()
        feas = self.feasibility

        def i64(a: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)

        constant = None
        if not self.is_time_dependent:
            constant = torch.as_tensor(self.rates(0.0), dtype=dtype, device=device)
        return CompiledNetwork(
            network=self,
            device=device,
            dtype=dtype,
            rxn_ptr=i64(ptr),
            rxn_entries=i64(entries).reshape(-1, 3),
            reactants=i64(self.reactant_matrix),
            change=i64(self.change_matrix),
            limits=i64(self.limits),
            convention=i64([self.reaction_convention(k) for k in range(K)]),
            factor_ptr=i64(factor_ptr),
            factor_index=i64(factor_index),
            factor_params=torch.as_tensor(factor_params, dtype=dtype, device=device).reshape(-1, 3),
            constant_rates=constant,
            custom=tuple(k for k, r in enumerate(self.reactions) if r.propensity is not None),
            cons_weights=i64(feas.weights),
            cons_totals=i64(feas.totals),
            cons_law_meta=i64(feas.law_meta),
            cons_group_meta=i64(feas.group_meta),
            cons_table=torch.as_tensor(feas.table, dtype=torch.bool, device=device),
        )

    def _factor_table(self) -> tuple[list[int], list[int], list[tuple[float, float, float]]]:
        """factor_ptr, factor_index, factor_params rows (see CompiledNetwork)."""
        ptr, index, params = [0], [], []
        for r in self.reactions:
            if r.propensity is None:
                for h in r.hills:
                    index.append(self._index[h.regulator])
                    params.append((float(FACTOR_KINDS.index(h.kind)), float(h.K), float(h.n)))
                for c in r.complements:
                    index.append(self._index[c.species])
                    kind = float(FACTOR_KINDS.index("complement"))
                    params.append((kind, float(c.total), float(c.order)))
            ptr.append(len(index))
        return ptr, index, params

    def propensities(
        self, states: torch.Tensor, t: float = 0.0, *, impl: str = "auto"
    ) -> torch.Tensor:
        """Propensities a_k(n, t) with the truncation rule.

        Args:
            states: (B, L) integer counts (any device; the network compiles to it).
            t: time.
            impl: "auto" (compiled kernel where available), "fused" or "reference".

        Returns:
            (B, K) float64 propensities (1/time); 0 where n or n + s_k is outside the box.
        """
        from .ops import propensities as op  # ops import network types; avoid a cycle

        net = self.compile(states.device, torch.float64)
        return op(states, net, t, impl=impl)

    # ----------------------------------------------------------------------------- reporting
    def summary(self) -> str:
        lines = [
            f"{self.name}: {self.L} species, {self.K} reactions ({self.convention} mass action)"
        ]
        if self.description:
            lines.append(f"  {self.description}")
        lines.append(
            "  species: "
            + ", ".join(
                f"{s.name}<{s.limit} (n0={n})" for s, n in zip(self.species, self.initial_state)
            )
        )
        for r in self.reactions:
            lines.append(f"  {r.name}: {r.describe()}")
        for law in self.conservation_laws:
            lines.append(f"  conserved: {law.name} = {law.total}")
        lines.append(f"  time: t_end={self.t_end:g}, dt={self.dt:g}")
        if self.source:
            lines.append(f"  source: {self.source}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (rates of time-dependent reactions as text)."""
        out: dict[str, Any] = {
            "name": self.name,
            "convention": self.convention,
            "species": {s.name: s.limit for s in self.species},
            "initial": {s: int(v) for s, v in zip(self.species_names, self.initial_state)},
            "reactions": [],
            "conservation": [
                {s: int(w) for s, w in zip(self.species_names, law.weights) if w}
                for law in self.conservation_laws
            ],
            "t_end": self.t_end,
            "dt": self.dt,
            "description": self.description,
            "source": self.source,
            "parameters": {k: v for k, v in self.parameters.items() if _jsonable(v)},
        }
        for r in self.reactions:
            item: dict[str, Any] = {
                "name": r.name,
                "reactants": dict(r.reactants),
                "products": dict(r.products),
            }
            if r.propensity is not None:
                item["propensity"] = "custom"
            elif isinstance(r.rate, (int, float)):
                item["rate"] = float(r.rate)
            elif isinstance(r.rate, RateForm):
                item["rate"] = r.rate.to_dict()
            else:
                item["rate"] = "callable"
            if r.convention is not None:
                item["convention"] = r.convention
            hills = [
                {"regulator": h.regulator, "K": h.K, "n": h.n, "kind": h.kind} for h in r.hills
            ]
            if hills:  # one factor as a table, several as a list of tables
                item["hill"] = hills[0] if len(hills) == 1 else hills
            complements = [
                {"species": c.species, "total": int(c.total), "order": int(c.order)}
                for c in r.complements
            ]
            if complements:
                item["complement"] = complements[0] if len(complements) == 1 else complements
            out["reactions"].append(item)
        return out

    def __repr__(self) -> str:
        return f"ReactionNetwork({self.name!r}, L={self.L}, K={self.K})"


def _jsonable(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool, list, tuple, dict, type(None)))


def _mass_action_scalar(n: int, order: int, convention: int) -> float:
    if convention == 2:
        return float(n) ** order
    f = 1.0
    for j in range(order):
        f *= n - j
    if convention == 1:
        f /= math.factorial(order)
    return max(f, 0.0)


def check_times(times: Sequence[float]) -> np.ndarray:
    """Record times as a (T,) float64 array: finite, >= 0 and strictly increasing."""
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.size == 0:
        raise NetworkError("times: give at least one time")
    if not np.all(np.isfinite(t)) or t[0] < 0:
        raise NetworkError("times: must be finite and >= 0")
    if np.any(np.diff(t) <= 0):
        raise NetworkError("times: must be strictly increasing")
    return t
