"""Fits of a VAN to a target distribution: what one stage of a time step does.

An `Update` gets a `StepProblem` (the model to change in place, the target log p at given
states, the proposal, the batch size and the generator) and returns a `StepReport`.
`KLUpdate` minimises the reverse KL D(q || p) = E_q[log q - log p] with a torch optimiser (Adam
by default), using the score-function gradient

    g = E_rho[w (f - b) grad log q],   f = log q - log p,   b = E_rho[w f]

(self-normalised importance weights w from the proposal, the weighted batch mean as baseline).
`NaturalGradientUpdate` (natgrad.py) preconditions the same gradient through the seam
`apply_gradient(problem, states, coef, weights)`. The time schemes that decide what p is
(T q_old for Euler, a Heun corrector, ...) live in `nncme.steppers`; TDVP, which moves theta
along a flow instead of fitting, is `nncme.optim.tdvp`.

`fit_enumerated` fits a distribution given on an explicit list of states exactly (the first
step from a start with few states).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import parallel
from ..models.base import AutoregressiveModel, frozen_copy
from ..sampling import Draw, Proposal, pool, unique_states
from .gradients import grad_of_sum
from .supervision import Supervision
from .target import (
    NonFiniteError,
    StageTarget,
    TransitionTarget,
    explore_ahead,
    stiff_mass,
)

__all__ = [
    "OPTIMIZERS",
    "KLUpdate",
    "StepProblem",
    "StepReport",
    "Update",
    "fit_enumerated",
    "lr_schedule",
    "make_optimizer",
]

OPTIMIZERS = ("adam", "sgd")
OBJECTIVES = ("kl", "log_variance")
EXPLORE_BASELINES = ("samples", "own")


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """A first-order torch optimiser by name: "adam" (default) or "sgd" (momentum 0.9)."""
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def lr_schedule(it: int, iterations: int, lr_decay: float) -> float:
    """The learning rate of a fit's iteration `it`, as a fraction of lr: 1 for the first half
    of its `iterations`, then a cosine down to lr_decay at the last (see `KLUpdate`, "Noise")."""
    half = (iterations - 1) / 2
    progress = max(0.0, it - half) / half if half > 0 else 1.0
    return lr_decay + (1 - lr_decay) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class StepProblem:
    """One time step t -> t + dt as an update sees it.

    Attributes:
        model: the VAN, changed in place (warm-started from the previous step).
        target: log T q_old at given states.
        proposal: where training states come from.
        batch_size: states per iteration.
        generator: the run's random stream.
        t, dt: the step's start and length (t is where explored states take their rates).
        t_model: the time the model's law stands for when the fit starts (a later stage of
            a Runge-Kutta step starts from an earlier stage's value; default t).
    """

    model: AutoregressiveModel
    target: TransitionTarget | StageTarget
    proposal: Proposal
    batch_size: int
    generator: torch.Generator | None
    t: float
    dt: float
    t_model: float | None = None  # the time the model's law stands for as the fit starts (t)

    @property
    def start_time(self) -> float:
        return self.t if self.t_model is None else self.t_model


@dataclass
class StepReport:
    """What an update did in one time step.

    Attributes:
        loss: the KL estimate E_rho[w f] of the last iteration (nats); an error indicator:
            reverse KL to the exact one-step map of the previous distribution.
        loss_std: weighted standard deviation of f over the batch, last iteration.
        iterations: optimiser iterations done.
        rate_dt: the largest dt * a_0(n) over the sampled states.
        stiff_mass: the share of the last draw's weight at states where dt * a_0(n) > 0.9,
            where the explicit map saturates (`nncme.optim.target.outflow_fraction`): a step
            is accurate only where this is small.
        local_error: adaptive implicit steps: the largest local error estimate of the
            accepted sub-steps (`nncme.optim.local_error`; nan otherwise).
        ess: effective sample size of the proposal's weights, last iteration.
        residual: the stopping rule's quantity, last iteration (see `KLUpdate`).
        gap: log q(U) - log T q_old(U) on the distinct training states U, last iteration; a
            negative gap is probability that q holds on states no sample visited.
        losses, residuals: per iteration.
        seconds: wall time of the step.
        shift: the Fisher/TDVP shift lambda used (second-order updates; 0 otherwise).
        accepted, rejected: integrator steps accepted and rejected (TDVP).
        pareto_k: Pareto shape estimate of the largest importance weights (with PSIS).
        held_out: TDVP with a cross-validated shift: the held-out relative misfit of the fit
            (the fraction of the CME's motion it fails to predict at samples it did not see;
            nan otherwise).
        fallbacks: second-order solves that could not be factored and took the eigen/SVD
            solution instead (see `nncme.optim.linear`).
        capped: a fit ended at its iteration cap before its stopping rule was met.
        misfit_left: the stopping rule's last mean residual as a share of the fit's first
            (drawn fits; nan otherwise; the largest of a step's fits). A fit that ends at its
            cap far above its `relative_tolerance` ended where its draws' noise leaves it.
        scheme: the time scheme that made the step (`nncme.steppers`).
        warnings: what the run's watchdog found wrong with the step (`nncme.observers`).
        supervision_penalty, supervision_z: with observable supervision, the penalty
            (nats) and largest |O - r| / s as the (last) fit started (`Supervision`; nan
            where no reference was).
        motion_made: the fraction of the motion it was asked for that the (last) fit made,
            1 + Cov(f, r) / Var(r) under its last draw's weights, with r = log p - log q_start
            the change of log q the target asks for and f = log q - log p what is left (so
            log q - log q_start = f + r); 1: the whole step, below 1: a lag that no later
            step makes up (each fits T q_old of a lagging q_old). An implicit fit reads its
            residuals instead (f: as it ended, r: minus as it began; `ImplicitUpdate`). nan
            where not measured (a draw on which the target does not move q).
        motion_spread: Var(r) on that draw (nats^2): the step's squared relative motion,
            how much weight its motion_made carries when fits are averaged.
        batch: states per iteration of the (last) fit.
        motion: how far the step's explicit map moves q, relative RMS, measured at its start
            (`nncme.optim.step_motion`; nan where not measured).
        next_dt: the longest next step the stepper's own measures allow (the motion per
            step, the explicit map's positivity, an adaptive scheme's error estimate); the
            driver grows its steps towards it (`nncme.evolve.Driver`). nan: no opinion.
    """

    loss: float
    loss_std: float = 0.0
    iterations: int = 0
    rate_dt: float = 0.0
    stiff_mass: float = 0.0
    local_error: float = math.nan
    ess: float = 0.0
    residual: float = 0.0
    gap: float = 0.0
    losses: list[float] = field(default_factory=list)
    residuals: list[float] = field(default_factory=list)
    seconds: float = 0.0
    shift: float = 0.0
    accepted: int = 0
    rejected: int = 0
    pareto_k: float = math.nan
    held_out: float = math.nan
    fallbacks: int = 0
    capped: bool = False
    misfit_left: float = math.nan
    warnings: list[str] = field(default_factory=list)
    scheme: str = ""
    supervision_penalty: float = math.nan
    supervision_z: float = math.nan
    motion_made: float = math.nan
    motion_spread: float = math.nan
    batch: int = 0
    motion: float = math.nan
    next_dt: float = math.nan

    LOGGED = (
        "loss", "loss_std", "iterations", "rate_dt", "stiff_mass", "local_error", "residual",
        "gap", "ess", "shift", "accepted", "rejected", "pareto_k", "held_out", "fallbacks",
        "capped", "misfit_left", "warnings", "scheme", "seconds", "supervision_penalty",
        "supervision_z", "motion_made", "batch", "motion", "next_dt",
    )  # fmt: skip

    def log_fields(self) -> dict[str, Any]:
        """The report's line of the run's JSONL log (nan and inf written as null)."""
        values = {name: getattr(self, name) for name in self.LOGGED}
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in values.items()
        }


class Update:
    """Base class of per-step updates."""

    name = "update"

    def run(self, problem: StepProblem) -> StepReport:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class KLUpdate(Update):
    """Reverse-KL minimisation with a torch optimiser, plus exploration one reaction ahead.

    Each iteration draws B states from the proposal (q itself by default) and scores
    f = log q - log T q_old on them; the coefficients w (f - b), with b the weighted mean of f
    (the KL estimate), give the score-function gradient of D(q || T q_old).

    Exploration (`explore` = eta > 0): the reverse-KL gradient is blind to states q does not
    sample (its coefficients there are zero however much mass T q_old puts on them), so a
    distribution that moves into new states, above all from a point mass, lags behind. So
    eta * B extra states are made by letting one reaction fire from the first eta * B samples
    (chosen with probability a_k(n) / a_0(n): where T q_old's new mass goes). They enter with
    weight 1/B each, and their coefficient is (f - b) / B with b the samples' baseline (the
    KL estimate; `explore_baseline="samples"`): a state whose log q is below log T q_old by
    more than the batch's mean gap is pulled up, at the cost of the states the samples hold,
    which is how mass leaves a point mass. Zero exactly where q = T q_old (then f = b = 0), so
    the fixed point is unchanged. Not weighted by q, so a state far below its target is pulled
    at once.

    `explore_baseline="own"` centres them on their own mean instead: the gradient of the
    log-variance divergence over them (Richter et al., 2020), which sums to zero over the
    explored states, so it reshapes q among them but moves no mass between them and the
    samples. From a point mass that leaks slowly it cannot move the model at all: a batch
    then holds almost only the start state, whose explored states all lie one reaction from it
    and are equally far below their target, so their centred coefficients cancel (the README's
    MAPK measurements, from benchmarks/bench_second_order.py, show both baselines).

    Stopping rule. The residual of an iteration is 1/2 sum coef * (f - b), half the weighted
    variance of f: about the KL from q to the target, explored states included. After
    `min_iterations`, a step stops once the mean residual of the last `window` iterations is
    below `tolerance`, or below `relative_tolerance` times the step's first residual. The
    relative test matters: a step's target moves q by only O(dt), so an absolute threshold
    would stop steps part-way, and the unmade part of every step adds up to a lag (each step
    fits T q_old, so a lag is never made up later). `iterations` caps the count either way.

    Exact fits. Where the proposal is `Enumerated` (the model's whole support, listed), there
    is nothing to draw: the objective is summed over every state, and L-BFGS minimises it
    instead of the optimiser (`_fit_exactly`); exploration and the batch play no part.

    Args:
        optimizer: a torch optimiser over the model's parameters (its state persists across
            time steps: each step starts where the last left off).
        iterations: optimiser iterations per time step (the maximum when `tolerance` > 0).
        tolerance: the stopping rule's absolute threshold in nats.
        relative_tolerance: its threshold relative to the step's first residual.
        min_iterations: iterations before the stopping rule may act.
        window: iterations averaged by the stopping rule.
        explore: eta, the fraction of extra states one reaction away (0: pure reverse KL).
        explore_baseline: what the explored states' f is measured against: "samples" (the
            samples' baseline b) or "own" (their own mean). See "Exploration".
        lr_decay: the learning rate at a step's last allowed iteration, as a fraction of the
            optimiser's own (constant for the first half, cosine in the second; 1: constant).
            See "Noise" below.
        objective: "kl" (reverse KL, importance-weighted) or "log_variance": the log-variance
            divergence Var_rho[log q - log T q_old] under the proposal itself, every drawn
            state with weight 1/B (see below).
        supervision: observables to hold each fit to (`nncme.optim.supervision`): its tilt
            exp(-g) of the target enters f = log q - log T q_old + g at every training state.

    The log-variance objective. Reverse KL weighs a state by q: probability that q leaks into
    states far in the tails costs only (leaked mass) x (its log error), so a tail whose log q
    is 10 nats too high is invisible to it however often a wide proposal draws it (its
    importance weight q / rho is tiny). Var_rho[log q - log T q_old] is zero exactly where
    q = T q_old on the proposal's support, like the KL, but weighs each drawn state by how
    often the proposal draws it: with the mixture or alpha proposal, the tails are fitted in
    log space (Richter et al., 2020; the same divergence as the explored states'). Its
    gradient, with the draw held fixed, is (2/B) sum_b (f_b - mean f) grad log q(n_b).

    Noise. Near a step's optimum the gradient is mostly sampling noise, and Adam, which
    normalises it, then moves every parameter by about lr per iteration in a random direction;
    what is left of that jitter when the step ends is an error the next steps inherit, and over
    thousands of steps it adds up along the slow modes of the network (the toggle switch's
    minority mode). `lr_decay` < 1 anneals the learning rate in the second half of each step
    (cosine from lr down to lr_decay * lr at the last of `iterations`): the first half moves
    at the full rate, so a step still follows a fast-moving target (annealing over the whole
    step made the toggle switch's early steps lag), and the step ends with a smaller jitter.
    """

    name = "kl"
    exact_fits = True  # L-BFGS on a whole listed support (`_fit_exactly`)

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        iterations: int = 10,
        tolerance: float = 0.0,
        min_iterations: int = 1,
        window: int = 3,
        explore: float = 0.0,
        relative_tolerance: float = 0.0,
        objective: str = "kl",
        lr_decay: float = 1.0,
        explore_baseline: str = "samples",
        supervision: Supervision | None = None,
    ) -> None:
        self.supervision = supervision
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if explore_baseline not in EXPLORE_BASELINES:
            raise ValueError(
                f"explore_baseline must be one of {EXPLORE_BASELINES}, got {explore_baseline!r}"
            )
        self.explore_baseline = explore_baseline
        self.objective = objective
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if not 0 <= explore <= 1:
            raise ValueError(f"explore must be in [0, 1], got {explore}")
        self.optimizer = optimizer
        self.iterations = int(iterations)
        self.tolerance = float(tolerance)
        self.min_iterations = max(1, int(min_iterations))
        self.window = max(1, int(window))
        self.explore = float(explore)
        self.relative_tolerance = float(relative_tolerance)
        if not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
        self.lr_decay = float(lr_decay)
        self.stall: tuple[int, float, float] | None = None  # exact fits: `stopping`
        self._twin: AutoregressiveModel | None = None  # the model as a fit began (reused)
        self._last_draw: tuple[torch.Tensor, ...] | None = None  # the last iteration's draw

    @contextmanager
    def stopping(
        self,
        tolerance: float,
        relative_tolerance: float,
        iterations: int | None = None,
        stall: tuple[int, float, float] | None = None,
    ) -> Iterator[None]:
        """Fits inside the block stop on these thresholds (and at most `iterations`) instead
        of the update's own: a fit to an exact target that must get close to it, not merely
        make most of its motion. With `stall` = (window, fall, below), an exact fit also stops
        once its best objective is below `below`^2 and fell by less than the fraction `fall`
        over the last `window` evaluations (`_stalled`)."""
        saved = self.tolerance, self.relative_tolerance, self.iterations, self.stall
        self.tolerance, self.relative_tolerance = float(tolerance), float(relative_tolerance)
        self.iterations = int(iterations or self.iterations)
        self.stall = stall
        try:
            yield
        finally:
            self.tolerance, self.relative_tolerance, self.iterations, self.stall = saved

    def run(self, problem: StepProblem) -> StepReport:
        start = time.perf_counter()
        report = StepReport(loss=math.nan)
        base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        if self.supervision is not None:  # the tilt of this fit's target, fixed within it
            self.supervision.begin(
                problem.model, problem.start_time, 4 * problem.batch_size, problem.generator
            )
            report.supervision_penalty = self.supervision.last.get("penalty", math.nan)
            report.supervision_z = self.supervision.last.get("max_z", math.nan)
        begun = self._twin = frozen_copy(problem.model, self._twin)  # the model as it began
        self._last_draw = None
        if self.exact_fits and getattr(problem.proposal, "support", None) is not None:
            self._fit_exactly(problem, report)
        else:
            self._fit_by_draws(problem, report, base_lrs)
        report.motion_made, report.motion_spread = self._motion_made(problem.model, begun)
        report.batch = problem.batch_size
        report.seconds = time.perf_counter() - start
        return report

    def _fit_by_draws(self, problem: StepProblem, report: StepReport, base_lrs: list) -> None:
        """The optimiser's iterations, each on a new draw, until the stopping rule."""
        try:
            report.capped = True
            for it in range(self.iterations):
                self._set_lr(base_lrs, it)
                self._iteration(problem, it, report)
                if self._converged(report.residuals):
                    report.capped = False
                    break
            report.misfit_left = self._share_left(report.residuals)
        finally:  # the optimiser (and its checkpoint) keeps the undecayed rate
            for group, lr in zip(self.optimizer.param_groups, base_lrs):
                group["lr"] = lr

    def _fit_exactly(self, problem: StepProblem, report: StepReport) -> None:
        """L-BFGS on the objective summed over the model's whole support (`Enumerated`).

        A sum over every state is a deterministic function of the parameters, and Adam is the
        wrong tool for one: it normalises the gradient, so near the optimum, where the exact
        gradient is small but not noise, it still moves every parameter by about lr and
        overshoots (fits that made 130-150 % of their step's motion). L-BFGS with a
        strong-Wolfe line search converges on it instead. The objective is the draws' own, in
        expectation: 1/2 Var_rho(log q - log T q_old) with rho as the fit began
        (log-variance), or the reverse KL (`_exact_objective`). The fit stops at the first
        evaluation whose objective is below `tolerance`^2 or `relative_tolerance`^2 of the
        first, when L-BFGS stalls, or after 2 x `iterations` evaluations
        (`report.iterations` counts evaluations). The thresholds are squared because the
        objective is exact: the draws' thresholds sit above their noise floor, and a fit
        stopped there leaves ~ 1e-3 of each stage's motion (Hellinger ~ 5e-4 on a motion of
        0.015), which hundreds of stages add up."""
        draw = problem.proposal.draw(problem.model, problem.batch_size, problem.generator)
        if draw.states.shape[0] == 0:
            raise NonFiniteError("the model holds no state of the listed support")
        objective = self._exact_objective(problem, draw, report)
        lbfgs = torch.optim.LBFGS(
            [p for p in problem.model.parameters() if p.requires_grad],
            lr=1.0,
            max_iter=self.iterations,
            max_eval=2 * self.iterations,
            history_size=20,
            tolerance_grad=0.0,
            tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )
        values: list[float] = []

        def closure() -> torch.Tensor:
            lbfgs.zero_grad(set_to_none=True)
            value = objective()
            v = float(value.detach())
            if not math.isfinite(v):
                raise NonFiniteError(
                    f"the exact fit's objective is {v} at t = {problem.t:g}: the model puts "
                    "mass where the step's target has none, or it diverged"
                )
            values.append(v)
            done = v < self.tolerance**2 or v < self.relative_tolerance**2 * values[0]
            if (done or self._stalled(values)) and len(values) > self.min_iterations:
                raise _Converged  # the parameters stay at this point (`_directional_evaluate`)
            value.backward()
            return value

        report.capped = False
        try:
            lbfgs.step(closure)
            n_iter = next(iter(lbfgs.state.values()), {}).get("n_iter", 0)  # its only state
            report.capped = len(values) >= 2 * self.iterations or n_iter >= self.iterations
        except _Converged:
            pass
        with torch.no_grad():
            report.residual = float(objective())
            report.loss = float(objective(loss=True))
        report.residuals = values
        report.iterations = len(values)
        report.losses.append(report.loss)

    def _stalled(self, values: list[float]) -> bool:
        """Whether an exact fit's best objective is below `stall`'s `below`^2 and fell by
        less than its fraction `fall` over its last `window` evaluations, and the last
        evaluation is that best (so the fit stops at its best point): a fit that levels off
        just above the absolute threshold would otherwise run to the cap for its last
        percent. Above `below`^2 a fit goes on while it gains anything (the toggle switch's
        fits gain 2-5 % per 200 evaluations for thousands of them, and they count)."""
        if self.stall is None:
            return False
        window, fall, below = self.stall
        if len(values) <= window:
            return False
        best = min(values)
        if not (values[-1] <= best < below**2):
            return False
        return best > (1.0 - fall) * min(values[:-window])

    def _exact_objective(
        self, problem: StepProblem, draw: Draw, report: StepReport
    ) -> Callable[..., torch.Tensor]:
        """The fit's objective over an exhaustive draw, as a function of the model's
        parameters (`loss=True`: the reverse KL instead, the report's loss); fills the report's
        step-size and mass diagnostics and what `_motion_made` reads."""
        model, states = problem.model, draw.states
        values = problem.target(states)
        log_tq = values.log_tq.detach()
        tilt = None if self.supervision is None else self.supervision.tilt(states)
        shift = log_tq if tilt is None else log_tq - tilt.to(log_tq.dtype)  # log T~
        rate_dt = problem.dt * values.exit_rate
        report.rate_dt = max(report.rate_dt, _largest(rate_dt))
        report.stiff_mass = stiff_mass(draw.weights, rate_dt)
        report.ess = draw.ess
        report.gap = float(torch.logsumexp(draw.log_q, 0) - torch.logsumexp(log_tq, 0))
        rho = draw.as_drawn()
        self._last_draw = (states, draw.weights, log_tq)
        scorer = getattr(problem.proposal, "scorer", None)  # each prefix's conditionals once
        score = scorer(model, states) if scorer is not None else model.scorer(states)

        def objective(loss: bool = False) -> torch.Tensor:
            log_q = score()
            if loss:
                return (torch.exp(log_q) * (log_q - log_tq)).sum()
            g = log_q - shift
            if self.objective == "log_variance":
                return 0.5 * (rho * (g - (rho * g).sum()) ** 2).sum()
            return (torch.exp(log_q) * g).sum()

        return objective

    def _motion_made(
        self, model: AutoregressiveModel, begun: AutoregressiveModel
    ) -> tuple[float, float]:
        """(motion_made, motion_spread) of the fit (see `StepReport`), on the last
        iteration's draw: log q at its states once more by the model as it ended and as it
        began (two evaluations of B states, against the fit's B (K + 1) per iteration)."""
        last = self._last_draw
        if last is None:  # no iteration ran (every rank alike)
            return math.nan, math.nan
        states, weights, log_p = last
        with torch.no_grad():  # q as the fit ended (the draw's f is one optimiser step old)
            f = model.log_prob(states) - log_p
            r = log_p - begun.log_prob(states)
        return motion_regression(f, r, weights)

    def _set_lr(self, base_lrs: list[float], it: int) -> None:
        """The learning rate of iteration `it`: lr for the first half of `iterations`, then a
        cosine down to lr_decay * lr at the last."""
        if self.lr_decay == 1.0:
            return
        factor = lr_schedule(it, self.iterations, self.lr_decay)
        for group, lr in zip(self.optimizer.param_groups, base_lrs):
            group["lr"] = lr * factor

    def _batch(self, problem: StepProblem) -> tuple[Draw, torch.Tensor]:
        """The proposal's draw, and all training states (B + eta B, L): the explored states
        one reaction ahead after the draw's."""
        draw = problem.proposal.draw(problem.model, problem.batch_size, problem.generator)
        if draw.states.shape[0] == 0 and not parallel.active():
            raise NonFiniteError("the proposal drew no state that the model can hold")
        explore = 0.0 if draw.exhaustive else self.explore  # no state lies beyond the support
        net, generator = problem.target.net, problem.generator
        moved = explore_ahead(draw.states, explore, net, problem.t, generator)
        return draw, torch.cat([draw.states, moved])

    @staticmethod
    def _weights(draw: Draw, n_states: int) -> torch.Tensor:
        """The training states' weights: the (pooled) draw's, then 1/B for each explored
        state (B: the states drawn over all ranks)."""
        if draw.total == 0:
            raise NonFiniteError("the proposal drew no state that the model can hold")
        extra = n_states - draw.states.shape[0]
        return torch.cat([draw.weights, draw.weights.new_full((extra,), 1.0 / draw.total)])

    def _iteration(self, problem: StepProblem, it: int, report: StepReport) -> None:
        # In a run of many processes the sums over the batch are over all ranks' states
        # (`nncme.parallel`), in two collectives: the draw's pooling, and the gradient's sum.
        draw, states = self._batch(problem)
        B = draw.states.shape[0]  # this rank's draws
        log_q = draw.log_q
        if states.shape[0] > B:
            with torch.no_grad():
                log_q = torch.cat([log_q, problem.model.log_prob(states[B:])])
        values = problem.target(states)
        rate_dt = problem.dt * values.exit_rate
        f_all = log_q - values.log_tq
        f = f_all[:B]
        as_drawn = draw.as_drawn() * draw.total  # how often each state counts as drawn
        tilt = None if self.supervision is None else self.supervision.tilt(states)
        g_all = f_all if tilt is None else f_all + tilt.to(f_all.dtype)  # log q - log T~
        draw, (loss, tilted_loss), (drawn_sum, explored_sum, explored) = pool(
            draw,
            [float((draw.weights * f).sum()), float((draw.weights * g_all[:B]).sum())],
            [float((as_drawn * g_all[:B]).sum()), float(g_all[B:].sum()), states.shape[0] - B],
        )  # tilted_loss = loss without a tilt
        w = self._weights(draw, states.shape[0])
        # what `_motion_made` reads once the fit ends (the untilted target: the CME's motion)
        self._last_draw = (draw.states, draw.weights, values.log_tq[:B])
        if not math.isfinite(loss):
            bad = int((~torch.isfinite(f)).sum())
            raise NonFiniteError(
                f"the loss is {loss} at iteration {it + 1} ({bad} of {f.numel()} samples "
                "have a non-finite log q - log T q_old: the model puts mass where the "
                "previous distribution's one-step map has none, or it diverged)"
            )
        if self.objective == "log_variance":  # every state counts as often as drawn
            w = torch.cat([draw.as_drawn(), w[B:]])
            baseline = drawn_sum / draw.total
        else:
            baseline = tilted_loss
        coef = w * (g_all - baseline)
        if explored > 0 and self.explore_baseline == "own":
            coef[B:] = w[B:] * (g_all[B:] - explored_sum / explored)
        unique, inverse = unique_states(states, problem.model.limits)
        c = torch.zeros(unique.shape[0], dtype=coef.dtype, device=coef.device)
        c.index_add_(0, inverse, coef)
        weights = torch.zeros_like(c).index_add_(0, inverse, w)
        # diagnostics: mass of q and of T q_old on the states seen (a leak shows as gap < 0)
        lq_u = torch.empty_like(c).scatter_(0, inverse, log_q)
        lt_u = torch.empty_like(c).scatter_(0, inverse, values.log_tq)
        numbers = (
            [
                float((coef * (g_all - tilted_loss)).sum()),
                float((draw.weights * (f - loss) ** 2).sum()),
                stiff_mass(draw.weights, rate_dt[:B]),
                float((draw.weights**2).sum()),
            ],
            [_largest(rate_dt)],
            [float(torch.logsumexp(lq_u, 0)), float(torch.logsumexp(lt_u, 0))],
        )
        # (an override that returns nothing leaves them as they are: right for one process)
        numbers = self.apply_gradient(problem, unique, c, weights, numbers) or numbers
        (residual, spread, stiff, square_weights), (largest,), (mass_q, mass_t) = numbers
        report.gap = mass_q - mass_t
        report.residual = 0.5 * residual
        report.residuals.append(report.residual)
        report.losses.append(loss)
        report.loss = loss
        report.loss_std = math.sqrt(spread)
        report.rate_dt = max(report.rate_dt, largest)
        report.stiff_mass = stiff
        report.ess = 1.0 / square_weights
        report.pareto_k = draw.pareto_k
        report.iterations = it + 1

    def _converged(self, residuals: list[float]) -> bool:
        """The stopping rule (see the class docstring)."""
        if len(residuals) < max(self.min_iterations, self.window):
            return False
        recent = self._recent(residuals)
        return recent < self.tolerance or recent < self.relative_tolerance * residuals[0]

    def _share_left(self, residuals: list[float]) -> float:
        """The stopping rule's recent mean over the first (`StepReport.misfit_left`)."""
        if not residuals or not residuals[0] > 0:
            return math.nan
        return self._recent(residuals) / residuals[0]

    def _recent(self, residuals: list[float]) -> float:
        """The mean of the last `window` residuals (all of them where fewer)."""
        recent = residuals[-self.window :]
        return sum(recent) / len(recent)

    def apply_gradient(
        self,
        problem: StepProblem,
        states: torch.Tensor,
        coef: torch.Tensor,
        weights: torch.Tensor,
        numbers: parallel.Numbers | None = None,
    ) -> parallel.Numbers:
        """One optimiser step on sum_u coef_u log q(n_u): the seam for preconditioners.

        Args:
            states: (U, L) the distinct training states (each scored once, which is the same
                gradient as scoring every repeat, for much less work).
            coef: (U,) their summed coefficients w (f - b).
            weights: (U,) their summed sampling weights (for a Fisher matrix E_rho[O O^T]).
            numbers: sums, maxima and log-sum-exps of this rank's states, reduced over all
                ranks with the gradient (`nncme.parallel.sum_gradients`).

        Returns:
            the numbers, reduced (as given with one process).
        """
        self.optimizer.zero_grad(set_to_none=True)
        grad_of_sum(problem.model, states, coef)
        numbers = numbers or ([], [], [])
        numbers = parallel.sum_gradients(problem.model.parameters(), *numbers)  # whole batch
        self.optimizer.step()
        return numbers

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class _Converged(Exception):
    """An exact fit met its stopping rule inside L-BFGS (`KLUpdate._fit_exactly`)."""


def _largest(values: torch.Tensor) -> float:
    """The largest entry (0 for none: a rank whose draws all fell off the model's support)."""
    return float(values.max()) if values.numel() else 0.0


def fit_enumerated(
    model: AutoregressiveModel,
    states: torch.Tensor,
    log_p: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    iterations: int,
    tolerance: float,
    batch: int | None = None,
    generator: torch.Generator | None = None,
) -> StepReport:
    """Fit q to a distribution given on an explicit list of states, by exact cross-entropy.

    Minimises KL(p || q) = sum_n p(n) (log p(n) - log q(n)), computed exactly over the listed
    states (no sampling), until it falls below `tolerance` or `iterations` are spent. A list
    longer than `batch` (tens of thousands of states: the first step of a lattice of many
    sites from a point mass, at over a second per full pass) is fitted on `batch` draws of p
    per iteration instead: the same gradient in expectation, the KL estimated from them, and
    all `iterations` spent.

    Args:
        states: (N, L) the support of p; log_p: (N,) log p, normalised here.
        batch: the most states one iteration scores (None: all).
        generator: the draws' random stream.

    Returns:
        A StepReport whose `loss` is the final KL(p || q) in nats.
    """
    start = time.perf_counter()
    log_p = log_p - torch.logsumexp(log_p, dim=0)
    p = torch.exp(log_p)
    entropy = float(-(p * log_p).where(p > 0, torch.zeros_like(p)).sum())
    drawn = batch is not None and states.shape[0] > batch
    report = StepReport(loss=math.nan)
    for it in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        if drawn:  # cross-entropy and KL estimated on draws of p
            pick = torch.multinomial(p, batch, replacement=True, generator=generator)
            log_q = model.log_prob(states[pick])
            cross = -log_q.mean()
            kl = float((log_p[pick] - log_q.detach()).mean())
        else:
            cross = -(p * model.log_prob(states)).sum()
            kl = float(cross.detach()) - entropy
        report.losses.append(kl)
        report.loss, report.iterations = kl, it
        if not math.isfinite(kl):
            raise NonFiniteError(f"the first-step fit diverged (KL = {kl}) at iteration {it}")
        if kl < tolerance and not drawn:  # (an estimate from draws is too noisy to stop on)
            break
        cross.backward()
        optimizer.step()
        report.iterations = it + 1
    report.seconds = time.perf_counter() - start
    return report


def motion_regression(
    f: torch.Tensor, r: torch.Tensor, weights: torch.Tensor
) -> tuple[float, float]:
    """(alpha, Var(r)) with alpha = 1 + Cov(f, r) / Var(r) under the weights, over all ranks'
    states: r, the motion a fit was asked for (its target against q as it began), and f, what
    it left undone (q as it ended against its target). alpha = 0 where the fit did not move q,
    1 where it made all of it; noise in f that r does not predict leaves it unbiased."""
    ok = torch.isfinite(f) & torch.isfinite(r)
    w, f, r = weights * ok, torch.where(ok, f, 0.0), torch.where(ok, r, 0.0)
    sums = torch.stack([x.sum() for x in (w, w * f, w * r, w * f * r, w * r * r)])
    (mass, sf, sr, sfr, srr), _, _ = parallel.reduce(sums.tolist())  # one host sync
    if not mass > 0:
        return math.nan, math.nan
    spread = srr / mass - (sr / mass) ** 2
    if not spread > 0:
        return math.nan, math.nan
    return 1.0 + (sfr / mass - sf * sr / mass**2) / spread, spread
