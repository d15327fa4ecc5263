"""What a time step fits: log (T q_old)(n) at given states, with T = I + dt W (DESIGN section 2).

    T q(n) = q(n) (1 - dt a_0(n)) + dt sum_k a_k(n - s_k) q(n - s_k)

The previous distribution is scored at the states and at their K neighbours n - s_k
(`nncme.ops.neighbors`), once per distinct state (memoised over the step) and in chunks so
memory stays bounded for large K*L, and `nncme.ops.transition_logsum` forms the stable
log-sum-exp; it also returns the TDVP local generator (W q)(n)/q(n) and the exit rate a_0(n).
On a lattice-like network (a box beyond int64 keys, reactions that touch few species) the
model scores the neighbours from the prefix each shares with its state instead
(`NADE.score_neighbours`, `Transformer.score_neighbours`), with no (B, K, L) neighbour tensor.

`StageTarget` is what a stage of a Runge–Kutta step in Shu–Osher form fits: a convex
combination of distributions and their explicit maps (`nncme.steppers` holds the schemes).

The explicit first-order T is a probability map only while dt * a_0(n) < 1 at every state the
distribution visits (the stay term 1 - dt a_0 must stay positive). A model's tails reach states
of any exit rate, so a fast state that holds leaked mass would make the target negative there
and stop a run whose bulk the step resolves well. So past x = dt a_0(n) = 0.9 the map leaves a
state with probability `outflow_fraction(x)` = 1 - 0.01 / (x - 0.8) instead of x (split among
the reactions as a_k / a_0, so every column still sums to 1): the same map as Euler wherever
dt a_0 <= 0.9, continuous with its first derivative there, below 1 for every x, so a
probability map for every dt. Its stay probability past 0.9 is not the exact e^-x: where the
saturation acts on real mass the step is not accurate, and the updates report that mass
(`StepReport.stiff_mass`), the `auto` integrator takes an implicit step instead
(`nncme.steppers.Auto`) and the watchdog warns about explicit ones. `check_step_size` is the
strict check of the TDVP flows, whose local generator has no such form.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass
from typing import Any, Protocol

import torch

from .. import ops, parallel
from ..sampling import state_hash, state_keys, unique_states

__all__ = [
    "EULER_STAGES",
    "Distribution",
    "DivergenceError",
    "Listed",
    "NonFiniteError",
    "StageTarget",
    "StepSizeError",
    "TargetValues",
    "Term",
    "TrainingError",
    "TransitionTarget",
    "check_step_size",
    "explore_ahead",
    "jump",
    "log_outflow_ratio",
    "log_stay",
    "outflow_fraction",
    "set_neighbour_memory",
    "step_motion",
    "stiff_mass",
    "transition_support",
]

# Rows of Mmax*L logits scored at once when the old model is evaluated (bounded memory).
DEFAULT_CHUNK_ELEMENTS = 1 << 23
# Neighbour counts (B x K x L int64) formed at once: the states of a target are taken in
# chunks of at most this many (a 32 x 32 lattice has K ~ 5,600 reactions: 1,000 states at once
# would be 46 GB). A run sets it from its `memory_mb` (`set_neighbour_memory`).
DEFAULT_NEIGHBOUR_ELEMENTS = 1 << 24  # 128 MiB
_neighbour_elements = DEFAULT_NEIGHBOUR_ELEMENTS
# log q_old values a target keeps over a step (16-24 bytes each): past this it starts over
# (on large lattices, where distinct states hardly repeat, an unbounded memo only grows).
MEMO_ENTRIES = 1 << 22
# New states join the memo only while at least this share of a batch's states was found in it:
# keeping it sorted costs a sort of all it holds per batch, which only repeats pay for (a
# broad law on a lattice: next to no repeats, and a memo that grew by B K states a batch).
MEMO_MIN_HITS = 0.2


# dt * a_0 above which the explicit map saturates (`outflow_fraction`): Euler's own map is
# positive up to 1 and the catalogue's dts reach 0.8 on the mass, where Heun steps are accurate.
STIFF_RATE_DT = 0.9
# The share of the mass where dt a_0 > STIFF_RATE_DT that makes an explicit step stiff: a grown
# explicit step shrinks back above it and stops growing above a tenth of it (the `auto`
# integrator takes such a step implicitly instead), and TDVP refuses the step above it.
STIFF_SHARE = 1e-3
_SHIFT = 2 * STIFF_RATE_DT - 1  # outflow 1 - c / (x - _SHIFT), c = (1 - STIFF_RATE_DT)^2: C^1
_C = (1 - STIFF_RATE_DT) ** 2


def set_neighbour_memory(mib: float) -> None:
    """The memory (MiB) of the neighbour counts one evaluation of a step target forms at once,
    for the targets made from now on in this process (a run's `memory_mb`)."""
    global _neighbour_elements
    _neighbour_elements = max(1, int(mib * 2**20) // 8)


def outflow_fraction(x: torch.Tensor) -> torch.Tensor:
    """The probability that the explicit map moves out of a state with x = dt a_0(n): x up to
    STIFF_RATE_DT (Euler), 1 - c / (x - (2 STIFF_RATE_DT - 1)) above, c = (1 -
    STIFF_RATE_DT)^2 (C^1 at STIFF_RATE_DT, below 1 for every x)."""
    xs = x.clamp(min=STIFF_RATE_DT)
    return torch.where(x <= STIFF_RATE_DT, x, 1 - _C / (xs - _SHIFT))


def log_stay(x: torch.Tensor) -> torch.Tensor:
    """log(1 - outflow_fraction(x))."""
    euler = torch.log1p(-x.clamp(max=STIFF_RATE_DT))
    saturated = math.log(_C) - torch.log(x.clamp(min=STIFF_RATE_DT) - _SHIFT)
    return torch.where(x <= STIFF_RATE_DT, euler, saturated)


def log_outflow_ratio(x: torch.Tensor) -> torch.Tensor:
    """log(outflow_fraction(x) / x): 0 up to STIFF_RATE_DT, where the map is Euler's."""
    xs = x.clamp(min=STIFF_RATE_DT)
    ratio = torch.log(outflow_fraction(xs) / xs)
    return torch.where(x <= STIFF_RATE_DT, torch.zeros_like(x), ratio)


def stiff_mass(weights: torch.Tensor, rate_dt: torch.Tensor) -> float:
    """The share of a draw's importance weights (B,) at states whose dt a_0 (B,) exceeds
    STIFF_RATE_DT: the mass on which the explicit map saturated."""
    return float(weights[rate_dt > STIFF_RATE_DT].sum())


class TrainingError(RuntimeError):
    """A time step cannot go on; the message says where and what to change."""


class StepSizeError(TrainingError):
    """dt * a_0(n) >= 1 at a visited state: the first-order step is not a probability map."""


class NonFiniteError(TrainingError):
    """A NaN or inf appeared in the loss or the parameters."""


class DivergenceError(TrainingError):
    """The fits stopped following their targets: a loss that exploded, or steps that kept
    going wrong (see `nncme.observers.Watchdog`)."""


class Distribution(Protocol):
    """Anything the trainer can step from: a VAN, a `Delta`, a `Product`."""

    def sample(self, batch_size: int, generator: torch.Generator | None = None, **kw: Any): ...

    def log_prob(self, states: torch.Tensor, **kw: Any) -> torch.Tensor: ...


@dataclass
class TargetValues:
    """log T q_old, (W q_old)/q_old and a_0 at a batch of states, each (B,)."""

    log_tq: torch.Tensor
    local_gen: torch.Tensor
    exit_rate: torch.Tensor


def chunk_rows(distribution: Any, elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Rows per log_prob call so that one call holds about `elements` logits."""
    L = getattr(distribution, "num_species", 1)
    M = getattr(distribution, "max_count", 1)
    return max(256, elements // max(1, L * M))


@torch.no_grad()
def score(distribution: Any, states: torch.Tensor, rows: int) -> torch.Tensor:
    """log_prob of many states in chunks of `rows`, without gradient."""
    if states.shape[0] <= rows:
        return distribution.log_prob(states)
    return torch.cat([distribution.log_prob(c) for c in states.split(rows)])


class TransitionTarget:
    """log (T q_old)(n) for the step t -> t + dt (rates taken at t: explicit Euler).

    Args:
        old: the distribution at t (any object with `log_prob`; a frozen VAN, `Delta`, ...).
        net: the compiled network on the states' device.
        t: time of the step's start; dt: its length.
        impl: operator implementation ("auto" | "fused" | "reference").
        rows: states per log_prob call (default from the model's L * Mmax).
        neighbour_elements: the most neighbour counts (states x K x L) formed at once; the
            states are taken in chunks that keep below it (default: `set_neighbour_memory`).

    log q_old is memoised over the step (the old distribution is fixed and successive
    batches overlap), keyed by `state_keys`, or where the box is too large for those by
    `state_hash` with a second, independent hash checked on every hit.
    """

    def __init__(
        self,
        old: Any,
        net: Any,
        t: float,
        dt: float,
        *,
        impl: str = "auto",
        rows: int | None = None,
        neighbour_elements: int | None = None,
    ) -> None:
        self.old, self.net, self.t, self.dt, self.impl = old, net, float(t), float(dt), impl
        self.rows = rows or chunk_rows(old)
        K, L = net.num_reactions, net.num_species
        elements = neighbour_elements or _neighbour_elements
        self.chunk = max(1, int(elements) // max(1, K * L))
        # a lattice-like network (a box beyond int64 keys, where states hardly repeat, and
        # reactions that touch few species) with a model that scores neighbours from their
        # shared prefix: no memo, no (B, K, L) neighbour tensor
        self._by_prefix = (
            hasattr(old, "score_neighbours")
            and state_keys(net.limits.unsqueeze(0) - 1, net.limits) is None
            and ops.neighbour_exit_rates(net).sparse
        )
        # log q_old of the states scored so far in this step (sorted keys, values, and the
        # second hash where the keys are hashes): the old distribution is fixed for the whole
        # step and successive batches overlap heavily
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._checks: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, states: torch.Tensor) -> TargetValues:
        """states: (B, L) int64 in the box -> TargetValues of (B,) each."""
        flows = self._sparse_outflows(states)  # (for all states at once: K calls each)
        if states.shape[0] <= self.chunk:
            return self._values_at(states, flows)
        parts = [
            self._values_at(
                part, None if flows is None else [f[lo : lo + self.chunk] for f in flows]
            )
            for lo, part in zip(range(0, states.shape[0], self.chunk), states.split(self.chunk))
        ]
        return TargetValues(*(torch.cat(x) for x in zip(*(astuple(p) for p in parts))))

    def _values_at(self, states: torch.Tensor, flows: list[torch.Tensor] | None) -> TargetValues:
        if self._by_prefix:
            values = self._values_by_prefix(states, flows)
            if values is not None:
                return values
        B = states.shape[0]
        nbr, valid = ops.neighbors(states, self.net, impl=self.impl)
        rows = torch.cat([states, nbr[valid]])
        unique, inverse = unique_states(rows, self.net.limits)
        log_p = self._old_log_prob(unique)[inverse]
        log_q_nbr = torch.full(valid.shape, -math.inf, dtype=log_p.dtype, device=log_p.device)
        log_q_nbr[valid] = log_p[B:]
        log_tq, local_gen, exit_rate = ops.transition_logsum(
            states, log_p[:B], log_q_nbr, self.net, self.t, self.dt, impl=self.impl
        )
        outflows = (
            self._dense_outflows(states, unique, inverse, valid)
            if flows is None
            else _inside(flows, valid)
        )
        log_tq = self._saturate(log_p[:B], log_q_nbr, log_tq, outflows)
        return TargetValues(log_tq, local_gen, exit_rate)

    def _values_by_prefix(self, states, flows) -> TargetValues | None:
        """As `_values_at`, the neighbours scored from their prefixes shared with the states
        (the model's `score_neighbours`); None where the model cannot."""
        sites, steps = ops.neighbour_changes(self.net)
        L = states.shape[1]
        column = sites.clamp(max=L - 1)
        counts = states[:, column] + steps  # (B, K, W)
        inside = (counts >= 0) & (counts < self.net.limits[column])
        valid = (inside | (sites >= L)).all(dim=2)
        scored = self.old.score_neighbours(states, sites, steps, valid)
        if scored is None:
            return None
        log_p, log_q_nbr = (x.to(self.net.dtype) for x in scored)
        log_tq, local_gen, exit_rate = ops.transition_logsum(
            states, log_p, log_q_nbr, self.net, self.t, self.dt, impl=self.impl
        )
        log_tq = self._saturate(log_p, log_q_nbr, log_tq, _inside(flows, valid))
        return TargetValues(log_tq, local_gen, exit_rate)

    def _saturate(self, log_p, log_q_nbr, log_tq, outflows) -> torch.Tensor:
        """log T q with the saturated outflow (`outflow_fraction`) at the rows where a state
        or an in-box neighbour has dt a_0 > STIFF_RATE_DT; the operator's Euler value (the
        same map) elsewhere. log_p (B,): log q_old at the states; outflows: dt a_0 at the
        states (B,) and at their in-box neighbours (B, K), and a_k(n - s_k) (B, K), 0 at the
        neighbours outside the box."""
        x_own, x_nbr, a_in = outflows
        if not bool((x_own > STIFF_RATE_DT).any() or (x_nbr > STIFF_RATE_DT).any()):
            return log_tq
        inflow = torch.where(
            a_in > 0,
            math.log(self.dt) + torch.log(a_in) + log_q_nbr + log_outflow_ratio(x_nbr),
            torch.full_like(a_in, -math.inf),
        )
        stay = log_p + log_stay(x_own)
        saturated = torch.logsumexp(torch.cat([stay.unsqueeze(1), inflow], dim=1), dim=1)
        rows = (x_own > STIFF_RATE_DT) | (x_nbr > STIFF_RATE_DT).any(dim=1)
        return torch.where(rows, saturated.to(log_tq.dtype), log_tq)

    def _sparse_outflows(self, states: torch.Tensor) -> list[torch.Tensor] | None:
        """dt a_0 at the states (B,) and at their neighbours n - s_k (B, K), and the inflow
        propensities a_k(n - s_k) (B, K), by the reactions each neighbour's change touches
        (`ops.NeighbourExitRates`: a lattice); None where those are not few (a network whose
        reactions read most species), whose neighbours' propensities are then evaluated
        directly (`_dense_outflows`). Meaningless at neighbours outside the box."""
        exits = ops.neighbour_exit_rates(self.net)
        if not exits.sparse:
            return None
        own = ops.propensities(states, self.net, self.t, impl=self.impl)  # (B, K)
        x_nbr = self.dt * exits(states, own, self.t, impl=self.impl)
        a_in = ops.inflow_propensities(states, self.net, self.t)
        return [self.dt * own.sum(dim=1), x_nbr, a_in]

    def _dense_outflows(self, states, unique, inverse, valid):
        """As `_sparse_outflows`, from every distinct state's propensities (U, K)."""
        zero = torch.zeros((), dtype=self.net.dtype, device=states.device)
        rates = ops.propensities(unique, self.net, self.t, impl=self.impl)  # (U, K)
        x = self.dt * rates.sum(dim=1)  # (U,)
        B = states.shape[0]
        at = torch.zeros(valid.shape, dtype=torch.int64, device=states.device)
        at[valid] = inverse[B:]  # (B, K) the neighbours' rows among `unique`
        a_in = torch.where(valid, rates.gather(0, at), zero)
        return x[inverse[:B]], torch.where(valid, x[at], zero), a_in

    def old_log_prob(self, states: torch.Tensor) -> torch.Tensor:
        """log q_old at (B, L) states (memoised across the step's batches)."""
        unique, inverse = unique_states(states, self.net.limits)
        return self._old_log_prob(unique)[inverse]

    def _old_log_prob(self, unique: torch.Tensor) -> torch.Tensor:
        """log q_old of distinct states (U, L), scoring only those not seen before."""
        keys = state_keys(unique, self.net.limits)
        checks = None
        if keys is None:  # a box beyond int64 keys: hashes, each hit checked by a second one
            keys, checks = state_hash(unique), state_hash(unique, second=True)
        if self._keys is None or self._keys.shape[0] + keys.shape[0] > MEMO_ENTRIES:
            values = score(self.old, unique, self.rows)
            self._remember(keys, checks, values, merge=False)
            return values
        pos = torch.searchsorted(self._keys, keys).clamp(max=self._keys.shape[0] - 1)
        hit = self._keys[pos] == keys
        if checks is not None:
            hit &= self._checks[pos] == checks
        values = torch.empty(keys.shape, dtype=self._values.dtype, device=keys.device)
        values[hit] = self._values[pos[hit]]
        if not hit.all():
            miss = ~hit
            values[miss] = score(self.old, unique[miss], self.rows)
            if float(hit.double().mean()) >= MEMO_MIN_HITS:
                self._remember(keys[miss], None if checks is None else checks[miss],
                               values[miss], merge=True)  # fmt: skip
        return values

    def _remember(self, keys, checks, values, *, merge: bool) -> None:
        """Keep (keys, checks, values) sorted by key: alone, or merged into what is kept."""
        if merge:
            keys = torch.cat([self._keys, keys])
            values = torch.cat([self._values, values])
            checks = None if checks is None else torch.cat([self._checks, checks])
        order = torch.argsort(keys)
        self._keys, self._values = keys[order], values[order]
        self._checks = None if checks is None else checks[order]


def _inside(flows: list[torch.Tensor], valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`_sparse_outflows`' values with the neighbours outside the box (valid False) at 0."""
    zero = torch.zeros((), dtype=flows[1].dtype, device=flows[1].device)
    return flows[0], *(torch.where(valid, f, zero) for f in flows[1:])


@torch.no_grad()
def step_motion(
    model: Any,
    net: Any,
    t: float,
    dt: float,
    *,
    samples: int,
    generator: torch.Generator | None = None,
    impl: str = "auto",
    support: torch.Tensor | None = None,
) -> float:
    """How far one explicit step moves q, relative, RMS under q: sqrt(E_q[(dt W q / q)^2]).

    sqrt(2 KL(q || T q)) to leading order: the misfit a step's fit starts from. A fit stops at
    a fixed fraction of that (`KLUpdate`'s relative tolerance), so what it leaves undone grows
    as the square of the motion, and a step that moves q by tens of per cent (the first steps
    from a point mass, a fast transient) leaves an error every later step inherits.

    Args:
        model: the distribution at t (`sample` gives states and log q).
        net, t, dt, impl: the step.  samples: draws of q.  generator: their random stream.
        support: (N, L) q's whole support (one process): the expectation summed exactly
            over it instead of drawn.
    """
    states, _, weights = expectation_states(model, samples, generator, support)
    flow = TransitionTarget(model, net, t, dt, impl=impl)(states.to(net.device)).local_gen
    return dt * math.sqrt(expectation(flow.square(), weights))


@torch.no_grad()
def expectation_states(
    model: Any,
    samples: int,
    generator: torch.Generator | None,
    support: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """States to take an expectation under q over, their log q, and their weights: `samples`
    draws of q (weights None: each counts alike, over every rank's draws), or q's whole
    `support` with the weights q(n) (exact)."""
    if support is None:
        return (*model.sample(samples, generator), None)
    states = support.to(model.device)
    log_q = model.log_prob(states)
    return states, log_q, torch.softmax(log_q, dim=0)


# Draws of q are dealt to this many groups for the median of their means (`expectation`).
MEAN_GROUPS = 8


def expectation(values: torch.Tensor, weights: torch.Tensor | None) -> float:
    """E_q of per-state values from `expectation_states`: exact over a support; over draws
    (every rank's), the median of the means of MEAN_GROUPS groups of them
    (`parallel.median_of_means`).

    The values are squared relative changes (a step's motion, its local error): where the
    model holds a state at a small share of what flows into it, one draw of it can hold most
    of the sum, so the plain mean of the same law reads several fold apart from draw to draw,
    and one high reading cuts a step into sub-steps and shrinks the next steps."""
    if weights is None:
        return parallel.median_of_means(values, MEAN_GROUPS)
    return float((weights.to(values.dtype) * values).sum())


@dataclass(frozen=True)
class Term:
    """One term alpha u + beta dt W(t) u of a stage of an explicit Runge–Kutta step in
    Shu–Osher form (`nncme.steppers`).

    Attributes:
        value: the distribution u (a frozen VAN, a `Delta`, ...).
        t: the time of W's rates.
        alpha: the weight of u itself (> 0 wherever beta > 0: see `StageTarget`).
        beta: the weight of dt W(t) u.
    """

    value: Any
    t: float
    alpha: float
    beta: float


class StageTarget:
    """log sum_j [alpha_j u_j(n) + beta_j dt (W(t_j) u_j)(n)]: the distribution a stage fits.

    Each term is alpha_j (T_j u_j)(n) with the explicit map T_j = I + c_j dt W(t_j),
    c_j = beta_j / alpha_j (u_j itself where beta_j = 0), so with non-negative weights the
    target is a probability distribution wherever every c_j dt a_0 < 1, and its log is a
    log-sum-exp over the terms. One term (1, 1) is explicit Euler, `TransitionTarget`; Heun's
    corrector is 1/2 q_old + 1/2 T(t + dt) q* (`nncme.steppers.Heun`).

    Args:
        terms: the stage's terms (alpha > 0; beta >= 0).
        net: the compiled network.  dt: the step.  impl: operator implementation.

    The values returned hold the log of the combination; `exit_rate` is max_j c_j a_0(n, t_j),
    the exit rate as the step-size check sees it (dt * exit_rate < 1 keeps every term
    positive), and `local_gen` that of the last moving term.
    """

    def __init__(self, terms: list[Term], net: Any, dt: float, *, impl: str = "auto") -> None:
        if not terms or any(not (tm.alpha > 0 and tm.beta >= 0) for tm in terms):
            raise ValueError(
                "a fitted stage needs terms with alpha > 0 and beta >= 0 (a convex combination "
                f"of explicit maps), got {[(tm.alpha, tm.beta) for tm in terms]}"
            )
        self.net, self.dt, self.terms = net, float(dt), list(terms)
        self.maps = [
            TransitionTarget(tm.value, net, tm.t, dt * (tm.beta / tm.alpha or 1.0), impl=impl)
            for tm in terms
        ]

    @torch.no_grad()
    def __call__(self, states: torch.Tensor) -> TargetValues:
        parts, local_gen, exit_rate = [], None, None
        for term, move in zip(self.terms, self.maps):
            if term.beta == 0:
                log_u = move.old_log_prob(states)
            else:
                values = move(states)
                log_u, local_gen = values.log_tq, values.local_gen
                rate = values.exit_rate * (term.beta / term.alpha)
                exit_rate = rate if exit_rate is None else torch.maximum(exit_rate, rate)
            log_u = log_u.to(self.net.dtype)
            parts.append(log_u + math.log(term.alpha) if term.alpha != 1 else log_u)
        log_mix = parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts), dim=0)
        zeros = torch.zeros_like(log_mix)
        return TargetValues(
            log_mix,
            local_gen if local_gen is not None else zeros,
            exit_rate if exit_rate is not None else zeros,
        )


def check_step_size(exit_rate: torch.Tensor, t: float, dt: float) -> float:
    """The largest dt * a_0(n) over the states; raises StepSizeError when it reaches 1."""
    a0 = float(exit_rate.max()) if exit_rate.numel() else 0.0
    if not math.isfinite(a0) or dt * a0 >= 1.0:
        ok = 0.9 / a0 if a0 > 0 and math.isfinite(a0) else float("nan")
        ok = float(f"{ok:.2g}") if math.isfinite(ok) else ok
        raise StepSizeError(
            f"at t = {t:g}: dt * a_0(n) = {dt * a0:.3g} >= 1 at a sampled state (largest total "
            f"propensity a_0 = {a0:.4g}); the explicit first-order step T = I + dt W needs "
            f"dt * a_0 < 1 at every visited state: use dt <= {ok:g}"
        )
    return dt * a0


def listed_support(
    start: Any, max_states: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The start's support (N, L) on the device and its log-probabilities (N,), or None when
    it lists none or more than max_states states."""
    support = getattr(start, "support", None)
    found = support(max_states) if support is not None else None
    if found is None:
        return None
    return found[0].to(device), found[1]


@torch.no_grad()
def one_reaction_ahead(
    states: torch.Tensor, net: Any, t: float, *, impl: str = "auto"
) -> torch.Tensor:
    """The distinct states (N, L) followed by the new ones a reaction that fires reaches."""
    a = ops.propensities(states, net, t, impl=impl)  # (N, K): which reactions fire where
    both = torch.cat([states, (states.unsqueeze(1) + net.change.unsqueeze(0))[a > 0]])
    unique, inverse = unique_states(both, net.limits)
    first = torch.full((unique.shape[0],), both.shape[0], dtype=torch.int64, device=both.device)
    first.scatter_reduce_(0, inverse, torch.arange(both.shape[0], device=both.device), "amin")
    return both[first.sort().values]  # the given states first, in their order


# Shu–Osher tableau of explicit Euler, (j, alpha, beta) per stage (`nncme.steppers.Scheme`).
EULER_STAGES: tuple[tuple[tuple[int, float, float], ...], ...] = (((0, 1.0, 1.0),),)


class Listed:
    """A distribution given on an explicit list of states (log p = -inf off the list): a stage
    value of a first step worked out by enumeration (`transition_support`).

    Args:
        states: (N, L) distinct in-box states.  log_p: (N,) their log-probabilities.
        limits: (L,) the box.
    """

    def __init__(self, states: torch.Tensor, log_p: torch.Tensor, limits: torch.Tensor) -> None:
        self.states, self.log_p, self.limits = states, log_p, limits

    def log_prob(self, states: torch.Tensor, **kw: Any) -> torch.Tensor:
        """(B, L) states -> (B,) log p, -inf at states off the list."""
        N = self.states.shape[0]
        _, inverse = unique_states(torch.cat([self.states, states]), self.limits)
        table = self.log_p.new_full((int(inverse.max()) + 1,), -math.inf)
        table[inverse[:N]] = self.log_p
        return table[inverse[N:]]


class FixedTarget:
    """A fixed distribution as a fit's target (the first step's exact solution, `Listed`):
    log p at the states asked for, no rates (a fit to it moves nothing in time).

    Args:
        listed: the distribution.  net: the compiled network (where its states live).
    """

    def __init__(self, listed: Listed, net: Any) -> None:
        self.listed, self.net = listed, net

    @torch.no_grad()
    def __call__(self, states: torch.Tensor) -> TargetValues:
        log_p = self.listed.log_prob(states)
        zero = torch.zeros_like(log_p)
        return TargetValues(log_p, zero, zero)


@torch.no_grad()
def transition_support(
    start: Any,
    net: Any,
    t: float,
    dt: float,
    *,
    max_states: int,
    impl: str = "auto",
    stages: tuple[tuple[tuple[int, float, float], ...], ...] = EULER_STAGES,
    times: tuple[float, ...] = (0.0,),
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One explicit Runge–Kutta step from p0 worked out exactly, when p0 lists its support.

    Each stage value sum_j alpha_j u_j + beta_j dt W(t + c_j dt) u_j is evaluated on every
    state it can reach (a stage with a moving term reaches one reaction further), so the
    result is the scheme's step with no fit in it: T p0 for Euler (the default tableau),
    1/2 p0 + 1/2 T(t + dt) T(t) p0 for Heun.

    Args:
        stages, times: the tableau in Shu–Osher form (`nncme.steppers.Scheme`); non-negative
            weights with alpha > 0 wherever beta > 0.

    Returns:
        states (N, L) and log u_s (N,) over every state the step reaches, or None when p0
        has no `support` or a stage reaches more than max_states states.
    """
    found = listed_support(start, max_states, net.device)
    if found is None:
        return None
    values: list[Any] = [start]
    support = unique_states(found[0], net.limits)[0]
    for stage in stages:
        moving = [times[j] for j, _, beta in stage if beta > 0]
        reach = [one_reaction_ahead(support, net, t + c * dt, impl=impl) for c in moving]
        support = unique_states(torch.cat([support, *reach]), net.limits)[0]
        if support.shape[0] > max_states:
            return None
        terms = [Term(values[j], t + times[j] * dt, a, b) for j, a, b in stage]
        stage_values = StageTarget(terms, net, dt, impl=impl)(support)
        keep = torch.isfinite(stage_values.log_tq)
        support = support[keep]
        values.append(Listed(support, stage_values.log_tq[keep], net.limits))
    return values[-1].states, values[-1].log_p


@torch.no_grad()
def explore_ahead(
    states: torch.Tensor,
    fraction: float,
    net: Any,
    t: float,
    generator: torch.Generator | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """One reaction (`jump`) from the first round(fraction * B) of (B, L) states -> (m, L).

    The exploration states of the KL and TDVP updates: where T q_old's new mass goes, one
    reaction ahead of the samples. Each enters the fit with weight 1/B.
    """
    m = round(fraction * states.shape[0])
    if not m:
        return states[:0]
    return jump(states[:m], net, t, generator, impl=impl)


@torch.no_grad()
def jump(
    states: torch.Tensor,
    net: Any,
    t: float,
    generator: torch.Generator | None = None,
    *,
    impl: str = "auto",
    rates: torch.Tensor | None = None,
) -> torch.Tensor:
    """One reaction from each state, chosen with probability a_k(n) / a_0(n).

    The embedded jump chain of the CME: from states drawn from q it reaches the states one
    reaction away, where the next distribution's new mass appears. States where no reaction
    fires stay where they are.

    Args:
        states: (B, L) int64 in the box.
        rates: (B, K) rate constants per state in place of the network's (amortised runs).

    Returns:
        (B, L) int64 states n + s_k.
    """
    if rates is None:
        a = ops.propensities(states, net, t, impl=impl)  # (B, K)
    else:
        ones = torch.ones(net.num_reactions, dtype=net.dtype, device=states.device)
        a = ops.propensities(states, net, t, impl=impl, rates=ones) * rates
    total = a.sum(dim=1, keepdim=True)
    u = torch.rand(states.shape[0], 1, generator=generator, dtype=a.dtype, device=a.device)
    cdf = torch.cumsum(a, dim=1)
    k = (cdf <= u * total).sum(dim=1).clamp(max=a.shape[1] - 1)
    # rounding can land on a reaction that does not fire: take the last one that does
    k = torch.where(
        a.gather(1, k.unsqueeze(1)).squeeze(1) > 0,
        k,
        a.shape[1] - 1 - torch.argmax((a.flip(1) > 0).to(torch.int8), dim=1),
    )
    moved = states + net.change[k]
    return torch.where(total > 0, moved, states)
