"""Observable supervision: a term in each step's objective that holds the VAN to observables
known along a run (DESIGN section 6; StABlE's observable loss, Raja et al. 2024).

Each fit of a step tilts its target. As the fit starts, the model's law stands for some
time t (the step's start, or a Runge-Kutta stage's time); its observables O_k, measured on
4 x batch draws, are compared with the references r_k(t): z_k = (O_k - r_k) / s_k, with
s_k^2 = Var_q(u_k) + sigma_k^2 the spread under q of the observable's linearisation
u_k = J_g(m_k) . F_k(n) (the count itself for a mean) plus the reference's own uncertainty.
The fit's target T q_old then becomes T q_old exp(-g), g(n) = sum_k eta_k (u_k(n) - E_q u_k).
A tilt by eta moves E[u_k] by about sum_j Cov_q(u_k, u_j) eta_j, so eta solves
Cov_q(u) eta = w lambda / (1 + lambda) (O - r), jointly: the observables of one species, or of
the species of a cascade, are correlated, and tilting each alone would overshoot, or drag
the observables that are right off their references (directions
the draws barely tell apart, below CORRELATION_RTOL of the correlation matrix's spectrum,
are dropped). So each fit removes the share lambda / (1 + lambda) of the error it starts
with (lambda = 1: half; a larger lambda holds the observables harder than the shape, and
costs a fit further from T q_old), and the error that the fits' lag adds at every step no
longer piles up: it stays near the lag per fit times (1 + lambda) / lambda.

Guards. z is clipped at +-Z_CLIP and g at +-G_CLIP nats, so a q far off, or a narrow q whose
linear tilt would be huge in its tails, moves towards the references at a bounded pace; a
point mass has no spread and is not tilted. Only the part of an error beyond NOISE_Z
standard errors of its measurement is acted on: a rare species seen a few times in the draws
would otherwise steer the tilt by its sampling noise, and that noise, tilted in at every fit,
is an error of its own (with two standard errors, false alarms over the many fits of a run
added more error to a small cascade's rare species than the term removed). The tilt is
fixed within a fit, so the fit's baseline, stopping rule and objective see one fixed
target, at no cost but the draws that measure O. The log reports (1/2) sum_k w_k z_k^2 at
the fit's start (about the KL of the smallest tilt that would correct the observables, nats)
and the largest |z_k|.

References given at a few times are interpolated linearly in time between them (cubically
for the dense tables of the moment equations); before the first and after the last the term
is off.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy.interpolate import CubicSpline

from ..network import ReactionNetwork
from ..observables import Observable

__all__ = ["Supervision", "moment_references"]

Z_CLIP = 3.0
# Eigenvalues of the observables' correlation matrix below this share of the largest are
# treated as zero when the tilt is solved for.
CORRELATION_RTOL = 1e-2
# Errors within this many standard errors of their measurement are left alone.
NOISE_Z = 3.0
# The most the tilt changes the target at any state (nats): a linear tilt of a narrow law
# (a spread s far below the counts' range) would otherwise be tens of nats in its tails.
G_CLIP = 0.5


class Supervision:
    """The observable term of each step's fit.

    Args:
        references: observables at times (a series per quantity: the same kind, species and
            bin at several times).
        species: the network's species names.
        weight: lambda (>= 0).
        interpolation: "linear" or "cubic" (dense, smooth tables) in time between references.
    """

    def __init__(
        self,
        references: Sequence[Observable],
        species: Sequence[str],
        *,
        weight: float = 1.0,
        interpolation: str = "linear",
    ) -> None:
        if not (weight >= 0 and math.isfinite(weight)):
            raise ValueError(f"the supervision weight must be finite and >= 0, got {weight}")
        if interpolation not in ("linear", "cubic"):
            raise ValueError(f"interpolation must be linear or cubic, got {interpolation!r}")
        unknown = sorted({s for o in references for s in o.species} - set(species))
        if unknown:
            raise ValueError(f"references name species the network lacks: {unknown}")
        if any(o.kind == "callable" for o in references):
            raise ValueError("supervision takes no callable observables (they cannot be saved)")
        self.species = list(species)
        self.weight = float(weight)
        groups: dict[tuple, list[Observable]] = defaultdict(list)
        for o in references:
            groups[(o.kind, o.species, o.lo, o.hi, o.width, o.weight)].append(o)
        self.series = []
        for series in groups.values():
            series.sort(key=lambda o: o.t)
            times = np.array([o.t for o in series])
            if np.any(np.diff(times) <= 0):
                raise ValueError(f"{series[0].name}: two references at the same time")
            self.series.append((series[0], times, self._interpolant(series, times, interpolation)))
        self._tilt: list[tuple[Observable, torch.Tensor, float, float]] = []
        self.last: dict[str, Any] = {}

    @staticmethod
    def _interpolant(series: list[Observable], times: np.ndarray, how: str):
        table = np.array([[o.value, o.sigma] for o in series])
        if len(series) == 1:
            return lambda t: table[0]
        if how == "cubic" and len(series) > 3:
            spline = CubicSpline(times, table, axis=0)
            return lambda t: spline(t)
        return lambda t: np.array([np.interp(t, times, table[:, j]) for j in range(2)])

    def at(self, t: float) -> list[Observable]:
        """The references at time t (those whose series spans t)."""
        out = []
        for first, times, value in self.series:
            tol = 1e-9 * max(1.0, abs(t))
            if times[0] - tol <= t <= times[-1] + tol:
                v, s = value(min(max(t, times[0]), times[-1]))
                out.append(replace(first, t=float(t), value=float(v), sigma=float(max(s, 1e-12))))
        return out

    @torch.no_grad()
    def begin(
        self,
        model: Any,
        t: float,
        samples: int,
        generator: torch.Generator | None = None,
    ) -> None:
        """A fit starts from `model`, whose law stands for time t: measure its observables on
        `samples` draws against the references at t and fix this fit's tilt."""
        self._tilt = []
        self.last = {}
        refs = self.at(t)
        if not refs or self.weight == 0:
            return
        states, _ = model.sample(samples, generator)
        keep = self.weight / (1.0 + self.weight)  # the share of the error removed
        us, grads, means, wanted, sigmas = [], [], [], [], []
        penalty, worst = 0.0, 0.0
        for o in refs:
            F = o.features(states, self.species)  # (S, F)
            value, dg = o.slope(F.mean(dim=0))
            u = F @ dg  # the observable's linearisation at each draw
            var_u = float(u.var())
            s = math.sqrt(var_u + o.sigma**2)
            error = float(value) - o.value
            penalty += 0.5 * o.weight * (error / s) ** 2
            worst = max(worst, abs(error) / s)
            # only what the draws resolve: an error within NOISE_Z standard errors of the
            # measurement is not acted on (a rare species' few hits would steer the tilt)
            excess = max(0.0, abs(error) - NOISE_Z * math.sqrt(var_u / samples))
            if var_u > 0:  # a point mass cannot be tilted
                # those within the noise stay in the solve, held where they are: tilting a
                # correlated observable alone would drag them off
                share = min(1.0, o.weight * keep)
                wanted.append(share * math.copysign(min(excess, Z_CLIP * s), error))
                us.append(u)
                grads.append((o, dg))
                means.append(float(u.mean()))
                sigmas.append(o.sigma)
        self.last = {"penalty": penalty, "max_z": worst, "references": len(refs)}
        if not any(wanted):
            return
        # a tilt by sum_j eta_j u_j moves E[u_k] by sum_j Cov(u_k, u_j) eta_j: solve for the
        # wanted moves jointly (observables of one species, or of a cascade, are correlated)
        U = torch.stack(us, dim=1)
        cov = torch.cov(U.T).reshape(len(us), len(us))
        cov = cov + torch.diag(torch.tensor(sigmas, dtype=cov.dtype) ** 2)
        # on the correlation scale, directions the draws barely tell apart (a mean and a
        # variance of a species that is 0 or 1) are dropped, not inverted into huge tilts
        d = cov.diagonal().rsqrt()
        inverse = torch.linalg.pinv(d[:, None] * cov * d[None, :], rtol=CORRELATION_RTOL)
        eta = d * (inverse @ (d * torch.tensor(wanted, dtype=cov.dtype)))
        self._tilt = [(o, dg, mu, float(e)) for (o, dg), mu, e in zip(grads, means, eta)]

    def tilt(self, states: torch.Tensor) -> torch.Tensor | None:
        """g(n) at (N, L) states: this fit's target is T q_old exp(-g) (None: no tilt)."""
        if not self._tilt:
            return None
        g = torch.zeros(states.shape[0], dtype=torch.float64, device=states.device)
        for o, dg, mean_u, eta in self._tilt:
            g += eta * (o.features(states, self.species) @ dg - mean_u)
        return g.clamp(-G_CLIP, G_CLIP)


def moment_references(
    network: ReactionNetwork,
    t_end: float,
    *,
    kinds: Sequence[str] = ("mean", "variance"),
    points: int = 2001,
    poisson_start: bool = False,
) -> list[Observable]:
    """References from the exact moment equations of the network's closed linear species
    (`nncme.exact.linear_moments`) on `points` times over [0, t_end], for `Supervision` with
    cubic interpolation; exact, so their sigmas are only a round-off floor. The start is the
    network's initial state, or independent Poisson counts with those means."""
    from ..exact import linear_moments

    if not set(kinds) <= {"mean", "variance"}:
        raise ValueError(f"moment references are means and variances, got {list(kinds)}")
    start = network.initial_state.astype(np.float64)
    cov = np.diag(start) if poisson_start else None
    mom = linear_moments(network, np.linspace(0.0, t_end, points), initial_cov=cov)
    var = np.clip(mom.var, 0.0, None)
    out = []
    for j, name in enumerate(mom.species):
        for i, t in enumerate(mom.times):
            if "mean" in kinds:
                value = float(mom.mean[i, j])
                out.append(Observable("mean", (name,), float(t), value, 1e-9 * (1 + value)))
            if "variance" in kinds:
                value = float(var[i, j])
                out.append(Observable("variance", (name,), float(t), value, 1e-9 * (1 + value)))
    return out
