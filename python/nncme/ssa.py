"""Batched Gillespie stochastic simulation (direct method) in torch, on CPU or GPU.

Many trajectories advance together, one event each per step: propensities of all active
trajectories come from the propensity operator (`nncme.ops.propensities`, the same definition
FSP and the VAN use, truncation rule included), a waiting time and a reaction are drawn for
each, and the states are updated in place. The record times split time into windows; a
trajectory whose next event falls beyond the end of its window stops at the window end,
records its state there and redraws (exact, by the memorylessness of the exponential clock).
Finished trajectories are dropped from the batch, so the cost of a step follows the number of
trajectories still running.

Time-dependent rates are exact by thinning (Lewis & Shedler): within a window the propensity
of reaction k is bounded by B_k(n) = cbar_k * a_k(n; c = 1) with cbar_k from
`network.rate_bounds(window)`; candidate events come at rate sum_k B_k(n) and are accepted
with probability a_k(n, s) / B_0(n) at the candidate time s.

Randomness comes from one `torch.Generator` (seeded), so a seed, batch size and device
reproduce a run exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from . import ops
from .config import Settings, _opt, shared, torch_threads
from .network import (
    NetworkError,
    RateForm,
    RateFunction,
    ReactionNetwork,
    check_times,
)
from .results import Result, ResultBuilder, check_boundary, solve_into, versions

__all__ = ["SSASettings", "simulate", "solve_ssa"]


@dataclass
class SSASettings(Settings):
    """Options of the stochastic solver, shared by the Python API, `nncme ssa` and its TOML files.

    The time options, device, threads, seed, out and quiet mean what they mean for every
    command (see `nncme.config.SHARED`). The seed defaults to 0, so a run is reproducible:
    the same seed, batch size and device give the same trajectories. Runs meant to be
    independent (to pool them, or to measure the spread between runs) need different seeds.
    Memory is about batch_size * T * L * 8 bytes for the records. One step is a dozen small
    operations, so extra threads gain little and cost much on a machine whose cores are busy
    with other work; `threads = 1` is the robust choice there.
    """

    TABLE: ClassVar[str] = "ssa"

    trajectories: int = _opt(100_000, "number of independent trajectories", minimum=1)
    batch_size: int | None = _opt(
        None,
        "trajectories simulated together (default: all, up to 131072 on a GPU, 32768 on a CPU)",
        minimum=1,
    )
    sync_every: int | None = _opt(
        None,
        "steps between host synchronisations (progress, dropping finished trajectories; "
        "default 32 on a GPU, 4 on a CPU)",
        minimum=1,
    )
    max_steps: int | None = _opt(
        None, "stop with an error after this many steps of one batch (default: no limit)", minimum=1
    )
    boundary_warn: float = _opt(
        1e-3, "warn when the probability on the box boundary exceeds this", maximum=1.0
    )
    keep_joint: bool = _opt(True, "store the empirical joint when it is small enough")
    plots: bool = _opt(True, "write PNG figures beside the results")
    t_end: float | None = shared("t_end")
    save_every: float | None = shared("save_every")
    times: list[float] | None = shared("times")
    device: str = shared("device")
    threads: int = shared(
        "threads", "CPU threads for torch (0: torch's default; 1 suits busy cores)"
    )
    seed: int = shared(
        "seed",
        "seed of the torch generator: the same seed repeats the same trajectories, so "
        "independent runs need different seeds",
    )
    out: str | None = shared(
        "out", "write the result here (command line default: results/NETWORK/ssa)"
    )
    quiet: bool = shared("quiet")


class _Plan:
    """Everything a batch needs that does not change between batches."""

    def __init__(self, network: ReactionNetwork, times: np.ndarray, device: torch.device) -> None:
        self.network = network
        self.device = device
        self.net = network.compile(device, torch.float64)
        self.K, self.L = network.K, network.L
        self.times = times
        # breakpoints: window w is (bp[w], bp[w+1]]; every bp[w+1] is a record time
        self.offset = 0 if times[0] == 0.0 else 1
        bp = times if self.offset == 0 else np.concatenate([[0.0], times])
        self.bp = torch.as_tensor(bp, dtype=torch.float64, device=device)
        self.num_windows = bp.shape[0] - 1
        self.change = torch.as_tensor(network.change_matrix, device=device)
        # (K+1, L): the net changes and a row of zeros for "no event"
        self.change_or_stay = torch.cat([self.change, self.change.new_zeros(1, self.L)])
        self.initial = torch.as_tensor(network.initial_state, device=device)
        self.time_dependent = network.is_time_dependent
        if self.time_dependent:
            self._plan_thinning(bp)

    def _plan_thinning(self, bp: np.ndarray) -> None:
        net = self.network
        self.unit = dataclasses.replace(
            self.net, constant_rates=torch.ones(self.K, dtype=torch.float64, device=self.device)
        )
        self.custom_td = [
            k
            for k, r in enumerate(net.reactions)
            if r.propensity is not None and r.has_time_dependent_rate
        ]
        for k in self.custom_td:
            if net.reactions[k].propensity_max is None:
                raise NetworkError(
                    f"reaction {net.reactions[k].name!r}: a time-dependent custom propensity "
                    "needs propensity_max (an upper bound) for exact simulation by thinning"
                )
        # (W, K) bound of each reaction's rate factor per window (W >= 1 windows)
        windows = max(self.num_windows, 1)
        bounds = np.stack(
            [net.rate_bounds(bp[w], bp[min(w + 1, bp.shape[0] - 1)]) for w in range(windows)]
        )
        for k in self.custom_td:
            bounds[:, k] = float(net.reactions[k].propensity_max)
        self.bounds = torch.as_tensor(bounds, dtype=torch.float64, device=self.device)
        self.rate_kinds = [_rate_kind(r) for r in net.reactions]

    def unit_propensities(self, states: torch.Tensor) -> torch.Tensor:
        """(m, K) a_k(n; c = 1); for time-dependent custom propensities, 1 (bound below)."""
        unit = ops.propensities(states, self.unit, 0.0)
        for k in self.custom_td:
            unit[:, k] = 1.0
        return unit

    def bounds_at(self, w: torch.Tensor) -> torch.Tensor:
        """(m, K) rate bounds cbar_k of each row's window: B_k(n) = cbar_k * unit_k(n)."""
        return self.bounds[w.clamp(max=self.bounds.shape[0] - 1)]

    def true_propensities(
        self, states: torch.Tensor, s: torch.Tensor, unit: torch.Tensor, need: torch.Tensor
    ) -> torch.Tensor:
        """(m, K) a_k(n, s) at each row's own time s (custom ones only where `need`)."""
        a = unit * self.rates_at(s)
        if self.custom_td:  # the slow general path: the user's function once per row
            rows = torch.nonzero(need).squeeze(1).tolist()
            times = s[rows].tolist()
            x = states[rows].to(torch.float64)
            for k in self.custom_td:
                fn = self.network.reactions[k].propensity
                a[:, k] = 0.0
                if rows:
                    vals = [torch.as_tensor(fn(x[j : j + 1], tb)) for j, tb in enumerate(times)]
                    a[rows, k] = _checked(
                        torch.cat([v.reshape(-1) for v in vals]), len(rows), k, self.network
                    )
                # the operator's truncation rule (ops applies it to custom propensities too)
                a[:, k] *= ops._truncation_ok(states, self.change[k], self.net.limits)
        return a

    def rates_at(self, s: torch.Tensor) -> torch.Tensor:
        """(m, K) rate factors c_k(s) at per-row times s (1 for custom propensities)."""
        out = torch.empty(s.shape[0], self.K, dtype=torch.float64, device=s.device)
        for k, (kind, rate) in enumerate(self.rate_kinds):
            if kind == "constant":
                out[:, k] = rate
            elif kind == "form":
                out[:, k] = rate.at(s)
            else:
                out[:, k] = torch.as_tensor(_call_rate(rate, s.cpu().numpy()), device=s.device)
        return out


def _checked(values: torch.Tensor, n: int, k: int, network: ReactionNetwork) -> torch.Tensor:
    """Custom propensity values gathered row by row: one per row, finite and >= 0."""
    name = network.reactions[k].name
    if values.shape != (n,):
        raise ValueError(f"custom propensity of reaction {name!r} must return one value per state")
    values = values.to(torch.float64)
    if not torch.isfinite(values).all() or (values < 0).any():
        raise ValueError(
            f"custom propensity of reaction {name!r} returned negative or non-finite values"
        )
    return values


def _rate_kind(reaction: Any) -> tuple[str, Any]:
    if reaction.propensity is not None:
        return "constant", 1.0
    rate = reaction.rate
    if isinstance(rate, (int, float)):
        return "constant", float(rate)
    if isinstance(rate, RateForm):
        return "form", rate
    fn = rate.fn if isinstance(rate, RateFunction) else rate
    return "callable", fn


def _call_rate(fn: Any, s: np.ndarray) -> np.ndarray:
    """fn at many times: vectorised if fn accepts arrays, else one call per time."""
    try:
        out = np.asarray(fn(s), dtype=np.float64)
        if out.shape == s.shape:
            return out
    except Exception:  # a scalar-only function (math.sin, if-statements): loop instead
        pass
    return np.array([float(fn(float(x))) for x in s], dtype=np.float64)


def _simulate_batch(
    plan: _Plan,
    n: int,
    gen: torch.Generator,
    bar: Any,
    sync_every: int,
    max_steps: int | None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """(n, T, L) int64 states at the record times, and counters (steps, events, rejections)."""
    dev, L, T = plan.device, plan.L, plan.times.shape[0]
    rec = torch.zeros(n * T + 1, L, dtype=torch.int64, device=dev)  # last row: scratch
    scratch = n * T
    state = plan.initial.expand(n, L).clone()
    if plan.offset == 0:
        rec[torch.arange(n, device=dev) * T] = state
    rows = torch.arange(n, device=dev)
    t = torch.zeros(n, dtype=torch.float64, device=dev)
    w = torch.zeros(n, dtype=torch.int64, device=dev)
    counters = torch.zeros(3, dtype=torch.int64, device=dev)  # events, rejections, records
    reported = 0
    violated = torch.zeros((), dtype=torch.bool, device=dev)
    steps = 0
    W = plan.num_windows
    host = dev.type == "cpu"  # where reading a flag costs nothing (no device sync)
    while rows.numel():
        for _ in range(sync_every):
            alive = w < W
            if plan.time_dependent:  # candidate events at the bound B_0(n) of the window
                unit = plan.unit_propensities(state)
                a = plan.bounds_at(w) * unit
            else:
                a = ops.propensities(state, plan.net, 0.0)
            cum = torch.cumsum(a, dim=1)
            a0 = cum[:, -1]
            u = torch.rand(state.shape[0], 2, dtype=torch.float64, device=dev, generator=gen)
            tau = torch.where(a0 > 0, -torch.log1p(-u[:, 0]) / a0, math.inf)
            s = t + tau
            end = plan.bp[(w + 1).clamp(max=W)]
            cross = alive & (s > end)
            fire = alive & ~cross
            target = u[:, 1] * a0
            if plan.time_dependent:  # thinning: accept with probability a_0(n, s) / B_0(n)
                a_true = plan.true_propensities(state, s, unit, fire)
                # (rows that cross their window end may sit beyond the window's bound)
                violated |= ((a_true > a * (1 + 1e-9)) & fire.unsqueeze(1)).any()
                cum = torch.cumsum(a_true, dim=1)
            # one uniform picks reaction k with probability a_k / B_0, or rejects
            accept = fire & (target < cum[:, -1])
            k = torch.searchsorted(cum, target.unsqueeze(1), right=True).squeeze(1)
            k = torch.where(accept, k.clamp(max=plan.K - 1), plan.K)  # row K: no change
            state += plan.change_or_stay[k]
            t = torch.where(cross, end, torch.where(fire, s, t))
            w = w + cross.to(torch.int64)
            if host:  # few rows cross a record time in one step: write only those
                idx = torch.nonzero(cross).squeeze(1)
                if idx.numel():
                    rec[rows[idx] * T + (w[idx] - plan.offset)] = state[idx]
            else:  # no host sync: every row writes, the others into a scratch row
                slot = torch.where(cross, rows * T + (w - plan.offset), scratch)
                rec.index_copy_(0, slot, state)
            counters += torch.stack([accept.sum(), (fire & ~accept).sum(), cross.sum()])
            steps += 1
        keep = w < W  # drop finished trajectories (one host sync per sync_every steps)
        rows, state, t, w = rows[keep], state[keep], t[keep], w[keep]
        done = int(counters[2])
        bar.update(done - reported)
        reported = done
        if max_steps is not None and steps >= max_steps and rows.numel():
            raise RuntimeError(
                f"SSA: {rows.numel()} trajectories still running after {steps} steps "
                "(max_steps); the network may be very fast, raise max_steps"
            )
    if bool(violated):
        raise NetworkError(
            "SSA: a time-dependent propensity exceeded its declared upper bound "
            "(RateFunction max_rate or propensity_max); thinning needs a true bound"
        )
    events, rejected, _ = (int(v) for v in counters)
    stats = {"steps": steps, "events": events, "rejected": rejected}
    return rec[:scratch].view(n, T, L), stats


def _batch_size(settings: SSASettings, device: torch.device) -> int:
    if settings.batch_size is not None:
        return int(settings.batch_size)
    return min(int(settings.trajectories), 1 << 17 if device.type == "cuda" else 1 << 15)


def _generator(settings: SSASettings, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(settings.seed))
    return gen


def _run(network: ReactionNetwork, times: np.ndarray, settings: SSASettings, sink: Any) -> dict:
    """Simulate all trajectories batch by batch, handing each batch's records to `sink`."""
    device = torch.device(settings.validate().device)  # validate: a GPU that is not there
    plan = _Plan(network, times, device)
    gen = _generator(settings, device)
    total = int(settings.trajectories)
    batch = _batch_size(settings, device)
    sync = settings.sync_every or (32 if device.type == "cuda" else 4)
    totals = {"steps": 0, "events": 0, "rejected": 0}
    bar = tqdm(
        total=total * times.shape[0],
        desc=f"SSA {network.name}",
        unit="rec",
        disable=settings.quiet,
    )
    t0 = time.perf_counter()
    with torch_threads(settings.threads):
        threads = torch.get_num_threads()
        try:
            for start in range(0, total, batch):
                n = min(batch, total - start)
                rec, stats = _simulate_batch(plan, n, gen, bar, sync, settings.max_steps)
                for key in totals:
                    totals[key] += stats[key]
                sink(start, rec)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        finally:
            bar.close()
    elapsed = time.perf_counter() - t0
    return {
        "seed": settings.seed,
        "batch_size": batch,
        "sync_every": sync,
        "device": str(device),
        "device_name": _device_name(device),
        "threads": threads,
        "simulate_s": elapsed,
        "events_per_s": totals["events"] / elapsed if elapsed > 0 else math.nan,
        **totals,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()


def simulate(
    network: ReactionNetwork,
    times: Sequence[float],
    settings: SSASettings | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Simulate trajectories and return their states at the record times.

    Args:
        network: the network.
        times: (T,) increasing record times >= 0 (the state at time t includes every event at
            times <= t).
        settings: `SSASettings` (trajectories, device, seed, batch size, ...).

    Returns:
        states: (N, T, L) int64 on the settings' device.
        info: seed, device, counts of steps, events and thinning rejections, timing.
    """
    settings = settings or SSASettings()
    times = check_times(times)
    out = torch.empty(
        int(settings.trajectories),
        times.shape[0],
        network.L,
        dtype=torch.int64,
        device=settings.device,
    )

    def sink(start: int, rec: torch.Tensor) -> None:
        out[start : start + rec.shape[0]] = rec

    info = _run(network, times, settings, sink)
    return out, info


def solve_ssa(
    network: ReactionNetwork,
    times: Sequence[float] | None = None,
    settings: SSASettings | None = None,
    *,
    pair: tuple[int, int] | None = None,
) -> Result:
    """Estimate marginals, moments (and the joint where small) from SSA trajectories.

    Args:
        network: the network.
        times: (T,) increasing times >= 0 (default: the settings' `record_times`, 11 points
            on [0, network.t_end] unless the settings say otherwise).
        settings: `SSASettings`; with `out`, the result is also written there.
        pair: species indices of the stored 2D joint (default: the two largest limits).

    Returns:
        A `Result` with method "ssa"; `summary["samples"]` is the number of trajectories and
        `summary["ssa"]` holds the seed, device, event counts and timings.

    Raises:
        ConfigError: `out` cannot be written or another run holds it (before any simulation).
    """
    settings = (settings or SSASettings()).validate()
    times = check_times(settings.record_times(network.t_end) if times is None else times)
    return solve_into(
        settings.out, settings.plots, lambda: _solve_ssa(network, times, settings, pair)
    )


def _solve_ssa(
    network: ReactionNetwork,
    times: np.ndarray,
    settings: SSASettings,
    pair: tuple[int, int] | None,
) -> Result:
    builder = ResultBuilder(
        "ssa",
        network.species_names,
        network.limits,
        times,
        pair=pair,
        keep_joint=settings.keep_joint,
        reactants=network.reactant_matrix,
        change=network.box_limited_change(),
    )

    def sink(start: int, rec: torch.Tensor) -> None:
        rec = rec.cpu().numpy()
        for j in range(times.shape[0]):
            builder.add(j, rec[:, j])

    t0 = time.perf_counter()
    info = _run(network, times, settings, sink)
    summary = {
        "network": network.to_dict(),
        "settings": settings.to_dict(),
        "samples": int(settings.trajectories),
        "ssa": info,
        "timings": {"simulate_s": info["simulate_s"], "total_s": time.perf_counter() - t0},
        "versions": versions(),
    }
    result = builder.build(normalize=True, summary=summary)
    check_boundary(result, settings.boundary_warn, stacklevel=6)  # the caller of solve_ssa
    return result
