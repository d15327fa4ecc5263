"""Rate constants fitted to observables (means, Fano factors, histograms, ... at given times)
through an amortised run's conditional model q(n | c, t).

The observables are smooth functions of expectations under q(. | c, t), so their derivatives in
log c come with them: exactly, by autograd through the model's probabilities summed over the
box where it is small enough (`nncme.amortise.EXACT_STATES`); otherwise by the score-function
estimator d E[f] / d log c = Cov(f, d log q / d log c) over samples of q(. | c, t). The fit is
weighted least squares, sum_k w_k ((O_k(c) - value_k) / sigma_k)^2, in log c within the
trained box by scipy's trust-region reflective solver with these Jacobians, from the middle of
the box and from `starts - 1` more points of a Sobol sequence (a sum of squared moments can
have more than one minimum); the best end wins. Its covariance in log c is (J^T W J)^-1 at
the optimum (the references' sigmas taken as right), so each rate comes with a standard
deviation of its log and an interval; a rate the observables do not determine shows as a
large one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.stats import qmc

from .amortise import EXACT_STATES, AmortisedSolution
from .observables import Observable, evaluate

__all__ = ["ObservableModel", "fit_observables"]

Z90 = 1.6448536269514722  # the normal's 95 % quantile: a two-sided 90 % interval


class ObservableModel:
    """The observables of an amortised run as a function of the log rate constants it varies.

    Args:
        solution: the trained run.
        observables: what is measured (each at a time within the run's span).
        start: (D,) the context whose rates are replaced (its other quantities, such as
            initial counts, stay); default the middle of the box.
        samples: draws per time where the box is too large to sum over (the estimate's
            noise falls as 1 / sqrt(samples)).
        method: "exact" (sums over the box), "sample" (the score-function estimator) or
            "auto" (exact where the box has at most EXACT_STATES states).
    """

    def __init__(
        self,
        solution: AmortisedSolution,
        observables: Sequence[Observable],
        *,
        start: Sequence[float] | None = None,
        samples: int = 20000,
        method: str = "auto",
        seed: int = 0,
    ) -> None:
        if method not in ("auto", "exact", "sample"):
            raise ValueError(f"method must be auto, exact or sample, got {method!r}")
        if not observables:
            raise ValueError("no observables to fit")
        self.solution = solution
        self.observables = list(observables)
        space = solution.space
        self.cols = solution.rate_columns()
        names = solution.network.species_names
        unknown = sorted({s for o in self.observables for s in o.species} - set(names))
        if unknown:
            raise ValueError(
                f"observables name species the network lacks: {unknown}; it has {names}"
            )
        last = float(solution.times[-1])
        late = [o.name for o in self.observables if o.t > last * (1 + 1e-9)]
        if late:
            raise ValueError(f"observed after the run's last time {last:g}: {late}")
        self.base = torch.as_tensor(space.check(space.middle() if start is None else start)[0])
        self.lo, self.hi = solution.log_rate_bounds(self.cols)
        states = int(np.prod(solution.network.limits))
        self.exact = method == "exact" or (method == "auto" and states <= EXACT_STATES)
        self.grid = solution.box_states() if self.exact else None
        self.samples = samples
        self.seed = seed
        self.times = sorted({o.t for o in self.observables})
        self.values = np.array([o.value for o in self.observables])
        self.scale = np.array([np.sqrt(o.weight) / o.sigma for o in self.observables])
        self.evaluations = 0
        self._last: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def rate_names(self) -> list[str]:
        return [self.solution.space.names[j] for j in self.cols]

    def context(self, log_rates: torch.Tensor) -> torch.Tensor:
        v = self.base.clone().to(log_rates.dtype)
        v[self.cols] = torch.exp(log_rates)
        return v

    def __call__(self, log_rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(R,) log c -> (K,) observables and (K, R) their derivatives in log c (the last
        point's answer is kept: least_squares asks for the residuals, then the Jacobian, at
        the same point)."""
        x = np.asarray(log_rates, dtype=np.float64)
        if self._last is not None and np.array_equal(self._last[0], x):
            return self._last[1]
        self._last = (x.copy(), self._evaluate(x))
        return self._last[1]

    def _evaluate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.evaluations += 1
        theta = torch.as_tensor(x)
        out = np.zeros(len(self.observables))
        jac = np.zeros((len(self.observables), len(self.cols)))
        species = self.solution.network.species_names
        for t in self.times:
            ks = [k for k, o in enumerate(self.observables) if o.t == t]
            obs = [self.observables[k] for k in ks]
            if self.exact:
                value, j = self._exact(obs, theta, t, species)
            else:
                value, j = self._sampled(obs, theta, t, species)
            out[ks] = value.cpu().numpy()
            jac[ks] = j.detach().cpu().numpy()
        return out, jac

    def _exact(
        self, obs: list[Observable], theta: torch.Tensor, t: float, species: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Observables summed over the box and their Jacobian in log c by autograd."""

        theta = theta.clone().requires_grad_(True)
        p = self.solution.box_probabilities(self.grid, self.context(theta), t)
        values = evaluate(obs, self.grid, species, p)  # one pass over the box, then K backward
        rows = [torch.autograd.grad(v, theta, retain_graph=True)[0] for v in values]
        return values.detach(), torch.stack(rows)

    def _sampled(
        self, obs: list[Observable], theta: torch.Tensor, t: float, species: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Observables from samples and d/d log c = J_g Cov(f, d log q / d log c)."""
        sol = self.solution
        # the same seed at every evaluation (common random numbers): the solver's steps see
        # how the observables change with c, not a new draw's noise
        gen = torch.Generator(device=sol.device).manual_seed(self.seed)
        theta = theta.clone().requires_grad_(True)
        v = self.context(theta)
        code = sol.space.encode_tensor(v.unsqueeze(0)).to(sol.device, sol.dtype)
        totals = sol.space.totals(v.detach().cpu().numpy()[None])
        n = self.samples
        tot = None if totals is None else torch.as_tensor(totals, device=sol.device).expand(n, -1)
        model = sol.at(t)
        states, _ = model.sample(n, gen, context=code.detach().expand(n, -1), totals=tot)
        log_q = model.log_prob(states, context=code.expand(n, -1), totals=tot)  # (n,), in theta
        values, rows = [], []
        for o in obs:
            f = o.features(states, species)
            value, dg = o.slope(f.mean(dim=0))
            coef = (f - f.mean(dim=0)) @ dg * n / (n - 1)  # the unbiased covariance
            (row,) = torch.autograd.grad(
                (coef.to(log_q.dtype) * log_q).mean(), theta, retain_graph=True
            )
            values.append(value)
            rows.append(row)
        return torch.stack(values), torch.stack(rows)

    def residuals(self, log_rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scaled residuals sqrt(w) (O - value) / sigma (K,) and their Jacobian (K, R)."""
        o, j = self(log_rates)
        return self.scale * (o - self.values), self.scale[:, None] * j


def fit_observables(
    solution: AmortisedSolution,
    observables: Sequence[Observable],
    *,
    start: Sequence[float] | None = None,
    starts: int = 5,
    method: str = "auto",
    samples: int = 20000,
    seed: int = 0,
) -> dict[str, Any]:
    """The varied rate constants that best match the observables (weighted least squares).

    Args:
        solution: an amortised run whose box holds the rates sought.
        observables: the references (`nncme.observables`), at times within the run.
        start: (D,) the context's other quantities (initial counts); default mid-box.
        starts: local fits from the middle of the box and Sobol points; the best is kept.
        method, samples, seed: see `ObservableModel`.

    Returns:
        {"rates": names (R,), "estimate" (R,), "sd_log" (R,), "interval_90" (R, 2),
         "covariance_log" (R, R), "chi2", "dof", "observables": per observable its name,
         reference, sigma and fitted value, "at_box_edge" (R,) bool, "evaluations",
         "seconds", "method"}.
    """
    t0 = time.perf_counter()
    model = ObservableModel(
        solution, observables, start=start, samples=samples, method=method, seed=seed
    )
    R = len(model.cols)
    points = [0.5 * (model.lo + model.hi)]
    if starts > 1:
        u = qmc.Sobol(R, scramble=True, seed=seed).random(starts - 1)
        points += list(model.lo + u * (model.hi - model.lo))
    best = None
    for x0 in points:
        res = least_squares(
            lambda x: model.residuals(x)[0],
            x0,
            jac=lambda x: model.residuals(x)[1],
            bounds=(model.lo, model.hi),
            method="trf",
            x_scale="jac",
        )
        if best is None or res.cost < best.cost:
            best = res
    r, J = model.residuals(best.x)
    info = J.T @ J
    cov = np.linalg.pinv(info)
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    est = np.exp(best.x)
    fitted = model(best.x)[0]
    edge = (np.abs(best.x - model.lo) < 1e-6) | (np.abs(model.hi - best.x) < 1e-6)
    return {
        "rates": model.rate_names,
        "estimate": est,
        "sd_log": sd,
        "interval_90": np.stack([est * np.exp(-Z90 * sd), est * np.exp(Z90 * sd)], axis=1),
        "covariance_log": cov,
        "chi2": float(np.sum(r**2)),
        "dof": len(model.observables) - R,
        "observables": [
            {"name": o.name, "value": o.value, "sigma": o.sigma, "fitted": float(f)}
            for o, f in zip(model.observables, fitted)
        ],
        "at_box_edge": edge,
        "evaluations": model.evaluations,
        "seconds": time.perf_counter() - t0,
        "method": "exact" if model.exact else "sample",
    }
