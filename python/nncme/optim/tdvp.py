"""TDVP: the time-dependent variational principle for a VAN (DESIGN section 2).

The CME dP/dt = W P projected onto the model's tangent space: theta_dot is chosen so that
d log q(n)/dt = O(n) . theta_dot matches R(n) = (W q)(n) / q(n) in weighted least squares over
samples n ~ rho,

    (O_c^T O_c + lambda I) theta_dot = O_c^T R_c,

O the per-sample gradients of log q and O_c, R_c their weighted, centred versions (centring R
removes its mean, which is 0 in expectation: probability is conserved). R comes from the
transition operator's local generator (`nncme.ops.transition_logsum`), with the rates at the
stage time, and the solve from `FisherSolver.solve_scores`.

`TDVPRightHandSide` is theta -> theta_dot at time t (samples, R, the solve), with the relative
residual of the fit, ||O_c theta_dot - R_c||^2 / ||R_c||^2 under the weights: the fraction of
the CME's motion that the model cannot follow (0: exact; 1: nothing captured), logged each step
as a built-in error indicator. The time integrators that step theta with it (Euler, Heun, RK4,
adaptive sub-steps) are the schemes of `nncme.steppers`, shared with the fitted steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .. import parallel
from ..sampling import Draw, Proposal, Vanilla, gather_distinct, pool, unique_states
from .linear import FisherSolver
from .target import (
    STIFF_RATE_DT,
    STIFF_SHARE,
    NonFiniteError,
    StepSizeError,
    TransitionTarget,
    explore_ahead,
)

__all__ = ["TDVPEvaluation", "TDVPRightHandSide"]

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
        grads: (U, P) O there, or None where the solve went through the Gram matrix.
        pareto_k: PSIS shape of the draw's weights (nan without smoothing).
        held_out: held-out relative misfit at the chosen shift (nan without cross-validation).
        fallback: the solve took the eigen/SVD fallback.
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
    fallback: bool = False
    fisher: torch.Tensor | None = None

    def fisher_norm(self, delta: torch.Tensor) -> float:
        """sqrt(sum_u w_u (O_c(u) . delta)^2): the RMS change of log q for a change delta
        (from S itself where the solve summed it over ranks: `fisher`, (P, P))."""
        if self.fisher is not None:
            return math.sqrt(max(0.0, float(delta @ self.fisher @ delta)))
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
        solver: the `FisherSolver` (with the choice of scores: for a NADE in sample space the
            solve needs only the Gram matrix O O^T).
        impl: operator implementation.
        explore: eta, the fraction of extra states one reaction away from the samples, each
            with weight 1/B (see below; 0: samples of the proposal only).

    Exploration. The least-squares fit only moves log q where states are sampled, and a
    NADE's logits of a count that no sample holds get no theta_dot at all; so a distribution
    that spreads into new counts (above all from a point mass) cannot follow the CME. So the
    first eta * B samples let one
    reaction fire (chosen with probability a_k / a_0: where W moves the mass, see
    `nncme.optim.target.jump`) and those states join the fit, where R is large and positive.
    Without them, TDVP from a point mass stays where it started.

    The cap on R. Where q is tiny and mass flows in, R = inflow / q - a_0 is a rate of growth
    of log q that holds only for an instant (at the counts a point mass reaches next it is
    many orders of magnitude above the rates): a step of length h
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
        impl: str = "auto",
        explore: float = 0.0,
        as_drawn: bool = False,
    ) -> None:
        self.as_drawn = bool(as_drawn)
        if not 0 <= explore <= 1:
            raise ValueError(f"explore must be in [0, 1], got {explore}")
        self.explore = float(explore)
        self.net = net
        self.proposal = proposal or Vanilla()
        self.batch_size = int(batch_size)
        self.solver = solver or FisherSolver()
        self.impl = impl

    def local_generator(
        self,
        model: Any,
        states: torch.Tensor,
        t: float,
        h: float | None = None,
        mass: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """R(n) = (W q)(n) / q(n) at states (U, L) with the rates at t -> (U,).

        With a step length h, R is capped logarithmically above 1/h (see the class docstring):
        R where h R <= 1, else (1 + log(h R)) / h, computed from log(T_h q / q) = log(1 + h R),
        which stays finite where R itself overflows (the explicit map saturates where
        h a_0 > 0.9, `nncme.optim.target.outflow_fraction`, so it stays positive there).
        The step is refused (`StepSizeError`) where more than STIFF_SHARE of `mass` (U,), the
        states' share of q (default: equal), sits where h a_0 > 0.9: a uniform draw in a fast
        corner of the box that q hardly visits does not stop the run.
        """
        R, exit_rate = self._generator(model, states, t, h)
        if h is not None:
            mass = torch.ones_like(exit_rate) if mass is None else mass
            _refuse_stiff(*_stiff_share(exit_rate, mass / mass.sum(), h), t, h)
        return R

    def _generator(
        self, model: Any, states: torch.Tensor, t: float, h: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, a_0) at the states, R capped for a step h (unchecked)."""
        target = TransitionTarget(model, self.net, t, h or _TINY_DT, impl=self.impl)
        values = target(states)
        if h is None:
            return values.local_gen, values.exit_rate
        R = values.local_gen
        rho = values.log_tq - target.old_log_prob(states).to(values.log_tq.dtype)
        # log(h R) = log(expm1(rho)) = rho + log(-expm1(-rho)): exact where R overflows
        big = rho.clamp(min=math.log(2.0))
        capped = (1.0 + big + torch.log(-torch.expm1(-big))) / h
        return torch.where(torch.isfinite(R) & (h * R <= 1.0), R, capped), values.exit_rate

    def _gathered(
        self,
        model: Any,
        states: torch.Tensor,
        w: torch.Tensor,
        mass: torch.Tensor,
        t: float,
        h: float | None,
        draw: Draw,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, int | None]:
        """Over many processes: this rank's R at its own states, and the ESS of the whole
        draw; then, where the solve sums its system over the ranks (`FisherSolver.reduces`),
        this rank's states with their weights normalised over all ranks and the number of
        distinct states of all ranks, else every rank's states with their weights
        (normalised) and R, and None. `mass`: the states' share of q over all ranks; a step
        too long for it is refused on every rank."""
        R, exit_rate = self._generator(model, states, t, h)
        R = R.to(w.dtype)
        share, fastest = _stiff_share(exit_rate, mass, h) if h is not None else (0.0, 0.0)
        # the ESS of all draws, the stiff share of all ranks' mass, the weights' total and the
        # ranks' states, in one collective
        (square, total, weight, bound), (largest,), _ = parallel.reduce(
            [float((draw.weights**2).sum()), share, float(w.sum()), float(states.shape[0])],
            [fastest],
        )
        if total > STIFF_SHARE and share == 0.0:
            raise StepSizeError(f"another process's states are too fast for the step at t = {t:g}")
        if h is not None:
            _refuse_stiff(total, largest, t, h)
        rows = self.solver.rows_to_reduce(model, states, round(bound))
        if rows is not None:
            return states, w / weight, R, 1.0 / square, rows
        states, columns = gather_distinct(states, torch.stack([w, w * R], 1), model.limits)
        w, R = columns[:, 0], columns[:, 1] / columns[:, 0]
        return states, w / w.sum(), R, 1.0 / square, None

    def _fold_weights(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(F, U) the weights w of the distinct states dealt into `CV_FOLDS` folds at random.

        Folds hold distinct states, not samples: a state drawn often then sits in one fold
        only, so each fold is scored on states its fit has not seen, which is where an
        interpolating fit goes wrong (see `FisherSolver.cross_validate`)."""
        U = w.shape[0]
        if parallel.active():  # every rank deals the gathered states alike
            generator = torch.Generator().manual_seed(parallel.shared_seed(generator))
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
        draw, _, _ = pool(draw)  # weights normalised over all ranks (as given with one)
        drawn, q_weights = draw.states, draw.weights
        weights = draw.as_drawn() if self.as_drawn else q_weights
        moved = explore_ahead(drawn, self.explore, self.net, t, generator, impl=self.impl)
        if moved.shape[0]:
            drawn = torch.cat([drawn, moved])
            extra = q_weights.new_full(moved.shape[:1], 1.0 / draw.total)
            weights, q_weights = torch.cat([weights, extra]), torch.cat([q_weights, extra])
        states, inverse = unique_states(drawn, model.limits)
        w = torch.zeros(states.shape[0], dtype=weights.dtype, device=states.device)
        w.index_add_(0, inverse, weights)
        mass = torch.zeros_like(w).index_add_(0, inverse, q_weights.to(w.dtype))
        rows = None  # the distinct states of all ranks where the solve sums over them
        if parallel.active():
            mass = mass / (1.0 + moved.shape[0] / draw.total)  # explored states' share too
            states, w, R, ess, rows = self._gathered(model, states, w, mass, t, h, draw)
        else:
            w = w / w.sum()
            R, ess = self.local_generator(model, states, t, h, mass).to(w.dtype), draw.ess
        if not torch.isfinite(R).all():
            raise NonFiniteError(
                f"the TDVP local generator (W q)/q is not finite at t = {t:g} at "
                f"{int((~torch.isfinite(R)).sum())} of {R.numel()} states"
            )
        if rows is not None:
            sol = self.solver.solve_reduced(model, states, R, w, rows)
        else:
            folds = self._fold_weights(w, generator) if self.solver.cv else None
            sol = self.solver.solve_scores(model, states, R, w, need_grads=need_grads, folds=folds)
        return TDVPEvaluation(
            sol.x,
            sol.relative_misfit,
            sol.info.shift,
            ess,
            states,
            sol.grads,
            w,
            draw.pareto_k,
            sol.held_out,
            sol.info.fallback,
            sol.fisher,
        )


def _stiff_share(exit_rate: torch.Tensor, mass: torch.Tensor, h: float) -> tuple[float, float]:
    """The mass (U,) at states where h a_0 > 0.9 (where the explicit map saturates), and the
    largest a_0 there (0 where none is)."""
    fast = h * exit_rate > STIFF_RATE_DT
    if not bool(fast.any()):
        return 0.0, 0.0
    return float(mass[fast].sum()), float(exit_rate[fast].max())


def _refuse_stiff(share: float, fastest: float, t: float, h: float) -> None:
    """StepSizeError where more than STIFF_SHARE of the mass is where h a_0 > 0.9."""
    if share > STIFF_SHARE:
        raise StepSizeError(
            f"at t = {t:g}: dt * a_0(n) = {h * fastest:.3g} > {STIFF_RATE_DT} on {share:.2%} of "
            f"the mass (largest total propensity a_0 = {fastest:.4g}); TDVP's explicit steps "
            f"need dt * a_0 < {STIFF_RATE_DT} where the mass is: use dt <= "
            f"{float(f'{STIFF_RATE_DT / fastest:.2g}'):g}"
        )
