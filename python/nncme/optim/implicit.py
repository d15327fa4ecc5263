"""The implicit (backward Euler) step: q_new = (I - dt W)^-1 q_old (DESIGN section 2).

Backward Euler is a probability map for every dt (it is the evolution over an exponentially
distributed time of mean dt), so the step is not bounded by the fastest rate in the box as the
explicit T = I + dt W is (dt a_0 < 1 at every visited state). Its solution is the fixed point
of

    q(n) = G_q(n) = [q_old(n) + dt sum_k a_k(n - s_k, t + dt) q(n - s_k)] / (1 + dt a_0(n)),

with the same neighbours n - s_k as the explicit map. `ImplicitTarget.residual` gives
r(n) = log q(n) - log G_q(n) for the model being fitted, differentiable in its parameters at
n and at those neighbours that are themselves among the fitted states (the fit sees how moving
mass at n - s_k changes n's right-hand side, which a lagged, Picard-style right-hand side would
not: its iterations contract only by dt a_0 / (1 + dt a_0) per sweep, slowest exactly where
the step is stiff; a neighbour outside the fitted states stays lagged, or the fit would lift
mass there, where no residual holds it). r = 0 at every state exactly at the solution
(summing the equation over the box fixes the constant: a distribution whose r is the same
everywhere is the solution).

`ImplicitUpdate` fits the model to it: it minimises the mean square of r over the training
states (the proposal's draw and the states one reaction ahead, as `KLUpdate` does, and half
as many drawn from q_old, where the step's mass comes from), with the draw held fixed and the
gradient from autograd. Not its variance: r is exactly 0 at the solution, while a constant
r != 0 over the states a draw reaches is also met by mass the model has moved off, where q_old
has none, sustaining itself through the neighbour terms. With objective "kl" each state is
weighed by its importance weight (as q weighs it); with "log_variance" every drawn state
counts alike, which also fits the tails a wide proposal draws. An `ImplicitUpdate` fits
explicit targets exactly as `KLUpdate` does, so one optimiser serves both kinds of step.

BDF2, the second-order backward differentiation formula, is the same equation with another
source and a shorter effective step: q_new - gamma h W q_new = a q_n - b q_{n-1}
(`bdf2_coefficients`; a - b = 1, so the source holds unit mass), an `ImplicitTarget` of a
`BDF2Source` with dt = gamma h and the rates at t + h. It is A- and L-stable like backward
Euler, but its error is O(h^3) a step where backward Euler's is O(h^2): backward Euler widens
a moving law (it is the evolution over an exponentially distributed time), which on Schlögl's
network left the marginals 0.03-0.05 (Hellinger) from the CME's at the error tolerance that
BDF2 meets within 0.004 (exact iterates of both, the same step rule). No second-order method
keeps every distribution positive at every step length (Bolley & Crouzeix, 1978): the source
a q_n - b q_{n-1} is negative where the law falls by more than a / b over a step (4 at
constant steps), which happens only at a receding edge, and there it is floored at
`BDF2_FLOOR` of a q_n.

`implicit_support` is the first implicit step from a start with a listed support: it grows
the set of states reachable from it, layer by layer, until the sparse solve of
(I - dt W) p = p0 on that set loses less than `leak` of the mass through its edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from .. import ops, parallel
from ..sampling import Draw, member_rows, pool, unique_states
from .target import (
    FixedTarget,
    Listed,
    NonFiniteError,
    TransitionTarget,
    expectation,
    expectation_states,
    listed_support,
    one_reaction_ahead,
)
from .updates import KLUpdate, StepProblem, StepReport, motion_regression

__all__ = [
    "BDF2Source",
    "ImplicitTarget",
    "ImplicitUpdate",
    "bdf2_coefficients",
    "bdf2_error",
    "implicit_support",
    "local_error",
    "solved_target",
]

# The BDF2 source a q_n - b q_{n-1} is kept at least this share of a q_n (`BDF2Source`).
BDF2_FLOOR = 1e-3


class ImplicitTarget:
    """The backward-Euler equation of the step from q_old at t to t + dt.

    Args:
        old: the distribution at t (a frozen VAN, a `Delta`, ...), or the step's source
            (`BDF2Source`).
        net: the compiled network.  t: the step's start.  dt: the step (gamma h for BDF2).
        impl: operator implementation.
        t_rates: when the rates are taken (default t + dt, the step's end; BDF2's t + h).
    """

    def __init__(
        self,
        old: Any,
        net: Any,
        t: float,
        dt: float,
        *,
        impl: str = "auto",
        t_rates: float | None = None,
    ) -> None:
        self.net, self.t, self.dt, self.impl = net, float(t), float(dt), impl
        self.t_rates = self.t + self.dt if t_rates is None else float(t_rates)
        self._old = TransitionTarget(old, net, t, dt, impl=impl)  # memoised log q_old

    @torch.no_grad()
    def sample_old(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """n states of q_old (n, L)."""
        states, _ = self._old.old.sample(n, generator)
        return states.to(self.net.device)

    def residual(
        self, model: Any, states: torch.Tensor, others: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """r(n) = log q(n) - log G_q(n) at distinct states (U, L), differentiable in the
        model's parameters, and the exit rate a_0(n) at t + dt -> (U,), (U,).

        others: (M, L) the states fitted elsewhere (the other ranks' in a run of many
        processes): a neighbour among them is differentiable too, as it is in one process."""
        U = states.shape[0]
        nbr, valid = ops.neighbors(states, self.net, impl=self.impl)  # (U, K, L), (U, K)
        rows, k = valid.nonzero(as_tuple=True)
        inflow_from = nbr[rows, k]  # (V, L) the neighbours n - s_k inside the box
        with torch.no_grad():
            # a_k(n - s_k): reaction k at the neighbour, which leads into n (not every
            # reaction at every neighbour: quadratic in K on a lattice)
            a_in = ops.inflow_propensities(states, self.net, self.t_rates)[rows, k]
            exit_rate = ops.propensities(states, self.net, self.t_rates, impl=self.impl).sum(1)
            log_old = self._old.old_log_prob(states)
        log_q, log_q_nbr = _scores(model, states, inflow_from, self.net.limits, others)
        live = a_in > 0
        terms = torch.full(
            (U, valid.shape[1] + 1), -math.inf, dtype=log_q.dtype, device=log_q.device
        )
        terms[:, 0] = log_old.to(log_q.dtype)
        inflow = math.log(self.dt) + torch.log(a_in[live]) + log_q_nbr[live]
        terms = terms.index_put((rows[live], k[live] + 1), inflow)
        log_rhs = torch.logsumexp(terms, dim=1) - torch.log1p(self.dt * exit_rate)
        return log_q - log_rhs, exit_rate


def bdf2_coefficients(h: float, h_prev: float) -> tuple[float, float, float]:
    """(a, b, gamma) of the variable-step BDF2 step of length h after one of h_prev:
    q_new - gamma h W(t + h) q_new = a q_n - b q_{n-1}, with w = h / h_prev,
    a = (1 + w)^2 / (1 + 2w), b = w^2 / (1 + 2w), gamma = (1 + w) / (1 + 2w) (4/3, 1/3, 2/3
    at constant steps; a - b = 1)."""
    w = h / h_prev
    return (1 + w) ** 2 / (1 + 2 * w), w * w / (1 + 2 * w), (1 + w) / (1 + 2 * w)


class BDF2Source:
    """The source a q_n - b q_{n-1} of a BDF2 step, with log_prob as a distribution's (the
    `old` of an `ImplicitTarget`) and the draws of q_n (where the step's mass comes from).

    Where it would be negative (a receding edge of the law: q_{n-1} > (a / b) q_n) it is
    floored at `BDF2_FLOOR` a q_n (module docstring).

    Args:
        present: q_n (a frozen VAN, or any object with `log_prob` and `sample`).
        previous: q_{n-1}.  a, b: the step's coefficients (`bdf2_coefficients`).
    """

    def __init__(self, present: Any, previous: Any, a: float, b: float) -> None:
        self.present, self.previous, self.a, self.b = present, previous, float(a), float(b)
        self.num_species = getattr(present, "num_species", 1)
        self.max_count = getattr(present, "max_count", 1)

    @torch.no_grad()
    def log_prob(self, states: torch.Tensor) -> torch.Tensor:
        """log max(a q_n - b q_{n-1}, BDF2_FLOOR a q_n) at (B, L) states -> (B,)."""
        log_now = self.present.log_prob(states)
        ratio = torch.exp(self.previous.log_prob(states).to(log_now.dtype) - log_now)
        share = (self.a - self.b * ratio).clamp(min=BDF2_FLOOR * self.a)
        return torch.where(torch.isfinite(log_now), log_now + torch.log(share), log_now)

    @torch.no_grad()
    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws of q_n and their log q_n."""
        return self.present.sample(batch_size, generator)


@torch.no_grad()
def bdf2_error(
    new: Any,
    history: list[tuple[float, Any]],
    t_new: float,
    *,
    samples: int,
    generator: torch.Generator | None = None,
    support: torch.Tensor | None = None,
) -> float:
    """The local error of a BDF2 step to q_new at t_new, relative, RMS under q_new (as
    `local_error` measures backward Euler's).

    BDF2's local error is C_B h^3 q^(3) + O(h^4); the quadratic through the last three laws,
    extrapolated to t_new, misses q(t_new) by C_P h^3 q^(3) (both constants from the step
    lengths), so e = (C_B / C_P) (q_new - sum_i l_i q_i) estimates it with no further solve
    (Milne's device; 2/9 of the difference at constant steps).

    Args:
        new: the step's result.  history: the three laws before it, (t_i, q_i), oldest first,
            the last one the step's start.  t_new: the step's end.
        samples, generator, support: as for `local_error`.
    """
    times = [t for t, _ in history]
    a, b, _ = bdf2_coefficients(t_new - times[2], times[2] - times[1])
    lagrange = [
        math.prod((t_new - times[j]) / (times[i] - times[j]) for j in range(3) if j != i)
        for i in range(3)
    ]

    def cubic(s: float) -> float:  # (s - t_new)^3 / 6: zero, with its slope, at t_new
        return (s - t_new) ** 3 / 6

    step_miss = -a * cubic(times[2]) + b * cubic(times[1])  # the BDF2 equation's residual
    extrapolation_miss = -sum(c * cubic(s) for c, s in zip(lagrange, times, strict=True))
    constant = abs(step_miss / extrapolation_miss)
    states, log_new, weights = expectation_states(new, samples, generator, support)
    predicted = torch.zeros_like(log_new)
    for c, (_, law) in zip(lagrange, history, strict=True):
        predicted += c * torch.exp(law.log_prob(states).to(log_new.dtype) - log_new)
    e = constant * (1 - predicted)
    return math.sqrt(expectation(e.square(), weights))


def _scores(
    model: Any,
    states: torch.Tensor,
    neighbours: torch.Tensor,
    limits: torch.Tensor,
    others: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log q at the states (differentiable) and at the neighbours: differentiable where a
    neighbour is one of the states, fixed (lagged) where it is not.

    A neighbour outside the set has no residual of its own in the fit, so a gradient through
    it would let the fit lift mass there, where nothing holds it, to balance the equations of
    the states it feeds."""
    U = states.shape[0]
    both, inverse = unique_states(torch.cat([states, neighbours]), limits)
    fitted = torch.zeros(both.shape[0], dtype=torch.bool, device=both.device)
    fitted[inverse[:U]] = True
    if others is not None and others.shape[0]:  # fitted on another rank
        fitted[inverse[U:][member_rows(neighbours, others, limits)]] = True
    log_q = torch.empty(both.shape[0], dtype=torch.float64, device=both.device)
    with torch.no_grad():
        if (~fitted).any():
            log_q[~fitted] = model.log_prob(both[~fitted]).double()
    at = fitted.nonzero(as_tuple=True)[0]
    log_q = log_q.index_put((at,), model.log_prob(both[fitted]).double())
    return log_q[inverse[:U]], log_q[inverse[U:]]


class ImplicitUpdate(KLUpdate):
    """`KLUpdate` that also fits `ImplicitTarget`s: the mean square of the implicit residual.

    Options as for `KLUpdate` (iterations, stopping rule, exploration, objective, lr_decay).
    """

    name = "implicit"

    def run(self, problem: StepProblem) -> StepReport:
        self._last_fit: tuple[ImplicitTarget, torch.Tensor, torch.Tensor, Any] | None = None
        return super().run(problem)

    def _motion_made(self, model: Any, begun: Any) -> tuple[float, float]:
        """An implicit fit's alpha, from the residual of its last iteration's states as the
        fit ended (f) and as it began (r = minus that one): the target q* has r = 0 at every
        state, so r as the fit began is the motion it was asked for, about log q* - log q
        where the step is not stiff (a lag in the implicit steps adds up as in the explicit
        ones: the batch follows it, `nncme.steppers.Fit`). Two residual evaluations."""
        if self._last_fit is None:  # an explicit fit
            return super()._motion_made(model, begun)
        target, states, weights, others = self._last_fit
        with torch.no_grad():
            f = target.residual(model, states, others)[0]
            r = -target.residual(begun, states, others)[0]
        return motion_regression(f, r, weights)

    def _exact_objective(
        self, problem: StepProblem, draw: Draw, report: StepReport
    ) -> Callable[..., torch.Tensor]:
        """1/2 sum_n W(n) r(n)^2 over the whole support (`KLUpdate._fit_exactly`), W as the
        draws weigh the residual (rho as the fit began with "log_variance", else q), every
        neighbour inside the box differentiable (all are among the states)."""
        if not isinstance(problem.target, ImplicitTarget):
            return super()._exact_objective(problem, draw, report)
        target, states = problem.target, draw.states
        W = draw.as_drawn() if self.objective == "log_variance" else draw.weights
        with torch.no_grad():
            exit_rate = target.residual(problem.model, states)[1]
        report.rate_dt = max(report.rate_dt, problem.dt * float(exit_rate.max()))
        report.ess = draw.ess
        self._last_fit = (target, states, W, None)
        tilt = None if self.supervision is None else self.supervision.tilt(states)

        def objective(loss: bool = False) -> torch.Tensor:
            r = target.residual(problem.model, states)[0]
            if loss:  # the residual's mean under q: about the step's KL
                return (torch.exp(problem.model.log_prob(states)) * r).sum()
            value = 0.5 * (W * r * r).sum()
            if tilt is not None:  # E_q[g], the tilt's pull
                value = value + (torch.exp(problem.model.log_prob(states)) * tilt).sum()
            return value

        return objective

    def _iteration(self, problem: StepProblem, it: int, report: StepReport) -> None:
        if not isinstance(problem.target, ImplicitTarget):
            super()._iteration(problem, it, report)
            return
        # in a run of many processes the sums over the batch are over all ranks' states
        # (`nncme.parallel`), in two collectives: the draw's pooling, the gradient's sum
        draw, states = self._batch(problem)
        B = draw.states.shape[0]  # this rank's draws
        # and states of q_old, the source: the residual must vanish where the mass comes from,
        # or the fit could move mass off it and balance the equations where it lands
        source = (  # (an exhaustive draw holds every state already)
            states[:0] if draw.exhaustive
            else problem.target.sample_old(max(1, B // 2), problem.generator)
        )  # fmt: skip
        every = torch.cat([states, source])
        unique, inverse = unique_states(every, problem.model.limits)
        draw, _, (extra,) = pool(draw, [], [every.shape[0] - B])
        others = None
        if parallel.active():  # the states the other ranks fit
            gathered = parallel.gather_objects(unique.cpu())
            del gathered[parallel.rank()]
            others = torch.cat(gathered).to(unique.device)
        r, exit_rate = problem.target.residual(problem.model, unique, others)
        w = self._weights(draw, states.shape[0])
        if self.objective == "log_variance":  # every state counts as often as drawn
            w = torch.cat([draw.as_drawn(), w[B:]])
        w = torch.cat([w, w.new_full(source.shape[:1], 1.0 / draw.total)])
        W = torch.zeros(unique.shape[0], dtype=w.dtype, device=w.device).index_add_(0, inverse, w)
        # the drawn states' weights sum to 1 over all ranks, each other state's is 1/B
        W = W / (float(W.sum()) if not parallel.active() else 1.0 + extra / draw.total)
        self._last_fit = (problem.target, unique, W, others)
        square = (W * r * r).sum()
        self.optimizer.zero_grad(set_to_none=True)
        objective = square
        tilt = None if self.supervision is None else self.supervision.tilt(draw.states)
        if tilt is not None:  # the gradient of E_q[g]: the tilt's pull, by the score function
            dw = draw.weights / draw.weights.sum()
            coef = (dw * (tilt - (dw * tilt).sum())).to(square.dtype)
            objective = square + (coef * problem.model.log_prob(draw.states)).sum()
        objective.backward()
        rd = r.detach()
        bad = int((~torch.isfinite(rd)).sum())
        (loss, square_all, square_weights, bad_all), (fastest,), _ = parallel.sum_gradients(
            problem.model.parameters(),
            [float((W * rd).sum()), float(square.detach()), float((draw.weights**2).sum()), bad],
            [float(exit_rate.max()) if exit_rate.numel() else 0.0],
        )  # the whole batch's gradient, and its numbers
        if bad_all > 0:  # before the step: the parameters stay as they were
            raise NonFiniteError(
                f"the implicit residual is not finite at {round(bad_all)} states at "
                f"iteration {it + 1}: the model has no mass where the step's equation needs it"
            )
        self.optimizer.step()
        report.loss = loss
        report.residual = 0.5 * square_all
        report.loss_std = math.sqrt(2 * report.residual)
        report.residuals.append(report.residual)
        report.losses.append(report.loss)
        report.rate_dt = max(report.rate_dt, problem.dt * fastest)
        report.ess = 1.0 / square_weights
        report.pareto_k = draw.pareto_k
        report.iterations = it + 1


@torch.no_grad()
def local_error(
    new: Any,
    old: Any,
    net: Any,
    t: float,
    dt: float,
    *,
    samples: int,
    generator: torch.Generator | None = None,
    impl: str = "auto",
    support: torch.Tensor | None = None,
) -> float:
    """The local error of a backward-Euler step q_old -> q_new, relative, RMS under q_new.

    Backward Euler's local error is dt^2/2 W^2 q + O(dt^3), and since dt W q_new = q_new -
    q_old it is estimated, to that order, by e = 1/2 [(q_new - q_old) - dt W q_old] with no
    further solve. Where the step is stiff but the distribution moves slowly (dt a_0 >> 1
    near a quasi-stationary law) both terms are small, so the estimate asks for a short step
    only where the law moves fast, not where some rate is fast.

    Args:
        new: the step's result (a VAN: `sample` gives states and their log q).
        old: the distribution at t.  net, t, dt, impl: the step.
        samples: draws of q_new.  generator: their random stream.
        support: (N, L) q_new's whole support (one process): the expectation summed exactly
            over it instead of drawn.

    Returns:
        sqrt(E_q_new[(e / q_new)^2]): about sqrt(8) times the Hellinger distance the step's
        time error adds (nats for small errors).
    """
    states, log_new, weights = expectation_states(new, samples, generator, support)
    states = states.to(net.device)
    target = TransitionTarget(old, net, t, dt, impl=impl)
    flow = target(states).local_gen  # (W q_old)(n) / q_old(n)
    ratio = torch.exp(target.old_log_prob(states).to(log_new.dtype) - log_new)  # q_old / q_new
    moved = torch.where(ratio > 0, dt * flow * ratio, torch.zeros_like(ratio))
    e = 0.5 * (1 - ratio - moved)
    return math.sqrt(expectation(e.square(), weights))  # over every rank's draws


@torch.no_grad()
def implicit_support(
    start: Any,
    net: Any,
    t: float,
    dt: float,
    *,
    max_states: int,
    leak: float = 1e-10,
    impl: str = "auto",
    exact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(I - dt W)^-1 p0 exactly, where the start lists its support and the states that hold
    all but `leak` of the result are few enough.

    Args:
        exact: the CME's own solution exp(dt W) p0 instead (scipy's expm_multiply; rates at
            the midpoint t + dt/2 where they depend on time): a first step with no time
            error at all, which backward Euler's has (it is the evolution over an
            exponentially distributed time of mean dt, so it widens a moving distribution).

    Returns:
        states (N, L) and log p (N,) over the states kept, or None (no listed support, or
        more than max_states needed).
    """
    found = listed_support(start, max_states, net.device)
    if found is None:
        return None
    states, log_p0 = found
    p0 = torch.exp(log_p0).double().cpu().numpy()
    t_rates = t + dt / 2 if exact else t + dt
    while True:
        p, lost = solve_on(states, p0, net, t_rates, dt, impl, exact)
        if lost < leak:
            keep = p > 0
            return states[torch.as_tensor(keep)], torch.log(torch.as_tensor(p[keep]))
        grown = one_reaction_ahead(states, net, t_rates, impl=impl)
        if grown.shape[0] == states.shape[0] or grown.shape[0] > max_states:
            return None
        p0 = np.concatenate([p0, np.zeros(grown.shape[0] - states.shape[0])])
        states = grown


def solve_on(
    states: torch.Tensor, p0: np.ndarray, net: Any, t: float, dt: float, impl: str, exact: bool
) -> tuple[np.ndarray, float]:
    """(I - dt W_S) p = p0, or p = exp(dt W_S) p0 (exact), on the set S (outflow from S is
    lost) -> p, the mass lost."""
    N = states.shape[0]
    a = ops.propensities(states, net, t, impl=impl).double().cpu().numpy()  # (N, K)
    reached = states.unsqueeze(1) + net.change.unsqueeze(0)  # (N, K, L)
    keys = _keys(states, net.limits)
    order = np.argsort(keys)
    target = _keys(reached.reshape(-1, states.shape[1]), net.limits).reshape(N, -1)
    pos = np.searchsorted(keys[order], target).clip(max=N - 1)
    inside = (keys[order][pos] == target) & (a > 0)
    rows = order[pos[inside]]
    cols = np.nonzero(inside)[0]
    W = sp.csc_matrix((a[inside], (rows, cols)), shape=(N, N))
    W = W - sp.diags(a.sum(1))
    if exact:
        p = spla.expm_multiply((dt * W).tocsc(), p0)
    else:
        p = spla.spsolve((sp.identity(N, format="csc") - dt * W).tocsc(), p0)
    p = np.clip(p, 0.0, None)
    return p, max(0.0, 1.0 - float(p.sum()))


@torch.no_grad()
def solved_target(
    support: torch.Tensor, p0: torch.Tensor, net: Any, t: float, dt: float, impl: str, exact: bool
) -> FixedTarget:
    """`solve_on` over a model's whole support as a fit's fixed target (`listed_target`):
    (I - dt W)^-1 p0, or exp(dt W) p0 (exact).

    Args:
        support: (N, L) the states.  p0: (N,) the source on them.  net, t, dt, impl, exact:
            as for `solve_on`."""
    p, _ = solve_on(support, p0.double().cpu().numpy(), net, t, dt, impl, exact)
    return listed_target(support, p, net)


def listed_target(support: torch.Tensor, p: np.ndarray, net: Any) -> FixedTarget:
    """p (N,) on the (N, L) states of a support as a fit's fixed target, floored at 1e-15 of
    its largest value (where roundoff starts, so that log p stays finite and meaningful) and
    normalised."""
    q = torch.as_tensor(p).clamp(min=max(float(p.max()) * 1e-15, 1e-300))
    return FixedTarget(Listed(support, torch.log(q / q.sum()).to(support.device), net.limits), net)


def _keys(states: torch.Tensor, limits: torch.Tensor) -> np.ndarray:
    """A mixed-radix key per state (states outside the box get keys no state has)."""
    s = states.cpu().numpy().astype(np.int64)
    m = limits.cpu().numpy().astype(np.int64)
    out = np.zeros(s.shape[0], dtype=np.int64)
    outside = ((s < 0) | (s >= m)).any(axis=1)
    for i in range(s.shape[1]):
        out = out * int(m[i]) + np.clip(s[:, i], 0, m[i] - 1)
    return np.where(outside, -1 - np.arange(s.shape[0]), out)
