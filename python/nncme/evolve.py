"""The driver: carries a VAN q(n, t) from t = 0 to t_end, one stepper call per time step.

The `Driver` knows the time grid (steps of dt, every save time hit exactly), which step it is
at, and who to tell: it asks its stepper (`nncme.steppers`: one class per time scheme) to
advance the model over each step, checks that the parameters stayed finite, and calls its
observers (`nncme.observers`: progress bar, log, results, checkpoints) after every step and at
every save time. With `max_dt` above dt its steps grow where the distribution moves slowly:
each covers one or more steps of the grid, as many as the stepper's last report allows
(`StepReport.next_dt`: the explicit steps' motion and positivity, the adaptive schemes' error
estimate), at most twice the last and never past a save time, so the grid, the save times and
the checkpoints stay those of dt while a slow stretch is crossed in few stepper calls.
`run(callbacks)` steps to the end; a callback that returns False stops the
run early, and one that raises stops it with the exception. `step()` advances one step at a
time from Python. A step that fails (`TrainingError`: a NaN, a step size beyond what the
scheme allows) is re-raised naming the step, with what the observers add (where the last good
checkpoint is). `state_dict`/`load_state_dict` are what a checkpoint holds, so a resumed run
continues to the same answer as an uninterrupted one.

`nncme.api.build_driver` assembles a driver from a `RunConfig`; `nncme.run` runs it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from . import parallel
from .config import ConfigError
from .models import AutoregressiveModel
from .observers import Observer, StepInfo
from .optim import DivergenceError, NonFiniteError, StepReport, StepSizeError, TrainingError

__all__ = [
    "DivergenceError",
    "Driver",
    "NonFiniteError",
    "StepInfo",
    "StepSizeError",
    "Stepper",
    "TrainingError",
    "time_grid",
]

O = TypeVar("O", bound=Observer)
Callback = Callable[[StepInfo], Any]


class Stepper(Protocol):
    """What a driver needs of a time scheme (`nncme.steppers.RungeKutta`, `StartFit`)."""

    def step(self, t: float, dt: float) -> StepReport: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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
    return np.array(sorted(p for p in points if p <= t_end + tol))


class Driver:
    """Steps a model through a time grid and tells its observers.

    Args:
        model: the VAN, changed in place by the stepper.
        stepper: advances the model over one step (`step(t, dt) -> StepReport`).
        t_end, dt: the end time and the step length.
        save_times: the times (after 0, t_end included) at which observers save.
        first: the stepper of the first step where it differs (a start that is not a VAN,
            `nncme.steppers.StartFit`); None: `stepper`.
        max_dt: the longest step that growth may reach (None or at most dt: every step dt).
        generator: the run's random stream (saved in checkpoints).
        observers: called in this order (see `nncme.observers`).
    """

    def __init__(
        self,
        model: AutoregressiveModel,
        stepper: Stepper,
        *,
        t_end: float,
        dt: float,
        save_times: Sequence[float],
        first: Stepper | None = None,
        generator: torch.Generator | None = None,
        observers: Sequence[Observer] = (),
        max_dt: float | None = None,
    ) -> None:
        self.model, self.stepper, self.first, self.generator = model, stepper, first, generator
        self.t_end, self.dt = float(t_end), float(dt)
        self.observers = list(observers)
        self._set_save_times(list(save_times))
        self.index = 0
        # grid steps a stepper call may cover, and the number its next call covers
        self.max_span = 1 if max_dt is None else max(1, math.floor(max_dt / dt * (1 + 1e-9)))
        self.span = 1
        self.taken = 0  # stepper calls made
        self._began: float | None = None
        self._rank_streams: list[Any] = []  # every rank's stream at the last save time

    def _set_save_times(self, save_times: list[float]) -> None:
        self.save_times = save_times
        self.grid = time_grid(self.t_end, self.dt, save_times)
        self.save_steps = {int(np.argmin(np.abs(self.grid - s))) for s in save_times}

    # ------------------------------------------------------------------ where it is
    @property
    def num_steps(self) -> int:
        return len(self.grid) - 1

    @property
    def t(self) -> float:
        return float(self.grid[self.index])

    @property
    def done(self) -> bool:
        return self.index >= self.num_steps

    @property
    def elapsed(self) -> float:
        """Seconds since the run (or its resumption) started."""
        return 0.0 if self._began is None else time.perf_counter() - self._began

    def observer(self, kind: type[O]) -> O:
        """The attached observer of a type (KeyError if there is none)."""
        for observer in self.observers:
            if isinstance(observer, kind):
                return observer
        raise KeyError(f"no {kind.__name__} observer is attached")

    # ------------------------------------------------------------------ stepping
    def start(self) -> None:
        """Tell the observers a run starts here (done by the first `step` if not called)."""
        self._began = time.perf_counter()
        for observer in self.observers:
            observer.start(self)

    def step(self) -> StepInfo:
        """Advance one time step; the observers hear of it."""
        if self.done:
            raise RuntimeError(f"the run is at its end time t = {self.t_end:g}")
        if self._began is None:
            self.start()
        i = self.index
        j = min(i + self.span, self._next_save(i))
        t0, t1 = float(self.grid[i]), float(self.grid[j])
        stepper = self.first if i == 0 and self.first is not None else self.stepper
        try:
            report = stepper.step(t0, t1 - t0)
            parallel.broadcast_parameters(self.model)  # ranks stay bit-identical
            bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise NonFiniteError(f"parameters {', '.join(bad[:3])} became NaN or inf")
            self.index, self.taken = j, self.taken + 1
            self.span = self._next_span(report)
            info = StepInfo(j, t1, t1 - t0, report, self.model, self.elapsed)
            for observer in self.observers:  # a watchdog among them may judge the step bad
                observer.step(self, info)
        except TrainingError as exc:
            error = type(exc)(f"step {j} (t = {t0:g} -> {t1:g}): {exc}")
            notes = [note for o in self.observers if (note := o.failed(self, error))]
            raise type(exc)("; ".join([str(error), *notes])) from exc
        if j in self.save_steps:
            self._rank_streams = parallel.gather_objects(self._stream_state())
            for observer in self.observers:
                observer.save(self, info)
        return info

    def _next_save(self, i: int) -> int:
        """The first save step (or the last step) after grid step i."""
        return min([s for s in self.save_steps if s > i] + [self.num_steps])

    def _next_span(self, report: StepReport) -> int:
        """Grid steps the next call covers: what the report's next_dt allows, at least one,
        at most twice this call's plan and max_span (one where the stepper has no opinion)."""
        wanted = report.next_dt
        if self.max_span == 1 or math.isnan(wanted):
            return 1
        fits = math.floor(wanted / self.dt * (1 + 1e-9)) if math.isfinite(wanted) else self.max_span
        return max(1, min(fits, 2 * self.span, self.max_span))

    def run(self, callbacks: Sequence[Callback] = ()) -> None:
        """Step to t_end (or until a callback returns False), then finish and close."""
        try:
            if self._began is None:
                self.start()
            while not self.done:
                info = self.step()
                answers = [callback(info) for callback in callbacks]
                if any(answer is False for answer in answers):
                    break
            for observer in self.observers:
                observer.finish(self)
        finally:
            self.close()

    def close(self) -> None:
        """Tell the observers the run is over (the bar closes, the output directory's lock is
        released); `run` does this itself, a driver stepped by hand should call it."""
        for observer in self.observers:
            observer.close(self)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs from the driver: step, model, stepper, stream (in a
        run of many processes, every rank's stream as it was at the last save time)."""
        state = {
            "step": self.index,
            "span": self.span,
            "taken": self.taken,
            "t": self.t,
            "model": self.model.state_dict(),
            "stepper": self.stepper.state_dict(),
            "generator": self._rank_streams[0] if parallel.active() else self._stream_state(),
            "save_times": list(self.save_times),
            "t_end": self.t_end,
        }
        if parallel.active():
            state["rank_generators"] = list(self._rank_streams)
        return state

    def _stream_state(self) -> torch.Tensor | None:
        return self.generator.get_state() if self.generator is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state; the save times already passed stay as they were (a longer
        t_end may move the rest)."""
        t_saved = float(state["t"])
        passed = [s for s in state["save_times"] if s <= t_saved * (1 + 1e-12)]
        self._set_save_times(passed + [s for s in self.save_times if s > t_saved * (1 + 1e-12)])
        j = int(np.argmin(np.abs(self.grid - t_saved)))
        if abs(float(self.grid[j]) - t_saved) > 1e-9 or t_saved > self.t_end * (1 + 1e-12):
            raise ConfigError(
                f"resume: the checkpoint's t = {t_saved:g} is not a step of this run "
                f"(t_end = {self.t_end:g}, dt = {self.dt:g})"
            )
        streams = state.get("rank_generators", [state["generator"]])
        if len(streams) != parallel.world_size():
            raise ConfigError(
                f"resume: the run was made by {len(streams)} process(es), this one has "
                f"{parallel.world_size()}: resume with --nproc-per-node {len(streams)}"
            )
        self.model.load_state_dict(state["model"])
        self.stepper.load_state_dict(state["stepper"])
        if self.generator is not None:
            self.generator.set_state(streams[parallel.rank()].cpu())
        self.index = j
        self.span = min(int(state.get("span", 1)), self.max_span)
        self.taken = int(state.get("taken", j))
