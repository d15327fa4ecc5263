"""Settings of `nncme run`, `nncme fsp` and `nncme ssa`: one name per idea for the command line,
TOML files and Python.

    nncme run toggle_switch --batch 2000 --dt 0.005          # command line
    nncme ssa toggle_switch --config study.toml               # a file: the same names
    nncme.run(network, RunConfig(batch=2000, dt=0.005))       # Python
    solve_ssa(network, settings=SSASettings(seed=3, t_end=5))

Each command's settings are a dataclass derived from `Settings`. A field's type and metadata
(`_opt`: help, choices, limits) drive everything else: validation (`ConfigError` names the
field), the command-line flags (`add_settings_arguments`: flag = field name with dashes) and the
reading of command lines and files (`settings_from_args`: defaults < --config file < options).

The ideas every command shares have one name, type, default and meaning, declared once in
`SHARED` and taken with `shared(name)`: the time options (`t_end`, `times`, `save_every`),
`device`, `threads`, `seed`, `out` and `quiet`. A list of times is read by `parse_times` alone.

A TOML file holds settings at its top level (for any command) and in a table named after the
command ([run], [fsp], [ssa]), whose values win; the tables of the other commands are ignored,
so one file can serve a whole study.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import itertools
import math
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "SHARED",
    "ConfigError",
    "RunConfig",
    "Settings",
    "add_settings_arguments",
    "parse_times",
    "settings_from_args",
    "shared",
    "torch_threads",
]


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting."""


S = TypeVar("S", bound="Settings")
# The TOML tables of the commands; a file may hold all of them (each command reads its own).
COMMAND_TABLES = ("run", "fsp", "ssa")


# ------------------------------------------------------------------------------ fields
def _opt(
    default: Any,
    help: str,
    choices: tuple | None = None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A settings field: its default and the metadata that validation and the CLI read.

    Args:
        default: the default value.
        help: what the setting does (the CLI adds the default).
        choices: the allowed values of a string field.
        minimum: smallest allowed value of a number (default 0: no setting here is negative).
        maximum: largest allowed value of a number.
        positive: a float must be > 0, not only >= 0.
        check: value -> an error message or None, for rules the type does not say.
    """
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata={**meta, "positive": positive, "check": check})


def _torch_device(value: str) -> str | None:
    """Why a solve cannot run on device `value` (None: it can), checked with the settings so
    that a missing GPU stops a command before any work, not at its first tensor."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        return f"not a torch device: {value!r} (cpu, cuda, cuda:1, ...)"
    if device.type not in ("cpu", "cuda"):
        return f"nncme runs on cpu or cuda, not {value!r}"
    if device.type == "cpu":
        return None
    if not torch.cuda.is_available():
        build = "CPU-only" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        torch_is = f"torch {torch.__version__}, {build}"
        return f"{value!r} requested but torch sees no CUDA GPU ({torch_is}); use cpu"
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        return f"{value!r} requested but torch sees {count} CUDA GPU(s), cuda:0 .. cuda:{count - 1}"
    return None


class Shared(NamedTuple):
    """One idea every command has: its type, default and help."""

    type: Any
    default: Any
    help: str
    options: dict[str, Any]


SHARED: dict[str, Shared] = {
    "t_end": Shared(float | None, None, "end time (default: the network's)", {"positive": True}),
    "times": Shared(
        list[float] | None,
        None,
        "explicit times: a comma list 0,0.5,2 or START:STOP:NUM (overrides save_every)",
        {},
    ),
    "save_every": Shared(
        float | None,
        None,
        "time between saved results (default: t_end / 10, so 11 times on [0, t_end])",
        {"positive": True},
    ),
    "device": Shared(str, "cpu", "torch device (cpu, cuda, cuda:1, ...)", {"check": _torch_device}),
    "threads": Shared(int, 0, "CPU threads for torch (0: torch's default)", {}),
    "seed": Shared(int, 0, "random seed: the same seed repeats the same run", {}),
    "out": Shared(str | None, None, "output directory", {}),
    "quiet": Shared(bool, False, "no progress bars", {}),
}


def shared(name: str, help: str | None = None) -> Any:
    """The field of shared idea `name` (see SHARED); `help` may say more for one command."""
    spec = SHARED[name]
    return _opt(spec.default, help or spec.help, **spec.options)


# ------------------------------------------------------------------------------ times
def parse_times(value: str | Sequence[float]) -> list[float]:
    """A list of times, from text (a comma list "0,0.5,2" or "START:STOP:NUM") or numbers.

    Every command reads its `times` here, so all take the same forms and give the same errors.

    Raises:
        ConfigError: text in neither form, or times that are not finite, >= 0 and strictly
            increasing.
    """
    times = _times_from_text(value) if isinstance(value, str) else value
    try:
        times = [float(t) for t in times]
    except (TypeError, ValueError):
        raise ConfigError(f"times: must be a list of numbers, got {value!r}") from None
    if not times:
        raise ConfigError("times: give at least one time")
    if any(not math.isfinite(t) or t < 0 for t in times):
        raise ConfigError(f"times: must be finite and >= 0, got {value!r}")
    if any(b <= a for a, b in itertools.pairwise(times)):
        raise ConfigError(f"times: must be strictly increasing, got {value!r}")
    return times


def _times_from_text(text: str) -> list[float]:
    text = text.strip()
    form = "a comma list (0,0.5,2) or START:STOP:NUM"
    try:
        if ":" not in text:
            return [float(x) for x in text.split(",") if x.strip()]
        start, stop, num = (float(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"times: expected {form}, got {text!r}") from None
    if not num.is_integer() or num < 1:
        raise ConfigError(f"times: NUM in START:STOP:NUM must be an integer >= 1, got {text!r}")
    n = int(num)
    return [start + (stop - start) * k / max(n - 1, 1) for k in range(n)]


# ------------------------------------------------------------------------------ the base
class Settings:
    """Base of the settings dataclasses: validation from field types and metadata, and I/O.

    A subclass is a `@dataclass` whose fields are made with `_opt` or `shared`; it sets TABLE
    (its TOML table and command name) and may override `check` for rules between fields.
    Fields typed `list[float]` are lists of times (read by `parse_times`).
    """

    TABLE: ClassVar[str] = ""
    # Every subclass has the shared fields (declared here for type checkers, not as fields).
    t_end: float | None
    times: list[float] | None
    save_every: float | None

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------------- validation
    def validate(self: S) -> S:
        """Check (and normalise: 3.0 -> 3 for ints) every field, then `check`.

        Raises:
            ConfigError: naming the first bad field.
        """
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _checked(f, hints[f.name], getattr(self, f.name))
            setattr(self, f.name, value)
        self.check()
        return self

    def check(self) -> None:
        """Rules between fields (none here); raise ConfigError naming a field."""

    # ---------------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any], *, source: str = "config") -> S:
        """Settings from a mapping of field names (unknown names are an error, with a hint)."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(key.replace("-", "_"), names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{source}: unknown option {key!r}{hint}")
        return cls(**dict(data))

    @classmethod
    def from_toml(cls: type[S], path: str | Path, **overrides: Any) -> S:
        """Read a TOML file (see `read_toml`), then apply overrides."""
        return cls.from_dict({**cls.read_toml(path), **overrides}, source=str(path))

    @classmethod
    def read_toml(cls, path: str | Path) -> dict[str, Any]:
        """This command's settings in a TOML file, not yet validated: the top-level keys, and
        over them those of the table named TABLE; other commands' tables are left out."""
        from .paths import check_input_file

        try:
            path = check_input_file(path, "config")
        except OSError as exc:
            raise ConfigError(str(exc)) from None
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        own = data.get(cls.TABLE, {})
        if not isinstance(own, dict):
            raise ConfigError(f"{path}: {cls.TABLE} must be a table, got {own!r}")
        top = {k: v for k, v in data.items() if k not in COMMAND_TABLES}
        return {**top, **own}

    def replace(self: S, **changes: Any) -> S:
        """A copy with some fields changed (validated)."""
        return type(self).from_dict({**self.to_dict(), **changes}, source="replace")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (what summary.json records)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore

    # ---------------------------------------------------------------------- times
    def save_times(self, t_end: float, dt: float | None = None) -> list[float]:
        """The times after 0 at which results are written, up to and including t_end.

        `times` (those in (0, t_end]), else every `save_every`; without either, t_end / 10,
        rounded to a whole number of steps when the solver steps by dt.
        """
        times = self.times
        if times is not None:
            later = [t for t in times if 0 < t <= t_end * (1 + 1e-12)]
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

    def record_times(self, default_t_end: float) -> list[float]:
        """The times at which fsp and ssa record results.

        `times` as given (with `t_end` also given: those up to t_end, and t_end); else 0 and
        every `save_every` up to `t_end` (default: `default_t_end`, the network's).
        """
        times, t_end = self.times, self.t_end
        if times is not None and t_end is None:
            return list(times)
        t_end = default_t_end if t_end is None else t_end
        start = [0.0] if times is None or times[0] == 0 else []
        return [*start, *self.save_times(t_end)]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(hint: Any) -> tuple[Any, bool]:
    """(base type, whether None is allowed) of a field's type hint: float | None -> float."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return typing.get_origin(rest[0]) or rest[0], True
    return typing.get_origin(hint) or hint, False


def _checked(f: dataclasses.Field, hint: Any, value: Any) -> Any:
    """`value` of field f, checked against its type and metadata (and normalised)."""
    kind, optional = _kind(hint)
    if value is None and optional:
        return None
    meta = f.metadata
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{f.name}: must be true or false, got {value!r}")
    elif kind is int:
        value = _integer(f.name, value, meta)
    elif kind is float:
        value = _number(f.name, value, meta)
    elif kind is list:  # the only lists are lists of times
        value = parse_times(value)
    elif kind is str and not isinstance(value, str):
        raise ConfigError(f"{f.name}: must be a string, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{f.name}: must be one of {', '.join(map(str, choices))}, got {value!r}")
    problem = meta["check"](value) if meta.get("check") else None
    if problem:
        raise ConfigError(f"{f.name}: {problem}")
    return value


def _integer(name: str, value: Any, meta: Mapping[str, Any]) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    minimum = meta.get("minimum") or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    maximum = meta.get("maximum")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}: must be an integer <= {maximum}, got {value!r}")
    return value


def _number(name: str, value: Any, meta: Mapping[str, Any]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: must be a number, got {value!r}")
    value = float(value)
    low, high, positive = meta.get("minimum") or 0.0, meta.get("maximum"), meta.get("positive")
    above = value > low if positive else value >= low
    if not (math.isfinite(value) and above and (high is None or value <= high)):
        raise ConfigError(
            f"{name}: must be finite and {_range(low, high, positive)}, got {value!r}"
        )
    return value


def _range(low: float, high: float | None, positive: bool) -> str:
    if high is None:
        return f"> {low:g}" if positive else f">= {low:g}"
    return f"in {'(' if positive else '['}{low:g}, {high:g}]"


# ------------------------------------------------------------------------------ nncme run
SOLVE_SPACES = ("auto", "parameter", "sample")
# Learning rates used when `lr` is not given.
DEFAULT_LR = {"adam": 1e-2, "sgd": 1e-2, "natgrad": 0.5, "tdvp": 0.0}
# The implicit steps' local error per sub-step where the fits sum over the support (the error
# estimate is exact there: Schlögl's box of 1000 from A = 0 was 0.0031 from FSP at t = 0.03
# with it, 0.0102 with the drawn fits' 1e-2) and where they draw (`RunConfig.resolved`).
SUMMED_DT_TOLERANCE, DRAWN_DT_TOLERANCE = 1e-3, 1e-2


@dataclass
class RunConfig(Settings):
    """Settings of a VAN run (`nncme run`, `nncme.run`). Times are in the rates' time units."""

    TABLE: ClassVar[str] = "run"

    # the model
    model: str = _opt("nade", "VAN architecture", ("nade", "transformer"))
    hidden: int = _opt(16, "hidden width (NADE H; Transformer model width)", minimum=1)
    layers: int = _opt(2, "Transformer blocks", minimum=1)
    heads: int = _opt(4, "Transformer attention heads", minimum=1)
    activation: str = _opt("tanh", "NADE activation", ("tanh", "sigmoid"))
    species_order: str = _opt(
        "auto",
        "the order the model samples species in: auto: each conservation law's species by "
        "increasing initial count, so the law fixes a reservoir, not a small count "
        "(ReactionNetwork.sampling_order); file: as the network lists them. Results keep the "
        "file's order",
        ("auto", "file"),
    )
    # training
    optimizer: str = _opt(
        "adam",
        "per-step update: adam, sgd (first order), natgrad (natural gradient), tdvp",
        ("adam", "sgd", "natgrad", "tdvp"),
    )
    lr: float | None = _opt(
        None,
        "learning rate of the time steps (default: 0.01 adam/sgd, 0.5 natgrad; not tdvp, nor "
        "adam/sgd fits summed over a small support, which L-BFGS makes: enumerate_states)",
        positive=True,
    )
    lr_decay: float = _opt(
        0.1,
        "learning rate at a step's last iteration, as a fraction of lr (constant for the first "
        "half of the iterations, then cosine; 1: constant throughout)",
        positive=True,
        maximum=1.0,
    )
    batch: int = _opt(
        1000, "samples per iteration (fitted steps start here: see max_batch_factor)", minimum=1
    )
    max_batch_factor: int = _opt(
        4,
        "fitted steps: the batch doubles, up to this factor, while the fits make less than 90 % "
        "of each step's motion (a lag later steps cannot make up) or most end at their "
        "iteration cap with over 10 % of their misfit left (their draws' noise); 1: a fixed "
        "batch",
        minimum=1,
    )
    enumerate_states: int = _opt(
        131072,
        "fitted steps (not tdvp) sum their objective exactly over the model's whole support "
        "(adam/sgd: by L-BFGS; one process), "
        "instead of drawing batches, where it holds at most this many states (the box, or the "
        "states on the conservation laws) and an evaluation of the sum runs at most 4096 "
        "distinct prefixes through the network (a box of two species of 100 counts: 100); "
        "0: always draw",
        minimum=0,
    )
    iterations: int = _opt(
        60,
        "optimiser iterations per time step (the maximum with --tolerance; a fit summed over a "
        "small support takes up to twice as many L-BFGS evaluations, an exponential step's fit "
        "up to 40 times as many iterations)",
        minimum=1,
    )
    tolerance: float = _opt(1e-6, "stop a step once its fit residual (nats) is below this")
    relative_tolerance: float = _opt(
        0.01,
        "stop a step once its residual is below this fraction of its first (0: off; not the "
        "exponential steps' fits, which stop once their objective is below 1e-8)",
    )
    min_iterations: int = _opt(3, "iterations per step before a stopping rule may act", minimum=1)
    explore: float = _opt(
        0.2,
        "fraction of extra training states one reaction away from the samples (0: off)",
        maximum=1.0,
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
        "where training states come from (importance-weighted); auto: alpha (tempered model "
        "draws, which reach the model's own tails) where adam's fits draw the states of a "
        "network with three or more free counts, mixture (model draws and uniform ones over the "
        "box, which reach the states where leaked mass sits) otherwise",
        ("auto", "vanilla", "mixture", "prefix_mixture", "diffusive", "alpha"),
    )
    objective: str = _opt(
        "auto",
        "what each step minimises: reverse KL (importance-weighted), or the log-variance "
        "divergence under the proposal (fits the tails a wide proposal draws, and keeps mass "
        "off the states the target has none; tdvp: its least squares weighted as drawn, not by "
        "q); auto: log_variance with a mixture proposal on a network with one free count or "
        "a summed support, and with an alpha proposal under adam, kl otherwise",
        ("auto", "kl", "log_variance"),
    )
    mixture_eps: float = _opt(
        0.1,
        "mixture proposals: fraction drawn uniformly over the box (prefix_mixture: over the "
        "species after a prefix kept from q)",
        maximum=1.0,
    )
    diffusive_width: int = _opt(2, "diffusive proposal: half-width of the kernel (counts)")
    alpha: float = _opt(0.8, "alpha proposal: exponent of the tempered conditionals", positive=True)
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
        "auto",
        "Fisher/TDVP solve: parameter (P x P; over many processes summed over the ranks) or "
        "sample (N x N, N the distinct states; over many processes they are gathered) space; "
        "auto: the smaller",
        SOLVE_SPACES,
    )
    gradients: str = _opt(
        "auto",
        "second-order solves: gram (NADE Gram matrix, no per-sample gradients), analytic "
        "(NADE) or torch.func per-sample gradients; auto: gram where the solve is in sample space",
        ("auto", "gram", "analytic", "func"),
    )
    max_step: float = _opt(1.0, "natgrad: largest step in the Fisher metric (nats; 0: no cap)")
    integrator: str = _opt(
        "auto",
        "time scheme: euler (explicit, first order), heun (explicit, second order: two fits or "
        "two TDVP stages per step), rk4 (TDVP only), implicit (BDF2 after one backward-Euler "
        "step, adam/sgd: stable at any dt, second order; implicit_order), auto: heun, with "
        "adaptive implicit steps (adam/sgd) while the mass sits where dt a_0 > 0.9; "
        "ssp (explicit, second order: ssp_stages fits per step, positive while dt a_0 < "
        "ssp_stages - 1)",
        ("auto", "euler", "heun", "rk4", "implicit", "ssp"),
    )
    ssp_stages: int | None = _opt(
        None,
        "stages s of SSPRK(s, 2) (s - 1 Euler moves of dt / (s - 1); 2 is heun: where dt a_0 "
        "limits the step, s fits cross s - 1 times Euler's limit) for integrator ssp (default "
        "4) and the explicit steps of auto (default 2)",
        minimum=2,
    )
    adaptive_dt: bool = _opt(
        False, "tdvp, implicit: adaptive sub-steps within each dt, from a local error estimate"
    )
    implicit_order: int = _opt(
        2,
        "implicit steps (integrator implicit, auto): 2 BDF2 (second order; each step after the "
        "first of a stretch of implicit ones), 1 backward Euler (first order: it widens a "
        "moving law)",
        (1, 2),
    )
    dt_tolerance: float | None = _opt(
        None,
        "implicit steps (auto, implicit with adaptive_dt) and tdvp with adaptive_dt: local "
        "error per sub-step allowed (relative RMS; nats for tdvp; auto's exponential steps: "
        "the time error of a time-dependent rate); default: 1e-3 where the "
        "fits sum over the whole support (the estimate is exact there), 1e-2 where they draw "
        "(the estimate carries the fits' noise, which a tighter one would chase)",
        positive=True,
    )
    max_motion: float = _opt(
        0.05,
        "explicit fitted steps (adam, sgd, natgrad; heun, euler, ssp, auto): cut a step into up "
        "to 16 equal sub-steps so that each fit moves the distribution by at most this (relative "
        "RMS change of q; the first steps from a point mass, fast transients); 0: off",
    )
    max_dt: float | None = _opt(
        None,
        "longest step: steps grow from dt, in whole steps dt, where the distribution moves "
        "slowly (as far as max_motion, the explicit map's positivity or the implicit steps' "
        "error allow; never past a save time); default: the time between saves; 0: every "
        "step dt",
    )
    supervise: str | None = _opt(
        None,
        "hold the run to observables along it (nncme.optim.supervision): 'moments' (the exact "
        "means and variances of the network's closed linear species) or a CSV of observables "
        "(kind,species,t,value,sigma,...; linear in time between their times); adam/sgd/natgrad",
    )
    supervise_weight: float = _opt(
        1.0,
        "weight of the observable term (1: an observable's error costs about the KL of the "
        "smallest change of q that corrects it; larger holds the observables harder)",
    )
    first_iterations: int = _opt(3000, "iterations of the first step's fit", minimum=1)
    first_lr: float = _opt(0.1, "learning rate of the first step's fit", positive=True)
    # Fitted only to 1e-4, the first fit leaves parameters from which the next fits let mass
    # grow, step after step, on counts far from the law: a floor spread over the box that
    # lifts small means (the protein of benchmarks/networks/two_stage_wide_box.toml; the
    # README's "first fit"). Run to its cap on a first step's listed states it costs seconds.
    first_tolerance: float = _opt(
        1e-9, "KL (nats) at which the first step's fit stops (else at first_iterations)"
    )
    # time
    dt: float | None = _opt(None, "time step (default: the network's)", positive=True)
    t_end: float | None = shared("t_end")
    save_every: float | None = shared(
        "save_every", "time between saved results (default: t_end / 10, in whole steps dt)"
    )
    times: list[float] | None = shared("times")
    initial: str = _opt(
        "delta",
        "start distribution: the exact initial counts, or Poisson marginals with those means",
        ("delta", "poisson"),
    )
    # results
    eval_samples: int = _opt(20000, "samples behind the marginals at each save time", minimum=1)
    joint_max_states: int = _opt(100_000, "store the model's joint when the box is this small")
    # runtime
    device: str = shared("device")
    dtype: str = _opt("float64", "floating point type", ("float32", "float64"))
    seed: int = shared("seed", "random seed of the parameters and samples")
    impl: str = _opt("auto", "operator implementation", ("auto", "fused", "reference"))
    threads: int = shared("threads")
    memory_mb: float = _opt(
        128.0,
        "MiB of neighbour counts a step's target forms at once (states x reactions x species, "
        "int64); larger lattices are taken in more chunks, not more memory",
        positive=True,
    )
    out: str | None = shared(
        "out", "output directory: results, log, checkpoint (command line: results/NETWORK/van)"
    )
    resume: bool = _opt(False, "continue the run in --out from its last checkpoint")
    quiet: bool = shared("quiet")

    # Fields that may change when a run resumes (they do not alter what was computed so far).
    RESUMABLE = ("t_end", "out", "resume", "quiet", "threads", "device", "memory_mb")

    def check(self) -> None:
        """Rules between fields: rk4 is for TDVP, heads divide the width, resume needs out."""
        if self.integrator == "rk4" and self.optimizer != "tdvp":
            raise ConfigError(
                f"integrator: rk4 is for optimizer tdvp; {self.optimizer} steps take euler or heun"
            )
        if self.integrator == "implicit" and self.optimizer not in ("adam", "sgd"):
            raise ConfigError(
                f"integrator: implicit steps fit with adam or sgd; {self.optimizer} steps are "
                "explicit (euler, heun)"
            )
        if self.adaptive_dt and self.optimizer != "tdvp" and self.integrator != "implicit":
            raise ConfigError(
                "adaptive_dt: adaptive sub-steps are for optimizer tdvp or integrator implicit, "
                f"not {self.optimizer} with {self.integrator}"
            )
        if self.hidden % self.heads and self.model == "transformer":
            raise ConfigError(f"hidden: {self.hidden} must be a multiple of heads ({self.heads})")
        if self.supervise is not None and self.optimizer == "tdvp":
            raise ConfigError("supervise: observable supervision is for fitted steps, not tdvp")
        if self.resume and not self.out:
            raise ConfigError("resume: needs out, the directory of the run to continue")

    # ---------------------------------------------------------------------- derived values
    @property
    def learning_rate(self) -> float:
        """`lr`, or the optimiser's default when it is not given."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def time_scheme(self) -> str:
        """`integrator`, with "auto" resolved: "heun" for natgrad and tdvp (explicit only)."""
        if self.integrator == "auto" and self.optimizer in ("natgrad", "tdvp"):
            return "heun"
        return self.integrator

    @property
    def explicit_stages(self) -> int:
        """`ssp_stages`, or its default for the integrator: 4 for ssp, 2 (Heun) for auto."""
        if self.ssp_stages is not None:
            return int(self.ssp_stages)
        return 4 if self.integrator == "ssp" else 2

    @property
    def sampling_proposal(self) -> str:
        """`proposal`, with "auto" resolved as for a network of one free count (`resolved`
        says what Adam's drawn fits of three or more get): "mixture" for every optimiser (its
        uniform draws reach the states where leaked mass would sit; model draws alone leave
        natgrad's fits a floor on the tail, benchmarks/results/defaults_cpu_natgrad*.json)."""
        return self.proposal if self.proposal != "auto" else "mixture"

    def resolved(self, free_dimensions: int, enumerable: bool = False) -> RunConfig:
        """A copy with "auto" proposal and objective replaced by what a network with this
        many `free_dimensions` (`ReactionNetwork.free_dimensions`) gets, and whose support
        the fits sum over exactly (`enumerable`: at most `enumerate_states` states).

        The objective: "log_variance" where the steps fit to a mixture proposal's draws of a
        network with one free count (it weighs the uniform draws as drawn, so leaked tail
        mass is pulled down, where reverse KL weighs them by their tiny q). In a box of two or
        more free counts most uniform draws land where neither the model nor the target has
        mass, and fitting log q there costs the bulk its accuracy
        (benchmarks/results/defaults_cpu_compare.md). With three or more, Adam's drawn fits
        take the alpha proposal (each conditional tempered, q^alpha: draws that reach the
        model's own tails, not the empty box) with the log-variance objective, which fits
        log q at those draws as it does in the bulk. Under reverse KL (mixture draws) a
        tail's log q is fitted only as much as its tiny mass weighs, the next step's target
        inherits what error a fit leaves there (T q_old carries q_old's tail), and since
        probability is exponential in log q, errors of either sign add up to mass where the
        fits are noisy (README, "Defaults: tempered draws", for the networks measured). With
        two free counts, whose drawn fits were quiet where measured, the mixture's uniform
        draws under reverse KL kept the far box emptier than tempered draws, which never
        reach it. SGD, natural gradient and TDVP keep the mixture and "kl" (not measured
        with the alpha proposal). Also "log_variance" where the support is summed exactly,
        whatever its dimensions: there the sum has no noise to cost the bulk anything, while
        the exact reverse KL, blind to the tails, lets L-BFGS move them at will (a floor of
        1e-7 grew to 1e-5 in 0.3 time units where the CME drains it).

        The implicit steps' `dt_tolerance`: SUMMED_DT_TOLERANCE where the support is summed,
        DRAWN_DT_TOLERANCE where the fits draw.
        """
        one_free = free_dimensions <= 1
        adam = self.optimizer == "adam"
        proposal = self.sampling_proposal
        if self.proposal == "auto" and adam and free_dimensions >= 3 and not enumerable:
            proposal = "alpha"
        objective = self.objective
        if objective == "auto":
            mixture = proposal in ("mixture", "prefix_mixture")
            wide = mixture and (one_free or enumerable)  # tdvp: least squares as drawn
            tempered = proposal == "alpha" and adam
            objective = "log_variance" if wide or tempered else "kl"
        tolerance = self.dt_tolerance
        if tolerance is None:
            tolerance = SUMMED_DT_TOLERANCE if enumerable else DRAWN_DT_TOLERANCE
        return dataclasses.replace(
            self, proposal=proposal, objective=objective, dt_tolerance=tolerance
        )


# ------------------------------------------------------------------------------ the command line
def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[Settings]) -> None:
    """One option per field of `cls` (--t-end <-> t_end), and --config FILE.

    Options that are not given stay out of the parsed namespace, so a config file's values
    survive unless the command line names them (see `settings_from_args`).
    """
    parser.add_argument(
        "--config",
        metavar="TOML",
        help=f"settings file with the same names as the options (top level or [{cls.TABLE}])",
    )
    own = parser.add_argument_group(f"{cls.TABLE} settings (also keys of a --config file)")
    common = parser.add_argument_group("settings every command shares (run, fsp, ssa)")
    hints = _hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        group = common if f.name in SHARED else own
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(flag, **_argument(f, hints[f.name]))


def _argument(f: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """The add_argument keywords of a field: type, metavar, choices, help with the default."""
    kind, _ = _kind(hint)
    text = f.metadata.get("help", "").replace("%", "%%")
    kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text}
    if kind is bool:  # --x, or --x/--no-x where x is on by default
        kw["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        kw["help"] = f"{text} (default: {'on' if f.default else 'off'})"
        return kw
    kinds = {int: (int, "N"), float: (float, "X"), list: (str, "LIST"), str: (str, None)}
    kw["type"], metavar = kinds[kind]
    if metavar:
        kw["metavar"] = metavar
    if f.metadata.get("choices"):
        kw["choices"] = f.metadata["choices"]
    if f.default is not None:
        kw["help"] = f"{text} (default: {f.default})"
    return kw


def settings_from_args(cls: type[S], args: argparse.Namespace, **defaults: Any) -> S:
    """The settings a parsed command line asks for: `defaults` < --config file < options.

    Raises:
        ConfigError: a bad value or an unknown key in the file, naming it.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    path = getattr(args, "config", None)
    from_file = cls.read_toml(path) if path else {}
    return cls.from_dict({**defaults, **from_file, **given}, source=path or "options")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """The `threads` setting for the duration of a block: torch's CPU threads (0: unchanged)."""
    import torch

    if not threads:  # 0: leave torch's setting untouched (no set_num_threads call at all)
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
