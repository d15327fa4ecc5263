"""The time-stepping trainer: carries a VAN q(n, t) from a start distribution to t_end.

Each step t -> t + dt fits the model, warm-started from the last step, to T q_old with
T = I + dt W (explicit first order, rates taken at t), by an `Update` (reverse KL with Adam by
default, or natural gradient; see `nncme.optim`), or integrates the TDVP equation of motion
over the step (`optimizer="tdvp"`, which uses W itself, not T). With `integrator="heun"` (the
default) a step is two such fits, a predictor q* ~ T(t) q_old and then
1/2 q_old + 1/2 T(t + dt) q* (`HeunTarget`): second order in dt, for twice the work, where
first order's time error alone can exceed the accuracy wanted (exact Euler steps of the toggle
switch at dt = 0.0025 are 0.029 in Hellinger from the exact solution at t = 0.1; Heun steps
0.0008). Results (marginals,
moments, the joint where the box is small) are written at save times in the common results
format, with a checkpoint (model, optimiser, RNG state, t, step) from which `resume`
continues a killed run to the same result as an uninterrupted one; a JSONL log has one line
per step.

The first step. A start given by a list of states (the exact point mass at the initial counts,
or product marginals with few enough states) has an enumerable T p0 as well, since each state
reaches at most K others in one step. So q(t_1) is fitted to T p0 exactly, by minimising
KL(T p0 || q) = sum_n T p0(n) log(T p0(n) / q(n)) over those states, to `first_tolerance` nats.
Reverse KL would not do here: a point mass has log p0 = -inf off its state, so
log q - log T p0 is +inf at almost every state the model samples. A start without a listable
support (broad Poisson marginals) has full support, and the first step is reverse KL like every
other, with `first_iterations` iterations. A trained model as the start is copied into the
model (same architecture) and stepped from.

How each step is fitted. Reverse KL alone cannot see probability arriving in states the
model does not yet sample, so each iteration also scores states one reaction away from its
samples (`explore`), and a step iterates until its residual falls to 1% of where it began
(`relative_tolerance`): each step fits T q_old, so any part of a step left undone is never
made up later and adds up to a lag. See `nncme.optim.KLUpdate` for both.

When first order breaks. T = I + dt W is a probability map only while dt * a_0(n) < 1 at every
state the distribution visits (a_0 the total propensity); beyond that the stay probability
1 - dt a_0(n) is negative. The trainer checks it at every sample and stops with `StepSizeError`
naming t, the largest a_0 and a dt that works. The check covers every sample, rare ones in
the tails included, so choose dt with dt * a_0 < 1 over all of the box the model may reach
(`network.max_exit_rate_bound()` bounds a_0 over the whole box). Well inside the limit the
local error is O(dt^2 ||W^2 q||) and the global error O(dt), and it shows: exact Euler steps of
the catalogue's birth-death process are 0.018 (Hellinger) from the exact marginal at t = 0.25
with dt = 0.01, and 0.009 with dt = 0.005.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ConfigError, RunConfig
from .models import AutoregressiveModel, Delta, Product, build_model
from .optim import (
    OPTIMIZERS,
    FisherSolver,
    HeunTarget,
    KLUpdate,
    NaturalGradientUpdate,
    NonFiniteError,
    StepProblem,
    StepReport,
    StepSizeError,
    TDVPRightHandSide,
    TDVPUpdate,
    TrainingError,
    TransitionTarget,
    Update,
    fit_enumerated,
    make_optimizer,
    transition_support,
)
from .results import COVARIANCE_MAX_SPECIES, Result, boundary_mask, default_pair, versions
from .sampling import make_proposal

__all__ = [
    "CHECKPOINT",
    "Evolution",
    "NonFiniteError",
    "RunOutput",
    "StepInfo",
    "StepSizeError",
    "TrainingError",
    "time_grid",
]

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Largest support of a start distribution that the first step enumerates exactly.
MAX_ENUMERATED = 200_000


@dataclass
class StepInfo:
    """What callbacks receive after every time step.

    Attributes:
        step: index of the step just done (1-based); t: the time reached; dt: its length.
        report: what the update did.  model: the VAN (do not modify).
        elapsed: seconds since the run (or its resumption) began.
    """

    step: int
    t: float
    dt: float
    report: StepReport
    model: AutoregressiveModel
    elapsed: float


@dataclass
class RunOutput:
    """The outcome of `Evolution.run` / `nncme.run`.

    Attributes:
        result: the results at t = 0 and every save time (method "van").
        model: the trained VAN at t_end.
        history: one dict per step (the JSONL log's lines).
        out: the output directory, if any.
    """

    result: Result
    model: AutoregressiveModel
    history: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None


def time_grid(t_end: float, dt: float, save_times: Sequence[float]) -> np.ndarray:
    """0 = t_0 < t_1 < ... < t_N = t_end: steps of dt, with every save time hit exactly.

    A save time between two multiples of dt splits that step in two.
    """
    n = math.floor(t_end / dt * (1 + 1e-12))
    points = [j * dt for j in range(n + 1)]
    tol = 1e-9 * max(1.0, t_end)
    for s in [*save_times, t_end]:
        j = int(np.argmin([abs(p - s) for p in points]))
        if abs(points[j] - s) <= tol:
            points[j] = float(s)  # snap the grid onto the save time
        else:
            points.append(float(s))
    grid = np.array(sorted(p for p in points if p <= t_end + tol))
    return grid


class Evolution:
    """A VAN run: the model, its optimiser and the time grid, ready to `run`.

    Args:
        network: the ReactionNetwork.
        config: the RunConfig (default settings if None).
        model: a VAN to train (default: built from the config).
        start: the distribution at t = 0: any object with `sample` and `log_prob` (default:
            the config's `initial`: the point mass at network.initial_state, or Poisson
            marginals with those means). A VAN of the same architecture as the model is
            copied into it.
        update: the per-step update (default: `KLUpdate` with the config's optimiser).
        callbacks: called with a `StepInfo` after every step; an exception stops the run
            (the last checkpoint stays, so the run can resume).
    """

    def __init__(
        self,
        network: Any,
        config: RunConfig | None = None,
        *,
        model: AutoregressiveModel | None = None,
        start: Any | None = None,
        update: Update | None = None,
        callbacks: Sequence[Callable[[StepInfo], None]] = (),
    ) -> None:
        self.network = network
        self.config = cfg = (config or RunConfig()).validate()
        self.t_end = float(cfg.t_end if cfg.t_end is not None else network.t_end)
        self.dt = float(cfg.dt if cfg.dt is not None else network.dt)
        if self.dt > self.t_end:
            raise ConfigError(f"dt: {self.dt:g} is larger than t_end {self.t_end:g}")
        self.device = _device(cfg.device)
        self.dtype = DTYPES[cfg.dtype]
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.net = network.compile(self.device, self.dtype)
        self.save_times = cfg.save_times(self.t_end, self.dt)
        self.grid = time_grid(self.t_end, self.dt, self.save_times)
        self.save_steps = {int(np.argmin(np.abs(self.grid - s))): s for s in self.save_times}
        self.model = model if model is not None else self._build_model()
        self.model.to(device=self.device, dtype=self.dtype)
        self.start = start if start is not None else self._default_start()
        self.proposal = make_proposal(
            cfg.sampling_proposal,
            eps=cfg.mixture_eps,
            width=cfg.diffusive_width,
            alpha=cfg.alpha,
            psis=cfg.psis,
        )
        self.update = update or self._build_update()
        self.callbacks = list(callbacks)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.out = Path(cfg.out) if cfg.out else None
        self._old: AutoregressiveModel | None = None
        self._predictor: AutoregressiveModel | None = None
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ construction
    def _build_model(self) -> AutoregressiveModel:
        cfg = self.config
        options: dict[str, Any] = {"hidden": cfg.hidden}
        if cfg.model == "nade":
            options.update(activation=cfg.activation, impl=cfg.impl)
        else:
            options.update(layers=cfg.layers, heads=cfg.heads)
        return build_model(
            cfg.model, self.network, dtype=self.dtype, device=self.device, seed=cfg.seed, **options
        )

    def _build_update(self) -> Update:
        """The per-step update the config names (`optimizer`)."""
        cfg = self.config
        solver = FisherSolver(
            cfg.shift,
            adaptive=cfg.adaptive_shift,
            space=cfg.solve_space,
            impl=cfg.impl,
            cv=cfg.cv_shift and cfg.optimizer == "tdvp",
        )
        if cfg.optimizer == "tdvp":
            rhs = TDVPRightHandSide(
                self.net,
                proposal=self.proposal,
                batch_size=cfg.batch,
                solver=solver,
                gradients=cfg.gradients,
                impl=cfg.impl,
                explore=cfg.explore,
            )
            return TDVPUpdate(
                rhs,
                integrator=cfg.integrator,
                adaptive=cfg.adaptive_dt,
                tolerance=cfg.dt_tolerance,
            )
        kl = dict(
            iterations=cfg.iterations,
            tolerance=cfg.tolerance,
            relative_tolerance=cfg.relative_tolerance,
            min_iterations=cfg.min_iterations,
            explore=cfg.explore,
            explore_baseline=cfg.explore_baseline,
            objective=cfg.objective,
            lr_decay=cfg.lr_decay,
        )
        if cfg.optimizer == "natgrad":
            return NaturalGradientUpdate(
                self.model,
                lr=cfg.learning_rate,
                solver=solver,
                gradients=cfg.gradients,
                max_step=cfg.max_step,
                **kl,
            )
        optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.learning_rate)
        return KLUpdate(optimizer, **kl)

    def _default_start(self) -> Any:
        net = self.network
        if self.config.initial == "poisson":
            return Product.poisson(
                net.initial_state, net.limits, dtype=self.dtype, device=self.device
            )
        return Delta(net.initial_state, net.limits, dtype=self.dtype, device=self.device)

    # ------------------------------------------------------------------ the run
    def run(self) -> RunOutput:
        """Step from t = 0 (or the last checkpoint, with `resume`) to t_end."""
        cfg = self.config
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            step, records = self._load_checkpoint()
        else:
            step, records = 0, [self._summarize(self.start, 0.0, 0)]
            if self.out is not None:
                (self.out / LOG).write_text("")
        n_steps = len(self.grid) - 1
        began = time.perf_counter()
        bar = tqdm(
            total=n_steps,
            initial=step,
            unit="step",
            desc=f"{self.network.name}",
            disable=cfg.quiet,
            mininterval=0.5,
            dynamic_ncols=True,
        )
        try:
            for j in range(step + 1, n_steps + 1):
                t0, t1 = float(self.grid[j - 1]), float(self.grid[j])
                report = self._guarded_step(j, t0, t1 - t0)
                self._log(j, t1, t1 - t0, report)
                bar.update(1)
                bar.set_postfix_str(f"t={t1:.4g} loss={report.loss:.2e}", refresh=False)
                info = StepInfo(j, t1, t1 - t0, report, self.model, time.perf_counter() - began)
                for callback in self.callbacks:
                    callback(info)
                if j in self.save_steps:
                    records.append(self._summarize(self.model, t1, len(records)))
                    self._save_checkpoint(j, records)
                    if self.out is not None and j < n_steps:
                        self._result(records).save(self.out, plots=False)
        finally:
            bar.close()
        result = self._result(records, seconds=time.perf_counter() - began)
        if self.out is not None:
            result.save(self.out)
        return RunOutput(result, self.model, self.history, self.out)

    def _guarded_step(self, j: int, t: float, dt: float) -> StepReport:
        """One step; a failure names the step and keeps the last good checkpoint."""
        try:
            report = self._step(j, t, dt)
            bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise NonFiniteError(f"parameters {', '.join(bad[:3])} became NaN or inf")
            return report
        except TrainingError as exc:
            where = f"step {j} (t = {t:g} -> {t + dt:g})"
            kept = ""
            if self.out is not None and (self.out / CHECKPOINT).exists():
                kept = f"; the last good checkpoint is kept in {self.out / CHECKPOINT}"
            raise type(exc)(f"{where}: {exc}{kept}") from exc

    def _step(self, j: int, t: float, dt: float) -> StepReport:
        cfg = self.config
        if j == 1:
            return self._first_step(t, dt)
        old = self._frozen_copy()
        problem = self._problem(old, t, dt, j, cfg.batch)
        predicted = self.update.run(problem)
        if cfg.optimizer == "tdvp" or cfg.integrator == "euler":
            return predicted
        # Heun (second order): the fit above is the predictor q* ~ T(t) q_old; now fit
        # 1/2 q_old + 1/2 T(t + dt) q*, warm-started from q*
        predictor = self._frozen_copy("_predictor")
        impl = cfg.impl
        problem.target = HeunTarget(old, predictor, self.net, t, dt, impl=impl)
        corrected = self.update.run(problem)
        corrected.iterations += predicted.iterations
        corrected.seconds += predicted.seconds
        corrected.rate_dt = max(corrected.rate_dt, predicted.rate_dt)
        return corrected

    def _problem(self, old: Any, t: float, dt: float, j: int, batch: int) -> StepProblem:
        impl = self.config.impl
        return StepProblem(
            model=self.model,
            target=TransitionTarget(old, self.net, t, dt, impl=impl),
            proposal=self.proposal,
            batch_size=batch,
            generator=self.generator,
            t=t,
            dt=dt,
            step=j,
            target_for=lambda dist: TransitionTarget(dist, self.net, t, dt, impl=impl),
        )

    def _frozen_copy(self, slot: str = "_old") -> AutoregressiveModel:
        """A frozen twin of the model as it is now (the previous step's model, or the Heun
        predictor), kept in `slot` and refreshed in place on later calls."""
        twin = getattr(self, slot, None)
        if twin is None:
            import copy

            twin = copy.deepcopy(self.model)
            for p in twin.parameters():
                p.requires_grad_(False)
            setattr(self, slot, twin)
        twin.load_state_dict(self.model.state_dict())
        return twin

    def _first_step(self, t: float, dt: float) -> StepReport:
        """t = 0 -> t_1 from the start distribution (see the module docstring)."""
        cfg = self.config
        start = self.start
        if isinstance(start, AutoregressiveModel) and _same_architecture(start, self.model):
            self.model.load_state_dict(start.state_dict())
            return self.update.run(self._problem(start, t, dt, 1, cfg.batch))
        # the first step fits a fixed distribution: a first-order fit (Adam for the
        # second-order updates, whose strength is following a moving target)
        first = cfg.optimizer if cfg.optimizer in OPTIMIZERS else "adam"
        optimizer = make_optimizer(first, self.model.parameters(), cfg.first_lr)
        exact = transition_support(start, self.net, t, dt, max_states=MAX_ENUMERATED, impl=cfg.impl)
        if exact is not None:
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
                optimizer,
                iterations=cfg.first_iterations,
                tolerance=cfg.first_tolerance,
            )
            return report
        first = KLUpdate(
            optimizer,
            iterations=cfg.first_iterations,
            tolerance=cfg.first_tolerance,
            min_iterations=10,
            explore=cfg.explore,
            explore_baseline=cfg.explore_baseline,
        )
        return first.run(self._problem(start, t, dt, 1, cfg.batch))

    # ------------------------------------------------------------------ results
    def _summarize(self, dist: Any, t: float, index: int) -> dict[str, torch.Tensor]:
        """Marginals, moments, pair joint, boundary mass (and the joint) of one distribution."""
        cfg = self.config
        net = self.network
        box = math.prod(int(m) for m in net.limits)
        gen = torch.Generator(self.device).manual_seed(cfg.seed * 1_000_003 + 7919 * index + 1)
        with torch.no_grad():
            if 0 < box <= cfg.joint_max_states:
                states = _box_states(net.limits, self.device)
                p = torch.cat([torch.exp(dist.log_prob(c)) for c in states.split(65536)])
                out = _weighted_summary(net, states, p)
                out["joint"] = p.cpu().double()
                return out
            support = getattr(dist, "support", None)
            found = support(MAX_ENUMERATED) if support is not None else None
            if found is not None:
                states, log_p = found
                return _weighted_summary(net, states, torch.exp(log_p))
            if isinstance(dist, AutoregressiveModel):
                return _sampled_summary(net, dist, cfg.eval_samples, gen)
            states, _ = dist.sample(cfg.eval_samples, gen)
            weights = torch.full((states.shape[0],), 1.0 / states.shape[0], dtype=torch.float64)
            return _weighted_summary(net, states, weights)

    def _result(self, records: list[dict[str, torch.Tensor]], seconds: float = 0.0) -> Result:
        net = self.network
        T = len(records)
        times = np.array([0.0, *self.save_times[: T - 1]])

        def stack(key: str) -> np.ndarray | None:
            if any(key not in r or r[key] is None for r in records):
                return None
            return np.stack([r[key].cpu().numpy() for r in records])

        joint = stack("joint")
        pair = default_pair(net.limits)
        pair_marginal = stack("pair") if pair is not None else None
        summary = {
            "network": net.to_dict(),
            "settings": {**self.config.to_dict(), "dt": self.dt, "t_end": self.t_end},
            "model": repr(self.model),
            "parameters": self.model.num_parameters(),
            "steps": len(self.grid) - 1,
            "eval_samples": self.config.eval_samples,
            "marginals_from": "joint" if joint is not None else "averaged conditionals",
            "timings": {"run_seconds": seconds},
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "versions": versions(),
        }
        return Result(
            method="van",
            species=net.species_names,
            limits=net.limits,
            times=times,
            marginals=stack("marginals"),
            means=stack("means"),
            stds=stack("stds"),
            covariances=stack("covariances"),
            joint_states=_box_states(net.limits, "cpu").numpy() if joint is not None else None,
            joint=joint,
            pair=pair if pair_marginal is not None else None,
            pair_marginal=pair_marginal,
            boundary=stack("boundary"),
            summary=summary,
        )

    # ------------------------------------------------------------------ log, checkpoints
    def _log(self, j: int, t: float, dt: float, report: StepReport) -> dict[str, Any]:
        line = {
            "step": j,
            "t": t,
            "dt": dt,
            "loss": report.loss,
            "loss_std": report.loss_std,
            "iterations": report.iterations,
            "rate_dt": report.rate_dt,
            "residual": report.residual,
            "gap": report.gap,
            "ess": report.ess,
            "shift": report.shift,
            "accepted": report.accepted,
            "rejected": report.rejected,
            "pareto_k": None if math.isnan(report.pareto_k) else report.pareto_k,
            "held_out": None if math.isnan(report.held_out) else report.held_out,
            "seconds": report.seconds,
        }
        self.history.append(line)
        if self.out is not None:
            with open(self.out / LOG, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        return line

    def _save_checkpoint(self, j: int, records: list[dict[str, torch.Tensor]]) -> None:
        if self.out is None:
            return
        state = {
            "format": 1,
            "step": j,
            "t": float(self.grid[j]),
            "config": self.config.to_dict(),
            "network": self.network.name,
            "model": self.model.state_dict(),
            "update": self.update.state_dict(),
            "generator": self.generator.get_state(),
            "records": records,
            "save_times": list(self.save_times),
            "history": self.history,
        }
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.out / CHECKPOINT)  # atomic: a kill never leaves half a file

    def _load_checkpoint(self) -> tuple[int, list[dict[str, torch.Tensor]]]:
        assert self.out is not None
        path = self.out / CHECKPOINT
        if not path.exists():
            raise ConfigError(f"resume: no checkpoint in {self.out} (expected {path})")
        state = torch.load(path, map_location=self.device, weights_only=True)
        saved = state["config"]
        changed = [
            k
            for k, v in self.config.to_dict().items()
            if k not in RunConfig.RESUMABLE and saved.get(k) != v
        ]
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(self.config, k)!r}" for k in
                              changed)  # fmt: skip
            raise ConfigError(f"resume: the run in {self.out} used other settings ({diffs})")
        if state["network"] != self.network.name:
            raise ConfigError(
                f"resume: the run in {self.out} is of network {state['network']!r}, "
                f"not {self.network.name!r}"
            )
        # the save times already passed stay as they were (a longer t_end may move the rest)
        t_saved = float(state["t"])
        done = [s for s in state["save_times"] if s <= t_saved * (1 + 1e-12)]
        self.save_times = done + [s for s in self.save_times if s > t_saved * (1 + 1e-12)]
        self.grid = time_grid(self.t_end, self.dt, self.save_times)
        self.save_steps = {int(np.argmin(np.abs(self.grid - s))): s for s in self.save_times}
        j = int(np.argmin(np.abs(self.grid - t_saved)))
        if abs(float(self.grid[j]) - t_saved) > 1e-9 or t_saved > self.t_end * (1 + 1e-12):
            raise ConfigError(
                f"resume: the checkpoint's t = {t_saved:g} is not a step of this run "
                f"(t_end = {self.t_end:g}, dt = {self.dt:g})"
            )
        self.model.load_state_dict(state["model"])
        self.update.load_state_dict(state["update"])
        self.generator.set_state(state["generator"].cpu())
        self.history = list(state["history"])
        lines = [json.dumps(line) + "\n" for line in self.history]
        (self.out / LOG).write_text("".join(lines))
        return j, list(state["records"])


# ---------------------------------------------------------------------- summaries
def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: not a torch device: {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name} requested but torch sees no CUDA GPU")
    return device


def _same_architecture(a: AutoregressiveModel, b: AutoregressiveModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return (
        type(a) is type(b)
        and sa.keys() == sb.keys()
        and all(sa[k].shape == sb[k].shape for k in sa)
    )


def _box_states(limits: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """Every state of the box (prod M_i, L), lexicographic (last species fastest)."""
    axes = [torch.arange(int(m), device=device) for m in limits]
    grid = torch.cartesian_prod(*axes) if len(axes) > 1 else axes[0].unsqueeze(1)
    return grid.reshape(-1, len(axes))


def _weighted_summary(net: Any, states: torch.Tensor, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """Statistics of a distribution given as states (S, L) with probabilities (S,)."""
    x = states.cpu().numpy().astype(np.int64)
    w = p.detach().cpu().numpy().astype(np.float64)
    L = x.shape[1]
    M = int(net.limits.max())
    marg = np.zeros((L, M))
    for i in range(L):
        marg[i] = np.bincount(x[:, i], w, minlength=M)[:M]
    counts = np.arange(M, dtype=np.float64)
    total = max(w.sum(), 1e-300)
    means = (x * w[:, None]).sum(0) / total
    out: dict[str, torch.Tensor] = {
        "marginals": torch.as_tensor(marg),
        "means": torch.as_tensor(marg @ counts / np.maximum(marg.sum(1), 1e-300)),
    }
    second = marg @ counts**2 / np.maximum(marg.sum(1), 1e-300)
    out["stds"] = torch.as_tensor(np.sqrt(np.maximum(second - out["means"].numpy() ** 2, 0)))
    if L <= COVARIANCE_MAX_SPECIES:
        xc = x - means
        out["covariances"] = torch.as_tensor((xc * w[:, None]).T @ xc / total)
    pair = default_pair(net.limits)
    if pair is not None:
        a, b = pair
        idx = x[:, a] * int(net.limits[b]) + x[:, b]
        size = int(net.limits[a]) * int(net.limits[b])
        pm = np.bincount(idx, w, minlength=size).reshape(int(net.limits[a]), int(net.limits[b]))
        out["pair"] = torch.as_tensor(pm)
    on = boundary_mask(x, net.reactant_matrix, net.change_matrix, net.limits)
    out["boundary"] = torch.as_tensor(float(w[on].sum()))
    return out


def _sampled_summary(
    net: Any, model: AutoregressiveModel, num_samples: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Statistics of a VAN from samples, through its conditionals (low variance).

    Marginal of species i: the mean over samples of q(. | n_<i). Means and second moments come
    from the conditional means c_i(n) = E[n_i | n_<i] (and E[n_i^2 | n_<i]); E[n_a n_b] for a < b
    from n_a c_b. The pair joint P(n_a, n_b) averages onehot(n_a) q(. | n_<b). Boundary mass is
    the fraction of samples on the boundary.
    """
    L, M = model.num_species, model.max_count
    counts = torch.arange(M, dtype=torch.float64, device=model.device)
    marg = torch.zeros(L, M, dtype=torch.float64, device=model.device)
    second_cross = torch.zeros(L, L, dtype=torch.float64, device=model.device)
    cond_sq = torch.zeros(L, dtype=torch.float64, device=model.device)
    pair = default_pair(net.limits)
    pm = None
    if pair is not None:
        a, b = pair
        pm = torch.zeros(int(net.limits[a]), M, dtype=torch.float64, device=model.device)
    boundary = 0.0
    left = num_samples
    while left > 0:
        n = min(left, 8192)
        states, _ = model.sample(n, generator)
        cond = torch.exp(model.conditionals(states)).double()  # (B, L, M)
        marg += cond.sum(0)
        c1 = cond @ counts  # (B, L) conditional means
        cond_sq += (cond @ counts**2).sum(0)
        second_cross += states.double().T @ c1  # [a, b] = sum n_a c_b
        if pm is not None:
            onehot = torch.nn.functional.one_hot(states[:, a], int(net.limits[a])).double()
            pm += onehot.T @ cond[:, b]
        on = boundary_mask(states.cpu().numpy(), net.reactant_matrix, net.change_matrix, net.limits)
        boundary += float(on.sum())
        left -= n
    marg /= num_samples
    means = marg @ counts
    second = cond_sq / num_samples
    out: dict[str, torch.Tensor] = {
        "marginals": marg.cpu(),
        "means": means.cpu(),
        "stds": torch.sqrt(torch.clamp(second - means**2, min=0)).cpu(),
        "boundary": torch.tensor(boundary / num_samples, dtype=torch.float64),
    }
    if L <= COVARIANCE_MAX_SPECIES:
        e = second_cross / num_samples
        upper = torch.triu(e, diagonal=1)
        moment2 = upper + upper.T + torch.diag(second)
        out["covariances"] = (moment2 - torch.outer(means, means)).cpu()
    if pm is not None:
        out["pair"] = (pm[:, : int(net.limits[b])] / num_samples).cpu()
    return out
