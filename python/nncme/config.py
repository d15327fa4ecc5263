"""`RunConfig`: every knob of a VAN run, one name per idea for the CLI, TOML files and Python.

    nncme run toggle_switch --batch 2000 --dt 0.005         # command line
    nncme run toggle_switch --config run.toml                # a file: the same names
    nncme.run(network, RunConfig(batch=2000, dt=0.005))      # Python

A TOML file holds the fields at its top level or in a [run] table; command-line options
override the file, which overrides the defaults. Bad values raise `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigError", "RunConfig"]


class ConfigError(ValueError):
    """A run option is invalid; the message names the option."""


SOLVE_SPACES = ("auto", "parameter", "sample")
# Learning rates used when `lr` is not given.
DEFAULT_LR = {"adam": 1e-2, "sgd": 1e-2, "natgrad": 0.5, "tdvp": 0.0}


def _opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class RunConfig:
    """Settings of a VAN run (`nncme run`, `nncme.run`). Times are in the rates' time units."""

    # the model
    model: str = _opt("nade", "VAN architecture", ("nade", "transformer"))
    hidden: int = _opt(16, "hidden width (NADE H; Transformer model width)")
    layers: int = _opt(2, "Transformer blocks")
    heads: int = _opt(4, "Transformer attention heads")
    activation: str = _opt("tanh", "NADE activation", ("tanh", "sigmoid"))
    # training
    optimizer: str = _opt(
        "adam",
        "per-step update: adam, sgd (first order), natgrad (natural gradient), tdvp",
        ("adam", "sgd", "natgrad", "tdvp"),
    )
    lr: float | None = _opt(
        None, "learning rate of the time steps (default: 0.01 adam/sgd, 0.5 natgrad; not tdvp)"
    )
    lr_decay: float = _opt(
        0.1,
        "learning rate at a step's last iteration, as a fraction of lr (constant for the first "
        "half of the iterations, then cosine; 1: constant throughout)",
    )
    batch: int = _opt(1000, "samples per iteration")
    iterations: int = _opt(60, "optimiser iterations per time step (the maximum with --tolerance)")
    tolerance: float = _opt(1e-6, "stop a step once its fit residual (nats) is below this")
    relative_tolerance: float = _opt(
        0.01, "stop a step once its residual is below this fraction of its first (0: off)"
    )
    min_iterations: int = _opt(3, "iterations per step before a stopping rule may act")
    explore: float = _opt(
        0.2, "fraction of extra training states one reaction away from the samples (0: off)"
    )
    explore_baseline: str = _opt(
        "samples",
        "what the explored states' log q - log T q_old is measured against: the samples' mean "
        "(they can draw mass off the samples, e.g. off a point mass) or their own (adam/sgd/"
        "natgrad)",
        ("samples", "own"),
    )
    proposal: str = _opt(
        "auto",
        "where training states come from (importance-weighted); auto: vanilla, but mixture "
        "for tdvp (which moves log q only at drawn states)",
        ("auto", "vanilla", "mixture", "prefix_mixture", "diffusive", "alpha"),
    )
    objective: str = _opt(
        "kl",
        "what each step minimises: reverse KL (importance-weighted), or the log-variance "
        "divergence under the proposal (fits the tails a wide proposal draws; adam/sgd/natgrad; "
        "with --proposal mixture, keeps a point-mass start's unseen states from filling up)",
        ("kl", "log_variance"),
    )
    mixture_eps: float = _opt(
        0.1,
        "mixture proposals: fraction drawn uniformly over the box (prefix_mixture: over the "
        "species after a prefix kept from q)",
    )
    diffusive_width: int = _opt(2, "diffusive proposal: half-width of the kernel (counts)")
    alpha: float = _opt(0.8, "alpha proposal: exponent of the tempered conditionals")
    psis: bool = _opt(False, "Pareto-smooth the largest importance weights (PSIS)")
    # second order (natgrad, tdvp)
    shift: float = _opt(
        1e-3, "Fisher/TDVP shift lambda (relative to the mean eigenvalue with adaptive_shift)"
    )
    adaptive_shift: bool = _opt(True, "scale the shift to the spectrum of the Fisher matrix")
    cv_shift: bool = _opt(
        False,
        "tdvp: choose the shift at each evaluation by 2-fold cross-validation of the fit over "
        "relative shifts 1e-6..100 (stabilises TDVP with fewer samples than parameters)",
    )
    solve_space: str = _opt(
        "auto", "Fisher/TDVP solve: parameter (P x P) or sample (B x B) space", SOLVE_SPACES
    )
    gradients: str = _opt(
        "auto",
        "second-order solves: gram (NADE Gram matrix, no per-sample gradients), analytic "
        "(NADE) or torch.func per-sample gradients; auto: gram where the solve is in sample space",
        ("auto", "gram", "analytic", "func"),
    )
    max_step: float = _opt(1.0, "natgrad: largest step in the Fisher metric (nats; 0: no cap)")
    integrator: str = _opt(
        "heun",
        "time scheme: euler (first order), heun (second order: two fits or two TDVP stages "
        "per step), rk4 (TDVP only)",
        ("euler", "heun", "rk4"),
    )
    adaptive_dt: bool = _opt(False, "tdvp: adaptive integrator sub-steps within each dt")
    dt_tolerance: float = _opt(1e-2, "TDVP: error per adaptive step allowed (nats)")
    first_iterations: int = _opt(3000, "iterations of the first step's fit")
    first_lr: float = _opt(0.1, "learning rate of the first step's fit")
    first_tolerance: float = _opt(1e-4, "KL (nats) at which the first step's fit stops")
    # time
    dt: float | None = _opt(None, "time step (default: the network's)")
    t_end: float | None = _opt(None, "end time (default: the network's)")
    save_every: float | None = _opt(None, "time between saved results (default: t_end / 10)")
    times: list[float] | None = field(
        default=None,
        metadata={"help": "explicit save times: 0.5,1,2 or START:STOP:NUM (overrides save_every)"},
    )
    initial: str = _opt(
        "delta",
        "start distribution: the exact initial counts, or Poisson marginals with those means",
        ("delta", "poisson"),
    )
    # results
    eval_samples: int = _opt(20000, "samples behind the marginals at each save time")
    joint_max_states: int = _opt(100_000, "store the model's joint when the box is this small")
    # runtime
    device: str = _opt("cpu", "torch device (cpu, cuda, cuda:1, ...)")
    dtype: str = _opt("float64", "floating point type", ("float32", "float64"))
    seed: int = _opt(0, "random seed (parameters and samples)")
    impl: str = _opt("auto", "operator implementation", ("auto", "fused", "reference"))
    threads: int = _opt(0, "CPU threads for torch (0: torch's default)")
    out: str | None = _opt(None, "output directory (results, log, checkpoint)")
    resume: bool = _opt(False, "continue the run in --out from its last checkpoint")
    quiet: bool = _opt(False, "no progress bar")

    # Fields that may change when a run resumes (they do not alter what was computed so far).
    RESUMABLE = ("t_end", "out", "resume", "quiet", "threads", "device")

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------------- validation
    def validate(self) -> RunConfig:
        """Check every field; raise ConfigError naming the first bad one."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"{f.name}: must be one of {', '.join(choices)}, got {value!r}")
        positive_int = ("hidden", "layers", "heads", "batch", "iterations", "min_iterations")
        for name in (*positive_int, "first_iterations", "eval_samples"):
            _int(self, name, minimum=1)
        _int(self, "seed", minimum=0)
        _int(self, "threads", minimum=0)
        _int(self, "joint_max_states", minimum=0)
        if self.integrator == "rk4" and self.optimizer != "tdvp":
            raise ConfigError(
                f"integrator: rk4 is for optimizer tdvp; {self.optimizer} steps take euler or heun"
            )
        if self.adaptive_dt and self.optimizer != "tdvp":
            raise ConfigError(
                f"adaptive_dt: adaptive sub-steps are for optimizer tdvp, not {self.optimizer}"
            )
        if self.hidden % self.heads and self.model == "transformer":
            raise ConfigError(f"hidden: {self.hidden} must be a multiple of heads ({self.heads})")
        for name in ("lr", "first_lr", "alpha", "dt_tolerance"):
            if name != "lr" or self.lr is not None:
                _float(self, name, positive=True)
        for name in ("mixture_eps", "shift", "max_step"):
            _float(self, name)
        _float(self, "lr_decay", positive=True)
        if self.lr_decay > 1:
            raise ConfigError(f"lr_decay: must be in (0, 1], got {self.lr_decay}")
        if self.mixture_eps > 1:
            raise ConfigError(f"mixture_eps: must be in [0, 1], got {self.mixture_eps}")
        _int(self, "diffusive_width", minimum=0)
        for name in ("tolerance", "relative_tolerance", "first_tolerance"):
            _float(self, name)
        _float(self, "explore")
        if self.explore > 1:
            raise ConfigError(f"explore: must be in [0, 1], got {self.explore}")
        for name in ("dt", "t_end", "save_every"):
            if getattr(self, name) is not None:
                _float(self, name, positive=True)
        if self.times is not None:
            try:
                times = [float(t) for t in self.times]
            except (TypeError, ValueError):
                raise ConfigError(f"times: must be a list of numbers, got {self.times!r}") from None
            if not times or any(not math.isfinite(t) or t < 0 for t in times):
                raise ConfigError(f"times: must be finite and >= 0, got {self.times!r}")
            self.times = sorted(set(times))
        for name in ("resume", "quiet", "psis", "adaptive_shift", "cv_shift", "adaptive_dt"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if self.resume and not self.out:
            raise ConfigError("resume: needs out, the directory of the run to continue")
        return self

    # ---------------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> RunConfig:
        """A config from a mapping of field names (unknown names are an error)."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(key.replace("-", "_"), names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{source}: unknown option {key!r}{hint}")
        return cls(**dict(data))

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> RunConfig:
        """Read a TOML file (fields at top level or in a [run] table), then apply overrides."""
        return cls.from_dict({**cls.read_toml(path), **overrides}, source=str(path))

    @staticmethod
    def read_toml(path: str | Path) -> dict[str, Any]:
        """The settings in a TOML file, as a dict (not yet validated)."""
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config: no such file {str(path)!r}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        if "run" in data and isinstance(data["run"], dict):
            extra = [k for k in data if k != "run"]
            if extra:
                raise ConfigError(f"{path}: keys outside [run]: {', '.join(extra)}")
            data = data["run"]
        return data

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated)."""
        return RunConfig.from_dict({**self.to_dict(), **changes}, source="replace")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    # ---------------------------------------------------------------------- derived values
    @property
    def learning_rate(self) -> float:
        """`lr`, or the optimiser's default when it is not given."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def sampling_proposal(self) -> str:
        """`proposal`, with "auto" resolved: "mixture" for TDVP, "vanilla" otherwise."""
        if self.proposal != "auto":
            return self.proposal
        return "mixture" if self.optimizer == "tdvp" else "vanilla"

    def save_times(self, t_end: float, dt: float | None = None) -> list[float]:
        """The times (after 0) at which results and checkpoints are written; t_end included.

        Without `times` or `save_every`: t_end / 10, rounded to a whole number of steps dt.
        """
        if self.times is not None:
            later = [t for t in self.times if 0 < t <= t_end * (1 + 1e-12)]
            if not later:
                raise ConfigError(f"times: none lies in (0, t_end = {t_end:g}]")
            if later[-1] < t_end * (1 - 1e-12):
                later.append(t_end)
            return later
        every = self.save_every
        if every is None:
            every = t_end / 10
            if dt is not None:
                every = max(1, round(every / dt)) * dt
        n = max(1, math.floor(t_end / every * (1 + 1e-9)))
        out = [min(k * every, t_end) for k in range(1, n + 1)]
        if out[-1] < t_end * (1 - 1e-9):
            out.append(t_end)
        return out


def _int(cfg: RunConfig, name: str, *, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
        setattr(cfg, name, value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def _float(cfg: RunConfig, name: str, *, positive: bool = False) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name}: must be finite and {need}, got {value!r}")
    setattr(cfg, name, value)
