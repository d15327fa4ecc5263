"""What a run does besides stepping: observers the `Driver` calls, each with one job.

- `ProgressBar`: the tqdm bar.
- `Watchdog`: stops a run whose fits diverge, and warns about steps that went wrong first.
- `StepLog`: one line per step (loss, iterations, dt * a_0, ...) in memory and in log.jsonl.
- `Recorder`: the distribution's statistics at t = 0 and every save time, the `Result` built
  from them (written at each save time and at the end).
- `Checkpoints`: checkpoint.pt at every save time (model, stepper and optimiser state, random
  stream, step, and every observer's state), and `restore` to resume from it.
- `OutputLock`: holds the output directory's lock for the run (`nncme.paths.OutputDir`).

The driver calls, in the order the observers were given: `start` before the first step of a
run (fresh or resumed), `step` after every step, `save` after a step that ends on a save time,
`finish` after the last step (or when a callback stops the run), `failed` when a step fails
(it may return a line for the error message), and `close` always. An observer with a `key`
keeps state in the checkpoint under that key.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ConfigError
from .exact import enumerate_states
from .models import AutoregressiveModel
from .network import NetworkError
from .optim import DivergenceError, StepReport
from .paths import OutputDir, atomic_write
from .results import Result, ResultBuilder, versions

if TYPE_CHECKING:
    from .evolve import Driver

__all__ = [
    "CHECKPOINT",
    "LOG",
    "PREVIOUS_CHECKPOINT",
    "CheckpointWarning",
    "Checkpoints",
    "Observer",
    "OutputLock",
    "ProgressBar",
    "Recorder",
    "StepInfo",
    "StepLog",
    "Watchdog",
    "box_states",
    "summarize",
]

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
LOG = "log.jsonl"
CHECKPOINT_FORMAT = 2
# Largest support of a distribution whose statistics are computed over its listed states.
MAX_ENUMERATED = 200_000
LAW_MASS_TOLERANCE = 1e-4  # a VAN masked to the laws sums to 1 on their states to rounding


@dataclass
class StepInfo:
    """What observers and callbacks receive after every time step.

    Attributes:
        step: index of the step just done (1-based); t: the time reached; dt: its length.
        report: what the stepper did.  model: the VAN (do not modify).
        elapsed: seconds since the run (or its resumption) began.
    """

    step: int
    t: float
    dt: float
    report: StepReport
    model: AutoregressiveModel
    elapsed: float


class Observer:
    """Base class: every hook does nothing."""

    key: str | None = None

    def start(self, driver: Driver) -> None:
        pass

    def step(self, driver: Driver, info: StepInfo) -> None:
        pass

    def save(self, driver: Driver, info: StepInfo) -> None:
        pass

    def finish(self, driver: Driver) -> None:
        pass

    def close(self, driver: Driver) -> None:
        pass

    def failed(self, driver: Driver, error: Exception) -> str:
        return ""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ProgressBar(Observer):
    """A tqdm bar over the steps, with t and the loss."""

    def __init__(self, name: str, *, quiet: bool = False) -> None:
        self.name, self.quiet = name, quiet
        self.bar: Any = None

    def start(self, driver: Driver) -> None:
        self.bar = tqdm(
            total=driver.num_steps,
            initial=driver.index,
            unit="step",
            desc=self.name,
            disable=self.quiet,
            mininterval=0.5,
            dynamic_ncols=True,
        )

    def step(self, driver: Driver, info: StepInfo) -> None:
        self.bar.update(info.step - self.bar.n)  # a grown step covers several of the grid
        self.bar.set_postfix_str(f"t={info.t:.4g} loss={info.report.loss:.2e}", refresh=False)

    def close(self, driver: Driver) -> None:
        if self.bar is not None:
            self.bar.close()


class Watchdog(Observer):
    """Stops a run whose fits diverge, and warns about steps that went wrong before.

    A fit's loss is its estimate of the KL from the model to the step's target: far below a nat
    per step where the fit follows its target, however the network or dt. Its residual (about
    half the variance of log q - log target, explored states included) can be large for a
    while where mass flows into new states, so only its jumps count. So:

    - a loss beyond `limit` (nats) is divergence: the run stops at once
      (`DivergenceError`), with the last checkpoint, which no diverged step reached;
    - a step whose residual jumps to more than `jump` times the run's median so far, or that
      used every iteration without reducing its residual at all, gets a warning (on the step's
      log line, in summary.json, and as a Python warning) where the residual is above `floor`
      (below it, what is left is the sampling noise of a fit that has arrived);
    - `patience` warned steps in a row stop the run as divergence.

    TDVP's residual is a relative misfit (0: the flow follows the CME, 1: it captures nothing):
    for flows (`limit=None`) a residual above 1 is a warning, and divergence shows as NaN.

    An explicit step whose draw has more than `stiff` of its weight where dt a_0 > 0.9 (where
    the explicit map saturates to stay a probability map, `nncme.optim.target`) is warned
    about too: dt is too large for where the mass is. That warning does not count towards
    `patience`: the step is a probability map, only a less accurate one.
    """

    key = "watchdog"

    def __init__(
        self,
        *,
        limit: float | None = 1.0,
        jump: float = 20.0,
        floor: float = 1e-2,
        patience: int = 5,
        warm_up: int = 10,
        stiff: float = 1e-3,
    ) -> None:
        self.limit, self.jump, self.floor, self.stiff = limit, jump, floor, stiff
        self.patience, self.warm_up = patience, warm_up
        # the good steps' residuals per scheme: an implicit step's residual (the backward-Euler
        # equation's) is not on the scale of an explicit fit's, and `auto` runs take both
        self.residuals: dict[str, list[float]] = {}
        self.streak = 0
        self.stiff_warned = False

    def step(self, driver: Driver, info: StepInfo) -> None:
        report = info.report
        if self.limit is not None and not abs(report.loss) <= self.limit:
            raise DivergenceError(
                f"the fit diverged: its KL estimate is {report.loss:.3g} nats (a fit that "
                f"follows its target stays far below {self.limit:g}); lower lr or dt"
            )
        problems = self._problems(report)
        stiff = self._stiffness(report)
        if stiff and not self.stiff_warned:  # once per run: it holds for many steps alike
            self.stiff_warned = True
            warnings.warn(f"step {info.step} (t = {info.t:g}): {stiff[0]}", stacklevel=2)
        report.warnings += problems + stiff
        if not problems:  # the median is of good steps: a streak of bad ones does not move it
            self.residuals.setdefault(report.scheme, []).append(report.residual)
        self.streak = self.streak + 1 if problems else 0
        if problems:
            warnings.warn(f"step {info.step} (t = {info.t:g}): {'; '.join(problems)}", stacklevel=2)
        if self.streak >= self.patience:
            raise DivergenceError(
                f"{self.streak} steps in a row went wrong, the last: {'; '.join(problems)}"
            )

    def _problems(self, report: StepReport) -> list[str]:
        found = []
        if self.limit is None and report.residual > 1.0:
            found.append(f"the flow's relative residual is {report.residual:.3g} (> 1)")
        seen = self.residuals.get(report.scheme, [])
        if len(seen) >= self.warm_up:
            median = float(np.median(seen))
            if report.residual > max(self.jump * median, self.floor):
                found.append(
                    f"residual {report.residual:.3g} nats, {report.residual / median:.3g}x the "
                    "median of the run's good steps"
                )
        if report.capped and len(report.residuals) > 1 and report.residual > self.floor:
            if report.residuals[-1] >= report.residuals[0]:
                found.append(
                    f"the fit used all {report.iterations} iterations without reducing its "
                    f"residual ({report.residuals[0]:.3g} -> {report.residuals[-1]:.3g})"
                )
        return found

    def _stiffness(self, report: StepReport) -> list[str]:
        if not report.stiff_mass > self.stiff:
            return []
        return [
            f"dt * a_0 > 0.9 on {report.stiff_mass:.2%} of the mass (up to "
            f"{report.rate_dt:.3g} on the states drawn): the explicit step is not accurate "
            "there; use a smaller dt or --integrator implicit"
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"residuals": {k: list(v) for k, v in self.residuals.items()}, "streak": self.streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["residuals"]
        if isinstance(saved, list):  # a checkpoint from before residuals were kept per scheme
            saved = {"": saved}
        self.residuals = {k: list(v) for k, v in saved.items()}
        self.streak = int(state["streak"])


class StepLog(Observer):
    """One dict per step (`history`), appended to `directory/log.jsonl` when given."""

    key = "history"

    def __init__(self, directory: Path | None = None) -> None:
        self.path = directory / LOG if directory is not None else None
        self.history: list[dict[str, Any]] = []

    def start(self, driver: Driver) -> None:
        """A fresh log, or, on resume, the log as it was at the checkpoint."""
        self._write_whole()

    def step(self, driver: Driver, info: StepInfo) -> None:
        line = {"step": info.step, "t": info.t, "dt": info.dt, **info.report.log_fields()}
        self.history.append(line)
        if self.path is not None:  # appended as the run goes, so a kill loses at most a line
            with open(self.path, "a") as fh:
                fh.write(json.dumps(line) + "\n")

    def finish(self, driver: Driver) -> None:
        """The log's final form, written whole (a torn last line of a kill is gone)."""
        self._write_whole()

    def _write_whole(self) -> None:
        if self.path is not None:
            with atomic_write(self.path) as fh:
                fh.write("".join(json.dumps(line) + "\n" for line in self.history))

    def state_dict(self) -> dict[str, Any]:
        return {"lines": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["lines"])


class Recorder(Observer):
    """Statistics of the distribution at t = 0 and every save time, and the `Result`.

    Args:
        network: the ReactionNetwork.
        start: the distribution at t = 0.
        summary: what the result's summary.json says of the run (network, settings, model).
        eval_samples: samples behind a VAN's statistics.
        joint_max_states: store the joint where the box holds at most this many states.
        seed: seeds each save time's own sampling stream (apart from the run's).
        directory: where the result is written (None: not written).
        species_order: the species order of the Result (default: the network's); the
            network may list them in the order the model samples them.
    """

    key = "records"

    def __init__(
        self,
        network: Any,
        start: Any,
        summary: dict[str, Any],
        *,
        eval_samples: int,
        joint_max_states: int,
        seed: int,
        directory: Path | None = None,
        species_order: Sequence[str] | None = None,
    ) -> None:
        self.network, self.start_distribution, self.summary = network, start, summary
        self.species_order = list(species_order or network.species_names)
        self.eval_samples, self.joint_max_states, self.seed = eval_samples, joint_max_states, seed
        self.directory = directory
        self.on_laws = states_on_laws(network, joint_max_states)
        self.times: list[float] = []
        self.records: list[dict[str, torch.Tensor]] = []
        self.final_loss: float | None = None
        self.warnings: list[str] = []
        self.largest_batch = 0  # the fits' batch grows while they lag (`nncme.steppers.Fit`)
        self.calls, self.longest = 0, 0.0  # steps taken (grown ones cover several of dt)
        self.status, self.error = "running", None
        self.device = torch.device("cpu")

    def _record(self, distribution: Any, t: float, device: torch.device) -> None:
        self.device = device
        # each save time samples from its own stream, apart from the run's
        seed = self.seed * 1_000_003 + 7919 * len(self.records) + 1
        record = summarize(
            distribution,
            self.network,
            eval_samples=self.eval_samples,
            joint_max_states=self.joint_max_states,
            generator=torch.Generator(device).manual_seed(seed),
            on_laws=self.on_laws,
        )
        self.records.append(record)
        self.times.append(float(t))

    def start(self, driver: Driver) -> None:
        if not self.records:
            self._record(self.start_distribution, 0.0, driver.model.device)

    def step(self, driver: Driver, info: StepInfo) -> None:
        self.final_loss = info.report.loss
        self.largest_batch = max(self.largest_batch, info.report.batch)
        self.calls, self.longest = self.calls + 1, max(self.longest, info.dt)
        self.warnings += [f"step {info.step} (t = {info.t:g}): {w}" for w in info.report.warnings]

    def save(self, driver: Driver, info: StepInfo) -> None:
        self._record(driver.model, info.t, driver.model.device)
        if self.directory is not None and not driver.done:
            self.result(driver.elapsed).save(self.directory, plots=False)

    def finish(self, driver: Driver) -> None:
        self.status = "completed" if driver.done else f"stopped by a callback at t = {driver.t:g}"
        if self.warnings:
            self.status += f" with {len(self.warnings)} warnings"
        if self.directory is not None:
            self.result(driver.elapsed).save(self.directory)

    def failed(self, driver: Driver, error: Exception) -> str:
        """The results so far, marked failed with the error (summary.json says so)."""
        self.status, self.error = "failed", str(error)
        if self.directory is not None:
            self.result(driver.elapsed).save(self.directory, plots=False)
        return ""

    def _marginals_from(self, joint: bool) -> str:
        """How the saved marginals were formed: exact sums or samples."""
        if joint:
            return "joint"
        if self.on_laws is not None and all(bool(r.get("exact", False)) for r in self.records):
            return "conservation-law states"
        return "averaged conditionals"

    def result(self, seconds: float = 0.0) -> Result:
        """The Result at the times recorded so far."""
        net = self.network

        def stack(key: str) -> np.ndarray | None:
            if any(r.get(key) is None for r in self.records):
                return None
            return np.stack([r[key].cpu().numpy() for r in self.records])

        joint = stack("joint")
        pair = stack("pair")
        summary = {
            **self.summary,
            "eval_samples": self.eval_samples,
            "marginals_from": self._marginals_from(joint is not None),
            "status": self.status,
            "error": self.error,
            "warnings": len(self.warnings),
            "first_warnings": self.warnings[:20],
            "timings": {"run_seconds": seconds},
            "peak_memory_mb": peak_memory_mb(self.device),
            "final_loss": self.final_loss,
            "largest_batch": self.largest_batch or None,
            "steps_taken": self.calls,
            "longest_step": self.longest,
            "versions": versions(),
        }
        return Result(
            method="van",
            species=net.species_names,
            limits=net.limits,
            times=np.array(self.times),
            marginals=stack("marginals"),
            means=stack("means"),
            stds=stack("stds"),
            covariances=stack("covariances"),
            joint_states=box_states(net.limits, "cpu").numpy() if joint is not None else None,
            joint=joint,
            pair=tuple(self.records[0]["pair_species"].tolist()) if pair is not None else None,
            pair_marginal=pair,
            boundary=stack("boundary"),
            summary=summary,
        ).in_species_order(self.species_order)

    def state_dict(self) -> dict[str, Any]:
        return {
            "times": list(self.times),
            "records": self.records,
            "final_loss": self.final_loss,
            "warnings": list(self.warnings),
            "largest_batch": self.largest_batch,
            "steps_taken": self.calls,
            "longest_step": self.longest,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.times, self.records = list(state["times"]), list(state["records"])
        self.final_loss, self.warnings = state["final_loss"], list(state["warnings"])
        self.largest_batch = int(state.get("largest_batch", 0))
        self.calls = int(state.get("steps_taken", 0))
        self.longest = float(state.get("longest_step", 0.0))


def peak_memory_mb(device: torch.device | str) -> dict[str, float | None]:
    """This process's peak resident memory (host, MB) and, on a GPU, the most torch has
    allocated on it (MB; None on the CPU)."""
    import resource

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    gpu = None
    if torch.device(device).type == "cuda":
        gpu = torch.cuda.max_memory_allocated(device) / 2**20
    return {"host": round(host, 1), "gpu": None if gpu is None else round(gpu, 1)}


class Checkpoints(Observer):
    """checkpoint.pt in `directory` at every save time, written atomically; `load` and
    `restore` resume from it.

    The checkpoint it replaces is kept as checkpoint.prev.pt: everything a run needs is in
    each checkpoint (the observers' states included), so resuming from the older one repeats
    the steps since its save time and reaches the same answer. `load` falls back on it, with
    a warning, when checkpoint.pt cannot be read.

    Args:
        directory: the run's output directory.
        settings: the run's settings (as a dict), stored and compared on resume.
        network: the network's name, compared on resume.
        resumable: settings that may differ when a run resumes.
    """

    def __init__(
        self, directory: Path, settings: dict[str, Any], network: str, resumable: Sequence[str]
    ) -> None:
        self.path = directory / CHECKPOINT
        self.previous = directory / PREVIOUS_CHECKPOINT
        self.settings, self.network, self.resumable = settings, network, tuple(resumable)

    def save(self, driver: Driver, info: StepInfo) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            **driver.state_dict(),
            "settings": self.settings,
            "network": self.network,
            "observers": {o.key: o.state_dict() for o in driver.observers if o.key},
        }
        with atomic_write(self.path, "wb", previous=self.previous) as fh:
            torch.save(state, fh)

    def failed(self, driver: Driver, error: Exception) -> str:
        if self.path.exists():
            return f"the last good checkpoint is kept in {self.path}"
        return ""

    def load(self, device: torch.device | str = "cpu") -> dict[str, Any]:
        """The newest readable checkpoint's state: checkpoint.pt, else (with a
        `CheckpointWarning`) the one before it.

        Raises:
            ConfigError: no checkpoint, or none that can be read (naming the file), or one
                of another checkpoint format.
        """
        if not self.path.exists() and not self.previous.exists():
            raise ConfigError(f"resume: no checkpoint in {self.path.parent} (expected {self.path})")
        try:
            return _read_checkpoint(self.path, device)
        except _Unreadable as exc:
            problem = str(exc)
        if not self.previous.exists():
            raise ConfigError(f"{problem}; no older checkpoint: start the run again without resume")
        try:
            state = _read_checkpoint(self.previous, device)
        except _Unreadable as exc:
            raise ConfigError(f"{problem}; {exc}; start the run again without resume") from None
        warnings.warn(
            f"{problem}; resuming from the older {self.previous} (t = {float(state['t']):g})",
            CheckpointWarning,
            stacklevel=2,
        )
        return state

    def restore(self, driver: Driver, state: dict[str, Any] | None = None) -> None:
        """Load a checkpoint's state (default: `load()`) into the driver and its observers.

        Raises:
            ConfigError: it is not a checkpoint of this run (other settings or network).
        """
        if state is None:
            state = self.load(driver.model.device)
        saved = state["settings"]
        changed = [
            k for k, v in self.settings.items() if k not in self.resumable and saved.get(k) != v
        ]
        if changed:
            diffs = ", ".join(_setting_change(k, saved, self.settings[k]) for k in changed)
            raise ConfigError(
                f"resume: the run in {self.path.parent} used other settings ({diffs})"
            )
        if state["network"] != self.network:
            raise ConfigError(
                f"resume: the run in {self.path.parent} is of network {state['network']!r}, "
                f"not {self.network!r}"
            )
        driver.load_state_dict(state)
        for observer in driver.observers:
            if observer.key:
                observer.load_state_dict(state["observers"][observer.key])


def _setting_change(key: str, saved: dict[str, Any], now: Any) -> str:
    """One setting that differs from a checkpoint's, for the resume error."""
    if key not in saved:  # a setting added to nncme after the run was saved
        return f"{key}: not in the checkpoint (a newer setting; its value now is {now!r})"
    return f"{key}: {saved[key]!r} -> {now!r}"


class CheckpointWarning(UserWarning):
    """A run resumes from an older checkpoint than the newest (which could not be read)."""


class _Unreadable(ConfigError):
    """A checkpoint file that cannot be read (truncated, damaged, not a checkpoint)."""


# What a checkpoint holds at its top level (besides "format").
_CHECKPOINT_KEYS = (
    *("step", "t", "model", "stepper", "generator", "save_times"),  # Driver.state_dict
    *("settings", "network", "observers"),
)


def _read_checkpoint(path: Path, device: torch.device | str) -> dict[str, Any]:
    """A checkpoint file's state.

    Raises:
        _Unreadable: missing, truncated or not a checkpoint (one line naming the file).
        ConfigError: a checkpoint of another format.
    """
    if not path.exists():
        raise _Unreadable(f"resume: {path} is missing")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        # torch.load's failures on a damaged file are many and undocumented; all mean the same
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _Unreadable(f"resume: {path} is damaged or truncated ({text})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise _Unreadable(f"resume: {path} is not an nncme checkpoint")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"resume: {path} has checkpoint format {state['format']}, this nncme reads format "
            f"{CHECKPOINT_FORMAT}; start the run again"
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise _Unreadable(f"resume: {path} is incomplete (no {', '.join(missing)})")
    return state


class OutputLock(Observer):
    """Holds the run's output directory (`nncme.paths.OutputDir`: created and locked) until
    the run closes, then lets it go."""

    def __init__(self, directory: OutputDir) -> None:
        self.directory = directory

    def close(self, driver: Driver) -> None:
        self.directory.release()


# ---------------------------------------------------------------------- statistics
def box_states(limits: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """Every state of the box (prod M_i, L), lexicographic (last species fastest)."""
    axes = [torch.arange(int(m), device=device) for m in limits]
    grid = torch.cartesian_prod(*axes) if len(axes) > 1 else axes[0].unsqueeze(1)
    return grid.reshape(-1, len(axes))


@torch.no_grad()
def summarize(
    distribution: Any,
    network: Any,
    *,
    eval_samples: int,
    joint_max_states: int,
    generator: torch.Generator,
    on_laws: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Marginals, moments, pair joint, boundary mass (and the joint) of one distribution.

    Exact over the box where it holds at most `joint_max_states` states (the joint is kept),
    exact over a listed support (a point mass) or over the states `on_laws` of the network's
    conservation laws (`states_on_laws`) where a VAN's mass is all there, else from
    `eval_samples` samples: a VAN's through its conditionals
    (`ResultBuilder.add_conditionals`), any other distribution's by counting.

    Returns:
        One time's arrays as tensors: marginals (L, Mmax), means, stds (L,), boundary (),
        exact () (True unless sampled), and where kept covariances (L, L), pair (M_a, M_b)
        with pair_species (2,), joint (S,).
    """
    builder = ResultBuilder(
        "van",
        network.species_names,
        network.limits,
        [0.0],
        keep_joint=False,
        reactants=network.reactant_matrix,
        change=network.box_limited_change(),
    )
    joint = None
    box = math.prod(int(m) for m in network.limits)
    support = getattr(distribution, "support", None)
    listed = support(MAX_ENUMERATED) if support is not None and box > joint_max_states else None
    if listed is None and on_laws is not None and isinstance(distribution, AutoregressiveModel):
        listed = _law_mass(distribution, on_laws.to(generator.device))
    if 0 < box <= joint_max_states:
        states = box_states(network.limits, generator.device)
        joint = torch.cat([torch.exp(distribution.log_prob(c)) for c in states.split(65536)])
        builder.add(0, states.cpu().numpy(), joint.cpu().numpy())
    elif listed is not None:
        states, log_p = listed
        builder.add(0, states.cpu().numpy(), torch.exp(log_p).cpu().numpy())
    else:
        _add_samples(builder, distribution, eval_samples, generator)
    result = builder.build(normalize=joint is None and listed is None)
    out = {
        name: torch.as_tensor(getattr(result, name)[0])
        for name in ("marginals", "means", "stds", "boundary", "covariances", "pair_marginal")
        if getattr(result, name) is not None
    }
    out["exact"] = torch.tensor(joint is not None or listed is not None)
    if "pair_marginal" in out:
        out["pair"] = out.pop("pair_marginal")
        out["pair_species"] = torch.tensor(result.pair)
    if joint is not None:
        out["joint"] = joint.cpu().double()
    return out


def states_on_laws(network: Any, joint_max_states: int) -> torch.Tensor | None:
    """The states that keep the network's conservation laws, where they can be listed.

    A box too large to list whole (more than `joint_max_states` states) can still hold few
    states on its laws (Michaelis-Menten: 29,282 of 1.3e9): there a VAN's marginals are exact
    sums over those states instead of sampled ones with a sampling floor.

    Returns:
        (S, L) int64 states, or None where the network has no laws, the box is small enough to
        list whole, or the laws leave more than `joint_max_states` states.
    """
    box = math.prod(int(m) for m in network.limits)
    if not network.conservation_laws or box <= joint_max_states:
        return None
    try:  # refuses, without listing them, more than joint_max_states states
        return torch.from_numpy(enumerate_states(network, max_states=joint_max_states))
    except NetworkError:
        return None


def _law_mass(
    model: AutoregressiveModel, states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(states, log q) on the laws' states, or None where q puts mass off them.

    A VAN built with the network's feasibility tables is normalised on these states; one built
    without them (a user's own model) is not, and is sampled instead.
    """
    log_q = torch.cat([model.log_prob(c) for c in states.split(65536)])
    mass = float(torch.exp(log_q.double()).sum())
    return (states, log_q) if abs(mass - 1.0) <= LAW_MASS_TOLERANCE else None


def _add_samples(
    builder: ResultBuilder, distribution: Any, num_samples: int, generator: torch.Generator
) -> None:
    """num_samples draws of the distribution into the builder, in chunks of bounded memory."""
    is_van = isinstance(distribution, AutoregressiveModel)
    width = distribution.num_species * distribution.max_count if is_van else 1
    rows = max(64, min(8192, (1 << 23) // width))  # conditionals of at most 2^23 numbers
    left = num_samples
    while left > 0:
        n = min(left, rows)
        states, _ = distribution.sample(n, generator)
        if is_van:
            cond = torch.exp(distribution.conditionals(states)).double()
            builder.add_conditionals(0, states.cpu().numpy(), cond.cpu().numpy())
        else:
            builder.add(0, states.cpu().numpy())
        left -= n
