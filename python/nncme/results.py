"""One results format for every solver: exact (FSP), stochastic (SSA) and the VAN.

A `Result` holds, at T requested times, the marginal distribution of every species, means,
standard deviations, optionally covariances, the joint distribution (where small), a 2D joint of
one pair of species, and the probability on the box boundary, plus a free-form `summary` dict
(network, settings, timings, versions). `Result.save(dir)` writes

    results.npz    the arrays (loadable without pickle)
    summary.json   the summary, with the shapes and headline numbers
    *.png          marginals over time (heat map per species), means +- std, one 2D joint

and `Result.load(dir)` reads it back. `ResultBuilder` accumulates a result from weighted states,
batch by batch: exact probabilities (FSP: weights = P(n)) or samples (SSA, VAN: weight 1 or an
importance weight), so every solver computes its statistics the same way.

This module is a leaf: it imports only numpy, paths.py (atomic writes) and plot.py (matplotlib).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import platform
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .paths import OutputDir, atomic_write

__all__ = [
    "FORMAT_VERSION",
    "METHODS",
    "BoundaryWarning",
    "Result",
    "ResultBuilder",
    "boundary_mask",
    "check_boundary",
    "default_pair",
    "versions",
]

FORMAT_VERSION = 1
METHODS = ("fsp", "ssa", "van")
# Defaults for what is small enough to store. The joint: (state, weight) records gathered over
# all times, counted in numbers (L + 1 each), about 64 MiB at most; covariances: L x L.
JOINT_MAX_ENTRIES = 1 << 23
PAIR_MAX_ENTRIES = 1 << 23
COVARIANCE_MAX_SPECIES = 128

_OPTIONAL = ("covariances", "joint_states", "joint", "pair", "pair_marginal", "boundary")


@dataclass
class Result:
    """Distributions of one solver at T times.

    Attributes:
        method: "fsp", "ssa" or "van".
        species: (L,) species names.
        limits: (L,) int64 count limits M_i (counts 0..M_i-1).
        times: (T,) float64 times, increasing.
        marginals: (T, L, Mmax) float64, P(n_i = m) at each time; zero beyond M_i.
        means: (T, L) float64.  stds: (T, L) float64 standard deviations.
        covariances: (T, L, L) float64 or None.
        joint_states: (S, L) int64 states of the stored joint, or None.
        joint: (T, S) float64 P(joint_states[s]) at each time, or None.
        pair: (a, b) species indices of `pair_marginal`, or None.
        pair_marginal: (T, M_a, M_b) float64 joint of species a and b, or None.
        boundary: (T,) float64 probability on the box boundary (states where a reaction is
            blocked only by a count limit), or None.
        summary: free-form JSON-ready dict: network, settings, timings, versions.
    """

    method: str
    species: list[str]
    limits: np.ndarray
    times: np.ndarray
    marginals: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    covariances: np.ndarray | None = None
    joint_states: np.ndarray | None = None
    joint: np.ndarray | None = None
    pair: tuple[int, int] | None = None
    pair_marginal: np.ndarray | None = None
    boundary: np.ndarray | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.species = [str(s) for s in self.species]
        self.limits = np.asarray(self.limits, dtype=np.int64)
        self.times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        self.marginals = np.asarray(self.marginals, dtype=np.float64)
        self.means = np.asarray(self.means, dtype=np.float64)
        self.stds = np.asarray(self.stds, dtype=np.float64)
        if self.pair is not None:
            self.pair = (int(self.pair[0]), int(self.pair[1]))
        self.validate()

    @property
    def num_species(self) -> int:
        return len(self.species)

    @property
    def num_times(self) -> int:
        return self.times.shape[0]

    def validate(self) -> None:
        """Check shapes and values; raise ValueError naming the field."""
        T, L = self.num_times, self.num_species
        if self.method not in METHODS:
            raise ValueError(f"method: must be one of {METHODS}, got {self.method!r}")
        if self.limits.shape != (L,):
            raise ValueError(f"limits: shape {self.limits.shape}, expected ({L},)")
        if T and np.any(np.diff(self.times) <= 0):
            raise ValueError("times: must be strictly increasing")
        mmax = int(self.limits.max()) if L else 0
        expect = {
            "marginals": (T, L, mmax),
            "means": (T, L),
            "stds": (T, L),
            "covariances": (T, L, L),
            "boundary": (T,),
        }
        for name, shape in expect.items():
            value = getattr(self, name)
            if value is not None and np.shape(value) != shape:
                raise ValueError(f"{name}: shape {np.shape(value)}, expected {shape}")
        if (self.joint is None) != (self.joint_states is None):
            raise ValueError("joint and joint_states: give both or neither")
        if self.joint is not None:
            S = np.shape(self.joint_states)[0]
            if np.shape(self.joint_states) != (S, L) or np.shape(self.joint) != (T, S):
                raise ValueError(
                    f"joint: shapes {np.shape(self.joint_states)} and {np.shape(self.joint)}, "
                    f"expected (S, {L}) and ({T}, S)"
                )
        if (self.pair is None) != (self.pair_marginal is None):
            raise ValueError("pair and pair_marginal: give both or neither")
        if self.pair is not None:
            a, b = self.pair
            if not (0 <= a < L and 0 <= b < L and a != b):
                raise ValueError(f"pair: {self.pair} are not two distinct species indices")
            shape = (T, int(self.limits[a]), int(self.limits[b]))
            if np.shape(self.pair_marginal) != shape:
                raise ValueError(
                    f"pair_marginal: shape {np.shape(self.pair_marginal)}, expected {shape}"
                )

    # --------------------------------------------------------------------------- access
    def index(self, species: str | int) -> int:
        """Position of a species given by name or index."""
        if isinstance(species, (int, np.integer)):
            if not 0 <= int(species) < self.num_species:
                raise ValueError(f"species index {species} out of range 0..{self.num_species - 1}")
            return int(species)
        try:
            return self.species.index(species)
        except ValueError:
            raise ValueError(
                f"unknown species {species!r}; this result has {', '.join(self.species)}"
            ) from None

    def time_index(self, t: float) -> int:
        """Index of the stored time closest to t."""
        return int(np.argmin(np.abs(self.times - t)))

    def marginal(self, species: str | int, t_index: int = -1) -> np.ndarray:
        """(M_i,) marginal distribution of one species at one stored time."""
        i = self.index(species)
        return self.marginals[t_index, i, : self.limits[i]]

    def pair_joint(self, t_index: int = -1) -> tuple[tuple[int, int], np.ndarray] | None:
        """The stored 2D joint of a pair of species at one time: ((a, b), (M_a, M_b))."""
        if self.pair_marginal is None:
            return None
        return self.pair, self.pair_marginal[t_index]

    def in_species_order(self, species: Sequence[str]) -> Result:
        """The same result with its species (and every per-species axis) in the order
        `species`, a permutation of `self.species`; joint states sorted in the new order."""
        order = np.array([self.index(s) for s in species], dtype=np.int64)
        if sorted(order.tolist()) != list(range(self.num_species)):
            raise ValueError(f"in_species_order: {list(species)} is not an order of {self.species}")
        if (order == np.arange(self.num_species)).all():
            return self
        position = np.argsort(order)  # old index -> new index
        pair = (
            None
            if self.pair is None
            else (int(position[self.pair[0]]), int(position[self.pair[1]]))
        )
        joint_states, joint = self.joint_states, self.joint
        if joint_states is not None and joint is not None:
            joint_states = joint_states[:, order]
            rows = np.lexsort(joint_states.T[::-1])  # lexicographic, first species slowest
            joint_states, joint = joint_states[rows], joint[:, rows]
        return replace(
            self,
            species=[self.species[i] for i in order],
            limits=self.limits[order],
            marginals=self.marginals[:, order],
            means=self.means[:, order],
            stds=self.stds[:, order],
            covariances=None
            if self.covariances is None
            else self.covariances[:, order][:, :, order],
            joint_states=joint_states,
            joint=joint,
            pair=pair,
        )

    # ------------------------------------------------------------------------ conversion
    def to_xarray(self) -> Any:
        """The result as an `xarray.Dataset`, labelled by time, species and count.

        Variables (each with `units` and `long_name` attributes):
            marginal_<S>: (time, <S>_count) P(n_S = m) over species S's own counts 0..M_S-1.
            mean: (time, species) E[n_i] in molecules.  variance: (time, species) Var[n_i]
                (molecules²), the square of `stds`.
            covariance: (time, species, species_) when stored.  boundary: (time,) when stored.
            pair_marginal: (time, <A>_count, <B>_count) the 2D joint of the pair, when stored.
        Coordinates: time, species (with `limit`, the count limit M_i) and one count axis per
        species. Attributes: solver (the method), network (its name), settings (JSON text of
        the solver's settings), samples (SSA trajectories, when known), format_version.

        Raises:
            ImportError: xarray is not installed (it is optional: pip install xarray).
        """
        try:
            import xarray as xr
        except ImportError as exc:
            raise ImportError(
                "Result.to_xarray needs xarray, an optional dependency of nncme: "
                "pip install xarray (or pip install 'nncme[xarray]')"
            ) from exc
        time_units = "time unit of the network's rate constants"
        counts = {s: f"{s}_count" for s in self.species}
        coords: dict[str, Any] = {
            "time": ("time", self.times, {"units": time_units, "long_name": "time"}),
            "species": ("species", np.array(self.species, dtype=str)),
            "limit": ("species", self.limits, {"long_name": "count limit M_i (counts 0..M_i-1)"}),
        }
        for s, m in zip(self.species, self.limits.tolist()):
            coords[counts[s]] = (counts[s], np.arange(m), {"units": "molecules"})
        prob = {"units": "1"}
        data: dict[str, Any] = {
            f"marginal_{s}": (
                ("time", counts[s]),
                self.marginals[:, i, :m],
                {**prob, "long_name": f"P(n_{s} = m, t)"},
            )
            for i, (s, m) in enumerate(zip(self.species, self.limits.tolist()))
        }
        data["mean"] = (
            ("time", "species"),
            self.means,
            {"units": "molecules", "long_name": "mean"},
        )
        data["variance"] = (
            ("time", "species"),
            self.stds**2,
            {"units": "molecules^2", "long_name": "variance"},
        )
        if self.covariances is not None:
            data["covariance"] = (
                ("time", "species", "species_"),
                self.covariances,
                {"units": "molecules^2", "long_name": "covariance"},
            )
            coords["species_"] = ("species_", np.array(self.species, dtype=str))
        if self.boundary is not None:
            data["boundary"] = (
                "time",
                self.boundary,
                {**prob, "long_name": "P(on the box boundary)"},
            )
        if self.pair is not None and self.pair_marginal is not None:
            a, b = (self.species[i] for i in self.pair)
            data["pair_marginal"] = (
                ("time", counts[a], counts[b]),
                self.pair_marginal,
                {**prob, "long_name": f"P(n_{a} = m, n_{b} = k, t)"},
            )
        return xr.Dataset(data, coords=coords, attrs=self._xarray_attrs())

    def _xarray_attrs(self) -> dict[str, Any]:
        """Dataset attributes: text and numbers only, so the Dataset can go to netCDF."""
        network = self.summary.get("network")
        name = network.get("name") if isinstance(network, Mapping) else network
        attrs: dict[str, Any] = {
            "solver": self.method,
            "network": str(name or ""),
            "settings": json.dumps(self.summary.get("settings", {}), default=_js),
            "format_version": FORMAT_VERSION,
        }
        if self.summary.get("samples"):
            attrs["samples"] = int(self.summary["samples"])
        return attrs

    # ----------------------------------------------------------------------------- files
    def save(self, out_dir: str | Path, *, plots: bool = True) -> Path:
        """Write results.npz, summary.json and (if `plots`) PNG figures to `out_dir`.

        Returns:
            The directory.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(FORMAT_VERSION),
            "method": np.array(self.method),
            "species": np.array(self.species, dtype=str),
            "limits": self.limits,
            "times": self.times,
            "marginals": self.marginals,
            "means": self.means,
            "stds": self.stds,
        }
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                arrays[name] = np.asarray(value)
        with atomic_write(out / "results.npz", "wb") as fh:  # a kill leaves the old file whole
            np.savez_compressed(fh, **arrays)
        self._write_summary(out)
        if plots:
            from . import plot

            self.summary.setdefault("plots", [])
            files = plot.save_result_plots(self, out)
            self.summary["plots"] = [p.name for p in files]
            self._write_summary(out)
        return out

    def _write_summary(self, out: Path) -> None:
        with atomic_write(out / "summary.json") as fh:
            fh.write(json.dumps(self._summary_json(), indent=2, default=_js))

    def _summary_json(self) -> dict[str, Any]:
        head: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "species": self.species,
            "limits": self.limits.tolist(),
            "times": self.times.tolist(),
            "stored": {
                name: list(np.shape(getattr(self, name)))
                for name in ("marginals", "means", "stds", *_OPTIONAL)
                if getattr(self, name) is not None and name != "pair"
            },
        }
        if self.boundary is not None:
            head["boundary_probability_max"] = float(np.max(self.boundary, initial=0.0))
        if self.pair is not None:
            head["pair"] = [self.species[i] for i in self.pair]
        final = {
            s: {"mean": float(self.means[-1, i]), "std": float(self.stds[-1, i])}
            for i, s in enumerate(self.species[:32])
        }
        if self.num_times:
            head["final"] = {"t": float(self.times[-1]), "species": final}
        return {**head, **self.summary}

    @classmethod
    def load(cls, path: str | Path) -> Result:
        """Read a result directory (or its results.npz) written by `save`."""
        path = Path(path)
        npz = path / "results.npz" if path.is_dir() else path
        if not npz.exists():
            raise FileNotFoundError(f"no results.npz at {path}")
        try:
            with np.load(npz, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{npz}: not a readable results file ({_first_line(exc)})") from None
        version = int(arrays["format_version"]) if "format_version" in arrays else 0
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{npz}: results format {version} is newer than this nncme reads "
                f"({FORMAT_VERSION}); upgrade nncme"
            )
        missing = [k for k in ("method", "species", "limits", "times", "marginals", "means", "stds")
                   if k not in arrays]  # fmt: skip
        if missing:
            raise ValueError(f"{npz}: not a results file (no {', '.join(missing)})")
        result = cls(
            method=str(arrays["method"]),
            species=[str(s) for s in arrays["species"]],
            limits=arrays["limits"],
            times=arrays["times"],
            marginals=arrays["marginals"],
            means=arrays["means"],
            stds=arrays["stds"],
            **{name: arrays[name] for name in _OPTIONAL if name in arrays},
        )
        summary_file = npz.parent / "summary.json"
        if summary_file.exists():
            try:
                result.summary = json.loads(summary_file.read_text())
            except (OSError, ValueError) as exc:
                problem = _first_line(exc)
                raise ValueError(f"{summary_file}: not readable JSON ({problem})") from None
        return result


def _first_line(exc: BaseException) -> str:
    """An exception's message on one line (torch's and numpy's may run over several)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _js(obj: Any) -> Any:
    """JSON fallback for numpy scalars and arrays, paths and other objects."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


# ------------------------------------------------------------------------------ building
def boundary_mask(
    states: np.ndarray,
    reactants: np.ndarray,
    change: np.ndarray,
    limits: np.ndarray,
    species: np.ndarray | None = None,
) -> np.ndarray:
    """Which states sit on the box boundary: some reaction is blocked only by a count limit.

    A reaction k is blocked by the box at n when its reactants are present (n_i >= r_ki) and
    its product n + s_k reaches M_i in a species i that counts; a larger box would let it fire.
    By default the species that count are those with limit > 2: a limit of 2 makes a switch
    (a gene bound or free) whose cap is part of the model, not a truncation. Rates and Hill
    factors are not consulted, so this errs toward reporting mass on the boundary.

    Args:
        states: (B, L) int counts inside the box.
        reactants: (K, L) int reactant orders r_k.  change: (K, L) int net changes s_k.
        limits: (L,) int count limits M_i.
        species: (L,) bool, the species whose limits count (default: limits > 2).

    Returns:
        (B,) bool.
    """
    states = np.asarray(states, dtype=np.int64)
    out = np.zeros(states.shape[0], dtype=bool)
    limits = np.asarray(limits, dtype=np.int64)
    counts = limits > 2 if species is None else np.asarray(species, dtype=bool)
    for r, s in zip(np.asarray(reactants), np.asarray(change)):
        grows = (s > 0) & counts
        if not grows.any():
            continue
        present = np.all(states >= r, axis=1)
        over = np.any(states[:, grows] + s[grows] >= limits[grows], axis=1)
        out |= present & over
    return out


class BoundaryWarning(UserWarning):
    """Probability piles up on the box boundary: the count limits may be too small."""


def check_boundary(result: Result, threshold: float, stacklevel: int = 3) -> bool:
    """Warn (BoundaryWarning) when the boundary probability exceeds `threshold` at some time.

    The message names the species whose top count M_i - 1 carries the most probability.

    Returns:
        Whether it warned.
    """
    if result.boundary is None or not result.num_times:
        return False
    worst = float(np.max(result.boundary))
    if worst <= threshold:
        return False
    t = float(result.times[int(np.argmax(result.boundary))])
    top = np.array(  # mass at the top count of each species whose limit counts
        [
            result.marginals[:, i, m - 1].max() if m > 2 else 0.0
            for i, m in enumerate(result.limits.tolist())
        ]
    )
    names = [
        f"{result.species[i]} (P(n = {result.limits[i] - 1}) up to {top[i]:.1e})"
        for i in np.argsort(-top)[:3]
        if top[i] > 0
    ]
    warnings.warn(
        f"{result.method}: probability {worst:.2e} on the box boundary at t = {t:g} (threshold "
        f"{threshold:g}); reactions are being cut off by the count limits"
        + (f"; raise the limits of {', '.join(names)}" if names else ""),
        BoundaryWarning,
        stacklevel=stacklevel,
    )
    return True


def default_pair(limits: Sequence[int]) -> tuple[int, int] | None:
    """The pair of species shown as a 2D joint: the two with the largest limits (first wins)."""
    limits = np.asarray(limits)
    if limits.shape[0] < 2:
        return None
    order = np.argsort(-limits, kind="stable")
    a, b = sorted(int(i) for i in order[:2])
    return a, b


class ResultBuilder:
    """Accumulates a `Result` from weighted states, time by time and batch by batch.

    Exact solvers add every state with its probability (`normalize=False` in `build`, so a
    lost mass stays visible); samplers add samples with weight 1 or an importance weight and
    `build` divides by the total weight at each time.

    Args:
        method: "fsp", "ssa" or "van".
        species: (L,) names.  limits: (L,) count limits.  times: (T,) times.
        pair: species indices of the stored 2D joint (default: the two largest limits), or
            False for none. Skipped if T * M_a * M_b exceeds `pair_max`.
        keep_joint: store the joint over the visited states if the (state, weight) records
            of all times hold at most `joint_max` numbers ((L + 1) per record).
        covariances: store (T, L, L) covariances if L <= COVARIANCE_MAX_SPECIES.
        reactants, change: (K, L) stoichiometry, to measure the boundary probability.
    """

    def __init__(
        self,
        method: str,
        species: Sequence[str],
        limits: Sequence[int],
        times: Sequence[float],
        *,
        pair: tuple[int, int] | bool | None = None,
        keep_joint: bool = True,
        joint_max: int = JOINT_MAX_ENTRIES,
        pair_max: int = PAIR_MAX_ENTRIES,
        covariances: bool = True,
        reactants: np.ndarray | None = None,
        change: np.ndarray | None = None,
    ) -> None:
        self.method = method
        self.species = list(species)
        self.limits = np.asarray(limits, dtype=np.int64)
        self.times = np.asarray(times, dtype=np.float64).reshape(-1)
        T, L = self.times.shape[0], self.limits.shape[0]
        self.mmax = int(self.limits.max())
        self._hist = np.zeros((T, L * self.mmax))
        self._total = np.zeros(T)
        self._cov = covariances and L <= COVARIANCE_MAX_SPECIES
        self._moment2 = np.zeros((T, L, L)) if self._cov else None
        self._sums = np.zeros((T, L))
        if pair is None or pair is True:
            pair = default_pair(self.limits)
        if pair is not False and pair is not None:
            a, b = int(pair[0]), int(pair[1])
            if T * int(self.limits[a]) * int(self.limits[b]) > pair_max:
                pair = None
            else:
                pair = (a, b)
        else:
            pair = None
        self.pair = pair
        if pair is not None:
            self._pair = np.zeros((T, int(self.limits[pair[0]]) * int(self.limits[pair[1]])))
        self._boundary_rules = None
        if reactants is not None and change is not None:
            self._boundary_rules = (np.asarray(reactants), np.asarray(change))
            self._boundary = np.zeros(T)
        self.joint_max = joint_max
        self._keep_joint = keep_joint
        self._joint_parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(T)]
        self._joint_entries = 0
        self._last_keys: tuple[int, np.ndarray] | None = None

    def add(self, t_index: int, states: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Add states at time `times[t_index]`.

        Args:
            t_index: which stored time.
            states: (B, L) int counts, inside the box.
            weights: (B,) float non-negative weights (probabilities or importance weights);
                None for weight 1 each.
        """
        states = np.asarray(states)
        if states.ndim != 2 or states.shape[1] != self.limits.shape[0]:
            raise ValueError(f"states: shape {states.shape}, expected (B, {self.limits.shape[0]})")
        states = states.astype(np.int64, copy=False)
        B, L = states.shape
        if B and (states.min() < 0 or np.any(states.max(axis=0) >= self.limits)):
            raise ValueError("states: counts outside the box 0 <= n_i < M_i")
        w = np.ones(B) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (B,):
            raise ValueError(f"weights: shape {w.shape}, expected ({B},)")
        flat = (states + np.arange(L) * self.mmax).ravel()
        self._hist[t_index] += np.bincount(flat, np.repeat(w, L), minlength=L * self.mmax)
        self._total[t_index] += w.sum()
        x = states.astype(np.float64)
        self._sums[t_index] += w @ x
        if self._moment2 is not None:
            self._moment2[t_index] += (x * w[:, None]).T @ x
        if self.pair is not None:
            a, b = self.pair
            idx = states[:, a] * self.limits[b] + states[:, b]
            self._pair[t_index] += np.bincount(idx, w, minlength=self._pair.shape[1])
        if self._boundary_rules is not None:
            on = boundary_mask(states, *self._boundary_rules, self.limits)
            self._boundary[t_index] += w[on].sum()
        if self._keep_joint:
            self._add_joint(t_index, states, w)

    def add_conditionals(self, t_index: int, states: np.ndarray, conditionals: np.ndarray) -> None:
        """Add samples of an autoregressive model through their conditionals (weight 1 each).

        The Rao–Blackwellised estimate: the marginal of species i is the mean over samples of
        q(. | n_<i), exact for species 0 and of far lower variance than counting, most of all
        in the tails. Second moments come from the conditional moments: E[n_i^2 | n_<i] on the
        diagonal, n_a E[n_b | n_<b] for a < b; the pair joint from onehot(n_a) q(. | n_<b).

        Args:
            t_index: which stored time.
            states: (B, L) int samples of the model, inside the box.
            conditionals: (B, L, Mmax) q(m | n_<i) of every species given each sample's prefix.
        """
        states = np.asarray(states).astype(np.int64, copy=False)
        cond = np.asarray(conditionals, dtype=np.float64)
        B, L = states.shape
        if cond.shape != (B, L, self.mmax):
            raise ValueError(f"conditionals: shape {cond.shape}, expected ({B}, {L}, {self.mmax})")
        counts = np.arange(self.mmax, dtype=np.float64)
        self._hist[t_index] += cond.sum(axis=0).reshape(-1)
        self._total[t_index] += B
        mean_given_prefix = cond @ counts  # (B, L)
        self._sums[t_index] += mean_given_prefix.sum(axis=0)
        if self._moment2 is not None:
            cross = np.triu(states.astype(np.float64).T @ mean_given_prefix, k=1)
            self._moment2[t_index] += cross + cross.T + np.diag((cond @ counts**2).sum(axis=0))
        if self.pair is not None:
            a, b = self.pair
            hist = np.zeros((int(self.limits[a]), int(self.limits[b])))
            np.add.at(hist, states[:, a], cond[:, b, : int(self.limits[b])])
            self._pair[t_index] += hist.reshape(-1)
        if self._boundary_rules is not None:
            on = boundary_mask(states, *self._boundary_rules, self.limits)
            self._boundary[t_index] += on.sum()

    def _add_joint(self, t_index: int, states: np.ndarray, w: np.ndarray) -> None:
        keep = w != 0
        self._joint_entries += int(keep.sum()) * (states.shape[1] + 1)
        if self._joint_entries > self.joint_max:
            self._keep_joint = False  # too large to store: drop what was gathered
            self._joint_parts = []
            return
        self._joint_parts[t_index].append((states[keep], w[keep]))

    def build(self, *, normalize: bool, summary: Mapping[str, Any] | None = None) -> Result:
        """The Result. `normalize`: divide by the total weight at each time (samplers)."""
        T, L, M = self.times.shape[0], self.limits.shape[0], self.mmax
        scale = np.ones(T)
        if normalize:
            if np.any(self._total <= 0):
                raise ValueError("no samples were added at some times")
            scale = 1.0 / self._total
        marg = (self._hist * scale[:, None]).reshape(T, L, M)
        counts = np.arange(M, dtype=np.float64)
        mass = marg.sum(axis=2)
        safe = np.where(mass > 0, mass, 1.0)
        # moments from the marginals (exact integer bins), normalised by the mass present
        means = (marg @ counts) / safe
        second = (marg @ counts**2) / safe
        stds = np.sqrt(np.maximum(second - means**2, 0.0))
        cov = None
        if self._moment2 is not None:
            m2 = self._moment2 * scale[:, None, None] / safe[:, :1, None]
            cov = m2 - means[:, :, None] * means[:, None, :]
        pair_marg = None
        if self.pair is not None:
            a, b = self.pair
            pair_marg = (self._pair * scale[:, None]).reshape(
                T, int(self.limits[a]), int(self.limits[b])
            )
        boundary = self._boundary * scale if self._boundary_rules is not None else None
        joint_states, joint = self._build_joint(scale) if self._keep_joint else (None, None)
        info = dict(summary or {})
        info.setdefault("total_weight", self._total.tolist() if not normalize else None)
        return Result(
            method=self.method,
            species=self.species,
            limits=self.limits,
            times=self.times,
            marginals=marg,
            means=means,
            stds=stds,
            covariances=cov,
            joint_states=joint_states,
            joint=joint,
            pair=self.pair if pair_marg is not None else None,
            pair_marginal=pair_marg,
            boundary=boundary,
            summary={k: v for k, v in info.items() if v is not None},
        )

    def _build_joint(self, scale: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        parts = [(t, s, w) for t, chunk in enumerate(self._joint_parts) for s, w in chunk]
        if not parts:
            return None, None
        states = np.concatenate([s for _, s, _ in parts])
        uniq, inverse = _unique_rows(states, self.limits)
        joint = np.zeros((self.times.shape[0], uniq.shape[0]))
        start = 0
        for t, s, w in parts:
            np.add.at(joint[t], inverse[start : start + s.shape[0]], w * scale[t])
            start += s.shape[0]
        return uniq, joint


def _unique_rows(states: np.ndarray, limits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows in lexicographic order and the inverse map; a flat key when it fits int64."""
    if math.prod(int(m) for m in limits) < 2**62:
        keys = np.ravel_multi_index(states.T, tuple(int(m) for m in limits))
        uniq_keys, inverse = np.unique(keys, return_inverse=True)
        uniq = np.stack(np.unravel_index(uniq_keys, tuple(int(m) for m in limits)), axis=1)
        return uniq.astype(np.int64), inverse.reshape(-1)
    uniq, inverse = np.unique(states, axis=0, return_inverse=True)
    return uniq, inverse.reshape(-1)


def versions() -> dict[str, Any]:
    """Versions of nncme and its stack, the platform and a timestamp, for summaries."""
    out: dict[str, Any] = {}
    for pkg in ("nncme", "torch", "numpy", "scipy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    out["machine"] = platform.machine()
    out["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return out


def solve_into(out: str | Path | None, plots: bool, solve: Callable[[], Result]) -> Result:
    """`solve()`, its Result saved in `out` when one is given (`Result.save`).

    The directory is checked and locked before the solve (a path that cannot serve, or a
    second run on it, stops before any work) and let go after; FSP and SSA share this.
    """
    if out is None:
        return solve()
    with OutputDir(out):
        result = solve()
        result.save(out, plots=plots)
    return result
