"""Finite state projection (FSP): the exact CME on the box, for networks small enough.

The state space is the box 0 <= n_i < M_i or, where the network has conservation laws, only the
states of the box that keep them (enumerated species by species with the exact reachability
tables of `network.feasibility`, never materialising the full box). The generator W is a sparse
matrix built from the propensity operator (`nncme.ops.propensities`, evaluated on all states in
batches), so FSP, SSA and the VAN share one definition of a_k(n, t), including the truncation
rule of DESIGN section 1: a reaction whose product leaves the box does not fire, so W conserves
probability exactly.

Constant rates: P(t) = exp(W t) P(0) by uniformization (a Poisson-weighted sum of powers of
the stochastic matrix I + W / max exit rate: non-negative terms, exact to round-off), with
`scipy.sparse.linalg.expm_multiply` as an option and BDF for very stiff spans. Time-dependent
rates: W(t) = W_0 + sum_k c_k(t) W_k (one constant part and one unit-rate matrix per
time-dependent reaction), integrated with tight tolerances by DOP853 or, for stiff spans, BDF
with the sparse Jacobian W(t), piece by piece between the times where a rate jumps or kinks
(piecewise-constant and tabulated rates), so that no step straddles a discontinuity.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from scipy.integrate import solve_ivp
from scipy.sparse.linalg import expm_multiply
from scipy.stats import binom, poisson
from tqdm.auto import tqdm

from . import ops
from .config import Settings, _opt, shared, torch_threads
from .network import NetworkError, ReactionNetwork, check_times
from .results import Result, ResultBuilder, check_boundary, solve_into, versions

__all__ = [
    "DEFAULT_MAX_STATES",
    "FSP",
    "FSPSettings",
    "LinearMoments",
    "closed_linear_species",
    "count_states",
    "enumerate_states",
    "linear_moments",
    "monomolecular_marginals",
    "solve_fsp",
]

DEFAULT_MAX_STATES = 2_000_000
# "auto" uses uniformization (constant rates) or DOP853 (time-dependent) while the number of
# sparse products, about max exit rate * time span, stays below this; BDF beyond.
MAX_EXPLICIT_WORK = 2e6
# Uniformization: Poisson tail mass left out of each step.
UNIFORMIZATION_TAIL = 1e-16
METHODS = ("auto", "uniformization", "expm", "DOP853", "BDF", "Radau")


@dataclass
class FSPSettings(Settings):
    """Options of the exact solver, shared by the Python API, `nncme fsp` and its TOML files.

    The time options, device, threads, seed, out and quiet mean what they mean for every
    command (see `nncme.config.SHARED`). The solve itself runs in scipy; `device` and
    `threads` apply to the propensities, and `seed` is only recorded (FSP draws nothing).
    """

    TABLE: ClassVar[str] = "fsp"

    max_states: int = _opt(
        DEFAULT_MAX_STATES, "refuse larger state spaces (memory grows with them)", minimum=1
    )
    method: str = _opt(
        "auto",
        "integrator: auto (uniformization for constant rates, DOP853 for time-dependent ones, "
        "BDF where either would need millions of sparse products), expm (expm_multiply), or a "
        "scipy solve_ivp method (DOP853 explicit; BDF, Radau implicit with the sparse Jacobian)",
        METHODS,
    )
    rtol: float = _opt(1e-10, "relative tolerance of the ODE integrators", positive=True)
    atol: float = _opt(1e-14, "absolute tolerance of the ODE integrators", positive=True)
    batch_size: int = _opt(1 << 16, "states per call of the propensity operator", minimum=1)
    boundary_warn: float = _opt(
        1e-3, "warn when the probability on the box boundary exceeds this", maximum=1.0
    )
    keep_joint: bool = _opt(True, "store the joint distribution when it is small enough")
    plots: bool = _opt(True, "write PNG figures beside the results")
    t_end: float | None = shared("t_end")
    save_every: float | None = shared("save_every")
    times: list[float] | None = shared("times")
    device: str = shared("device", "torch device of the propensities (the solve runs in scipy)")
    threads: int = shared("threads")
    seed: int = shared("seed", "random seed: recorded only, FSP is deterministic")
    out: str | None = shared(
        "out", "write the result here (command line default: results/NETWORK/fsp)"
    )
    quiet: bool = shared("quiet")


# ------------------------------------------------------------------------------ state space
def _law_groups(weights: np.ndarray) -> list[list[int]]:
    """Laws that share species, as connected components (independent for counting)."""
    C = weights.shape[0]
    groups: list[set[int]] = []
    for law in range(C):
        touching = [g for g in groups if any(np.any(weights[law] * weights[o]) for o in g)]
        merged = {law}.union(*touching) if touching else {law}
        groups = [g for g in groups if g not in touching] + [merged]
    return [sorted(g) for g in groups]


def count_states(network: ReactionNetwork) -> tuple[int, bool]:
    """How many states FSP would enumerate, without enumerating them.

    Returns:
        (count, exact): exact is False when a group of overlapping laws was too large to count
        jointly and `count` is an upper bound (the product of per-law counts).
    """
    limits = network.limits
    laws = network.conservation_laws
    if not laws:
        return math.prod(int(m) for m in limits), True
    weights = np.stack([law.weights for law in laws])
    totals = np.array([law.total for law in laws])
    used = np.any(weights != 0, axis=0)
    count = float(math.prod(int(m) for m, u in zip(limits, used) if not u))
    exact = True
    for group in _law_groups(weights):
        n, ok = _count_group(weights[group], totals[group], limits)
        if not ok:  # too large jointly: per-law counts multiply to an upper bound
            n = 1.0
            for law in group:
                n *= _count_group(weights[[law]], totals[[law]], limits)[0]
            exact = False
        count *= n
    return int(count), exact


def _count_group(
    w: np.ndarray, totals: np.ndarray, limits: np.ndarray, max_cells: int = 1 << 24
) -> tuple[float, bool]:
    """Number of count vectors of the group's species with w @ n == totals (float64 DP)."""
    species = np.nonzero(np.any(w != 0, axis=0))[0]
    lo = (np.minimum(w, 0) @ (limits - 1)).astype(np.int64)
    hi = (np.maximum(w, 0) @ (limits - 1)).astype(np.int64)
    extents = tuple(int(e) for e in hi - lo + 1)
    if math.prod(extents) > max_cells:
        return math.inf, False
    table = np.zeros(extents)
    table[tuple(-lo)] = 1.0  # the empty prefix sums to 0
    for i in species:
        acc = np.zeros_like(table)
        for m in range(int(limits[i])):
            acc += _shift(table, w[:, i] * m)
        table = acc
    r = totals - lo
    if np.any(r < 0) or np.any(r >= np.array(extents)):
        return 0.0, True
    return float(table[tuple(r)]), True


def _shift(a: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """out[r] = a[r - offset], zero where r - offset falls outside."""
    out = np.zeros_like(a)
    src, dst = [], []
    for d, o in enumerate(np.asarray(offset).tolist()):
        n = a.shape[d]
        if abs(o) >= n:
            return out
        src.append(slice(0, n - o) if o >= 0 else slice(-o, n))
        dst.append(slice(o, n) if o >= 0 else slice(0, n + o))
    out[tuple(dst)] = a[tuple(src)]
    return out


def _too_large(network: ReactionNetwork, count: int, exact: bool, max_states: int) -> str:
    need = _memory_estimate(count, network.L, network.K)
    return (
        f"FSP of {network.name!r} needs {'up to ' if not exact else ''}{count:,} states "
        f"(roughly {need / 2**30:,.1f} GiB for the states, the sparse generator and the solver), "
        f"more than max_states = {max_states:,}. Lower the count limits (now "
        f"{', '.join(f'{s}<{m}' for s, m in zip(network.species_names, network.limits))}), "
        "raise --max-states if the memory is there, or use the SSA or the VAN"
    )


def _memory_estimate(states: int, L: int, K: int) -> float:
    """Rough bytes: states, generator (+ LU fill), and the integrator's ~20 vectors."""
    return float(states) * (8 * L + 12 * 2 * (K + 1) * 3 + 8 * 20)


def enumerate_states(network: ReactionNetwork, max_states: int = DEFAULT_MAX_STATES) -> np.ndarray:
    """All states of the box that keep the network's conservation laws, in lexicographic order.

    Args:
        network: the network.
        max_states: raise NetworkError (quoting the count and memory) above this.

    Returns:
        (S, L) int64 states.
    """
    count, exact = count_states(network)
    if count > max_states:
        raise NetworkError(_too_large(network, count, exact, max_states))
    limits = network.limits
    if not network.conservation_laws:
        flat = np.arange(count, dtype=np.int64)
        return np.stack(np.unravel_index(flat, tuple(int(m) for m in limits)), axis=1)
    feas = network.feasibility
    prefixes = np.zeros((1, 0), dtype=np.int64)
    remainders = feas.totals[None, :].astype(np.int64)  # (P, C)
    for i in range(network.L):
        m = np.arange(int(limits[i]), dtype=np.int64)
        step = max(1, (1 << 22) // m.shape[0])  # bound the (P, M_i, C) temporaries
        new_prefixes, new_remainders, total = [], [], 0
        for s in range(0, prefixes.shape[0], step):
            rem = remainders[s : s + step]
            after = rem[:, None, :] - feas.weights[:, i][None, None, :] * m[None, :, None]
            rows, cols = np.nonzero(_feasible(feas, i + 1, after))  # extensions that can finish
            total += rows.size
            if total > 4 * max_states:  # split tables are necessary conditions only
                raise NetworkError(_too_large(network, total, False, max_states))
            new_prefixes.append(np.concatenate([prefixes[s + rows], m[cols, None]], axis=1))
            new_remainders.append(after[rows, cols])
        prefixes = np.concatenate(new_prefixes)
        remainders = np.concatenate(new_remainders)
    if not feas.exact:  # drop the states that passed only the per-law necessary conditions
        keep = np.ones(prefixes.shape[0], dtype=bool)
        for law in network.conservation_laws:
            keep &= law.holds(prefixes)
        prefixes = prefixes[keep]
    return prefixes


def _feasible(feas: Any, position: int, remainders: np.ndarray) -> np.ndarray:
    """(..., C) remainders before `position` -> (...) bool, all groups reachable (numpy)."""
    ok = np.ones(remainders.shape[:-1], dtype=bool)
    for g, (base, size) in enumerate(feas.group_meta):
        offset = np.full(remainders.shape[:-1], base + position * size, dtype=np.int64)
        for law in np.nonzero(feas.law_meta[:, 0] == g)[0]:
            _, stride, lo, ext = (int(v) for v in feas.law_meta[law])
            r = remainders[..., law] - lo
            inside = (r >= 0) & (r < ext)
            ok &= inside
            offset += stride * np.where(inside, r, 0)
        ok &= feas.table[offset]
    return ok


def _lookup(states: np.ndarray, queries: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Row index of each query in `states` (sorted lexicographically), -1 where absent."""
    shape = tuple(int(m) for m in limits)
    if math.prod(shape) < 2**62:
        keys = np.ravel_multi_index(states.T, shape)
        inside = np.all((queries >= 0) & (queries < limits), axis=1)
        q = np.ravel_multi_index(np.where(inside[:, None], queries, 0).T, shape)
        pos = np.searchsorted(keys, q).clip(max=keys.shape[0] - 1)
        return np.where(inside & (keys[pos] == q), pos, -1)
    S = states.shape[0]  # boxes beyond int64 keys: rank all rows together
    _, inverse = np.unique(np.concatenate([states, queries]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    where = np.full(int(inverse.max()) + 1, -1, dtype=np.int64)
    where[inverse[:S]] = np.arange(S)
    return where[inverse[S:]]


# --------------------------------------------------------------------------------- solver
class FSP:
    """The CME of one network on its (conservation-reduced) box.

    Args:
        network: the network.
        settings: `FSPSettings` (max_states, device, threads, batch_size, quiet are used here).

    Attributes:
        states: (S, L) int64 enumerated states, lexicographic.
        num_states: S.
    """

    def __init__(self, network: ReactionNetwork, settings: FSPSettings | None = None) -> None:
        self.network = network
        self.settings = settings or FSPSettings()
        t0 = time.perf_counter()
        self.states = enumerate_states(network, int(self.settings.max_states))
        self.num_states = self.states.shape[0]
        self._build_parts()
        self.build_seconds = time.perf_counter() - t0

    # -------------------------------------------------------------------------- generator
    def _propensities(self, states: np.ndarray, t: float, unit: bool) -> np.ndarray:
        """(B, K) a_k(n, t) from the operator; with `unit`, every rate constant set to 1."""
        dev = torch.device(self.settings.device)
        net = self.network.compile(dev, torch.float64)
        if unit:  # c_k(t) factors out: a_k(n, t) = c_k(t) * a_k(n; c = 1)
            net = dataclasses.replace(net, constant_rates=torch.ones_like(net.rates(0.0)))
        out = np.empty((states.shape[0], self.network.K))
        bs = int(self.settings.batch_size)
        chunks = range(0, states.shape[0], bs)
        show = not self.settings.quiet and len(chunks) > 4
        with torch_threads(self.settings.threads):
            for s in tqdm(chunks, desc="FSP propensities", unit="batch", disable=not show):
                batch = torch.as_tensor(states[s : s + bs], device=dev)
                out[s : s + bs] = ops.propensities(batch, net, t).cpu().numpy()
        return out

    def _build_parts(self) -> None:
        """W = W_const + sum_k c_k(t) W_k (+ custom time-dependent reactions, rebuilt per t)."""
        net = self.network
        S = self.num_states
        td_rate = [
            k
            for k, r in enumerate(net.reactions)
            if r.propensity is None and r.has_time_dependent_rate
        ]
        self._td_custom = [
            k
            for k, r in enumerate(net.reactions)
            if r.propensity is not None and r.has_time_dependent_rate
        ]
        a = self._propensities(self.states, 0.0, unit=bool(td_rate))
        rates = net.rates(0.0)
        const_rows, const_cols, const_vals = [], [], []
        self._td_parts: list[tuple[int, sp.csr_matrix]] = []
        self._custom_parts: list[tuple[int, np.ndarray, np.ndarray]] = []
        for k in range(net.K):
            if k in self._td_custom:  # values change with t: keep the structure only
                src, tgt = self._moves(k, np.ones(S, dtype=bool))
                self._custom_parts.append((k, src, tgt))
                continue
            src, tgt = self._moves(k, a[:, k] > 0)
            vals = a[src, k]
            rows, cols = np.concatenate([tgt, src]), np.concatenate([src, src])
            vals = np.concatenate([vals, -vals])
            if k in td_rate:
                self._td_parts.append((k, _csr(rows, cols, vals, S)))
            else:
                scale = rates[k] if td_rate else 1.0  # unit propensities carry no rate
                const_rows.append(rows)
                const_cols.append(cols)
                const_vals.append(vals * scale)
        if const_rows:
            self._w_const = _csr(
                np.concatenate(const_rows),
                np.concatenate(const_cols),
                np.concatenate(const_vals),
                S,
            )
        else:
            self._w_const = sp.csr_matrix((S, S))

    def _moves(self, k: int, fires: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sources and targets (state indices) of reaction k where it may fire."""
        change = self.network.change_matrix[k]
        target = self.states + change
        inside = np.all((target >= 0) & (target < self.network.limits), axis=1)
        src = np.nonzero(fires & inside)[0]
        tgt = _lookup(self.states, target[src], self.network.limits)
        if np.any(tgt < 0):  # cannot happen: reactions keep every conservation law
            raise RuntimeError(f"FSP: reaction {k} leads outside the enumerated state space")
        return src, tgt

    @property
    def time_dependent(self) -> bool:
        return bool(self._td_parts or self._custom_parts)

    def generator(self, t: float = 0.0) -> sp.csr_matrix:
        """(S, S) sparse generator W(t): dP/dt = W(t) P; columns sum to 0."""
        w = self._w_const
        if not self.time_dependent:
            return w
        rates = self.network.rates(t)
        for k, wk in self._td_parts:
            w = w + rates[k] * wk
        for k, src, tgt in self._custom_parts:
            vals = self._propensities(self.states[src], t, unit=False)[:, k]
            rows, cols = np.concatenate([tgt, src]), np.concatenate([src, src])
            w = w + _csr(rows, cols, np.concatenate([vals, -vals]), self.num_states)
        return w.tocsr()

    def _rhs(self, t: float, p: np.ndarray) -> np.ndarray:
        out = self._w_const @ p
        if self._td_parts:
            rates = self.network.rates(t)
            for k, wk in self._td_parts:
                out += rates[k] * (wk @ p)
        for k, src, tgt in self._custom_parts:
            flow = self._propensities(self.states[src], t, unit=False)[:, k] * p[src]
            out += np.bincount(tgt, flow, minlength=self.num_states)
            out -= np.bincount(src, flow, minlength=self.num_states)
        return out

    # ------------------------------------------------------------------------------ solve
    def index(self, states: np.ndarray) -> np.ndarray:
        """(B, L) states -> (B,) row indices into `states` (-1 where not in the space)."""
        queries = np.atleast_2d(np.asarray(states, dtype=np.int64))
        return _lookup(self.states, queries, self.network.limits)

    def initial_distribution(self) -> np.ndarray:
        """(S,) the delta at the network's initial state."""
        p0 = np.zeros(self.num_states)
        j = self.index(self.network.initial_state[None, :])[0]
        p0[j] = 1.0
        return p0

    def exit_rate_bound(self, t0: float = 0.0, t1: float | None = None) -> float:
        """max_n sum_k a_k(n, t) over the states and t in [t0, t1] (inf if unknown)."""
        exit_rate = -self._w_const.diagonal()
        if self._custom_parts:
            return math.inf  # a custom time-dependent propensity has no state-wise bound here
        if self._td_parts:
            bounds = self.network.rate_bounds(t0, t0 if t1 is None else t1)
            for k, wk in self._td_parts:
                exit_rate = exit_rate - bounds[k] * wk.diagonal()
        return float(exit_rate.max(initial=0.0))

    def choose_method(self, t_span: float) -> str:
        """The integrator "auto" picks for a span of time [0, t_span].

        Constant rates: uniformization, about max exit rate * t_span sparse products of
        non-negative terms (exact to round-off), unless that count is huge; then BDF.
        Time-dependent rates: the explicit DOP853 (its step is bounded by stability, h ~ 3 /
        max exit rate, so it costs ~4x uniformization but needs no LU factorisation) while
        the same count is moderate, else BDF with the sparse Jacobian.
        """
        if self.settings.method != "auto":
            return self.settings.method
        work = self.exit_rate_bound(0.0, t_span) * t_span
        if not self.time_dependent:
            return "uniformization" if work <= MAX_EXPLICIT_WORK else "BDF"
        return "DOP853" if work <= MAX_EXPLICIT_WORK / 4 else "BDF"

    def iter_solve(
        self, times: Sequence[float], p0: np.ndarray | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (j, P(times[j])) for increasing times >= 0, starting from P(0) = p0.

        Args:
            times: (T,) increasing times.
            p0: (S,) initial distribution over `states` (default: the delta at the network's
                initial state).
        """
        times = check_times(times)
        p = self.initial_distribution() if p0 is None else np.asarray(p0, dtype=np.float64)
        if p.shape != (self.num_states,):
            raise ValueError(f"p0: shape {p.shape}, expected ({self.num_states},)")
        method = self.choose_method(float(times[-1]))
        self.method_used = method
        if method in ("uniformization", "expm"):
            if self.time_dependent:
                raise NetworkError(f"method {method!r} needs constant rates; use BDF or DOP853")
            yield from self._constant(times, p, method)
        else:
            yield from self._ode(times, p, method)

    def _constant(self, times: np.ndarray, p: np.ndarray, method: str):
        """P(t_j) = exp(W (t_j - t_{j-1})) P(t_{j-1}) step by step."""
        lam = self.exit_rate_bound()
        bar = tqdm(
            total=float(times[-1]),
            desc=f"FSP {method}",
            unit="t",
            disable=self.settings.quiet,
            bar_format="{l_bar}{bar}| {n:.3g}/{total:.3g} [{elapsed}<{remaining}]",
        )
        stochastic = None
        products = 0
        t_prev = 0.0
        for j, t in enumerate(times):
            if t > t_prev:
                if method == "expm":
                    p = expm_multiply(self._w_const * (t - t_prev), p)
                elif lam > 0:
                    if stochastic is None:  # I + W / lam: non-negative, columns sum to 1
                        eye = sp.identity(self.num_states, format="csr")
                        stochastic = (eye + self._w_const / lam).tocsr()
                    p, n = _uniformization(stochastic, p, lam * (t - t_prev))
                    products += n
                bar.update(t - t_prev)
                t_prev = t
            yield j, p
        bar.close()
        self.ode_stats = {"exit_rate_bound": lam, "products": products}

    def _ode(self, times: np.ndarray, p: np.ndarray, method: str):
        settings = self.settings
        start = 0
        while start < times.shape[0] and times[start] == 0.0:
            yield start, p
            start += 1
        if start == times.shape[0]:
            return
        if method not in ("BDF", "Radau"):  # explicit: no Jacobian
            jac = None
        elif self.time_dependent:

            def jac(t: float, y: np.ndarray) -> sp.csc_matrix:
                return self.generator(t).tocsc()

        else:
            jac = self._w_const.tocsc()
        bar = tqdm(
            total=float(times[-1]),
            desc=f"FSP {method}",
            unit="t",
            disable=settings.quiet,
            bar_format="{l_bar}{bar}| {n:.3g}/{total:.3g} [{elapsed}<{remaining}]",
        )
        rhs = _with_progress(self._rhs, bar)
        t_end = float(times[-1])
        edges = [0.0, *self.network.rate_discontinuities(0.0, t_end), t_end]
        self.ode_stats = {"nfev": 0, "njev": 0, "nlu": 0, "pieces": len(edges) - 1}
        j = start
        for t0, t1 in itertools.pairwise(edges):  # rates are smooth inside each piece
            record = times[j:][times[j:] <= t1]
            t_eval = record if record.size and record[-1] == t1 else np.append(record, t1)
            sol = solve_ivp(
                rhs,
                (t0, t1),
                p,
                method=method,
                t_eval=t_eval,
                rtol=settings.rtol,
                atol=settings.atol,
                **({} if jac is None else {"jac": jac}),
            )
            if sol.status != 0:
                bar.close()
                raise RuntimeError(f"FSP: the ODE integrator failed: {sol.message}")
            for key in ("nfev", "njev", "nlu"):
                self.ode_stats[key] += int(getattr(sol, key))
            for i in range(record.size):
                yield j + i, sol.y[:, i]
            j += record.size
            p = sol.y[:, -1]
        bar.close()

    def solve(self, times: Sequence[float], p0: np.ndarray | None = None) -> np.ndarray:
        """(T, S) P(times[j]) over `states`; see `iter_solve`."""
        return np.stack([p for _, p in self.iter_solve(times, p0)])


def _uniformization(
    stochastic: sp.csr_matrix, p: np.ndarray, lam_t: float
) -> tuple[np.ndarray, int]:
    """exp(lam_t (P - I)) p = sum_k Poisson(k; lam_t) P^k p, P = I + W / lam (stochastic).

    Every term is non-negative, so there is no cancellation; the Poisson tail beyond the last
    term is below UNIFORMIZATION_TAIL and the kept weights are renormalised, so the mass of p
    is kept to round-off. Returns the result and the number of sparse products.
    """
    last = int(poisson.isf(UNIFORMIZATION_TAIL, lam_t)) + 2
    first = max(0, int(poisson.ppf(UNIFORMIZATION_TAIL, lam_t)) - 1)
    weights = poisson.pmf(np.arange(first, last + 1), lam_t)
    weights /= weights.sum()
    v = p
    out = np.zeros_like(p)
    for k in range(last + 1):
        if k >= first:
            out += weights[k - first] * v
        if k < last:
            v = stochastic @ v
    return out, last


def _with_progress(fn: Callable, bar: Any) -> Callable:
    def wrapped(t: float, y: np.ndarray) -> np.ndarray:
        if t > bar.n:
            bar.update(t - bar.n)
        return fn(t, y)

    return wrapped


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int) -> sp.csr_matrix:
    """Sparse (n, n) from triplets, duplicates summed."""
    return sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()


def solve_fsp(
    network: ReactionNetwork,
    times: Sequence[float] | None = None,
    settings: FSPSettings | None = None,
    *,
    p0: np.ndarray | None = None,
    pair: tuple[int, int] | None = None,
) -> Result:
    """Solve the CME exactly on the box and return marginals, moments and the joint.

    Args:
        network: the network.
        times: (T,) increasing times >= 0 (default: the settings' `record_times`, 11 points
            on [0, network.t_end] unless the settings say otherwise).
        settings: `FSPSettings`; with `out`, the result is also written there.
        p0: (S,) initial distribution over `FSP(network).states` (default: the delta at
            network.initial_state).
        pair: species indices of the stored 2D joint (default: the two largest limits).

    Returns:
        A `Result` with method "fsp": marginals, means, stds, covariances, boundary
        probability, the joint (if T * S <= results.JOINT_MAX_ENTRIES and keep_joint), and in
        `summary` the network, settings, state count, integrator, timings and versions.

    Raises:
        NetworkError: too many states (the message quotes the count and memory) or bad times.
        ConfigError: `out` cannot be written or another run holds it (before any solve).
    """
    settings = (settings or FSPSettings()).validate()
    times = check_times(settings.record_times(network.t_end) if times is None else times)
    return solve_into(
        settings.out, settings.plots, lambda: _solve_fsp(network, times, settings, p0, pair)
    )


def _solve_fsp(
    network: ReactionNetwork,
    times: np.ndarray,
    settings: FSPSettings,
    p0: np.ndarray | None,
    pair: tuple[int, int] | None,
) -> Result:
    t0 = time.perf_counter()
    fsp = FSP(network, settings)
    builder = ResultBuilder(
        "fsp",
        network.species_names,
        network.limits,
        times,
        pair=pair,
        keep_joint=settings.keep_joint,
        reactants=network.reactant_matrix,
        change=network.box_limited_change(),
    )
    t_solve = time.perf_counter()
    totals, minimum = [], 0.0
    for j, p in fsp.iter_solve(times, p0):
        totals.append(float(p.sum()))
        minimum = min(minimum, float(p.min()))
        builder.add(j, fsp.states, np.clip(p, 0.0, None))  # round-off negatives (~atol) to 0
    solve_seconds = time.perf_counter() - t_solve
    if minimum < -1e3 * settings.atol - 1e-12:
        warnings.warn(
            f"FSP: probabilities as low as {minimum:.2e} appeared; tighten rtol/atol",
            RuntimeWarning,
            stacklevel=5,  # the caller of solve_fsp
        )
    summary = {
        "network": network.to_dict(),
        "settings": settings.to_dict(),
        "states": fsp.num_states,
        "generator_nnz": int(fsp._w_const.nnz + sum(w.nnz for _, w in fsp._td_parts)),
        "integrator": fsp.method_used,
        "ode_stats": getattr(fsp, "ode_stats", None),
        "total_probability": totals,
        "min_probability": minimum,
        "timings": {
            "build_s": fsp.build_seconds,
            "solve_s": solve_seconds,
            "total_s": time.perf_counter() - t0,
        },
        "versions": versions(),
    }
    result = builder.build(normalize=False, summary=summary)
    check_boundary(result, settings.boundary_warn, stacklevel=6)  # the caller of solve_fsp
    return result


# ------------------------------------------------------------- moments of linear networks
@dataclass
class LinearMoments:
    """Exact means and covariances of the species of a network's linear part.

    Attributes:
        species: the names of the closed species U (see `linear_moments`).
        index: (U,) their indices in the network.
        times: (T,) the times.
        mean: (T, U) means.  cov: (T, U, U) covariances.
    """

    species: list[str]
    index: np.ndarray
    times: np.ndarray
    mean: np.ndarray
    cov: np.ndarray

    @property
    def var(self) -> np.ndarray:
        """(T, U) variances."""
        return np.diagonal(self.cov, axis1=1, axis2=2).copy()


def _affine(reaction: Any) -> bool:
    """Whether a reaction's propensity is c(t) or c(t) x_i (mass action of order <= 1)."""
    if reaction.propensity is not None or reaction.hills or reaction.complements:
        return False
    return sum(int(v) for v in reaction.reactants.values()) <= 1


def closed_linear_species(network: ReactionNetwork) -> list[int]:
    """The largest set U of species whose every changing reaction has a propensity affine in
    the counts of U: their first two moments obey closed ODEs (the rest of the network may be
    anything, as long as it does not change U)."""
    change = network.product_matrix - network.reactant_matrix  # (K, L)
    reactant = network.reactant_matrix
    inside = np.ones(network.L, dtype=bool)
    while True:
        bad = np.zeros(network.L, dtype=bool)
        for k, r in enumerate(network.reactions):
            touches = (change[k] != 0) & inside
            if not touches.any():
                continue
            if not _affine(r) or (reactant[k] > 0).astype(bool)[~inside].any():
                bad |= touches
        if not bad.any():
            return [int(i) for i in np.nonzero(inside)[0]]
        inside &= ~bad


def linear_moments(
    network: ReactionNetwork,
    times: Sequence[float],
    *,
    initial_mean: np.ndarray | None = None,
    initial_cov: np.ndarray | None = None,
) -> LinearMoments:
    """Means and covariances of the closed linear species (`closed_linear_species`) by their
    exact moment equations: with propensities a_k = c_k(t) (w_k . n + w0_k) and net changes
    s_k, m' = sum_k s_k a_k(m) and C' = A C + C A^T + sum_k s_k s_k^T a_k(m), A = sum_k c_k
    s_k w_k^T (no closure: exact for the untruncated network; the box's truncation rule is
    ignored, so the limits must hold the mass). Solved by scipy's LSODA at tight tolerances.

    Args:
        times: (T,) increasing times from 0.
        initial_mean, initial_cov: the law at t = 0 on all L species (default: the network's
            initial state, a point mass).

    Raises:
        ValueError: no species is closed.
    """
    times = check_times(times)
    U = closed_linear_species(network)
    if not U:
        raise ValueError(f"{network.name}: no species has a closed (linear) moment system")
    change = (network.product_matrix - network.reactant_matrix)[:, U].astype(np.float64)
    pos = {s: j for j, s in enumerate(U)}
    rows = [k for k in range(len(network.reactions)) if change[k].any()]
    W = np.zeros((len(rows), len(U)))
    for j, k in enumerate(rows):
        for i in np.nonzero(network.reactant_matrix[k])[0]:
            W[j, pos[int(i)]] = 1.0
    zeroth = (W.sum(axis=1) == 0).astype(np.float64)
    S = change[rows]  # (K', U)
    reactions = [network.reactions[k] for k in rows]
    m0 = network.initial_state.astype(np.float64) if initial_mean is None else initial_mean
    C0 = np.zeros((network.L, network.L)) if initial_cov is None else initial_cov
    n = len(U)

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        c = np.array([r.rate_at(t) for r in reactions])
        m, C = y[:n], y[n:].reshape(n, n)
        a = c * (W @ m + zeroth)  # (K',)
        A = S.T @ (c[:, None] * W)  # (U, U)
        AC = A @ C
        return np.concatenate([S.T @ a, (AC + AC.T + (S.T * a) @ S).ravel()])

    y0 = np.concatenate([np.asarray(m0)[U], np.asarray(C0)[np.ix_(U, U)].ravel()])
    if times[-1] == 0:
        y = np.repeat(y0[None], len(times), axis=0)
    else:
        sol = solve_ivp(
            rhs, (0.0, float(times[-1])), y0, t_eval=times, method="LSODA", rtol=1e-10, atol=1e-12
        )
        if not sol.success:
            raise RuntimeError(f"the moment equations failed: {sol.message}")
        y = sol.y.T
    return LinearMoments(
        [network.species_names[i] for i in U],
        np.array(U),
        times,
        y[:, :n],
        y[:, n:].reshape(-1, n, n),
    )


def monomolecular_marginals(network: ReactionNetwork, times: Sequence[float]) -> np.ndarray:
    """Exact marginals of a monomolecular network of any size, from a point mass.

    With only 0 -> S_j, S_i -> 0 and S_i -> S_j reactions at constant mass-action rates, every
    molecule moves on its own (Jahnke & Huisinga, J. Math. Biol. 54, 1 (2007)): one that starts
    at species j is at species i at time t with probability P_ij(t) = [exp(A t)]_ij (A the
    one-molecule generator), and the molecules born since 0 form independent Poisson counts of
    mean lambda(t) = int_0^t exp(A s) b ds (b the birth rates). So species i's count is the sum
    of Binomial(n_j(0), P_ij(t)) over the starting species j and a Poisson(lambda_i(t)): exact
    for the untruncated network, for any number of species (a 32 x 32 diffusion lattice), and
    the oracle of the VAN on lattices FSP cannot hold.

    Args:
        network: monomolecular, constant rates, mass action (a `reaction_diffusion` lattice
            with birth-death kinetics, a linear cascade with conversion, ...).
        times: (T,) times >= 0.

    Returns:
        (T, L, max limit) P(n_i = m), zero at m >= M_i (the mass beyond a limit is left out).

    Raises:
        ValueError: a reaction is not monomolecular with a constant rate.
    """
    import scipy.linalg as sla

    times = check_times(times)
    L = network.L
    A = np.zeros((L, L))
    b = np.zeros(L)
    for r in network.reactions:
        order = sum(int(v) for v in r.reactants.values())
        made = sum(int(v) for v in r.products.values())
        if not isinstance(r.rate, int | float) or not _affine(r) or made > 1 or order > 1:
            raise ValueError(
                f"{network.name}: reaction {r.name or r} is not monomolecular with a constant "
                "rate (0 -> S, S -> 0 or S -> S' at a fixed mass-action rate)"
            )
        c = float(r.rate)
        dst = [network.index(s) for s in r.products]
        if order == 0:
            b[dst] += c
            continue
        src = network.index(next(iter(r.reactants)))
        A[src, src] -= c
        if dst:
            A[dst[0], src] += c
    limits = network.limits.astype(int)
    out = np.zeros((len(times), L, int(limits.max())))
    start = network.initial_state.astype(int)
    augmented = np.zeros((L + 1, L + 1))
    augmented[:L, :L], augmented[:L, L] = A, b
    for t_i, t in enumerate(times):
        E = sla.expm(augmented * t)
        P, lam = E[:L, :L], E[:L, L]
        for i in range(L):
            m = np.arange(limits[i])
            pmf = poisson.pmf(m, lam[i]) if lam[i] > 0 else (m == 0) * 1.0
            for j in np.nonzero(start)[0]:
                p = float(np.clip(P[i, j], 0.0, 1.0))
                pmf = np.convolve(pmf, binom.pmf(m, start[j], p))[: limits[i]]
            out[t_i, i, : limits[i]] = pmf
    return out
