"""Time schemes: one class per `integrator` name, each owning a whole step t -> t + dt.

A step of an explicit Runge–Kutta method in Shu–Osher form builds stage values
u_0 = q(t), u_1, ..., u_s = q(t + dt), each a combination of earlier ones and their Euler
moves,

    u_i = sum_{j < i} alpha_ij u_j + beta_ij dt W(t + c_j dt) u_j,

(`Scheme`: the coefficients, and c_j, the time of u_j as a fraction of dt). `Euler`, `Heun`
(strong-stability-preserving: 1/2 q + 1/2 T(t + dt) q*, second order) and `RK4` (the classical
fourth-order method) are such tableaus. How a stage value is made is the `Motion`'s job, so one
scheme class serves both ways nncme moves a VAN:

- `Fit` (adam, sgd, natgrad): the model is fitted to the stage's target distribution,
  log sum_j alpha_j T_j u_j (`nncme.optim.StageTarget`), warm-started from the last stage.
  This needs non-negative weights with alpha_ij > 0 wherever beta_ij > 0 (a convex mixture of
  explicit maps, a probability distribution while dt a_0 < 1): Euler and Heun, not RK4.
- `Flow` (tdvp): theta moves linearly, theta_i = sum_j alpha_ij theta_j + beta_ij dt
  theta_dot(theta_j, t_j), with theta_dot the TDVP right-hand side, each evaluated once per
  stage value; any tableau works.

Adaptive sub-steps (`tolerance`, Flow only): the step [t, t + dt] is crossed in sub-steps whose
length follows an error estimate in the Fisher metric of the sub-step's first evaluation (the
RMS difference of log q, nats): the embedded lower-order solution where the scheme has one
(Heun: its Euler stage), else one step against two half steps. A sub-step is accepted when
err <= tolerance; the next length is h clip(0.9 (tolerance / err)^(1/(p+1)), 0.2, 2) with p
the order of the error estimate's lower solution, and it carries over to the next step.
Sampling noise enters err, so a tolerance far below the noise drives h down; below
`min_step` dt the step stops with a `TrainingError`.

Grown steps: each stepper's report names the longest next step its own measures allow
(`StepReport.next_dt`: the explicit steps' motion, and for `auto` the explicit map's
positivity; the adaptive schemes' error estimate), and `nncme.evolve.Driver` grows its steps
towards it, so a run crosses the slow stretches of a CME in few long steps.

`Exponential` steps need no scheme: where the fits sum over the model's whole support, each
step's target is the CME's own solution exp(h W) q on it, so only time-dependent rates and the
fits limit h (the `auto` integrator's steps there).

`StartFit` is the first step from a start distribution that is not a VAN (a point mass, a
product of marginals): it applies the run's scheme to p0 exactly where p0 lists its support
and fits the model to the result, with its own optimiser.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import ops, parallel
from .models import AutoregressiveModel, frozen_copy
from .optim import (
    BDF2Source,
    ImplicitTarget,
    ImplicitUpdate,
    KLUpdate,
    StageTarget,
    StepProblem,
    StepReport,
    TDVPEvaluation,
    TDVPRightHandSide,
    Term,
    TrainingError,
    Update,
    bdf2_coefficients,
    bdf2_error,
    fit_enumerated,
    flat_parameters,
    implicit_support,
    local_error,
    set_flat_parameters,
    step_motion,
    transition_support,
)
from .optim.implicit import listed_target, solve_on, solved_target
from .optim.target import STIFF_RATE_DT, STIFF_SHARE, FixedTarget, Listed, listed_support
from .sampling import Enumerated, Proposal

__all__ = [
    "RK4",
    "SSP",
    "STEPPERS",
    "Auto",
    "BackwardEuler",
    "Euler",
    "Exponential",
    "Fit",
    "Flow",
    "Heun",
    "Motion",
    "RungeKutta",
    "Scheme",
    "StartFit",
    "bulk_states",
    "make_stepper",
    "motion_pieces",
    "ssp_scheme",
]

# Largest support of a start distribution that the first step enumerates exactly.
MAX_ENUMERATED = 200_000
# Listed states a first-step fit scores per iteration: longer lists are fitted on draws of p
# (`fit_enumerated`); every network but a lattice of many sites lists far fewer.
FIRST_FIT_STATES = 8_192
# The fits of a first step's rest after a short exact step (`StartFit._rest_of_step`) may take
# this many times the run's iterations.
REST_ITERATIONS = 4
# Most sub-steps `max_motion` cuts one step into (a stiff step is the implicit scheme's job).
MAX_MOTION_SUBSTEPS = 16
# A grown step aims at this share of `max_motion`, so that the motion measured at the next
# step's start, which may have risen, seldom cuts it into sub-steps.
GROWN_MOTION = 0.5


def motion_pieces(moved: float, max_motion: float) -> int:
    """The fewest equal sub-steps (1..MAX_MOTION_SUBSTEPS) of a step that moves the
    distribution by `moved` (relative, RMS) that keep each below `max_motion`."""
    return max(1, min(MAX_MOTION_SUBSTEPS, math.ceil(moved / max_motion - 1e-9)))


@dataclass(frozen=True)
class Scheme:
    """An explicit Runge–Kutta tableau in Shu–Osher form.

    Attributes:
        times: c_j, the time of stage value j as a fraction of dt (c_0 = 0).
        stages: for each stage i = 1..s, its terms (j, alpha_ij, beta_ij).
        order: the order of the method.
        embedded: the stage value that is an embedded lower-order solution (None: none).
        embedded_order: its order.
    """

    times: tuple[float, ...]
    stages: tuple[tuple[tuple[int, float, float], ...], ...]
    order: int
    embedded: int | None = None
    embedded_order: int | None = None

    @property
    def fittable(self) -> bool:
        """Every stage a convex mixture of explicit maps (what a `Fit` can target)."""
        terms = [term for stage in self.stages for term in stage]
        return all(a >= 0 and b >= 0 and (a > 0 or b == 0) for _, a, b in terms)

    @property
    def fit_motion(self) -> float:
        """The most a stage moves its value away from the value it starts from, as a share
        of the step's motion: the largest beta / alpha of a moving term (the fits' motion,
        what `max_motion` bounds). 1 for Euler and Heun, 1 / (s - 1) for SSPRK(s, 2)."""
        return max(b / a for stage in self.stages for _, a, b in stage if a > 0)

    @property
    def error_order(self) -> int:
        """p of the step-length rule: the lower order of the error estimate."""
        return self.embedded_order if self.embedded is not None else self.order


class Motion:
    """How stage values are made and kept; a `RungeKutta` step drives it.

    The model holds the newest stage value. `snapshot` keeps it (a value later stages can
    combine), `stage` makes the next one from its terms alpha u_j + beta dt W(t_j) u_j
    (`nncme.optim.Term`, whose value is a kept snapshot), `restore` puts a kept value back
    into the model.
    """

    model: AutoregressiveModel

    def begin(self, t: float, dt: float) -> None:
        """A new step from t of length dt starts (dt: the trainer's step, not a sub-step)."""

    def motion(self, t: float, h: float) -> float | None:
        """How far an explicit step of length h moves the model's distribution from t,
        relative (`nncme.optim.step_motion`); None where the motion cannot say."""
        return None

    def snapshot(self, slot: int) -> Any:
        raise NotImplementedError

    def stage(self, terms: list[Term], dt: float) -> StepReport:
        raise NotImplementedError

    def restore(self, value: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot restore a stage value")

    def distance(self, a: Any, b: Any, at: Any) -> float:
        raise NotImplementedError(f"{type(self).__name__} has no error estimate")

    def merge(self, reports: list[StepReport]) -> StepReport:
        """One report for the step from its stages' reports."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _warn(report: StepReport, message: str) -> None:
    """Into the step's report (the run's log and summary) and to the user."""
    report.warnings.append(message)
    warnings.warn(message, stacklevel=4)


def _weighted_made(reports: list[StepReport]) -> tuple[float, float]:
    """A step's motion_made: its fits' readings weighted by their motion (as the batch rule
    weighs them), and their summed motion_spread. A later stage of a scheme fits the small
    correction to the stage before it, a reading of noise that the last fit's alone would
    report as the step's."""
    read = [r for r in reports if math.isfinite(r.motion_made) and r.motion_spread > 0]
    if not read:
        return reports[-1].motion_made, reports[-1].motion_spread
    spread = sum(r.motion_spread for r in read)
    return sum(r.motion_made * r.motion_spread for r in read) / spread, spread


class Fit(Motion):
    """Stage values by fitting the model to each stage's target with an `Update`.

    The batch follows the fits' lag. A fit that makes only a fraction alpha of the motion it
    is asked for (`StepReport.motion_made`) leaves the rest undone for good: every later
    step fits T q_old of the lagging q_old, so a lag of 1 - alpha per step adds up to a
    relative error of (1 - alpha) x (the motion so far), the means falling behind. Where the
    gradient is mostly sampling noise (bursty networks: a rare on-state whose counts move
    fast), Adam makes progress in proportion to the gradient's signal to noise, so alpha
    rises with the batch. So the fits' alpha is averaged over the last fits (weighted by
    their motion, `motion_spread`, so that steps that hardly move do not decide), and where
    that average is below `LAG_GROW` by more than `LAG_SIGNIFICANCE` of its standard errors
    (from the scatter of the fits' own readings about it) the batch doubles, up to
    `max_batch`. The readings scatter far more than their draws' noise says: each fit over-
    or undershoots its small step by a share of its own misfit (a 20-species cascade's
    readings run from -3.4 to 3.7 about 1 at 1,000-4,000 draws), so a mean of a few of them falls
    below LAG_GROW by chance, and taken as it is doubles the batch for nothing. Once alpha
    has stayed above
    `LAG_SHRINK` for `LAG_KEEP` x `LAG_FITS` fits it halves again, down to `batch_size`
    (each fit's reading is of one draw, noisy enough that a batch halved on a few good
    readings came back within a few steps); each change waits for `LAG_FITS` new fits.

    The batch follows the fits' noise as well. A fit whose draws' noise is larger than its
    step's motion neither lags nor converges: it ends at its iteration cap with much of its
    misfit left (`StepReport.misfit_left`), in a random direction that no reading of alpha
    sees, and those misfits add up over the steps (Heun's second fit, whose motion is only
    the correction to the first, is the first to end there). More draws lower that floor.
    So where more than half of `LAG_WINDOW` fits end capped with more than `NOISE_SHARE` of
    their misfit left, the batch doubles, up to `max_batch` (warned about there), and it is
    not halved again while more than `NOISE_KEEP` of a window's fits do (README, "The batch
    follows the fits' noise").

    Args:
        model: the VAN (changed in place).
        update: the fit (`KLUpdate`, `NaturalGradientUpdate`); its optimiser state carries
            over from step to step.
        net: the compiled network.  proposal: where training states come from.
        batch_size: states per iteration.  generator: the run's random stream.
        impl: operator implementation.
        max_batch: the largest batch the lag may ask for (None or batch_size: fixed).
    """

    LAG_GROW, LAG_SHRINK = 0.9, 0.97
    LAG_SIGNIFICANCE = 2.0  # standard errors by which the running alpha is below LAG_GROW
    LAG_MEMORY = 0.8  # weight of the earlier fits in the running alpha
    LAG_FITS = 10
    LAG_KEEP = 4  # halved once alpha stayed above LAG_SHRINK for LAG_KEEP x LAG_FITS fits
    LAG_WINDOW = 20  # fits per count of noise-limited ones
    NOISE_SHARE = 0.1  # the misfit left by a capped fit that its draws' noise stopped
    NOISE_KEEP = 0.25  # the share of such fits in a window above which the batch is kept

    def __init__(
        self,
        model: AutoregressiveModel,
        update: Update,
        net: Any,
        proposal: Proposal,
        batch_size: int,
        generator: torch.Generator | None,
        *,
        impl: str = "auto",
        max_batch: int | None = None,
    ) -> None:
        self.model, self.update, self.net, self.impl = model, update, net, impl
        self.proposal, self.batch_size, self.generator = proposal, batch_size, generator
        self.base_batch = int(batch_size)
        self.max_batch = max(self.base_batch, int(max_batch or batch_size))
        # running sums of (alpha - 1) x spread and of spread; fits; fits in a row above
        # LAG_SHRINK; running sums of (alpha - 1)^2 x spread and of the squared weights
        self._lag = [0.0, 0.0, 0, 0, 0.0, 0.0]
        # noise-limited fits and fits in the current window; share of the last whole window
        self._noise = [0, 0, 0.0]
        self._lag_warned = self._noise_warned = False
        self._twins: dict[int, AutoregressiveModel] = {}
        self._t = 0.0

    def begin(self, t: float, dt: float) -> None:
        self._t = t

    def motion(self, t: float, h: float) -> float:
        return step_motion(
            self.model, self.net, t, h, samples=self.batch_size, generator=self.generator,
            impl=self.impl, support=self.support,
        )  # fmt: skip

    @property
    def support(self) -> torch.Tensor | None:
        """The model's whole support where the fits enumerate it (`sampling.Enumerated`):
        the step's measures then sum over it too."""
        return getattr(self.proposal, "support", None)

    def snapshot(self, slot: int) -> AutoregressiveModel:
        """A frozen copy of the model, kept per slot and refreshed in place (no new model
        per step)."""
        self._twins[slot] = frozen_copy(self.model, self._twins.get(slot))
        return self._twins[slot]

    def stage(self, terms: list[Term], dt: float) -> StepReport:
        self._t = min(term.t for term in terms)  # the (sub-)step's start
        # the model holds the newest stage value, whose time is the latest term's
        return self.fit(
            StageTarget(terms, self.net, dt, impl=self.impl), dt, max(term.t for term in terms)
        )

    def fit(self, target: Any, dt: float, t_model: float | None = None) -> StepReport:
        """Fit the model to any target (an explicit stage, an `ImplicitTarget`); t_model: the
        time the model's law stands for as the fit starts (default: the step's start)."""
        problem = StepProblem(
            self.model, target, self.proposal, self.batch_size, self.generator, self._t, dt,
            t_model,
        )  # fmt: skip
        report = self.update.run(problem)
        self._follow_lag(report)
        return report

    def _follow_lag(self, report: StepReport) -> None:
        """Double or halve the batch as the fits' noise and running alpha ask (class
        docstring)."""
        made, spread = report.motion_made, report.motion_spread
        fixed = self.max_batch == self.base_batch or self.support is not None  # (no draw)
        if fixed or self._noisy(report) or not (math.isfinite(made) and spread > 0):
            return  # (a fit that doubled the batch for its noise is not read for its lag)
        b, w = self.LAG_MEMORY, (1 - self.LAG_MEMORY) * spread  # this fit's weight
        lagged, moved, fits, kept, square, weights = self._lag
        lagged, moved = b * lagged + w * (made - 1.0), b * moved + w
        square, weights = b * square + w * (made - 1.0) ** 2, b * b * weights + w * w
        fits += 1
        alpha = 1.0 + lagged / moved
        if fits >= self.LAG_FITS:
            kept = kept + 1 if alpha > self.LAG_SHRINK else 0
        self._lag = [lagged, moved, fits, kept, square, weights]
        if fits < self.LAG_FITS:
            return
        lagging = alpha + self.LAG_SIGNIFICANCE * self._lag_error() < self.LAG_GROW
        if lagging and self.batch_size == self.max_batch:
            self._warn_lag(alpha, report)
        elif lagging:
            self.batch_size = min(2 * self.batch_size, self.max_batch)
            self._forget()
        elif kept >= self.LAG_KEEP * self.LAG_FITS and self.batch_size > self.base_batch:
            if self._noise[2] <= self.NOISE_KEEP:  # (what the noise doubled stays while needed)
                self.batch_size = max(self.batch_size // 2, self.base_batch)
                self._forget()

    def _forget(self) -> None:
        """Judge a new batch on its own fits."""
        self._lag, self._noise = [0.0, 0.0, 0, 0, 0.0, 0.0], [0, 0, 0.0]

    def _noisy(self, report: StepReport) -> bool:
        """Count the fit as noise-limited or not; at the end of a window where most were,
        double the batch (or warn at the largest) and say so (class docstring)."""
        left = report.misfit_left
        if not math.isfinite(left):
            return False
        noisy, fits, _ = self._noise
        noisy, fits = noisy + (report.capped and left > self.NOISE_SHARE), fits + 1
        self._noise = [noisy, fits, self._noise[2]]
        if fits < self.LAG_WINDOW:
            return False
        self._noise = [0, 0, noisy / fits]
        if 2 * noisy <= fits:
            return False
        if self.batch_size == self.max_batch:
            self._warn_noise(noisy / fits, report)
            return False
        self.batch_size = min(2 * self.batch_size, self.max_batch)
        self._forget()
        return True

    def _warn_noise(self, share: float, report: StepReport) -> None:
        if not self._noise_warned:  # once per run
            self._noise_warned = True
            _warn(report, (
                f"{share:.0%} of the fits end at their iteration cap with more than "
                f"{self.NOISE_SHARE:.0%} of their misfit left at the largest batch "
                f"({self.batch_size}): the draws' noise, not the steps, limits the accuracy; "
                "raise --max-batch-factor or --batch"
            ))  # fmt: skip

    def _lag_error(self) -> float:
        """The standard error of the running alpha: the weighted scatter of the readings
        about it over their effective number less one."""
        lagged, moved, _, _, square, weights = self._lag
        mean = lagged / moved
        scatter = max(0.0, square / moved - mean * mean)
        count = moved * moved / weights if weights > 0 else 1.0
        return math.sqrt(scatter / max(count - 1.0, 1.0))

    def _warn_lag(self, alpha: float, report: StepReport) -> None:
        if not self._lag_warned:  # once per run (a lag at the top holds for many steps alike)
            self._lag_warned = True
            _warn(report, (
                f"the fits make only {alpha:.0%} of each step's motion at the largest batch "
                f"({self.batch_size}): the law lags behind the CME by the rest, step after "
                "step; raise --max-batch-factor, --batch or --iterations"
            ))  # fmt: skip

    def restore(self, value: AutoregressiveModel) -> None:
        """Put a snapshot's parameters back into the model (a rejected sub-step)."""
        self.model.load_state_dict(value.state_dict())

    def merge(self, reports: list[StepReport]) -> StepReport:
        """The last fit's report, with the work and the step-size check of all of them."""
        last = reports[-1]
        last.iterations = sum(r.iterations for r in reports)
        last.seconds = sum(r.seconds for r in reports)
        last.rate_dt = max(r.rate_dt for r in reports)
        last.stiff_mass = max(r.stiff_mass for r in reports)
        last.fallbacks = sum(r.fallbacks for r in reports)
        last.capped = any(r.capped for r in reports)
        left = [r.misfit_left for r in reports if math.isfinite(r.misfit_left)]
        last.misfit_left = max(left, default=math.nan)
        last.motion_made, last.motion_spread = _weighted_made(reports)
        last.warnings = [w for r in reports for w in r.warnings]
        return last

    def state_dict(self) -> dict[str, Any]:
        lag = {"batch_size": self.batch_size, "lag": list(self._lag), "noise": list(self._noise)}
        warned = {"lag_warned": self._lag_warned, "noise_warned": self._noise_warned}
        return {**self.update.state_dict(), **lag, **warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.update.load_state_dict(state)
        # (a checkpoint from before the batch followed the lag has neither)
        self.batch_size = int(state.get("batch_size", self.base_batch))
        lag = list(state.get("lag", [0.0, 0.0, 0, 0]))
        self._lag = lag + [0.0] * (6 - len(lag))  # (from before the scatter was kept: none)
        self._lag_warned = bool(state.get("lag_warned", False))
        noise = state.get("noise", [0, 0, 0.0])  # (from before the noise was counted: none)
        self._noise = [int(noise[0]), int(noise[1]), float(noise[2])]
        self._noise_warned = bool(state.get("noise_warned", False))


@dataclass
class _FlowValue:
    """A stage value of a `Flow`: theta, and theta_dot there once it was evaluated."""

    theta: torch.Tensor
    slope: TDVPEvaluation | None = None


class Flow(Motion):
    """Stage values by moving theta along the TDVP flow (`nncme.optim.TDVPRightHandSide`).

    Args:
        model: the VAN (its parameters are set to each stage value).
        rhs: theta -> theta_dot at the model's parameters (or any callable with its
            signature: (model, t, generator, h, need_grads) -> TDVPEvaluation).
        generator: the run's random stream.
        need_grads: keep the per-sample gradients of each evaluation (the adaptive error
            estimate's metric needs them).
    """

    def __init__(
        self,
        model: AutoregressiveModel,
        rhs: TDVPRightHandSide,
        generator: torch.Generator | None,
        *,
        need_grads: bool = False,
    ) -> None:
        self.model, self.rhs, self.generator, self.need_grads = model, rhs, generator, need_grads
        self._dt, self._began = 0.0, 0.0
        self._evaluations: list[TDVPEvaluation] = []

    def begin(self, t: float, dt: float) -> None:
        self._dt, self._evaluations = dt, []
        self._began = time.perf_counter()

    def snapshot(self, slot: int) -> _FlowValue:
        return _FlowValue(flat_parameters(self.model))

    def restore(self, value: _FlowValue) -> None:
        set_flat_parameters(self.model, value.theta)

    def _slope(self, value: _FlowValue, t: float) -> torch.Tensor:
        """theta_dot at a stage value (evaluated once; R capped for the trainer's dt)."""
        if value.slope is None:
            set_flat_parameters(self.model, value.theta)
            value.slope = self.rhs(
                self.model, t, self.generator, self._dt, need_grads=self.need_grads
            )
            self._evaluations.append(value.slope)
        return value.slope.theta_dot

    def stage(self, terms: list[Term], dt: float) -> StepReport:
        """theta = sum alpha theta_j + beta dt theta_dot(theta_j, t_j); the step's report is
        made from its evaluations (`merge`)."""
        theta = torch.zeros_like(terms[0].value.theta)
        for term in terms:
            if term.alpha:
                theta += term.alpha * term.value.theta
        for term in terms:  # slopes in term order: the order their samples are drawn
            if term.beta:
                theta += (term.beta * dt) * self._slope(term.value, term.t)
        set_flat_parameters(self.model, theta)
        return StepReport(loss=math.nan)

    def distance(self, a: _FlowValue, b: _FlowValue, at: _FlowValue) -> float:
        """RMS change of log q between two values, in the Fisher metric of `at`'s slope."""
        return at.slope.fisher_norm(a.theta - b.theta)

    def merge(self, reports: list[StepReport]) -> StepReport:
        """The step's evaluations: mean residual (the loss), least ESS, last shift."""
        evaluations = self._evaluations
        residuals = [e.residual for e in evaluations]
        mean = sum(residuals) / len(residuals)
        return StepReport(
            loss=mean,
            residual=mean,
            losses=residuals,
            residuals=residuals,
            iterations=len(evaluations),
            shift=evaluations[-1].shift,
            ess=min(e.ess for e in evaluations),
            pareto_k=evaluations[-1].pareto_k,
            held_out=sum(e.held_out for e in evaluations) / len(evaluations),
            fallbacks=sum(e.fallback for e in evaluations),
            seconds=time.perf_counter() - self._began,
        )


class RungeKutta:
    """A time step by an explicit Runge–Kutta scheme in Shu–Osher form (module docstring).

    Subclasses set `scheme`; one subclass per `integrator` name.

    Args:
        motion: how stage values are made (`Fit` or `Flow`).
        tolerance: adaptive sub-steps with this error per sub-step (nats; None: one step per
            dt). Needs a motion with an error estimate (`Flow`).
        min_step: the shortest sub-step allowed, relative to dt, before the step gives up.
        max_motion: without a tolerance, cross each step in equal sub-steps (at most
            `MAX_MOTION_SUBSTEPS`) whose fits move the distribution by at most this much
            each, relative RMS (`Motion.motion`, measured at the step's start, times the
            share of it a stage moves, `Scheme.fit_motion`; None: one step per dt). For
            fits: a fit leaves undone a fixed fraction of its starting misfit, which grows
            as the square of the motion (see `nncme.optim.step_motion`), so the steps out of
            a point mass or through a fast transient are cut, and the slow rest of a run is
            not.
    """

    name = "runge_kutta"
    scheme: Scheme

    def __init__(
        self,
        motion: Motion,
        *,
        tolerance: float | None = None,
        min_step: float = 1e-6,
        max_motion: float | None = None,
    ) -> None:
        if isinstance(motion, Fit) and not self.scheme.fittable:
            raise ValueError(
                f"integrator {self.name!r} has stages that are not convex mixtures of explicit "
                "maps, so they cannot be fitted; use it with TDVP (optimizer 'tdvp')"
            )
        if tolerance is not None and not tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
        if max_motion is not None and not max_motion > 0:
            raise ValueError(f"max_motion must be > 0, got {max_motion!r}")
        self.motion = motion
        self.tolerance = tolerance
        self.min_step = float(min_step)
        self.max_motion = max_motion
        self.h: float | None = None  # the adaptive sub-step length, carried across steps

    @property
    def model(self) -> AutoregressiveModel:
        return self.motion.model

    def step(self, t: float, dt: float) -> StepReport:
        """Advance the model from t to t + dt; the report covers the whole step."""
        self.motion.begin(t, dt)
        if self.tolerance is None:
            moved = self._moved(t, dt)
            pieces = self._pieces(moved)
            reports = []
            for i in range(pieces):
                reports += self._advance(t + i * dt / pieces, dt / pieces, keep_last=False)[1]
            report = self.motion.merge(reports)
            report.accepted, report.scheme = pieces, self.name
            report.motion = moved
            report.next_dt = self._within_explicit_limit(dt, self._next_dt(dt, moved), report)
            return report
        reports: list[StepReport] = []
        accepted, rejected = self._adaptive(t, dt, reports)
        report = self.motion.merge(reports)
        report.accepted, report.rejected, report.scheme = accepted, rejected, self.name
        report.next_dt = self.h
        return report

    def _moved(self, t: float, dt: float) -> float:
        """The step's motion at its start (nan without max_motion or a measure of it)."""
        if self.max_motion is None:
            return math.nan
        moved = self.motion.motion(t, dt)
        return math.nan if moved is None or not math.isfinite(moved) else float(moved)

    def _pieces(self, moved: float) -> int:
        """Equal sub-steps of a step that moves q by `moved` keeping each fit's motion below
        max_motion."""
        if math.isnan(moved):
            return 1
        return motion_pieces(moved * self.scheme.fit_motion, self.max_motion)

    def _next_dt(self, dt: float, moved: float) -> float:
        """The step whose fits move q by GROWN_MOTION x max_motion (the motion grows as the
        step: it is dt W q / q); inf where q does not move, nan where that was not measured."""
        if math.isnan(moved) or self.max_motion is None:
            return math.nan
        if not moved > 0:
            return math.inf
        return dt * GROWN_MOTION * self.max_motion / (moved * self.scheme.fit_motion)

    @staticmethod
    def _within_explicit_limit(dt: float, wanted: float, report: StepReport) -> float:
        """The next step no longer than this one where its draws put STIFF_SHARE / 10 of their
        weight where dt a_0 > 0.9, and half of it above STIFF_SHARE: a step grown by its motion
        alone would cross the explicit limit on the law's fast states, where the map saturates
        and the step is no longer accurate (the README's "Which optimiser")."""
        if report.stiff_mass > STIFF_SHARE:
            return dt / 2
        if report.stiff_mass >= STIFF_SHARE / 10:
            return min(wanted, dt)
        return wanted

    def _advance(
        self, t: float, h: float, *, keep_last: bool = True
    ) -> tuple[list[Any], list[StepReport]]:
        """One step of length h from the model's state at t -> (stage values, reports)."""
        values = [self.motion.snapshot(0)]
        reports = []
        last = len(self.scheme.stages) - 1
        for i, stage in enumerate(self.scheme.stages):
            terms = [Term(values[j], t + self.scheme.times[j] * h, a, b) for j, a, b in stage]
            reports.append(self.motion.stage(terms, h))
            if i < last or keep_last:
                values.append(self.motion.snapshot(i + 1))
        return values, reports

    def _adaptive(self, t: float, dt: float, reports: list[StepReport]) -> tuple[int, int]:
        """Cross [t, t + dt] in sub-steps controlled by the error estimate."""
        t_end = t + dt
        h = self.h if self.h is not None else dt
        accepted = rejected = 0
        p = self.scheme.error_order
        while t < t_end - 1e-12 * max(1.0, abs(t_end)):
            step = min(h, t_end - t)
            start = self.motion.snapshot(-1)
            err = self._trial(t, step, reports)
            if err <= self.tolerance:
                t += step
                accepted += 1
            else:
                self.motion.restore(start)
                rejected += 1
            factor = 2.0 if err == 0 else 0.9 * (self.tolerance / err) ** (1.0 / (p + 1))
            h = step * min(2.0, max(0.2, factor))
            if h < self.min_step * dt:
                raise TrainingError(
                    f"the adaptive step fell to {h:.3g} at t = {t:g} (error {err:.3g} nats per "
                    f"step against tolerance {self.tolerance:g}); raise the tolerance or the "
                    "batch (sampling noise sets a floor on the error estimate)"
                )
            self.h = h
        return accepted, rejected

    def _trial(self, t: float, h: float, reports: list[StepReport]) -> float:
        """One sub-step (the model ends at its solution) and its error estimate."""
        values, stage_reports = self._advance(t, h)
        reports += stage_reports
        if self.scheme.embedded is not None:
            return self.motion.distance(values[-1], values[self.scheme.embedded], at=values[0])
        full = values[-1]
        self.motion.restore(values[0])
        halves, stage_reports = self._advance(t, 0.5 * h, keep_last=False)
        reports += stage_reports
        _, stage_reports = self._advance(t + 0.5 * h, 0.5 * h)
        reports += stage_reports
        two = self.motion.snapshot(-2)
        scale = 2.0**self.scheme.order - 1
        return self.motion.distance(two, full, at=halves[0]) / scale

    def state_dict(self) -> dict[str, Any]:
        return {"h": self.h, "motion": self.motion.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.h = state.get("h")
        self.motion.load_state_dict(state.get("motion", {}))


class Euler(RungeKutta):
    """u_1 = u_0 + dt W(t) u_0. First order."""

    name = "euler"
    scheme = Scheme(times=(0.0,), stages=(((0, 1.0, 1.0),),), order=1)


class Heun(RungeKutta):
    """Strong-stability-preserving Heun: u_1 = T(t) u_0, u_2 = 1/2 u_0 + 1/2 T(t + dt) u_1.

    Second order (with exact stages, (I + dt W + dt^2 W^2 / 2) u_0 for constant rates), and a
    convex mixture of explicit maps, so positive under the same condition as Euler. u_1 is the
    embedded Euler solution of the adaptive error estimate.
    """

    name = "heun"
    scheme = Scheme(
        times=(0.0, 1.0),
        stages=(((0, 1.0, 1.0),), ((0, 0.5, 0.0), (1, 0.5, 0.5))),
        order=2,
        embedded=1,
        embedded_order=1,
    )


def ssp_scheme(stages: int) -> Scheme:
    """SSPRK(s, 2), the optimal s-stage second-order strong-stability-preserving method
    (Ketcheson, SIAM J. Sci. Comput. 30, 2113 (2008)): with m = s - 1, m Euler moves of
    dt / m, u_i = T_{dt/m}(t + (i - 1) dt / m) u_{i-1}, then
    u_s = 1/s u_0 + m/s T_{dt/m}(t + dt) u_m. Every stage is a convex mixture of explicit maps
    of length dt / m, so the step keeps q positive while dt a_0 / m < 1: s fits per step
    m times as long as Euler's limit, against Heun's (s = 2) two fits per step of that limit.
    u_m is an embedded first-order solution ((I + dt W / m)^m u_0)."""
    if stages < 2:
        raise ValueError(f"an SSP scheme needs at least 2 stages, got {stages}")
    m = stages - 1
    moves = tuple(((i, 1.0, 1.0 / m),) for i in range(m))  # u_{i+1} from u_i
    last = ((0, 1.0 / stages, 0.0), (m, m / stages, 1.0 / stages))
    return Scheme(
        times=tuple(i / m for i in range(m + 1)),
        stages=(*moves, last),
        order=2,
        embedded=m,
        embedded_order=1,
    )


class SSP(RungeKutta):
    """SSPRK(s, 2) (`ssp_scheme`): second order, positive while dt a_0 < s - 1, in s fits.

    Where the explicit map's positivity limits the step (a fast exit rate at the states
    that carry the mass, with q itself moving slowly) it crosses (s - 1) times Euler's limit
    in s fits, where Heun crosses it in 2: 2 (s - 1) / s times the time per fit (1.5 at
    s = 4). Where the motion limits the step, `max_motion` bounds each fit's motion
    (`Scheme.fit_motion`: 1/(s - 1) of the step's), so the steps are s - 1 times Heun's,
    again in s fits; the time error per unit time is then s - 1 times Heun's (its error
    constant is 1/(6 (s - 1)), against Heun's 1/6, at s - 1 times the step).

    Args:
        motion, tolerance, min_step, max_motion: as `RungeKutta`.
        stages: s >= 2 (2 is Heun).
    """

    name = "ssp"

    def __init__(self, motion: Motion, *, stages: int = 4, **options: Any) -> None:
        self.scheme = ssp_scheme(int(stages))
        super().__init__(motion, **options)


class RK4(RungeKutta):
    """The classical fourth-order Runge–Kutta method (TDVP only: its stages move a value
    along another value's slope, which no fit can target)."""

    name = "rk4"
    scheme = Scheme(
        times=(0.0, 0.5, 0.5, 1.0),
        stages=(
            ((0, 1.0, 0.5),),
            ((0, 1.0, 0.0), (1, 0.0, 0.5)),
            ((0, 1.0, 0.0), (2, 0.0, 1.0)),
            ((0, 1.0, 1 / 6), (1, 0.0, 1 / 3), (2, 0.0, 1 / 3), (3, 0.0, 1 / 6)),
        ),
        order=4,
    )


class BackwardEuler:
    """Implicit steps (`nncme.optim.ImplicitTarget`): BDF2 (`order` 2, the default), q_new -
    gamma h W q_new = a q_n - b q_{n-1}, from the second step after a start or an explicit
    step, and backward Euler, q_new = (I - h W)^-1 q_n, for the one before it (or for every
    step with `order` 1). Both are stable for every step length, so h follows accuracy
    instead of the fastest rate in the box; backward Euler is first order and widens a
    moving law, BDF2 second order (`nncme.optim.implicit`). Fits only: where the fits sum
    over the model's whole support the step's equation is solved on it and the model fitted
    to the solution (`_solved`), else its residual is fitted by an `ImplicitUpdate`.

    With a `tolerance`, [t, t + dt] is crossed in sub-steps whose length follows the local
    error estimate (relative, RMS under the new distribution: BDF2's from the last three laws,
    `nncme.optim.bdf2_error`; backward Euler's, `nncme.optim.local_error`, also for the
    first BDF2 step, which has only two): a sub-step is accepted when its error is at most
    `tolerance`, and the next length is h clip(0.9 (tolerance / err)^(1/(p+1)), 0.2, 2), p the
    estimate's order, carried over to the next step (never longer than dt; the report's
    `next_dt` is the length the error allows, so a driver that grows its steps lets dt follow
    it). So the step is short where the distribution moves fast (leaving a point mass) and
    long where it moves slowly, however fast the rates in the box.

    Args:
        motion: a `Fit` with an `ImplicitUpdate`.
        tolerance: local error per sub-step (None: one step per dt).
        min_step: the shortest sub-step allowed, relative to dt, before the step gives up.
        order: 2 (BDF2) or 1 (backward Euler only).
    """

    name = "implicit"
    FLOOR_SHRINK, FLOOR_MARGIN = 8.0, 1.5  # the fits' error floor (`_at_floor`)

    def __init__(
        self,
        motion: Fit,
        *,
        tolerance: float | None = None,
        min_step: float = 1e-6,
        order: int = 2,
    ) -> None:
        if not (isinstance(motion, Fit) and isinstance(motion.update, ImplicitUpdate)):
            raise ValueError(
                "the implicit step fits the backward-Euler residual with adam or sgd; "
                "natgrad and tdvp take explicit steps"
            )
        if tolerance is not None and not tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
        if order not in (1, 2):
            raise ValueError(f"order must be 1 (backward Euler) or 2 (BDF2), got {order!r}")
        self.motion, self.tolerance, self.min_step = motion, tolerance, float(min_step)
        self.order = order
        self.h: float | None = None  # the sub-step length, carried across steps
        self.floor = 0.0  # the fits' own error where the estimate stopped falling (`_at_floor`)
        # the laws before the present one (time, frozen copy), oldest first, at most two, and
        # the present one's time: the BDF2 steps' history, kept while the steps are this
        # stepper's own
        self.history: list[tuple[float, AutoregressiveModel]] = []
        self.t_now: float | None = None
        self._spare: AutoregressiveModel | None = None  # a copy to reuse

    @property
    def model(self) -> AutoregressiveModel:
        return self.motion.model

    def step(self, t: float, dt: float) -> StepReport:
        motion = self.motion
        motion.begin(t, dt)
        if self.t_now is None or abs(self.t_now - t) > 1e-9 * max(1.0, abs(t)):
            self.history = []  # the law at t came from elsewhere (a start, explicit steps)
        if self.tolerance is None:
            report, old = self._fit(t, dt)
            self._accept(t, dt, old)
            report.accepted, report.scheme = 1, self.name
            return report
        reports: list[StepReport] = []
        t_end, h = t + dt, min(self.h or dt, dt)
        accepted = rejected = 0
        errors = []
        rejections: list[tuple[float, float]] = []  # (step, err) since the last accepted
        while t < t_end - 1e-12 * max(1.0, abs(t_end)):
            step = min(h, t_end - t)
            report, old = self._fit(t, step)
            reports.append(report)
            err, order = self._error(old, t, step)
            tolerance = max(self.tolerance, self.FLOOR_MARGIN * self.floor)
            flat = self._at_floor(rejections, step, err, report) if err > tolerance else None
            if err <= tolerance or flat is not None:
                self._accept(t, step, old)
                t, accepted = t + step, accepted + 1
                errors.append(err)
                rejections = []
            else:
                motion.restore(old)
                self._spare = old
                rejected += 1
                rejections.append((step, err))
            factor = 2.0 if err == 0 else 0.9 * (tolerance / err) ** (1 / (order + 1))
            free = step * min(2.0, max(0.2, factor))  # what the error allows next
            if flat is not None:
                free = flat  # the error does not depend on the step up to there
            h = min(dt, free)
            if h < self.min_step * dt:
                raise TrainingError(
                    f"the implicit sub-step fell to {h:.3g} at t = {t:g} (local error "
                    f"{err:.3g} against tolerance {self.tolerance:g}); raise dt_tolerance or "
                    "the batch (the fits' own error sets a floor under the estimate)"
                )
            self.h = h
        report = motion.merge(reports)
        report.accepted, report.rejected, report.scheme = accepted, rejected, self.name
        report.local_error, report.next_dt = max(errors), free
        return report

    def _at_floor(
        self, rejections: list[tuple[float, float]], step: float, err: float, report: StepReport
    ) -> float | None:
        """Where a sub-step's error is the fits' own, not the step's, the longest rejected
        sub-step that shows it; else None. It shows where a sub-step FLOOR_SHRINK-fold or more
        longer than this one had less than twice its error (a truncation error falls as h^2 to
        h^3): the model cannot follow the law closer than that (its fits' error enters every
        law the estimate compares), so shorter sub-steps would only fall to `min_step` and
        stop the run. The sub-step is accepted, the next one is that longer length, and later
        ones are held to FLOOR_MARGIN times the floor (warned once)."""
        flat = [s for s, e in rejections if s >= self.FLOOR_SHRINK * step and e < 2.0 * err]
        if not flat:
            return None
        warned = self.floor > 0
        self.floor = max(self.floor, err)
        if not warned:
            message = (
                f"the implicit steps' local error estimate does not fall with the step "
                f"({err:.3g} at h = {step:.3g} and at {max(flat):.3g}): it is the fits' own "
                f"error; sub-steps are held to {self.FLOOR_MARGIN:g} x {self.floor:.3g} instead "
                f"of dt_tolerance {self.tolerance:g} (a wider model, --hidden, fits closer)"
            )
            report.warnings.append(message)
            warnings.warn(message, stacklevel=3)
        return max(flat)

    def _fit(self, t: float, h: float) -> tuple[StepReport, AutoregressiveModel]:
        """One implicit fit from the model's present law over [t, t + h]: BDF2 where the law
        before it is known, else backward Euler -> its report, a frozen copy of the law at t."""
        motion = self.motion
        motion.begin(t, h)
        old = frozen_copy(motion.model, self._spare)
        self._spare = None
        source: Any = old
        step = h  # gamma h: the step of the equation q - step W q = source
        if self.order == 2 and self.history:
            t_prev, previous = self.history[-1]
            a, b, gamma = bdf2_coefficients(h, t - t_prev)
            source, step = BDF2Source(old, previous, a, b), gamma * h
        if motion.support is not None:
            target: Any = self._solved(source, t + h, step)
        else:
            target = ImplicitTarget(source, motion.net, t, step, impl=motion.impl, t_rates=t + h)
        return motion.fit(target, h), old

    @torch.no_grad()
    def _solved(self, source: Any, t_rates: float, step: float) -> FixedTarget:
        """The step's equation q - step W(t_rates) q = source solved exactly on the model's
        whole support, where the fits sum over it (`sampling.Enumerated`): a sparse solve of
        at most `enumerate_states` unknowns (`nncme.optim.implicit.solved_target`), and the
        model fitted to its solution in log space, as to an explicit step's target. Fitted
        through its residual instead, the equation is conditioned like
        (I - step W) itself: on Schlögl's network, where step a_0 reaches 30, L-BFGS ran to
        its evaluation cap and left each step 0.006 (Hellinger) from the CME's own step
        (0.001 from the solution's fit)."""
        motion = self.motion
        p_source = torch.exp(source.log_prob(motion.support))
        return solved_target(
            motion.support, p_source, motion.net, t_rates, step, motion.impl, exact=False
        )

    def _error(self, old: AutoregressiveModel, t: float, h: float) -> tuple[float, int]:
        """The sub-step's local error estimate and its order (class docstring)."""
        motion = self.motion
        measure = dict(samples=motion.batch_size, generator=motion.generator,
                       support=motion.support)  # fmt: skip
        if self.order == 2 and len(self.history) == 2:
            return bdf2_error(motion.model, [*self.history, (t, old)], t + h, **measure), 2
        return local_error(motion.model, old, motion.net, t, h, impl=motion.impl, **measure), 1

    def _accept(self, t: float, h: float, old: AutoregressiveModel) -> None:
        """The law at t joins the history (the oldest leaves it, its copy kept for reuse)."""
        self.t_now = t + h
        if self.order == 1:
            self._spare = old
            return
        self.history.append((t, old))
        if len(self.history) > 2:
            self._spare = self.history.pop(0)[1]

    def state_dict(self) -> dict[str, Any]:
        return {
            "h": self.h,
            "floor": self.floor,
            "t_now": self.t_now,
            "history": [(t, law.state_dict()) for t, law in self.history],
            "motion": self.motion.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.h = state.get("h")
        self.floor = float(state.get("floor", 0.0))
        self.t_now = state.get("t_now")
        self.history = []
        for t, parameters in state.get("history", []):
            law = frozen_copy(self.motion.model)
            law.load_state_dict(parameters)
            self.history.append((float(t), law))
        self.motion.load_state_dict(state.get("motion", {}))


class Exponential:
    """Steps whose target is the CME's own solution, where the fits sum over the model's whole
    support (`sampling.Enumerated`: at most `enumerate_states` states): q(t + h) =
    exp(h W(t + h/2)) q(t) on that support (scipy's expm_multiply, `solve_on`), and the model
    fitted to it in log space until its objective is below FIT_TOLERANCE^2 (the fit's own
    error, not a share of the step's motion: `KLUpdate.stopping`). The `auto` integrator's
    steps there.

    No step is limited by a rate: the exponential is exact for every h, so where no rate
    depends on time the only error a step adds is its fit's, and the fewer the steps, the
    fewer the fits, as long as each fit follows its step: a sub-step grows (doubles) only
    while its fit ends below GROW_BELOW. (The implicit steps, `BackwardEuler`, fit their
    laws just as exactly, but their error estimate compares fitted laws, so it cannot fall
    below the fits' error and held Schlögl's steps to 4e-4.) Where a rate depends on time,
    the exponential midpoint rule is second order: one step is compared with two half
    steps, both worked out exactly before any fit, so a sub-step whose estimate (relative,
    RMS under the new law, as `nncme.optim.local_error`'s) exceeds `tolerance` is shortened
    at the cost of a solve, and the two half steps' result is the fit's target. The next
    sub-step is h clip(0.9 (tolerance / err)^(1/3), 0.2, 2) (twice h where no rate depends
    on time); the report's `next_dt` is that length, so the driver's steps grow towards it,
    up to the time between saves.

    Args:
        motion: a `Fit` whose fits sum over the model's support (`Fit.support`).
        tolerance: the time error per sub-step, where a rate depends on time.
    """

    name = "exponential"
    FIT_TOLERANCE = 1e-4  # sqrt of the fit's objective (about twice the Hellinger distance)
    # The fits' cap, in the run's `iterations`: a step moves the law as far as its error
    # allows, so a fit may need more than an explicit stage's (Schlögl's box of 1000 from
    # A = 0: 80-140 L-BFGS evaluations to FIT_TOLERANCE, capped at 60 iterations at 1e-2),
    # and the fits of laws over several species converge slowly and stop at the cap (two-
    # and three-species boxes of 1,000 states: 0.0026 and 0.0016 from FSP at 4 x 60, 0.0007
    # at 12 x; the toggle switch's 25,600 states to t = 10: 0.017 at 10 x, 0.012 at 33 x);
    # there are few steps, and a sum's evaluation runs one row per prefix (`ListedScorer`)
    FIT_ITERATIONS = 40
    # ... but a fit below 1e-3 (sqrt of its objective) whose best fell by less than 5 % over
    # its last 200 evaluations stops (a 72-state law whose fits level off at 2e-8 - 8e-8,
    # just above FIT_TOLERANCE^2, ran 3,000-4,700 evaluations a step for the last percent;
    # the toggle switch's fits, at 1e-3 - 6e-3, gain a few percent per 200 to the cap)
    FIT_STALL = (200, 0.05, 1e-3)
    # A sub-step grows only while its fit ends below GROW_BELOW (sqrt of the objective): a
    # longer step moves the law further, and a fit that ended above it at the cap would
    # follow a longer one less well still (the toggle switch's steps grown to 1 moved the
    # law by a Hellinger distance of 0.85 each: 0.0105 from FSP at t = 1; held, 0.0035)
    GROW_BELOW = 0.03

    def __init__(self, motion: Fit, *, tolerance: float = 1e-3) -> None:
        if not (isinstance(motion, Fit) and isinstance(motion.update, KLUpdate)):
            raise ValueError("exponential steps fit with adam or sgd (summed by L-BFGS)")
        if not tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
        self.motion, self.tolerance = motion, float(tolerance)
        self.time_dependent = bool(motion.net.network.is_time_dependent)
        self.h: float | None = None  # the sub-step length, carried across steps

    @property
    def model(self) -> AutoregressiveModel:
        return self.motion.model

    def step(self, t: float, dt: float) -> StepReport:
        motion = self.motion
        if motion.support is None:
            raise ValueError(
                "exponential steps need fits summed over the model's whole support "
                "(enumerate_states at least the box's, or the conservation laws', states)"
            )
        reports: list[StepReport] = []
        errors: list[float] = []
        t_end, h = t + dt, min(self.h or dt, dt)
        # a sub-step ends at each time where a rate jumps or kinks: one straddling it would
        # average the rate over it (error no step length resolves cheaply, and the midpoint
        # rule's estimate can miss it)
        edges = [*motion.net.network.rate_discontinuities(t, t_end), t_end]
        rejected = 0
        while t < t_end - 1e-12 * max(1.0, abs(t_end)):
            step = min(h, next(e for e in edges if e > t + 1e-12 * max(1.0, abs(e))) - t)
            target, err = self._propagated(t, step)
            h = self._next_length(step, h, err)
            if err > self.tolerance:
                rejected += 1
                if h < 1e-9 * dt:
                    raise TrainingError(f"the exponential sub-step fell to {h:.3g} at t = {t:g}")
                continue
            motion.begin(t, step)
            cap = self.FIT_ITERATIONS * motion.update.iterations
            with motion.update.stopping(self.FIT_TOLERANCE, 0.0, cap, self.FIT_STALL):
                report = motion.fit(target, step)
            if report.residual > self.GROW_BELOW**2:  # the fit did not follow: no longer
                h = min(h, step)
            reports.append(report)
            errors.append(err)
            t += step
        self.h = h
        report = motion.merge(reports)
        report.accepted, report.rejected, report.scheme = len(reports), rejected, self.name
        report.local_error, report.next_dt = max(errors), h
        return report

    def _next_length(self, step: float, h: float, err: float) -> float:
        """The next sub-step after one of `step` (h: the length planned for it, longer where
        the step's end cut it) with time error `err`."""
        factor = 2.0 if err == 0 else min(2.0, max(0.2, 0.9 * (self.tolerance / err) ** (1 / 3)))
        if step < h and factor >= 1:  # cut short by the step's end: no reason to shorten
            return max(h, step * factor)
        return step * factor

    @torch.no_grad()
    def _propagated(self, t: float, h: float) -> tuple[FixedTarget, float]:
        """The model's law at t carried to t + h exactly, as a fit's target, and the time
        error estimate (0 where no rate depends on time)."""
        motion = self.motion
        net, support, impl = motion.net, motion.support, motion.impl
        p = torch.exp(motion.model.log_prob(support).double()).cpu().numpy()
        one, _ = solve_on(support, p, net, t + h / 2, h, impl, exact=True)
        err = 0.0
        if self.time_dependent:
            half, _ = solve_on(support, p, net, t + h / 4, h / 2, impl, exact=True)
            two, _ = solve_on(support, half, net, t + 3 * h / 4, h / 2, impl, exact=True)
            e = (4.0 / 3.0) * (one - two)  # the midpoint rule's error in `one`, second order
            err = math.sqrt(float((e**2 / np.maximum(two, 1e-14 * two.max())).sum()))
            one = two
        return listed_target(support, one, net), err

    def state_dict(self) -> dict[str, Any]:
        return {"h": self.h}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.h = state.get("h")


class Auto:
    """Exponential steps where the fits sum over the model's whole support (`Exponential`);
    where they draw, Heun steps where the explicit map is accurate and cheap and adaptive
    implicit steps (`BackwardEuler`: BDF2) where the mass sits at states the step is stiff at
    (the `auto` integrator).

    A Heun step whose draws put more than STIFF_SHARE of their weight where dt a_0 > 0.9 (where
    the explicit map saturates, `nncme.optim.target.outflow_fraction`) is undone and taken
    again implicitly, with sub-steps from the local error estimate (`BackwardEuler`). The
    steps stay implicit until a draw of the model has less than STIFF_SHARE / 10 of its mass
    where dt a_0 > 0.9, so a run that leaves a stiff region goes back to the second-order
    explicit step, and one that only leaks a little mass into fast states never leaves it.

    Grown steps (`StepReport.next_dt`, `nncme.evolve.Driver`): a Heun step grows as its
    motion allows while under STIFF_SHARE / 10 of its draws' weight is where h a_0 > 0.9,
    and stops growing above that (the rule of every explicit step,
    `RungeKutta._within_explicit_limit`). A grown step that turns stiff is taken implicitly,
    and if the mass is not stiff at the shortest step asked for (the driver's dt), the run
    goes back to Heun steps of half the length, and later Heun steps stay shorter than it (a
    ceiling that creeps up while the draws stay far from the limit): growing does not turn a run
    implicit. Where the network is stiff at dt itself, the implicit steps grow as their error
    estimate allows.

    Args:
        motion: a `Fit` with an `ImplicitUpdate` (it fits explicit stages too).
        tolerance: the implicit sub-steps' local error (`BackwardEuler`), and the exponential
            steps' time error where a rate depends on time (`Exponential`).
        max_motion: the Heun steps' motion per sub-step (`RungeKutta`).
        stages: of the explicit steps: 2 Heun's, more SSPRK(s, 2)'s (`SSP`).
        order: of the implicit steps (`BackwardEuler`).
    """

    name = "auto"
    CEILING_BACK, CEILING_CREEP = 0.75, 1.01

    def __init__(
        self,
        motion: Fit,
        *,
        tolerance: float = 1e-2,
        max_motion: float | None = None,
        stages: int = 2,
        order: int = 2,
    ) -> None:
        self.explicit = (
            Heun(motion, max_motion=max_motion)
            if stages == 2
            else SSP(motion, stages=stages, max_motion=max_motion)
        )
        self.implicit = BackwardEuler(motion, tolerance=tolerance, order=order)
        self.exponential = Exponential(motion, tolerance=tolerance)
        self.motion = motion
        self.stiff_now = False
        self.shortest = math.inf  # the shortest step asked for: a driver's dt
        self.ceiling = math.inf  # Heun steps stay shorter than a grown step that was stiff

    @property
    def model(self) -> AutoregressiveModel:
        return self.motion.model

    @property
    def steps_exponentially(self) -> bool:
        """Whether the fits sum over the model's whole support, so every step is exponential
        (`Exponential`: no rate limits it, dt is only where the steps start)."""
        return self.motion.support is not None

    def step(self, t: float, dt: float) -> StepReport:
        if self.steps_exponentially:
            return self.exponential.step(t, dt)
        self.shortest = min(self.shortest, dt)
        spent: list[StepReport] = []
        if not self.stiff_now:
            start = self.motion.snapshot(-3)
            report = self.explicit.step(t, dt)
            if not report.stiff_mass > STIFF_SHARE:
                report.next_dt = self._explicit_next(dt, report)
                return report
            self.motion.restore(start)
            if dt > self.shortest:  # a grown step: explicit ones stay shorter from now on
                self.ceiling = min(self.ceiling, self.CEILING_BACK * dt)
            spent.append(report)
        report = self.implicit.step(t, dt)
        # stiff at the shortest step asked for: the network's own; else a grown step's, and
        # the run goes back to explicit steps of half the length
        self.stiff_now = self._stiff_share(t + dt, self.shortest) >= STIFF_SHARE / 10
        if not self.stiff_now:
            report.next_dt = min(report.next_dt, dt / 2)
        report.iterations += sum(r.iterations for r in spent)
        report.seconds += sum(r.seconds for r in spent)
        return report

    def _explicit_next(self, dt: float, report: StepReport) -> float:
        """The next Heun step's length: the explicit step's own (its motion's, no longer than
        this step near the explicit limit), at most CEILING_BACK of a grown step that turned
        stiff (a ceiling that creeps up by CEILING_CREEP a step while the draws are far from
        the limit, so a law that moves to slower states can grow again, and one that does not
        tries once in about 30 steps)."""
        if report.stiff_mass < STIFF_SHARE / 100:
            self.ceiling *= self.CEILING_CREEP
        return min(report.next_dt, self.ceiling)

    @torch.no_grad()
    def _stiff_share(self, t: float, dt: float) -> float:
        """The share of a draw of the model at states where dt a_0(n, t) > 0.9."""
        motion = self.motion
        states, _ = motion.model.sample(motion.batch_size, motion.generator)
        a0 = ops.propensities(states.to(motion.net.device), motion.net, t, impl=motion.impl)
        return parallel.mean((dt * a0.sum(dim=1) > STIFF_RATE_DT).double())  # all ranks

    def state_dict(self) -> dict[str, Any]:
        return {
            "stiff_now": self.stiff_now,
            "shortest": self.shortest,
            "ceiling": self.ceiling,
            "implicit": self.implicit.state_dict(),
            "exponential": self.exponential.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stiff_now = bool(state.get("stiff_now", False))
        self.shortest = float(state.get("shortest", math.inf))
        self.ceiling = float(state.get("ceiling", math.inf))
        self.implicit.load_state_dict(state.get("implicit", {}))
        self.exponential.load_state_dict(state.get("exponential", {}))


STEPPERS: dict[str, type] = {
    "euler": Euler,
    "heun": Heun,
    "rk4": RK4,
    "ssp": SSP,
    "implicit": BackwardEuler,
    "auto": Auto,
}


def make_stepper(name: str, motion: Motion, **options: Any) -> Any:
    """The stepper of an `integrator` name (`STEPPERS`) around a motion."""
    if name not in STEPPERS:
        raise ValueError(f"integrator must be one of {tuple(STEPPERS)}, got {name!r}")
    return STEPPERS[name](motion, **options)


def bulk_states(
    states: torch.Tensor, log_p: torch.Tensor, leak: float = 1e-9
) -> tuple[torch.Tensor, torch.Tensor]:
    """The most probable states that hold all but `leak` of the mass (a short exact step
    lists tens of thousands of states, most of them below 1e-12, and the fit to them costs
    in proportion to their number)."""
    order = torch.argsort(log_p, descending=True)
    mass = torch.cumsum(torch.exp(log_p[order]), 0)
    keep = int(torch.searchsorted(mass, mass[-1] - leak)) + 1
    chosen = order[: min(keep, order.shape[0])]
    return states[chosen], log_p[chosen]


class StartFit:
    """The first step, t = 0 -> t_1, from a start distribution that is not a VAN.

    A start that lists its support (a point mass, or product marginals with few states) has an
    enumerable step, since each state reaches at most K others per stage: the run's own scheme
    (`scheme`, where its stages can be evaluated: Euler, Heun) is applied to p0 exactly
    (`transition_support`), and the model is fitted to the result by minimising KL(u || q) over
    those states (`fit_enumerated`) to `tolerance` nats. (Euler from a point mass misses the
    mass two reactions away, (k dt)^2 / 2 for a birth at rate k: a Hellinger error of about
    k dt / 2 at t_1 that the later steps carry.) With `implicit`, the step is the CME's own
    solution exp(dt W) p0 instead, on the states that hold all but 1e-10 of it
    (`implicit_support`) where they are few enough (backward Euler's first step from a point
    mass would widen it: the mass leaves at an exponentially distributed time), else backward
    Euler fitted through its residual. `exponential` (default: `implicit`) takes that exact
    first step whatever the later steps are (the `auto` integrator's).

    Where the later fits sum over the model's whole support (`sampling.Enumerated`), the exact
    step is also worked out on all of it and the model fitted to it in log space
    (`_fit_tails`), so that no floor of the cross-entropy fit is left in the tails.

    Reverse KL would not do here: a point mass has log p0 = -inf off its
    state, so log q - log T p0 is +inf at almost every state the model samples. A start without
    a listable support has full support, and the first step is reverse KL like every other
    (`update`, for `iterations`).

    Args:
        model: the VAN.  start: the distribution at t = 0 (`sample`, `log_prob`, and
            optionally `support`).  net: the compiled network.
        optimizer: the first step's own optimiser (it fits a fixed distribution, where a
            first-order method does well whatever the run's optimiser).
        update: the reverse-KL fit for a start without a listable support.
        proposal, batch_size, generator, impl: as for `Fit`.
        iterations, tolerance: of the exact fit.
        scheme: the tableau applied exactly from a listed support (default: Euler; one that is
            not `fittable`, such as RK4's, falls back to Euler).
        then: the run's stepper: where the step's states are too many to list but the start
            lists its own, the model is fitted to the start and `then` takes the step.
    """

    def __init__(
        self,
        model: AutoregressiveModel,
        start: Any,
        net: Any,
        optimizer: torch.optim.Optimizer,
        update: KLUpdate,
        proposal: Proposal,
        batch_size: int,
        generator: torch.Generator | None,
        *,
        iterations: int,
        tolerance: float,
        implicit: bool = False,
        exponential: bool | None = None,
        impl: str = "auto",
        max_states: int = MAX_ENUMERATED,
        scheme: Scheme | None = None,
        then: Any | None = None,
    ) -> None:
        self.implicit = implicit
        self.exponential = implicit if exponential is None else exponential
        self.scheme = scheme if scheme is not None and scheme.fittable else Euler.scheme
        self.model, self.start, self.net = model, start, net
        self.optimizer, self.update = optimizer, update
        self.proposal, self.batch_size, self.generator = proposal, batch_size, generator
        self.iterations, self.tolerance, self.impl = iterations, tolerance, impl
        self.max_states = max_states
        self.then = then

    def step(self, t: float, dt: float) -> StepReport:
        start, implicit = self.start, self.implicit
        if self.exponential:
            exact = implicit_support(
                start, self.net, t, dt, max_states=self.max_states, impl=self.impl, exact=True
            )
        else:
            exact = transition_support(
                start,
                self.net,
                t,
                dt,
                max_states=self.max_states,
                impl=self.impl,
                stages=self.scheme.stages,
                times=self.scheme.times,
            )
        if exact is None and not implicit and self.then is not None:
            listed = listed_support(start, self.max_states, self.net.device)
            if listed is not None:  # a point mass whose step reaches too many states
                return self._exact_then_step(listed, t, dt)
        if exact is None:
            if implicit:
                target: Any = ImplicitTarget(start, self.net, t, dt, impl=self.impl)
            else:
                target = StageTarget([Term(start, t, 1.0, 1.0)], self.net, dt, impl=self.impl)
            problem = StepProblem(
                self.model, target, self.proposal, self.batch_size, self.generator, t, dt
            )
            report = self.update.run(problem)
            report.scheme = "implicit" if implicit else "euler"
            return report
        states, log_tp = exact
        keep = torch.isfinite(self.model.log_prob(states).detach())
        lost = float(torch.exp(log_tp[~keep]).sum()) if not keep.all() else 0.0
        if lost > 1e-9:
            import warnings

            warnings.warn(
                f"the start puts probability {lost:.2e} on states off the network's "
                "conservation laws; the model cannot hold them and renormalises",
                stacklevel=3,
            )
        report = fit_enumerated(
            self.model,
            states[keep],
            log_tp[keep],
            self.optimizer,
            iterations=self.iterations,
            tolerance=self.tolerance,
            batch=FIRST_FIT_STATES,
            generator=self.generator,
        )
        if self.exponential and isinstance(self.proposal, Enumerated):
            self._fit_tails(t, dt, report)
        name = "heun" if self.scheme == Heun.scheme else "euler"
        report.scheme = "exponential, exact" if self.exponential else f"{name}, exact"
        return report

    def _fit_tails(self, t: float, dt: float, report: StepReport) -> None:
        """The exact step on the model's whole support, and the model fitted to it in log
        space, where the later fits sum over that support (`sampling.Enumerated`).

        The cross-entropy fit above weighs each state by p, so it leaves q a floor where p is
        tiny (1e-7 on counts whose p is 1e-13 .. 1e-19), and on states beyond the ones listed
        (p below the leak) nothing holds q at all. The later exact fits follow the CME from
        that floor faithfully, and the CME drains it only at its own rates. So where the
        support is small, exp(dt W) p0 is worked out on all of it (floored at 1e-15 of its
        largest value, where roundoff starts) and the model fitted to it by the later steps'
        own objective, the log-variance under the proposal, summed exactly (L-BFGS)."""
        support = self.proposal.support
        found = listed_support(self.start, self.max_states, self.net.device)
        if found is None:
            return
        p0 = torch.exp(Listed(found[0], found[1], self.net.limits).log_prob(support))
        if abs(float(p0.sum()) - 1.0) > 1e-9:  # the start is not all on the support
            return
        target = solved_target(support, p0, self.net, t + dt / 2, dt, self.impl, exact=True)
        update = KLUpdate(
            self.optimizer, iterations=200, relative_tolerance=1e-4, min_iterations=3,
            objective="log_variance",
        )  # fmt: skip
        problem = StepProblem(
            self.model, target, self.proposal, self.batch_size, self.generator, t, dt
        )
        tails = update.run(problem)
        report.iterations += tails.iterations
        report.loss = tails.loss

    def _exact_then_step(
        self, listed: tuple[torch.Tensor, torch.Tensor], t: float, dt: float
    ) -> StepReport:
        """The exact step over the longest h = dt / 4^j whose states are few enough to list,
        the model fitted to it, then the run's own step over the rest, t + h -> t + dt.

        Where the whole step's states are too many to list (a lattice of many sites from a
        point mass: each of hundreds of reactions may fire several times), reverse KL against
        a step of p0 is infinite wherever the model puts mass off p0's reach. A shorter exact
        step puts the mass one, two, three reactions away in the right proportions, and from
        that VAN (mass everywhere) the stepper continues as from any later time. If even
        dt / 4^6 reaches too many states, the model is fitted to p0 itself (less accurate:
        the first fits must then grow the mass off p0 from the model's leak)."""
        h, exact = dt, None
        for _ in range(6):
            h /= 4
            exact = implicit_support(
                self.start, self.net, t, h, max_states=self.max_states, impl=self.impl, exact=True
            )
            if exact is not None:
                break
        states, log_p = bulk_states(*exact) if exact is not None else listed
        h = h if exact is not None else 0.0
        first = fit_enumerated(
            self.model,
            states,
            log_p,
            self.optimizer,
            iterations=self.iterations,
            tolerance=self.tolerance,
            batch=FIRST_FIT_STATES,
            generator=self.generator,
        )
        report = self._rest_of_step(t + h, dt - h)
        report.iterations += first.iterations
        report.seconds += first.seconds
        exactly = f"exact to {t + h:.3g}" if h > 0 else "start fitted"
        report.scheme = f"{exactly}, then {report.scheme}"
        return report

    def _rest_of_step(self, t: float, dt: float) -> StepReport:
        """The run's own step over what the exact step left, its fits allowed
        REST_ITERATIONS times the run's iterations each.

        Out of a near point mass every sub-step moves q much further than a later step does
        (its motion is beyond what MAX_MOTION_SUBSTEPS sub-steps hold at max_motion), so the
        fits end at their cap short of their targets, and the whole run carries the first
        step's error; the later steps, which move q less, keep the run's iterations."""
        update = getattr(getattr(self.then, "motion", None), "update", None)
        if not isinstance(update, KLUpdate):
            return self.then.step(t, dt)
        more = REST_ITERATIONS * update.iterations
        with update.stopping(update.tolerance, update.relative_tolerance, iterations=more):
            return self.then.step(t, dt)

    def state_dict(self) -> dict[str, Any]:
        return {}  # used for the first step only, never checkpointed

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
