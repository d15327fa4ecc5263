"""Observables: what a measurement reports about P(n, t), and their gradients under a VAN.

An `Observable` is a smooth function g of the expectations m = E_q[f(n)] of a few features of
the counts: a mean (f = n_i), a variance or Fano factor (f = n_i, n_i^2), a covariance
(f = n_i, n_j, n_i n_j), a histogram bin (f = the bin's indicator, or a Gaussian kernel of
`width` counts around it), a tail probability P(n_i >= lo), or any user callable of the counts.
It carries the time it is measured at, its reference value with a standard uncertainty, and a
weight.

The gradient of E_q[O] in the model's parameters needs no derivative of O: for a normalised
autoregressive q, grad E_q[f] = E_q[(f - b) grad log q] for any constant b (the score-function,
or "Boltzmann", estimator of StABlE, Raja et al. 2024: -Cov(O, grad U) with U = -log q), and
grad g(m) = J_g(m) grad m. `score_gradient` draws independent sample sets (replicas), takes
each replica's leave-one-out mean as its baseline, optionally clips the centred features at
`clip` standard deviations, and reports the mean gradient with its standard error over the
replicas. The same covariance with d log q / d log c in place of grad log q gives the
derivatives of observables in the rate constants of a conditional model (`nncme.fit`).
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "KINDS",
    "Observable",
    "evaluate",
    "from_snapshots",
    "read_observables",
    "score_gradient",
]

KINDS = ("mean", "variance", "fano", "covariance", "histogram", "tail", "callable")
# How many species each kind reads.
_ARITY = {"covariance": 2, "callable": 0}


@dataclass(frozen=True)
class Observable:
    """One measured quantity of the counts at one time.

    Args:
        kind: one of KINDS.
        species: the species it reads (two for "covariance"; any for "callable").
        t: the time it refers to (the network's time unit).
        value: the reference value (a measurement or an exact figure).
        sigma: the reference's standard uncertainty (> 0); residuals are (O - value) / sigma.
        weight: a further factor on the residual's square (>= 0).
        lo, hi: "histogram": the bin lo <= n <= hi (hi defaults to lo); "tail": n >= lo.
        width: "histogram": a Gaussian kernel of this many counts smooths the bin's edges
            (0: the bin's indicator), as a histogram of noisy counts would.
        fn: "callable": (B, L) int64 counts -> (B,) float, the quantity whose mean is observed.
        label: a name for reports (default: made from the rest).
    """

    kind: str
    species: tuple[str, ...]
    t: float
    value: float
    sigma: float
    weight: float = 1.0
    lo: int | None = None
    hi: int | None = None
    width: float = 0.0
    fn: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False)
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "species", tuple(self.species))
        if self.kind not in KINDS:
            raise ValueError(f"observable kind must be one of {KINDS}, got {self.kind!r}")
        arity = _ARITY.get(self.kind, 1)
        if arity and len(self.species) != arity:
            raise ValueError(f"a {self.kind} reads {arity} species, got {list(self.species)}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"{self.name}: sigma must be finite and > 0, got {self.sigma}")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ValueError(f"{self.name}: weight must be finite and >= 0, got {self.weight}")
        if not (self.t >= 0 and math.isfinite(self.t)):
            raise ValueError(f"{self.name}: t must be finite and >= 0, got {self.t}")
        if not math.isfinite(self.value):
            raise ValueError(f"{self.name}: the reference value is not finite")
        if self.kind in ("histogram", "tail") and self.lo is None:
            raise ValueError(f"a {self.kind} needs lo (the bin's first count, or the threshold)")
        if self.kind == "histogram" and self.hi is not None and self.hi < self.lo:
            raise ValueError(f"{self.name}: hi < lo")
        if self.width < 0:
            raise ValueError(f"{self.name}: width must be >= 0")
        if self.kind == "callable" and self.fn is None:
            raise ValueError("a callable observable needs fn")

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        who = ",".join(self.species)
        if self.kind == "histogram":
            hi = self.lo if self.hi is None else self.hi
            bin_ = f"{self.lo}" if hi == self.lo else f"{self.lo}..{hi}"
            return f"P({who} = {bin_}) @ t={self.t:g}"
        if self.kind == "tail":
            return f"P({who} >= {self.lo}) @ t={self.t:g}"
        return f"{self.kind}({who}) @ t={self.t:g}"

    def features(self, states: torch.Tensor, species: Sequence[str]) -> torch.Tensor:
        """(B, L) counts -> (B, F) the features whose expectations g combines."""
        try:
            cols = [list(species).index(s) for s in self.species]
        except ValueError:
            raise ValueError(
                f"{self.name}: names a species the network lacks; it has {list(species)}"
            ) from None
        x = states.to(torch.float64)
        if self.kind == "callable":
            f = torch.as_tensor(self.fn(states), dtype=torch.float64, device=states.device)
            if f.shape != (states.shape[0],):
                raise ValueError(f"{self.name}: fn must return shape ({states.shape[0]},)")
            return f.unsqueeze(1)
        a = x[:, cols[0]]
        if self.kind == "mean":
            return a.unsqueeze(1)
        if self.kind in ("variance", "fano"):
            return torch.stack([a, a * a], dim=1)
        if self.kind == "covariance":
            b = x[:, cols[1]]
            return torch.stack([a, b, a * b], dim=1)
        if self.kind == "tail":
            return (a >= self.lo).to(torch.float64).unsqueeze(1)
        hi = self.lo if self.hi is None else self.hi
        if self.width == 0:
            return ((a >= self.lo) & (a <= hi)).to(torch.float64).unsqueeze(1)
        # The mass of N(n, width^2) that falls in [lo - 1/2, hi + 1/2].
        z = math.sqrt(2.0) * self.width
        mass = 0.5 * (torch.erf((hi + 0.5 - a) / z) - torch.erf((self.lo - 0.5 - a) / z))
        return mass.unsqueeze(1)

    def combine(self, m: torch.Tensor) -> torch.Tensor:
        """(..., F) expectations of the features -> (...) the observable (differentiable)."""
        if self.kind in ("variance", "fano"):
            var = m[..., 1] - m[..., 0] ** 2
            return var if self.kind == "variance" else var / m[..., 0]
        if self.kind == "covariance":
            return m[..., 2] - m[..., 0] * m[..., 1]
        return m[..., 0]

    def slope(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The observable at (F,) feature expectations m and its gradient J_g there (F,): its
        linearisation u(n) = J_g . F(n), which the score-function estimators weigh."""
        with torch.enable_grad():
            mg = m.detach().clone().requires_grad_(True)
            value = self.combine(mg)
            (dg,) = torch.autograd.grad(value, mg)
        return value.detach(), dg

    def to_row(self) -> dict[str, Any]:
        """The CSV row of `read_observables` (a callable's fn cannot be written)."""
        return {
            "kind": self.kind,
            "species": ":".join(self.species),
            "t": self.t,
            "value": self.value,
            "sigma": self.sigma,
            "weight": self.weight,
            "lo": "" if self.lo is None else self.lo,
            "hi": "" if self.hi is None else self.hi,
            "width": self.width,
        }


def evaluate(
    observables: Sequence[Observable],
    states: torch.Tensor,
    species: Sequence[str],
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """(K,) the observables under the (B, L) states, weighted by (B,) `weights` (normalised
    here; probabilities over a whole box give the exact values, and stay differentiable)."""
    if weights is None:
        weights = torch.full((states.shape[0],), 1.0 / states.shape[0], dtype=torch.float64)
    w = weights.to(torch.float64)
    w = w / w.sum()
    return torch.stack([o.combine(w @ o.features(states, species)) for o in observables])


# ------------------------------------------------------------------ the gradient estimator
@dataclass
class ScoreGradient:
    """grad_theta E_q[O] by the score-function estimator.

    Attributes:
        values: (K,) the observables from all samples.
        gradient: (K, P) the mean over replicas (P: the parameters, flattened in order).
        stderr: (K, P) its standard error over the replicas (nan with one replica).
        replicas: (R, K, P) each replica's estimate.
    """

    values: torch.Tensor
    gradient: torch.Tensor
    stderr: torch.Tensor
    replicas: torch.Tensor


def score_gradient(
    model: torch.nn.Module,
    observables: Sequence[Observable],
    species: Sequence[str],
    *,
    samples: int = 4096,
    replicas: int = 8,
    clip: float | None = None,
    generator: torch.Generator | None = None,
    context: torch.Tensor | None = None,
    totals: torch.Tensor | None = None,
) -> ScoreGradient:
    """The gradient of each E_q[O_k] in the model's trainable parameters.

    Each of `replicas` independent sets of samples / replicas draws gives
    grad m = mean_i (f_i - b_i) grad log q(n_i) with b_i the mean of the set's other draws
    (leave-one-out: the baseline does not depend on n_i, so the estimate stays unbiased) and
    grad O = J_g(m) grad m with m the set's mean features. `clip` (in standard deviations of
    each feature within the set) caps the centred features, trading a bias for less variance
    on heavy-tailed observables, as StABlE's clipping does.

    Args:
        model: an autoregressive model (log_prob and sample as in `models.base`).
        observables: K observables (their times are the caller's business: q is one time).
        species: the network's species names, in the model's order.
        samples: draws in all, split evenly over the replicas.
        context, totals: one conditional model's (1, C) context and (1, L') totals, if any.
    """
    if replicas < 1 or samples < 2 * replicas:
        raise ValueError("need replicas >= 1 and at least two samples per replica")
    params = [p for p in model.parameters() if p.requires_grad]
    n = samples // replicas
    ctx = None if context is None else context.expand(n, -1)
    tot = None if totals is None else totals.expand(n, -1)
    per_replica, values = [], []
    for _ in range(replicas):
        states, _ = model.sample(n, generator, context=ctx, totals=tot)
        rows = []
        log_q = model.log_prob(states, context=ctx, totals=tot)
        for o in observables:
            f = o.features(states, species)  # (n, F)
            _, dg = o.slope(f.mean(dim=0))  # (F,) J_g at this set's means
            loo = (f.sum(dim=0, keepdim=True) - f) / (n - 1)
            centred = f - loo
            if clip is not None:
                cap = clip * f.std(dim=0, keepdim=True).clamp_min(1e-300)
                centred = torch.maximum(torch.minimum(centred, cap), -cap)
            coef = (centred @ dg).to(log_q.dtype)  # (n,)
            grads = torch.autograd.grad(
                (coef * log_q).mean(), params, retain_graph=True, allow_unused=True
            )
            rows.append(_flat(grads, params))
            values.append(f)
        per_replica.append(torch.stack(rows))
    reps = torch.stack(per_replica)  # (R, K, P)
    feats = [torch.cat(values[k :: len(observables)]) for k in range(len(observables))]
    vals = torch.stack([o.combine(f.mean(dim=0)) for o, f in zip(observables, feats)])
    stderr = (
        reps.std(dim=0) / math.sqrt(replicas)
        if replicas > 1
        else torch.full_like(reps[0], math.nan)
    )
    return ScoreGradient(vals.detach(), reps.mean(dim=0), stderr, reps)


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1).to(torch.float64)
            for g, p in zip(grads, params)
        ]
    )


# ------------------------------------------------------------------ references from data
def from_snapshots(
    counts: np.ndarray,
    t: float,
    species: Sequence[str],
    *,
    kinds: Sequence[str] = ("mean", "fano"),
    bins: dict[str, Sequence[int]] | None = None,
    bootstrap: int = 400,
    seed: int = 0,
) -> list[Observable]:
    """Observables measured on (N, L) snapshot counts of N cells at time t, with bootstrap
    standard errors as their sigmas.

    Args:
        kinds: per species, any of "mean", "variance", "fano".
        bins: {species: edges e_0 < e_1 < ... < e_K}: histogram observables of the bins
            e_k <= n < e_{k+1} (make e_K the species' limit to cover the box; leaving one
            bin out loses nothing, the probabilities summing to one).
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(species):
        raise ValueError(f"counts must be (cells, {len(species)}), got {counts.shape}")
    if len(counts) < 10:
        raise ValueError("at least 10 cells are needed for bootstrap uncertainties")
    rng = np.random.default_rng(seed)
    resample = rng.integers(0, len(counts), size=(bootstrap, len(counts)))
    out: list[Observable] = []
    specs: list[Observable] = []
    for s in species:
        specs += [Observable(kind, (s,), t, 0.0, 1.0) for kind in kinds]
        edges = [int(e) for e in (bins or {}).get(s, [])]
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"bins of {s}: the edges must increase, got {edges}")
        specs += [
            Observable("histogram", (s,), t, 0.0, 1.0, lo=lo, hi=nxt - 1)
            for lo, nxt in itertools.pairwise(edges)
        ]
    states = torch.as_tensor(counts, dtype=torch.int64)
    point = evaluate(specs, states, species).numpy()
    boot = np.stack(
        [evaluate(specs, states[torch.as_tensor(r)], species).numpy() for r in resample]
    )
    sd = np.nanstd(boot, axis=0, ddof=1)
    for o, v, e in zip(specs, point, sd):
        # A bin no cell (or every cell) fell in has no spread over resamples: one cell's worth.
        floor = 1.0 / len(counts) if o.kind == "histogram" else 1e-12
        if not np.isfinite(v):
            continue  # e.g. the Fano factor of a species that is always zero
        out.append(replace(o, value=float(v), sigma=float(max(e, floor))))
    return out


_COLUMNS = ("kind", "species", "t", "value", "sigma", "weight", "lo", "hi", "width")


def read_observables(path: str | Path) -> list[Observable]:
    """Observables from a CSV with the header kind,species,t,value,sigma and optional
    weight,lo,hi,width (a covariance names its species as A:B)."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in _COLUMNS[:5] if c not in header]
        if missing:
            raise ValueError(f"{path}: the header lacks {missing}; columns are {_COLUMNS}")
        out = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            try:
                out.append(
                    Observable(
                        kind=row["kind"],
                        species=tuple(row["species"].split(":")),
                        t=float(row["t"]),
                        value=float(row["value"]),
                        sigma=float(row["sigma"]),
                        weight=float(row.get("weight") or 1.0),
                        lo=int(row["lo"]) if row.get("lo") else None,
                        hi=int(row["hi"]) if row.get("hi") else None,
                        width=float(row.get("width") or 0.0),
                    )
                )
            except ValueError as exc:
                raise ValueError(f"{path}, line {line}: {exc}") from None
    if not out:
        raise ValueError(f"{path}: no observables")
    return out


def write_observables(observables: Sequence[Observable], path: str | Path) -> Path:
    """The CSV that `read_observables` reads."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(_COLUMNS))
        writer.writeheader()
        for o in observables:
            writer.writerow(o.to_row())
    return path
