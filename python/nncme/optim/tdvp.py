"""TDVP: the time-dependent variational principle for a VAN (DESIGN section 2).

The CME dP/dt = W P projected onto the model's tangent space: theta_dot is chosen so that
d log q(n)/dt = O(n) . theta_dot matches R(n) = (W q)(n) / q(n) in weighted least squares over
samples n ~ rho,

    (O_c^T O_c + lambda I) theta_dot = O_c^T R_c,

O the per-sample gradients of log q and O_c, R_c their weighted, centred versions (centring R
removes its mean, which is 0 in expectation: probability is conserved). R comes from the
transition operator's local generator (`nncme.ops.transition_logsum`), with the rates at the
stage time, and the solve from `nncme.ops.fisher_solve` through `FisherSolver`.

Three pieces, each with one job:
- `TDVPRightHandSide`: theta -> theta_dot at time t (samples, R, O, the solve), with the
  relative residual of the fit, ||O_c theta_dot - R_c||^2 / ||R_c||^2 under the weights: the
  fraction of the CME's motion that the model cannot follow (0: exact; 1: nothing captured).
  Logged each step as a built-in error indicator.
- the integrators `Euler`, `Heun`, `RK4`: theta(t) -> theta(t + h) from the right-hand side.
- `TDVPUpdate`: the trainer's per-step update: integrates over the step [t, t + dt] with one
  integrator step, or with adaptive steps (`adaptive=True`) controlled by an error estimate.

Adaptive steps. The error of a step is measured in the Fisher metric of the step's first
stage, err = sqrt(sum_n w_n (O_c(n) . (theta_a - theta_b))^2): the RMS difference of log q
(nats) between two solutions of different order: Heun against its embedded Euler step, and
for Euler and RK4 one step against two half steps (step doubling). A step is accepted when
err <= tolerance, and the next step length is h * clip(0.9 (tolerance / err)^(1/(p+1)),
0.2, 2) with p the lower order. The length carries over from one trainer step to the next;
accepted and rejected steps are reported. Sampling noise enters err, so a tolerance far
below the noise of R (about its standard deviation / sqrt(B) times h) drives h down.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..sampling import Proposal, Vanilla, unique_states
from .gradients import (
    flat_grad,
    flat_parameters,
    grad_of_sum,
    nade_gram,
    per_sample_grads,
    set_flat_parameters,
    use_gram,
)
from .linear import FisherSolver
from .target import NonFiniteError, TrainingError, TransitionTarget, check_step_size, explore_ahead
from .updates import StepProblem, StepReport, Update

__all__ = [
    "INTEGRATORS",
    "RK4",
    "Euler",
    "Heun",
    "Integrator",
    "TDVPEvaluation",
    "TDVPRightHandSide",
    "TDVPUpdate",
    "make_integrator",
]

# folds of the cross-validated shift (FisherSolver.cross_validate)
CV_FOLDS = 2

# The local generator does not depend on dt; transition_logsum needs some dt > 0 for log T q,
# which TDVP does not use.
_TINY_DT = 1e-300


@dataclass
class TDVPEvaluation:
    """One evaluation of the TDVP right-hand side.

    Attributes:
        theta_dot: (P,) d theta / dt.
        residual: relative residual of the least-squares fit (see the module docstring).
        shift: lambda used by the solve.
        ess: effective sample size of the draw.
        states: (U, L) the distinct states; weights: (U,) their weights.
        grads: (U, P) O there, or None where the solve went through the NADE Gram matrix.
        pareto_k: PSIS shape of the draw's weights (nan without smoothing).
        held_out: held-out relative misfit at the chosen shift (nan without cross-validation).
    """

    theta_dot: torch.Tensor
    residual: float
    shift: float
    ess: float
    states: torch.Tensor
    grads: torch.Tensor | None
    weights: torch.Tensor
    pareto_k: float = math.nan
    held_out: float = math.nan

    def fisher_norm(self, delta: torch.Tensor) -> float:
        """sqrt(sum_u w_u (O_c(u) . delta)^2): the RMS change of log q for a change delta."""
        if self.grads is None:
            raise ValueError("fisher_norm needs the per-sample gradients (need_grads=True)")
        w = self.weights
        Oc = self.grads - w @ self.grads
        return float(torch.sqrt((w * (Oc @ delta) ** 2).sum()))


class TDVPRightHandSide:
    """theta_dot from (O_c^T O_c + lambda I) theta_dot = O_c^T R_c at the model's current theta.

    Args:
        net: the compiled network (rates at the time of each evaluation).
        proposal: where the samples come from (importance weights enter O_c and R_c).
        batch_size: samples per evaluation.
        solver: the `FisherSolver`.
        gradients: "auto" | "gram" | "analytic" | "func" (see `optim.gradients.use_gram`:
            for a NADE in sample space the solve needs only the Gram matrix O O^T).
        impl: operator implementation.
        explore: eta, the fraction of extra states one reaction away from the samples, each
            with weight 1/B (see below; 0: samples of the proposal only).

    Exploration. The least-squares fit only moves log q where states are sampled, and a
    NADE's logits of a count that no sample holds get no theta_dot at all; so a distribution
    that spreads into new counts (above all from a point mass) cannot follow the CME: from the
    toggle switch's initial point mass, TDVP with samples of q alone stayed at a Hellinger
    distance of 0.997 from the exact solution at t = 0.5. The first eta * B samples let one
    reaction fire (chosen with probability a_k / a_0: where W moves the mass, see
    `nncme.optim.target.jump`) and those states join the fit, where R is large and positive.

    The cap on R. Where q is tiny and mass flows in, R = inflow / q - a_0 is a rate of growth
    of log q that holds only for an instant (at a count that the point mass of birth-death
    will reach next, R was 6e9 per unit time after the first step): a step of length h
    following it moves log q by h R nats, millions here, where the exact one-step map moves it
    by log(1 + h R). So, given the step h, R is used as it is where h R <= 1 and replaced by
    (1 + log(h R)) / h above (continuous with its first derivative at h R = 1), a growth of
    log q per step that tracks the log of the Euler map's. At states where h R <= 1 (all
    states of a distribution that is already spread out) the equation of motion is unchanged,
    so the integrators keep their order there.
    """

    def __init__(
        self,
        net: Any,
        *,
        proposal: Proposal | None = None,
        batch_size: int = 1000,
        solver: FisherSolver | None = None,
        gradients: str = "auto",
        impl: str = "auto",
        explore: float = 0.0,
    ) -> None:
        if not 0 <= explore <= 1:
            raise ValueError(f"explore must be in [0, 1], got {explore}")
        self.explore = float(explore)
        self.net = net
        self.proposal = proposal or Vanilla()
        self.batch_size = int(batch_size)
        self.solver = solver or FisherSolver()
        self.gradients = gradients
        self.impl = impl

    def local_generator(
        self, model: Any, states: torch.Tensor, t: float, h: float | None = None
    ) -> torch.Tensor:
        """R(n) = (W q)(n) / q(n) at states (U, L) with the rates at t -> (U,).

        With a step length h, R is capped logarithmically above 1/h (see the class docstring):
        R where h R <= 1, else (1 + log(h R)) / h, computed from log(T_h q / q) = log(1 + h R),
        which stays finite where R itself overflows.
        """
        target = TransitionTarget(model, self.net, t, h or _TINY_DT, impl=self.impl)
        values = target(states)
        if h is None:
            return values.local_gen
        check_step_size(values.exit_rate, t, h)
        R = values.local_gen
        rho = values.log_tq - target.old_log_prob(states).to(values.log_tq.dtype)
        # log(h R) = log(expm1(rho)) = rho + log(-expm1(-rho)): exact where R overflows
        big = rho.clamp(min=math.log(2.0))
        capped = (1.0 + big + torch.log(-torch.expm1(-big))) / h
        return torch.where(torch.isfinite(R) & (h * R <= 1.0), R, capped)

    def _fold_weights(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(F, U) the weights w of the distinct states dealt into `CV_FOLDS` folds at random.

        Folds hold distinct states, not samples: a state drawn often then sits in one fold
        only, so each fold is scored on states its fit has not seen, which is where an
        interpolating fit goes wrong (see `FisherSolver.cross_validate`)."""
        U = w.shape[0]
        gen_device = generator.device if generator is not None else torch.device("cpu")
        fold = (torch.randperm(U, generator=generator, device=gen_device) % CV_FOLDS).to(w.device)
        folds = torch.zeros(CV_FOLDS, U, dtype=w.dtype, device=w.device)
        folds[fold, torch.arange(U, device=w.device)] = w
        return folds

    def __call__(
        self,
        model: Any,
        t: float,
        generator: torch.Generator | None = None,
        h: float | None = None,
        need_grads: bool = False,
    ) -> TDVPEvaluation:
        """Draw samples of the proposal at the model's current parameters and solve.

        h: the time step the solution is for (caps R above 1/h; None: R exactly).
        need_grads: keep the per-sample gradients (for `TDVPEvaluation.fisher_norm`).
        """
        draw = self.proposal.draw(model, self.batch_size, generator)
        drawn, weights, B = draw.states, draw.weights, draw.states.shape[0]
        moved = explore_ahead(drawn, self.explore, self.net, t, generator, impl=self.impl)
        if moved.shape[0]:
            drawn = torch.cat([drawn, moved])
            weights = torch.cat([weights, weights.new_full(moved.shape[:1], 1.0 / B)])
        states, inverse = unique_states(drawn, model.limits)
        w = torch.zeros(states.shape[0], dtype=weights.dtype, device=states.device)
        w.index_add_(0, inverse, weights)
        w = w / w.sum()
        R = self.local_generator(model, states, t, h).to(w.dtype)
        if not torch.isfinite(R).all():
            raise NonFiniteError(
                f"the TDVP local generator (W q)/q is not finite at t = {t:g} at "
                f"{int((~torch.isfinite(R)).sum())} of {R.numel()} states"
            )
        Rc = R - w @ R
        P = sum(p.numel() for p in model.parameters() if p.requires_grad)
        gram = not need_grads and use_gram(
            model, states.shape[0], self.gradients, self.solver.space
        )
        O = None if gram else per_sample_grads(model, states, _explicit(self.gradients))
        K = nade_gram(model, states) if gram else None
        shift, held_out = None, math.nan
        if self.solver.cv:
            folds = self._fold_weights(w, generator)
            cv = self.solver.cross_validate(O @ O.mT if K is None else K, R, folds, P)
            shift, held_out = cv.shift, cv.error
        if gram:
            x, fitted, shift = self._solve_gram(model, states, K, R, w, P, shift)
        else:
            x, info = self.solver.solve(O, R, w, shift)
            fitted, shift = (O - w @ O) @ x, info.shift
        norm = float((w * Rc * Rc).sum())
        misfit = float((w * (fitted - Rc) ** 2).sum())
        residual = misfit / norm if norm > 0 else 0.0
        return TDVPEvaluation(x, residual, shift, draw.ess, states, O, w, draw.pareto_k, held_out)

    def _solve_gram(
        self,
        model: Any,
        states: torch.Tensor,
        K: torch.Tensor,
        R: torch.Tensor,
        w: torch.Tensor,
        P: int,
        shift: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The sample-space solve from the NADE Gram matrix: x = O^T beta by one backward pass
        of sum_n beta_n log q(n) (no (N, P) matrix) -> (x, O_c x, lambda)."""
        params = [p for p in model.parameters() if p.requires_grad]
        sol = self.solver.solve_gram(K, R, w, P, shift)
        for p in params:
            p.grad = None
        grad_of_sum(model, states, sol.coef)
        x = flat_grad(model)
        for p in params:
            p.grad = None
        return x, sol.fitted, sol.info.shift


def _explicit(gradients: str) -> str:
    """The per-sample gradient method where the Gram path is not taken."""
    return gradients if gradients != "gram" else "auto"


# ---------------------------------------------------------------------- integrators
Field = Callable[[torch.Tensor, float], TDVPEvaluation]


class Integrator:
    """An explicit Runge-Kutta step theta(t) -> theta(t + h) of d theta/dt = f(theta, t).

    `step` returns the new theta and the evaluations it made (the first at (theta, t)), plus,
    where the method has one, an embedded lower-order solution for error control (else None).
    """

    name = "integrator"
    order = 1

    def step(
        self, f: Field, theta: torch.Tensor, t: float, h: float
    ) -> tuple[torch.Tensor, list[TDVPEvaluation], torch.Tensor | None]:
        raise NotImplementedError


class Euler(Integrator):
    """theta + h f(theta, t). First order."""

    name, order = "euler", 1

    def step(self, f, theta, t, h):
        k1 = f(theta, t)
        return theta + h * k1.theta_dot, [k1], None


class Heun(Integrator):
    """Explicit trapezoid: predictor Euler, corrector the mean slope. Second order; the
    predictor is the embedded first-order solution."""

    name, order = "heun", 2

    def step(self, f, theta, t, h):
        k1 = f(theta, t)
        euler = theta + h * k1.theta_dot
        k2 = f(euler, t + h)
        return theta + 0.5 * h * (k1.theta_dot + k2.theta_dot), [k1, k2], euler


class RK4(Integrator):
    """The classical fourth-order Runge-Kutta method."""

    name, order = "rk4", 4

    def step(self, f, theta, t, h):
        k1 = f(theta, t)
        k2 = f(theta + 0.5 * h * k1.theta_dot, t + 0.5 * h)
        k3 = f(theta + 0.5 * h * k2.theta_dot, t + 0.5 * h)
        k4 = f(theta + h * k3.theta_dot, t + h)
        slope = (k1.theta_dot + 2 * k2.theta_dot + 2 * k3.theta_dot + k4.theta_dot) / 6
        return theta + h * slope, [k1, k2, k3, k4], None


INTEGRATORS: dict[str, type[Integrator]] = {"euler": Euler, "heun": Heun, "rk4": RK4}


def make_integrator(name: str) -> Integrator:
    if name not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {tuple(INTEGRATORS)}, got {name!r}")
    return INTEGRATORS[name]()


# ---------------------------------------------------------------------- the update
class TDVPUpdate(Update):
    """The trainer's TDVP update: integrate theta over each time step [t, t + dt].

    Args:
        rhs: the `TDVPRightHandSide`.
        integrator: "euler" | "heun" | "rk4" or an `Integrator`.
        adaptive: choose the integrator's step length from an error estimate (module
            docstring); otherwise one integrator step per time step.
        tolerance: the error per step allowed (nats, Fisher metric) when adaptive.
        min_step: the shortest step allowed, relative to the time step, before giving up.
    """

    name = "tdvp"

    def __init__(
        self,
        rhs: TDVPRightHandSide,
        *,
        integrator: str | Integrator = "heun",
        adaptive: bool = False,
        tolerance: float = 1e-2,
        min_step: float = 1e-6,
    ) -> None:
        self.rhs = rhs
        self.integrator = make_integrator(integrator) if isinstance(integrator, str) else integrator
        self.adaptive = bool(adaptive)
        if not tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
        self.tolerance = float(tolerance)
        self.min_step = float(min_step)
        self.h: float | None = None  # the adaptive step length, carried across time steps

    def run(self, problem: StepProblem) -> StepReport:
        began = time.perf_counter()
        model = problem.model
        report = StepReport(loss=math.nan)
        evaluations: list[TDVPEvaluation] = []

        def f(theta: torch.Tensor, t: float) -> TDVPEvaluation:
            set_flat_parameters(model, theta)
            ev = self.rhs(model, t, problem.generator, problem.dt, need_grads=self.adaptive)
            evaluations.append(ev)
            return ev

        theta = flat_parameters(model)
        t, t_end = problem.t, problem.t + problem.dt
        if not self.adaptive:
            theta, _, _ = self.integrator.step(f, theta, t, problem.dt)
            report.accepted = 1
        else:
            theta = self._adaptive(f, theta, t, t_end, problem.dt, report)
        set_flat_parameters(model, theta)
        residuals = [e.residual for e in evaluations]
        report.residuals = residuals
        report.residual = sum(residuals) / len(residuals)
        report.loss = report.residual
        report.losses = residuals
        report.iterations = len(evaluations)
        report.shift = evaluations[-1].shift
        report.ess = min(e.ess for e in evaluations)
        report.pareto_k = evaluations[-1].pareto_k
        report.held_out = sum(e.held_out for e in evaluations) / len(evaluations)
        report.seconds = time.perf_counter() - began
        return report

    def _adaptive(
        self, f: Field, theta: torch.Tensor, t: float, t_end: float, dt: float, report: StepReport
    ) -> torch.Tensor:
        p = 1 if isinstance(self.integrator, (Heun, Euler)) else self.integrator.order
        h = self.h if self.h is not None else dt
        while t < t_end - 1e-12 * max(1.0, abs(t_end)):
            step = min(h, t_end - t)
            new, err = self._trial(f, theta, t, step)
            if err <= self.tolerance:
                theta, t = new, t + step
                report.accepted += 1
            else:
                report.rejected += 1
            factor = 2.0 if err == 0 else 0.9 * (self.tolerance / err) ** (1.0 / (p + 1))
            h = step * min(2.0, max(0.2, factor))
            if h < self.min_step * dt:
                raise TrainingError(
                    f"TDVP: the adaptive step fell to {h:.3g} at t = {t:g} (error {err:.3g} "
                    f"nats per step against tolerance {self.tolerance:g}); raise the tolerance "
                    "or the batch (sampling noise sets a floor on the error estimate)"
                )
            self.h = h
        return theta

    def _trial(
        self, f: Field, theta: torch.Tensor, t: float, h: float
    ) -> tuple[torch.Tensor, float]:
        """One step and its error estimate (embedded pair, or step doubling)."""
        new, evals, low = self.integrator.step(f, theta, t, h)
        if low is not None:
            return new, evals[0].fisher_norm(new - low)
        half, first, _ = self.integrator.step(f, theta, t, 0.5 * h)
        two, _, _ = self.integrator.step(f, half, t + 0.5 * h, 0.5 * h)
        scale = 2.0**self.integrator.order - 1
        return two, first[0].fisher_norm(two - new) / scale

    def state_dict(self) -> dict[str, Any]:
        return {"h": self.h}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.h = state.get("h")
