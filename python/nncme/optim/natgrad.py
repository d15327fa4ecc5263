"""Natural gradient on the reverse KL of a fit (DESIGN section 2).

The score-function gradient of `KLUpdate`, g = sum_u c_u O_u over the distinct training states
u (c_u their summed coefficients w (f - b), O_u = grad log q(n_u)), is preconditioned by the
centred Fisher matrix of the same states under the same importance weights W_u:

    S = sum_u W_u (O_u - Obar)(O_u - Obar)^T,   Obar = sum_u W_u O_u,
    theta <- theta - lr (S + lambda I)^-1 g.

Centring matters: the public NNCME-2 code uses E[O O^T], which differs from S by Obar Obar^T;
E_q[O] = 0 only in expectation over q itself, so with finite batches, explored states or an
importance-weighted proposal the uncentred matrix adds a spurious direction (tests check that
the centred solve matches a dense one and the uncentred does not). Because sum_u c_u = 0, g is
also sum_u W_u (O_u - Obar)(v_u - vbar) with v_u = c_u / W_u, which is exactly the right-hand
side `FisherSolver.solve_scores` solves for (from the model's Gram matrix or its scores).

Over many processes every rank solves the same system, the step of one process on the whole
batch, built the cheaper of two ways (`FisherSolver.reduces`): where the parameters are no more
than the distinct states of all ranks, each rank sums the parameter-space system of its own
states and the sums are added over the ranks (`FisherSolver.solve_reduced`: P^2 numbers travel,
the scores are split); else every rank's distinct states, coefficients and weights are gathered
to every rank (`nncme.sampling.gather_distinct`) for the sample-space solve.

Near the optimum the Fisher matrix is the Hessian of the KL, so a step with lr = 1 is a
(regularised) Newton step; `lr` below 1 damps the sampling noise.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import parallel
from ..sampling import gather_distinct
from .linear import FisherSolver, ScoreSolution, SolveInfo
from .updates import KLUpdate, StepProblem, StepReport

__all__ = ["NaturalGradientUpdate"]


class NaturalGradientUpdate(KLUpdate):
    """`KLUpdate` with the gradient preconditioned by the centred Fisher matrix.

    Args:
        model: the VAN whose parameters are updated.
        lr: step length (1: the full natural-gradient step).
        solver: the `FisherSolver` (shift, adaptive shift, space, scores, operator impl).
        max_step: largest step length in the Fisher metric, sqrt(dtheta^T S dtheta) (the RMS
            change of log q over the batch, in nats); longer steps are scaled down. 0: no cap.
        **kl: the `KLUpdate` options (iterations, tolerance, relative_tolerance,
            min_iterations, window, explore, ...).
    """

    name = "natgrad"
    exact_fits = False  # a whole listed support is preconditioned as a draw is

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        lr: float = 0.5,
        solver: FisherSolver | None = None,
        max_step: float = 1.0,
        **kl: Any,
    ) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(torch.optim.SGD(params, lr=lr), **kl)
        self.solver = solver or FisherSolver()
        self.max_step = float(max_step)
        self._last = SolveInfo(0.0, 0.0, "sample")

    def _iteration(self, problem: StepProblem, it: int, report: StepReport) -> None:
        super()._iteration(problem, it, report)
        report.shift = self._last.shift
        report.fallbacks += int(self._last.fallback)

    def apply_gradient(
        self,
        problem: StepProblem,
        states: torch.Tensor,
        coef: torch.Tensor,
        weights: torch.Tensor,
        numbers: parallel.Numbers | None = None,
    ) -> parallel.Numbers:
        sol, numbers = self._solve(problem, states, coef, weights, numbers or ([], [], []))
        self._last = sol.info
        x = sol.x * self._step_scale(sol.fit_square)
        offset = 0
        for p in self.optimizer.param_groups[0]["params"]:
            p.grad = x[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.optimizer.step()
        return numbers or ([], [], [])

    def _solve(
        self,
        problem: StepProblem,
        states: torch.Tensor,
        coef: torch.Tensor,
        weights: torch.Tensor,
        numbers: parallel.Numbers,
    ) -> tuple[ScoreSolution, parallel.Numbers]:
        """The natural-gradient solve on the whole batch (every rank's, over many processes:
        the module docstring), and the caller's numbers reduced over the ranks."""
        model = problem.model
        if not parallel.active():
            w = weights / weights.sum()
            return self.solver.solve_scores(model, states, coef / w, w), numbers
        sums, maxima, logsumexps = numbers
        (*sums, total, bound), maxima, logsumexps = parallel.reduce(
            [*sums, float(weights.sum()), float(states.shape[0])], maxima, logsumexps
        )
        numbers = (sums, maxima, logsumexps)
        rows = self.solver.rows_to_reduce(model, states, round(bound))
        if rows is not None:
            w = weights / total
            return self.solver.solve_reduced(model, states, coef / w, w, rows), numbers
        columns = torch.stack([coef, weights], dim=1)
        states, columns = gather_distinct(states, columns, model.limits)
        w = columns[:, 1] / columns[:, 1].sum()
        return self.solver.solve_scores(model, states, columns[:, 0] / w, w), numbers

    def _step_scale(self, fit_square: float) -> float:
        """1, or less where the step's Fisher length lr * sqrt(sum w (O_c x)^2) > max_step
        (`fit_square`: sum w (O_c x)^2 over the whole batch, x the unscaled step)."""
        if self.max_step <= 0:
            return 1.0
        length = math.sqrt(max(0.0, fit_square))
        lr = self.optimizer.param_groups[0]["lr"]
        return min(1.0, self.max_step / (lr * length)) if lr * length > 0 else 1.0
