"""A VAN run from its settings: `build_driver` assembles one from a `RunConfig`, `run` runs it.

This is the one place that turns settings into objects: the model, the proposal, the fit or
flow that makes a stage (`optimizer`), the time scheme (`integrator`), the first step, and
the observers (progress bar, log, results, checkpoints). `nncme run` and `nncme study` call it
with the same settings as Python does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import parallel
from .config import ConfigError, RunConfig
from .evolve import Driver, StepInfo
from .exact import enumerate_states
from .models import AutoregressiveModel, Delta, ListedScorer, Product, build_model
from .network import NetworkError
from .observables import read_observables
from .observers import (
    Checkpoints,
    OutputLock,
    ProgressBar,
    Recorder,
    StepLog,
    Watchdog,
    box_states,
)
from .optim import (
    OPTIMIZERS,
    FisherSolver,
    ImplicitUpdate,
    NaturalGradientUpdate,
    TDVPRightHandSide,
    Update,
    make_optimizer,
)
from .optim.supervision import Supervision, moment_references
from .optim.target import set_neighbour_memory
from .paths import OutputDir, check_input_file
from .sampling import Enumerated, Proposal, make_proposal
from .steppers import Fit, Flow, Motion, Scheme, StartFit, make_stepper

__all__ = ["RunOutput", "build_driver", "run"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class RunOutput:
    """The outcome of `nncme.run`.

    Attributes:
        result: the results at t = 0 and every save time (method "van").
        model: the trained VAN at t_end; its states list the species in the order of its
            `species_order` (`RunConfig.species_order`; a run started from it keeps it).
        history: one dict per step (the JSONL log's lines).
        out: the output directory, if any.
    """

    result: Any
    model: AutoregressiveModel
    history: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None


def run(
    network: Any,
    config: RunConfig | None = None,
    *,
    start: Any | None = None,
    model: AutoregressiveModel | None = None,
    callbacks: Sequence[Callable[[StepInfo], Any]] = (),
    **overrides: Any,
) -> RunOutput:
    """Track P(n, t) of a network with a VAN from t = 0 to t_end.

    Args:
        network: a ReactionNetwork, or a catalogue name / network file as `nncme run` takes.
        config: the settings (`RunConfig`); keyword overrides are applied on top, with the
            same names (e.g. `run(net, batch=2000, dt=0.005)`).
        start: the distribution at t = 0 (default: the config's `initial`); a VAN of the
            model's architecture is copied into the model.
        model: a VAN to train (default: built from the config).
        callbacks: called with a `StepInfo` after every time step; one that returns False
            stops the run there (the results so far are written).

    Returns:
        RunOutput: the `Result` (marginals, moments, ... at t = 0 and every save time), the
        trained model, the per-step history and the output directory.

    Example (tests/test_first_use.py runs it):
        >>> import nncme
        >>> out = nncme.run("birth_death", t_end=0.1, dt=0.01, quiet=True)  # 10 steps, seconds
        >>> out.result.species, out.result.marginals.shape  # (times, species, largest limit)
        (['X'], (11, 1, 33))
        >>> len(out.history)  # one entry per step
        10
    """
    if isinstance(network, str):
        from .io import resolve_network

        network = resolve_network(network)
    config = config or RunConfig()
    if overrides:
        config = config.replace(**overrides)
    driver = build_driver(network, config, start=start, model=model)
    driver.run(callbacks)
    recorder = driver.observer(Recorder)
    return RunOutput(
        recorder.result(driver.elapsed),
        driver.model,
        driver.observer(StepLog).history,
        Path(config.out) if config.out else None,
    )


def build_driver(
    network: Any,
    config: RunConfig | None = None,
    *,
    start: Any | None = None,
    model: AutoregressiveModel | None = None,
) -> Driver:
    """A `Driver` for a network with everything the settings name, resumed if they say so.

    Its observers are a `ProgressBar`, a `Watchdog`, a `StepLog`, a `Recorder` and, with
    `out`, `Checkpoints` and an `OutputLock` (`driver.observer(Recorder).result()` is the
    Result). With `out`, the directory is checked, created and locked first, so a path that
    cannot be written, or a second run on the same directory, stops before any work; if the
    driver cannot be built, the lock goes and a directory made for it is removed again.
    A resumed run keeps its own t_end unless the settings give one.
    """
    cfg = _parallel_settings((config or RunConfig()).validate())
    # the support is listed once, in the model's order: the prefixes an evaluation runs (and
    # so whether it is summed) depend on the order, and the objective must agree with the
    # proposal on it
    sampled = network.reordered(_sampling_order(cfg, network, start, model))
    support = _listed_support(cfg, sampled)
    cfg = cfg.resolved(network.free_dimensions, enumerable=support is not None)
    # in a run of many processes only rank 0 writes, and all ranks start or none does (a rank
    # that failed alone would leave the others waiting in their first collective)
    out = OutputDir(cfg.out).acquire() if cfg.out and parallel.is_main() else None
    driver, error = None, None
    try:
        driver = _build_driver(network, sampled, support, cfg, out, start, model)
    except BaseException as exc:
        error = exc
    if parallel.any_true(error is not None):
        if out is not None:
            out.release()
        raise error or ConfigError("another process of the run could not start it")
    assert driver is not None
    parallel.broadcast_parameters(driver.model)
    return driver


def _parallel_settings(cfg: RunConfig) -> RunConfig:
    """Join torchrun's process group, if there is one, and refuse what it cannot split."""
    device = parallel.setup(cfg.device)
    if not parallel.active():
        return cfg
    refused = {
        "supervision (--supervise)": cfg.supervise is not None,
        "Pareto smoothing (--psis)": cfg.psis,
    }
    names = [name for name, used in refused.items() if used]
    if names:
        raise ConfigError(
            f"{', '.join(names)} cannot run over {parallel.world_size()} processes yet; "
            "run it as one process"
        )
    parallel.local_batch(cfg.batch)  # a batch smaller than the world is refused here
    return cfg.replace(device=device) if device != cfg.device else cfg


def _build_driver(
    file_network: Any,
    network: Any,
    support: torch.Tensor | None,
    cfg: RunConfig,
    out: OutputDir | None,
    start: Any | None,
    model: AutoregressiveModel | None,
) -> Driver:
    """`network`: `file_network` in the model's order (the Recorder reports in the file's);
    `support`: its listed states where the fits sum over them (`_listed_support`)."""
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]  # the settings checked device
    checkpoints = None
    if cfg.out is not None:  # every rank reads a checkpoint, rank 0 alone writes them
        checkpoints = Checkpoints(Path(cfg.out), cfg.to_dict(), network.name, RunConfig.RESUMABLE)
    state = checkpoints.load(device) if cfg.resume and checkpoints is not None else None
    t_end = float(cfg.t_end if cfg.t_end is not None else _t_end(state, network))
    dt = float(cfg.dt if cfg.dt is not None else network.dt)
    if dt > t_end:
        raise ConfigError(f"dt: {dt:g} is larger than t_end {t_end:g}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_neighbour_memory(cfg.memory_mb)
    net = network.compile(device, dtype)
    if model is None:
        model = _model(cfg, network, dtype, device)
    model.to(device=device, dtype=dtype)
    model.species_order = network.species_names  # how its states list the species
    start = start if start is not None else _default_start(cfg, network, dtype, device)
    generator = torch.Generator(device).manual_seed(parallel.rank_seed(cfg.seed))
    batch = parallel.local_batch(cfg.batch)  # this rank's share
    proposal = make_proposal(
        cfg.sampling_proposal,
        eps=cfg.mixture_eps,
        width=cfg.diffusive_width,
        alpha=cfg.alpha,
        psis=cfg.psis,
    )
    proposal = _enumerated(support, model, proposal)
    supervision = _supervision(cfg, network, t_end)
    motion = _motion(cfg, model, net, proposal, generator, supervision, batch)
    tolerance = cfg.dt_tolerance if cfg.adaptive_dt else None
    scheme = cfg.time_scheme
    max_motion = cfg.max_motion or None
    if scheme == "auto":  # its implicit steps always adapt
        options: dict[str, Any] = {
            "tolerance": cfg.dt_tolerance,
            "max_motion": max_motion,
            "stages": cfg.explicit_stages,
            "order": cfg.implicit_order,
        }
    elif scheme == "implicit":
        options = {"tolerance": tolerance, "order": cfg.implicit_order}
    elif cfg.optimizer == "tdvp":
        options = {"tolerance": tolerance}
    else:
        options = {"max_motion": max_motion}
    if scheme == "ssp":
        options["stages"] = cfg.explicit_stages
    stepper = make_stepper(scheme, motion, **options)
    first = None
    if isinstance(start, AutoregressiveModel) and _same_architecture(start, model):
        model.load_state_dict(start.state_dict())  # step from it as from any later time
    else:
        scheme_of_step = getattr(stepper, "scheme", None)  # a Runge-Kutta stepper's tableau
        first = _start_fit(cfg, model, start, net, proposal, generator, batch, scheme_of_step)
        first.then = stepper
    save_times = cfg.save_times(t_end, dt)
    settings = {**cfg.to_dict(), "dt": dt, "t_end": t_end}  # proposal, objective resolved
    summary = {
        "network": file_network.to_dict(),
        "sampling_order": network.species_names,
        "settings": settings,
        "model": repr(model),
        "parameters": model.num_parameters(),
        "processes": parallel.world_size(),
        "batch_per_rank": parallel.batch_shares(cfg.batch),
        # the states every fit sums over (None: fits draw batches)
        "enumerated_states": getattr(proposal, "support", torch.empty(0)).shape[0] or None,
    }
    directory = out.path if out is not None else None
    observers = [
        ProgressBar(network.name, quiet=cfg.quiet or not parallel.is_main()),
        Watchdog(limit=None if cfg.optimizer == "tdvp" else 1.0),
        StepLog(directory),
        Recorder(
            network,
            start,
            summary,
            eval_samples=cfg.eval_samples,
            joint_max_states=cfg.joint_max_states,
            seed=cfg.seed,
            directory=directory,
            species_order=file_network.species_names,
        ),
    ]
    if checkpoints is not None and out is not None:  # rank 0's, with its directory
        observers += [checkpoints, OutputLock(out)]  # the lock last: it goes when all closed
    driver = Driver(
        model,
        stepper,
        t_end=t_end,
        dt=dt,
        save_times=save_times,
        first=first,
        generator=generator,
        observers=observers,
        max_dt=_max_dt(cfg, save_times, dt),
    )
    if state is not None and checkpoints is not None:
        checkpoints.restore(driver, state)
    summary["steps"] = driver.num_steps
    return driver


def _sampling_order(
    cfg: RunConfig, network: Any, start: Any | None, model: AutoregressiveModel | None
) -> list[str]:
    """The species order of the run's model: a given model's, or a VAN start's (a run's
    `model` says its own, `species_order`), where the run continues one; the file's where it
    starts from another distribution (they list the file's species); else the settings'."""
    given = model if model is not None else start
    if isinstance(given, AutoregressiveModel):
        return list(getattr(given, "species_order", network.species_names))
    if given is not None or cfg.species_order == "file":
        return list(network.species_names)
    return network.sampling_order()


def _max_dt(cfg: RunConfig, save_times: list[float], dt: float) -> float:
    """The longest step (`RunConfig.max_dt`): by default the longest time between saves."""
    if cfg.max_dt is not None:
        return cfg.max_dt or dt  # 0: fixed steps
    return max(b - a for a, b in zip([0.0, *save_times], save_times)) if save_times else dt


def _t_end(state: dict[str, Any] | None, network: Any) -> float:
    """The end time when the settings give none: a resumed run's own, else the network's."""
    if state is None:
        return network.t_end
    # checkpoints before "t_end" was stored end their save times with it
    return state.get("t_end", state["save_times"][-1])


def _model(
    cfg: RunConfig, network: Any, dtype: torch.dtype, device: torch.device
) -> AutoregressiveModel:
    options: dict[str, Any] = {"hidden": cfg.hidden}
    if cfg.model == "nade":
        options.update(activation=cfg.activation, impl=cfg.impl)
    else:
        options.update(layers=cfg.layers, heads=cfg.heads)
    return build_model(cfg.model, network, dtype=dtype, device=device, seed=cfg.seed, **options)


def _default_start(cfg: RunConfig, network: Any, dtype: torch.dtype, device: torch.device) -> Any:
    if cfg.initial == "poisson":
        return Product.poisson(network.initial_state, network.limits, dtype=dtype, device=device)
    return Delta(network.initial_state, network.limits, dtype=dtype, device=device)


def _solver(cfg: RunConfig) -> FisherSolver:
    return FisherSolver(
        cfg.shift,
        adaptive=cfg.adaptive_shift,
        space=cfg.solve_space,
        gradients=cfg.gradients,
        impl=cfg.impl,
        cv=cfg.cv_shift and cfg.optimizer == "tdvp",
    )


def _fit_options(cfg: RunConfig) -> dict[str, Any]:
    """The `KLUpdate` options of the config."""
    return dict(
        iterations=cfg.iterations,
        tolerance=cfg.tolerance,
        relative_tolerance=cfg.relative_tolerance,
        min_iterations=cfg.min_iterations,
        explore=cfg.explore,
        explore_baseline=cfg.explore_baseline,
        objective=cfg.objective,
        lr_decay=cfg.lr_decay,
    )


def _supervision(cfg: RunConfig, network: Any, t_end: float) -> Supervision | None:
    """The observable term of the config's `supervise` (None: off)."""
    if cfg.supervise is None:
        return None
    names = network.species_names
    if cfg.supervise == "moments":
        poisson = cfg.initial == "poisson"  # independent Poisson counts: variance = mean
        try:
            refs = moment_references(network, t_end, poisson_start=poisson)
        except ValueError as exc:
            raise ConfigError(f"supervise: {exc}") from None
        return Supervision(refs, names, weight=cfg.supervise_weight, interpolation="cubic")
    try:
        refs = read_observables(check_input_file(cfg.supervise, "supervise file"))
        return Supervision(refs, names, weight=cfg.supervise_weight)
    except ValueError as exc:
        raise ConfigError(f"supervise: {exc}") from None


def _enumerated(
    support: torch.Tensor | None, model: AutoregressiveModel, proposal: Proposal
) -> Proposal:
    """The proposal, or its exact expectation over the model's whole `support` where one is
    listed (`_listed_support`; `sampling.Enumerated`). One process only (a draw split over
    ranks is pooled by its weights; a list is not split, nor its L-BFGS fits), and only where
    the listed states hold all of the model's mass (a model of the user's own may hold states
    the laws leave out)."""
    if support is None or parallel.active():
        return proposal
    enumerated = Enumerated(proposal, support.to(model.device))
    return enumerated if enumerated.covers(model) else proposal


def _listed_support(cfg: RunConfig, network: Any) -> torch.Tensor | None:
    """(N, L) on the CPU, in `network`'s species order: the box, or the states on the network's
    conservation laws, where they are at most `cfg.enumerate_states`, an evaluation over them
    runs at most `Enumerated.MAX_ROWS` distinct prefixes through the network
    (`ListedScorer.rows_for`: they depend on the order), and the steps are fitted (not TDVP's:
    its least squares weighted by q over a whole support lose the exploration that lets a flow
    leave a point mass); else None. (The objective resolves from this alike in one process and
    in many, so a run resumes with either; only one process sums, many draw.)"""
    most = cfg.enumerate_states
    if most <= 0 or cfg.optimizer == "tdvp":
        return None
    support = None
    if network.conservation_laws:
        try:  # refuses, without listing them, more than `most` states
            support = torch.from_numpy(enumerate_states(network, max_states=most))
        except NetworkError:
            return None
    elif math.prod(int(m) for m in network.limits) <= most:
        support = box_states(network.limits, torch.device("cpu"))
    if support is None or ListedScorer.rows_for(support) > Enumerated.MAX_ROWS:
        return None
    return support


def _motion(
    cfg: RunConfig,
    model: AutoregressiveModel,
    net: Any,
    proposal: Proposal,
    generator: torch.Generator,
    supervision: Supervision | None = None,
    batch: int | None = None,
) -> Motion:
    """How a stage is made: a TDVP flow, or a fit by the config's optimiser; `batch`: this
    process's share of the config's (default: all of it)."""
    batch = cfg.batch if batch is None else batch
    if cfg.optimizer == "tdvp":
        rhs = TDVPRightHandSide(
            net,
            proposal=proposal,
            batch_size=batch,
            solver=_solver(cfg),
            impl=cfg.impl,
            explore=cfg.explore,
            as_drawn=cfg.objective == "log_variance",
        )
        return Flow(model, rhs, generator, need_grads=cfg.adaptive_dt)
    update: Update
    if cfg.optimizer == "natgrad":
        update = NaturalGradientUpdate(
            model,
            lr=cfg.learning_rate,
            solver=_solver(cfg),
            max_step=cfg.max_step,
            supervision=supervision,
            **_fit_options(cfg),
        )
    else:  # fits explicit stages as KLUpdate does, and implicit ones
        optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.learning_rate)
        update = ImplicitUpdate(optimizer, supervision=supervision, **_fit_options(cfg))
    return Fit(model, update, net, proposal, batch, generator, impl=cfg.impl,
               max_batch=batch * cfg.max_batch_factor)  # fmt: skip


def _start_fit(
    cfg: RunConfig,
    model: AutoregressiveModel,
    start: Any,
    net: Any,
    proposal: Proposal,
    generator: torch.Generator,
    batch: int,
    scheme: Scheme | None,
) -> StartFit:
    """The first step's own fit of the run's step from p0 (Adam, or SGD where the run uses SGD);
    `scheme`: the tableau the later steps take (None: not a Runge-Kutta stepper)."""
    name = cfg.optimizer if cfg.optimizer in OPTIMIZERS else "adam"
    optimizer = make_optimizer(name, model.parameters(), cfg.first_lr)
    update = ImplicitUpdate(
        optimizer,
        iterations=cfg.first_iterations,
        tolerance=cfg.first_tolerance,
        min_iterations=10,
        explore=cfg.explore,
        explore_baseline=cfg.explore_baseline,
    )
    return StartFit(
        model,
        start,
        net,
        optimizer,
        update,
        proposal,
        batch,
        generator,
        iterations=cfg.first_iterations,
        tolerance=cfg.first_tolerance,
        implicit=cfg.time_scheme == "implicit",
        # the CME's own step unless the user named an explicit scheme: `auto` resolves to Heun
        # for natgrad and tdvp, whose first step from a point mass is then no more exact
        exponential=cfg.integrator in ("implicit", "auto"),
        impl=cfg.impl,
        scheme=scheme,
    )


def _same_architecture(a: AutoregressiveModel, b: AutoregressiveModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return (
        type(a) is type(b)
        and sa.keys() == sb.keys()
        and all(sa[k].shape == sb[k].shape for k in sa)
    )
