"""Distances between distributions and between results (DESIGN section 7).

Hellinger, total variation and KL divergence of marginals and of joints; relative errors of
means and standard deviations; tail probabilities and their log errors. `compare(a, b)` puts
them together for two `Result`s, aligned by species name and by time. A leaf module: numpy only.

Conventions: distributions are along the last axis; negative entries (round-off of an exact
solver, at most ~1e-14) are clipped to 0; nothing is renormalised, so lost mass shows up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .results import Result

__all__ = [
    "align_times",
    "compare",
    "hellinger",
    "kl_divergence",
    "relative_error",
    "sampling_noise_hellinger",
    "tail_errors",
    "tail_probabilities",
    "total_variation",
]

TAIL_LEVELS = (1e-2, 1e-3, 1e-4)


def _pair(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    q = np.clip(np.asarray(q, dtype=np.float64), 0.0, None)
    if p.shape[-1] != q.shape[-1]:  # pad the shorter support with zeros
        n = max(p.shape[-1], q.shape[-1])
        p = _pad_last(p, n)
        q = _pad_last(q, n)
    return p, q


def _pad_last(x: np.ndarray, n: int) -> np.ndarray:
    if x.shape[-1] == n:
        return x
    width = [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])]
    return np.pad(x, width)


def hellinger(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hellinger distance sqrt(1/2 sum (sqrt p - sqrt q)^2) along the last axis, in [0, 1]."""
    p, q = _pair(p, q)
    return np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, axis=-1))


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation distance 1/2 sum |p - q| along the last axis, in [0, 1]."""
    p, q = _pair(p, q)
    return 0.5 * np.sum(np.abs(p - q), axis=-1)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) = sum p log(p / q) along the last axis (nats); inf where p > 0 = q."""
    p, q = _pair(p, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return np.sum(terms, axis=-1)


def relative_error(reference: np.ndarray, other: np.ndarray, atol: float = 1e-12) -> np.ndarray:
    """|other - reference| / |reference| elementwise.

    Where |reference| <= atol (a species certainly at 0, a std of a delta), the error is 0 if
    the two agree within atol and inf otherwise.
    """
    ref = np.asarray(reference, dtype=np.float64)
    diff = np.abs(np.asarray(other, dtype=np.float64) - ref)
    small = np.abs(ref) <= atol
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = diff / np.abs(ref)
    return np.where(small, np.where(diff <= atol, 0.0, np.inf), rel)


def tail_probabilities(marginals: np.ndarray) -> np.ndarray:
    """Right tails P(n >= m) of distributions along the last axis: (..., M) -> (..., M)."""
    p = np.clip(np.asarray(marginals, dtype=np.float64), 0.0, None)
    return np.flip(np.cumsum(np.flip(p, axis=-1), axis=-1), axis=-1)


def tail_errors(
    reference: np.ndarray, other: np.ndarray, levels: Sequence[float] = TAIL_LEVELS
) -> dict[str, np.ndarray]:
    """Right-tail probabilities of two sets of marginals at the reference's tail thresholds.

    For each level, the threshold c is the smallest count with P_ref(n >= c) <= level (none
    if the reference tail never falls that low inside the box).

    Args:
        reference, other: (..., M) marginals.
        levels: tail levels.

    Returns:
        "count": (..., V) thresholds (-1 where none); "reference", "other": (..., V) tail
        probabilities there (nan where none); "log10_ratio": (..., V) log10(other / reference).
    """
    ref, oth = _pair(reference, other)
    ta, tb = tail_probabilities(ref), tail_probabilities(oth)
    V = len(levels)
    shape = (*ta.shape[:-1], V)
    count = np.full(shape, -1, dtype=np.int64)
    pa = np.full(shape, np.nan)
    pb = np.full(shape, np.nan)
    for v, level in enumerate(levels):
        below = ta <= level
        has = below.any(axis=-1) & (ta[..., 0] > level)
        c = np.argmax(below, axis=-1)
        count[..., v] = np.where(has, c, -1)
        at = c[..., None]
        pa[..., v] = np.where(has, np.take_along_axis(ta, at, axis=-1)[..., 0], np.nan)
        pb[..., v] = np.where(has, np.take_along_axis(tb, at, axis=-1)[..., 0], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log10(pb) - np.log10(pa)
    return {"count": count, "reference": pa, "other": pb, "log10_ratio": ratio}


def sampling_noise_hellinger(p: np.ndarray, n: int) -> np.ndarray:
    """Hellinger distance expected between p and a histogram of n independent samples of it.

    The floor below which no sampler can be judged with n samples. Per count j with
    X_j ~ Poisson(n p_j): E[(sqrt(X_j / n) - sqrt(p_j))^2] = 2 p_j - 2 sqrt(p_j / n) E[sqrt X_j],
    summed and halved gives E[H^2]; returns sqrt(E[H^2]) along the last axis. Rare counts
    (n p_j << 1) contribute ~p_j, common ones ~1 / (4 n): about sqrt((k - 1) / (8 n)) for k
    well-filled counts.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    lam = n * p
    root = _poisson_mean_sqrt(lam)
    h2 = 0.5 * np.sum(2 * p - 2 * np.sqrt(p / n) * root, axis=-1)
    return np.sqrt(np.maximum(h2, 0.0))


def _poisson_mean_sqrt(lam: np.ndarray) -> np.ndarray:
    """E[sqrt(X)] for X ~ Poisson(lam), elementwise: a series for small lam, else asymptotic."""
    safe = np.maximum(lam, 40.0)  # the asymptotic form is used only for lam >= 40
    out = np.sqrt(lam) * (1 - 1 / (8 * safe) - 7 / (128 * safe**2))
    small = lam < 40
    if np.any(small):
        lam_s = lam[small][:, None]
        x = np.arange(120, dtype=np.float64)[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            logpmf = x * np.log(lam_s) - lam_s - np.cumsum(np.log(np.maximum(x, 1)), axis=1)
        pmf = np.where(lam_s > 0, np.exp(logpmf), (x == 0).astype(float))
        out[small] = np.sum(pmf * np.sqrt(x), axis=1)
    return out


def align_times(a: np.ndarray, b: np.ndarray, rtol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of the times the two grids share (within rtol of the larger span)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    tol = rtol * max(1.0, float(np.max(np.abs(np.concatenate([a, b])))))
    j = np.searchsorted(b, a)
    ia, ib = [], []
    for i, t in enumerate(a):
        for cand in (j[i] - 1, j[i]):
            if 0 <= cand < b.shape[0] and abs(b[cand] - t) <= tol:
                ia.append(i)
                ib.append(int(cand))
                break
    return np.array(ia, dtype=np.int64), np.array(ib, dtype=np.int64)


def _grid(times: np.ndarray) -> str:
    """A time grid in a few words: "11 times on [0, 40]"."""
    if times.shape[0] == 0:
        return "no times"
    return f"{times.shape[0]} times on [{times[0]:g}, {times[-1]:g}]"


def _species_map(a: Result, b: Result) -> np.ndarray:
    missing = [s for s in a.species if s not in b.species]
    extra = [s for s in b.species if s not in a.species]
    if missing or extra:
        raise ValueError(
            "the results have different species: "
            + (f"only in A: {', '.join(missing)}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"only in B: {', '.join(extra)}" if extra else "")
        )
    return np.array([b.species.index(s) for s in a.species], dtype=np.int64)


def _joint_distances(a: Result, b: Result, ia: np.ndarray, ib: np.ndarray, order: np.ndarray):
    """Distances of the stored joints on the union of their states, or None."""
    if a.joint is None or b.joint is None:
        return None
    sa, sb = a.joint_states, b.joint_states[:, order]
    states = np.concatenate([sa, sb])
    _, inverse = np.unique(states, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    S = int(inverse.max()) + 1
    pa = np.zeros((ia.shape[0], S))
    pb = np.zeros((ia.shape[0], S))
    pa[:, inverse[: sa.shape[0]]] = a.joint[ia]
    pb[:, inverse[sa.shape[0] :]] = b.joint[ib]
    return {
        "hellinger": hellinger(pa, pb),
        "total_variation": total_variation(pa, pb),
        "kl_ab": kl_divergence(pa, pb),
        "kl_ba": kl_divergence(pb, pa),
        "states": S,
    }


def _pair_distances(a: Result, b: Result, ia: np.ndarray, ib: np.ndarray):
    if a.pair is None or b.pair is None:
        return None
    names_a = [a.species[i] for i in a.pair]
    names_b = [b.species[i] for i in b.pair]
    if names_a != names_b:
        return None
    T = ia.shape[0]
    ma, mb = a.pair_marginal[ia], b.pair_marginal[ib]
    rows, cols = max(ma.shape[1], mb.shape[1]), max(ma.shape[2], mb.shape[2])
    pad = lambda m: np.pad(m, ((0, 0), (0, rows - m.shape[1]), (0, cols - m.shape[2])))  # noqa: E731
    pa, pb = pad(ma).reshape(T, -1), pad(mb).reshape(T, -1)
    return {
        "species": names_a,
        "hellinger": hellinger(pa, pb),
        "total_variation": total_variation(pa, pb),
    }


def compare(a: Result, b: Result, *, tail_levels: Sequence[float] = TAIL_LEVELS) -> dict[str, Any]:
    """All distances between two results at their common times, per species and time.

    A is the reference for relative errors and tail thresholds (pass the exact or the more
    accurate result first).

    Returns:
        A dict of numpy arrays and numbers: "species" (L,), "times" (T,) (the common times),
        "hellinger", "total_variation", "kl_ab" = KL(A||B), "kl_ba" = KL(B||A),
        "mean_rel_error", "std_rel_error", "mean_a", "mean_b", "std_a", "std_b": (T, L);
        "tails": `tail_errors` at the final common time, (L, V) arrays; "joint" and "pair":
        distances of the joints and of the 2D pair joints where both results store them
        (else None); "max_hellinger" and "worst" (species, time); "noise_hellinger": (T, L)
        expected Hellinger from sampling alone where one side is a sampler with a known
        sample count (else None).

    Raises:
        ValueError: different species, or no common time after t = 0 (every solver starts
            from the same initial counts, so agreement at t = 0 alone says nothing).
    """
    order = _species_map(a, b)
    ia, ib = align_times(a.times, b.times)
    if not np.any(a.times[ia] > 0):
        shared = "no time" if ia.size == 0 else "no time after t = 0"
        raise ValueError(
            f"the results share {shared}: A has {_grid(a.times)}, B has {_grid(b.times)}; "
            "solve both at the same times (--times, or the same --t-end and --save-every)"
        )
    ma = a.marginals[ia]
    mb = b.marginals[ib][:, order]
    h = hellinger(ma, mb)
    out: dict[str, Any] = {
        "a": {"method": a.method, "samples": a.summary.get("samples")},
        "b": {"method": b.method, "samples": b.summary.get("samples")},
        "species": list(a.species),
        "times": a.times[ia],
        "hellinger": h,
        "total_variation": total_variation(ma, mb),
        "kl_ab": kl_divergence(ma, mb),
        "kl_ba": kl_divergence(mb, ma),
        "mean_a": a.means[ia],
        "mean_b": b.means[ib][:, order],
        "std_a": a.stds[ia],
        "std_b": b.stds[ib][:, order],
    }
    out["mean_rel_error"] = relative_error(out["mean_a"], out["mean_b"])
    out["std_rel_error"] = relative_error(out["std_a"], out["std_b"])
    t_worst, s_worst = np.unravel_index(int(np.argmax(h)), h.shape)
    out["max_hellinger"] = float(h.max())
    out["worst"] = {"species": a.species[s_worst], "time": float(out["times"][t_worst])}
    out["tails"] = {
        "levels": list(tail_levels),
        "time": float(out["times"][-1]),
        **tail_errors(ma[-1], mb[-1], tail_levels),
    }
    out["joint"] = _joint_distances(a, b, ia, ib, order)
    out["pair"] = _pair_distances(a, b, ia, ib)
    samples = [r.summary.get("samples") for r in (a, b) if r.method != "fsp"]
    samples = [int(s) for s in samples if s]
    out["noise_hellinger"] = None
    if samples:  # independent sampling noise of each sampled side adds in H^2
        noise2 = sum(sampling_noise_hellinger(ma, n) ** 2 for n in samples)
        out["noise_hellinger"] = np.sqrt(noise2)
    if a.boundary is not None or b.boundary is not None:
        out["boundary"] = {
            "a": None if a.boundary is None else a.boundary[ia],
            "b": None if b.boundary is None else b.boundary[ib],
        }
    return out
