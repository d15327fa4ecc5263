"""The `nncme` command.

Each subcommand has an `_add_<name>` function that declares its arguments and a handler
`_cmd_<name>(args) -> int` (the exit status). User errors (a bad network, a bad option) print
one clear line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .config import ConfigError, add_settings_arguments, settings_from_args
from .network import NetworkError

if TYPE_CHECKING:  # the amortised module loads torch models: only where a command needs it
    from .amortise import AmortisedSolution

__all__ = ["build_parser", "main"]


class UsageError(Exception):
    """A user error on the command line; printed as one line, exit status 2."""


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="how nncme was built (torch, CUDA, OpenMP)")
    p.set_defaults(handler=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from . import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print a network: species, reactions, laws, time grid")
    p.add_argument("network", help="a built-in system (see `nncme systems`) or a .toml/.json file")
    p.set_defaults(handler=_cmd_show)


def _cmd_show(args: argparse.Namespace) -> int:
    from .io import resolve_network

    print(resolve_network(args.network).summary())
    return 0


def _add_systems(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "systems",
        help="list the built-in networks, or show one (with parameters)",
        description="Without NAME: every catalogue system with its species and reaction "
        "counts. With NAME: that network's summary, e.g. `nncme systems cascade L=8` or "
        "`nncme systems reaction_diffusion:shape=4x4`.",
    )
    p.add_argument("name", nargs="?", help="a catalogue system (optionally NAME:key=value,...)")
    p.add_argument("params", nargs="*", metavar="key=value", help="parameters of the system")
    p.add_argument("--save", metavar="FILE", help="write the network to a .toml or .json file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_cmd_systems)


def _cmd_systems(args: argparse.Namespace) -> int:
    from . import systems
    from .io import save_network

    if args.name is None:
        if args.params or args.save:
            raise UsageError("parameters and --save need a system NAME")
        entries = systems.catalogue()
        if args.json:
            print(json.dumps([e.__dict__ for e in entries], indent=2, default=str))
            return 0
        width = max(len(e.name) for e in entries)
        print(f"{'system':<{width}}  {'L':>4}  {'K':>4}  description")
        for e in entries:
            print(f"{e.name:<{width}}  {e.species:>4}  {e.reactions:>4}  {e.description}")
        print(
            "\n`nncme systems NAME` shows one; parameters as key=value (defaults in the summary)."
        )
        return 0
    name, params = systems.parse_spec(args.name)
    for item in args.params:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"parameters must be key=value, got {item!r}")
        params[key.strip()] = value.strip()
    network = systems.get(name, **params)
    if args.save:
        print(f"wrote {save_network(network, args.save)}")
    if args.json:
        print(json.dumps(network.to_dict(), indent=2, default=str))
        return 0
    print(network.summary())
    shown = ", ".join(f"{k}={v}" for k, v in network.parameters.items())
    print(f"  parameters: {shown}")
    return 0


# ------------------------------------------------------------------- nncme fsp / nncme ssa
def _default_out(network, method: str) -> str:
    """results/NETWORK/METHOD: where a command writes when --out is not given."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in network.name)
    return str(Path("results") / name / method)


def _solve_and_save(args: argparse.Namespace, method: str, settings_class, solve) -> int:
    """Resolve the network and the settings, run `solve(network, times, settings)` (which
    writes the result to settings.out), print a short report."""
    from .io import resolve_network

    settings = settings_from_args(settings_class, args)
    network = resolve_network(args.network)
    if settings.out is None:
        settings = settings.replace(out=_default_out(network, method))
    times = settings.record_times(network.t_end)
    with _warnings_as_lines(method):
        result = solve(network, times, settings)
    _print_solver_report(method, network, result)
    _print_final_moments(result, settings.out)
    return 0


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """Print the warnings of a block as one line each, like errors (after the block)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                print(f"nncme {command}: warning: {w.message}", file=sys.stderr)


def _print_solver_report(method: str, network, result) -> None:
    times, info = result.times, result.summary
    print(f"{method} {network.name}: {len(times)} times on [{times[0]:g}, {times[-1]:g}]")
    if method == "fsp":
        tm = info["timings"]
        print(
            f"  {info['states']:,} states, {info['integrator']}, build {tm['build_s']:.2f} s, "
            f"solve {tm['solve_s']:.2f} s"
        )
    else:
        s = info["ssa"]
        print(
            f"  {info['samples']:,} trajectories on {s['device']} ({s['device_name']}), "
            f"seed {s['seed']}, {s['events']:,} events in {s['simulate_s']:.2f} s "
            f"({s['events_per_s']:.3g} events/s)"
        )
    if result.boundary is not None:
        print(f"  boundary probability: max {float(result.boundary.max()):.2e}")


def _print_final_moments(result, out) -> None:
    """Mean and std of (up to eight) species at the last time, and where the result went."""
    for i, name in enumerate(result.species[:8]):
        print(
            f"  {name}: mean {result.means[-1, i]:.4g}, std {result.stds[-1, i]:.4g} "
            f"at t = {result.times[-1]:g}"
        )
    if len(result.species) > 8:
        print(f"  ... and {len(result.species) - 8} more species")
    print(f"  wrote {out}")


def _add_fsp(sub: argparse._SubParsersAction) -> None:
    from .exact import FSPSettings

    p = sub.add_parser(
        "fsp",
        help="exact solution by finite state projection (small networks)",
        description="Solve the CME exactly on the count-limit box (reduced by conservation "
        "laws) and write results.npz, summary.json and plots.",
    )
    p.add_argument("network", help="a built-in system (see `nncme systems`) or a .toml/.json file")
    add_settings_arguments(p, FSPSettings)
    p.set_defaults(handler=_cmd_fsp)


def _cmd_fsp(args: argparse.Namespace) -> int:
    from .exact import FSPSettings, solve_fsp

    return _solve_and_save(args, "fsp", FSPSettings, solve_fsp)


def _add_ssa(sub: argparse._SubParsersAction) -> None:
    from .ssa import SSASettings

    p = sub.add_parser(
        "ssa",
        help="batched Gillespie simulation (any size; CPU or GPU)",
        description="Simulate many trajectories with the direct method (exact thinning for "
        "time-dependent rates) and write their statistics in the results format.",
    )
    p.add_argument("network", help="a built-in system (see `nncme systems`) or a .toml/.json file")
    add_settings_arguments(p, SSASettings)
    p.set_defaults(handler=_cmd_ssa)


def _cmd_ssa(args: argparse.Namespace) -> int:
    from .ssa import SSASettings, solve_ssa

    return _solve_and_save(args, "ssa", SSASettings, solve_ssa)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="distances between two result directories (per species and time)",
        description="Hellinger, total variation and KL of the marginals (and joints where "
        "both store them), relative errors of means and stds. A is the reference.",
    )
    p.add_argument("a", metavar="RESULT_A", help="reference result directory (e.g. FSP)")
    p.add_argument("b", metavar="RESULT_B", help="result directory to judge (e.g. SSA, VAN)")
    p.add_argument(
        "--max-hellinger",
        type=float,
        metavar="H",
        help="exit with status 1 if any marginal's Hellinger distance exceeds H",
    )
    p.add_argument("--json", metavar="FILE", help="write every distance to this JSON file")
    p.add_argument("--plot", metavar="PNG", help="write overlays and distances over time")
    p.add_argument(
        "--rows",
        type=int,
        default=120,
        help="print every species x time row up to this many, else a summary (120)",
    )
    p.set_defaults(handler=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from . import metrics
    from .paths import check_output_file
    from .results import Result

    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            check_output_file(path, option)
    try:
        a, b = Result.load(args.a), Result.load(args.b)
        d = metrics.compare(a, b)
    except ValueError as exc:  # a damaged file, other species, no common time after 0
        raise UsageError(str(exc)) from None
    print(f"A: {args.a} ({_describe(a)})")
    print(f"B: {args.b} ({_describe(b)})")
    print(_compared_times(d["times"], a.times, b.times))
    print(_distance_table(d, args.rows))
    if d.get("joint"):
        j = d["joint"]
        print(
            f"joint ({j['states']:,} states): Hellinger max {float(np.max(j['hellinger'])):.4g}, "
            f"TV max {float(np.max(j['total_variation'])):.4g}"
        )
    if d.get("pair"):
        pr = d["pair"]
        print(
            f"2D joint {'/'.join(pr['species'])}: Hellinger max "
            f"{float(np.max(pr['hellinger'])):.4g}"
        )
    worst = d["worst"]
    line = f"max Hellinger {d['max_hellinger']:.4g} ({worst['species']} at t = {worst['time']:g})"
    if d["noise_hellinger"] is not None:
        line += f"; sampling noise alone: {float(np.max(d['noise_hellinger'])):.2g}"
    status = 0
    if args.max_hellinger is not None:
        ok = d["max_hellinger"] <= args.max_hellinger
        line += f" {'<=' if ok else '>'} {args.max_hellinger:g}: {'ok' if ok else 'FAILED'}"
        status = 0 if ok else 1
    print(line)
    if args.json:
        _write_json(args.json, d)
        print(f"wrote {args.json}")
    if args.plot:
        from .plot import plot_comparison

        print(f"wrote {plot_comparison(a, b, d, args.plot)}")
    return status


def _write_json(path, d: dict) -> None:
    from .paths import atomic_write

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fh.write(json.dumps(_jsonable(d), indent=2))


def _compared_times(common, times_a, times_b, shown: int = 12) -> str:
    """Which times the distances are at: the common ones, and each result's grid."""
    listed = [f"{t:g}" for t in common]
    if len(listed) > shown:
        listed = [*listed[: shown - 2], "...", listed[-1]]

    def grid(times) -> str:
        return f"{len(times)} on [{times[0]:g}, {times[-1]:g}]"

    return (
        f"compared at {len(common)} common time{'s' if len(common) != 1 else ''}: "
        f"{', '.join(listed)} "
        f"(A has {grid(times_a)}, B has {grid(times_b)})"
    )


def _describe(r) -> str:
    text = r.method
    if r.summary.get("samples"):
        text += f", {int(r.summary['samples']):,} samples"
    name = r.summary.get("network", {}).get("name")
    return f"{name}, {text}" if name else text


def _distance_table(d: dict, max_rows: int) -> str:
    species, times = d["species"], np.asarray(d["times"])
    columns = [
        ("Hellinger", d["hellinger"]),
        ("TV", d["total_variation"]),
        ("KL(B|A)", d["kl_ba"]),
        ("mean err", d["mean_rel_error"]),
        ("std err", d["std_rel_error"]),
    ]
    if d["noise_hellinger"] is not None:
        columns.append(("noise H", d["noise_hellinger"]))
    rows = ["  ".join([f"{'species':<14}", f"{'t':>9}", *(f"{n:>9}" for n, _ in columns)])]
    rows.append("-" * len(rows[0]))
    T, L = d["hellinger"].shape
    if T * L <= max_rows:
        cells = [(i, j) for i in range(L) for j in range(T)]
    else:  # the worst time of each species, then a note
        cells = [(i, int(np.argmax(d["hellinger"][:, i]))) for i in range(min(L, max_rows))]
    for i, j in cells:
        values = (f"{float(v[j, i]):>9.3g}" for _, v in columns)
        rows.append("  ".join([f"{species[i][:14]:<14}", f"{times[j]:>9.4g}", *values]))
    if T * L > max_rows:
        rows.append(f"(worst time per species shown; {T} times x {L} species in --json)")
    rows += _LEGEND[: 4 if d["noise_hellinger"] is not None else 3]
    return "\n".join(rows)


_LEGEND = [
    "Hellinger, TV: distances between A's and B's marginals (0: equal, 1: disjoint).",
    "KL(B|A): in nats; inf where B puts probability on counts to which A gives none.",
    "mean err, std err: relative errors |B - A| / |A| of mean and std (not standard errors).",
    "noise H: the Hellinger distance that sampling alone gives; differences below it are noise.",
]


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)  # JSON has no inf/nan
    return x


# ------------------------------------------------------------------- nncme run / nncme study
def _run_config(args: argparse.Namespace, **defaults):
    """The RunConfig of `nncme run`: defaults < --config file < command-line options."""
    from .config import RunConfig

    return settings_from_args(RunConfig, args, **defaults)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="track P(n, t) with a variational autoregressive network (VAN)",
        description="Train a VAN through time from the initial counts to t_end and write "
        "results.npz, summary.json, plots, log.jsonl (one line per step) and checkpoint.pt "
        "(at each save time; --resume continues from it).",
    )
    p.add_argument("network", help="a built-in system (see `nncme systems`) or a .toml/.json file")
    from .config import RunConfig

    add_settings_arguments(p, RunConfig)
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from . import parallel
    from .api import build_driver
    from .config import ConfigError
    from .evolve import TrainingError
    from .io import resolve_network
    from .observers import Recorder

    network = resolve_network(args.network)
    config = _run_config(args)
    if config.out is None:
        config = config.replace(out=_default_out(network, "van"))
    try:
        with _warnings_as_lines("run"):  # e.g. resuming from the older of two checkpoints
            driver = build_driver(network, config)
    except ValueError as exc:  # ConfigError, model-option errors, a checkpoint of another run
        raise UsageError(str(exc)) from None
    model = driver.model
    first, taken = driver.index, driver.taken  # > 0 when resumed
    left = f" ({driver.num_steps - first:,} left)" if first else ""
    main = parallel.is_main()  # under torchrun, rank 0 alone speaks and writes
    processes = f" over {parallel.world_size()} processes" if parallel.active() else ""
    if main:
        print(
            f"van {network.name}: {config.model} ({model.num_parameters():,} parameters, "
            f"{config.dtype}, {model.device}), {driver.num_steps:,} steps{left} of dt "
            f"{driver.dt:g}{_growth(driver)} to t = {driver.t_end:g}, batch "
            f"{config.batch}{processes}"
        )
    warning = _many_steps_warning(driver, config)
    if warning and main:
        print(f"nncme run: warning: {warning}", file=sys.stderr)
    try:
        driver.run()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except TrainingError as exc:
        if main:
            print(f"nncme run: error: {exc}", file=sys.stderr)
        return 1
    finally:
        parallel.teardown()
    if not main:
        return 0
    recorder = driver.observer(Recorder)
    result = recorder.result(driver.elapsed)
    seconds = driver.elapsed
    steps = max(1, driver.taken - taken)  # grown steps count once
    print(
        f"  {recorder.status}: {seconds:.1f} s, {steps:,} steps ({1000 * seconds / steps:.1f} ms "
        "per step)"
    )
    for line in recorder.warnings[:5]:
        print(f"  warning: {line}")
    _print_final_moments(result, Path(config.out))
    return 0


# Above this many steps `nncme run` warns before it starts: each step is one or more fits of
# tens of iterations, so thousands of steps take hours on a CPU.
MANY_STEPS = 2000

# Fits (adam, sgd, natgrad) or TDVP stages per time step of each integrator.
_STAGES = {"euler": 1, "heun": 2, "rk4": 4, "implicit": 1, "auto": 2}


def _many_steps_warning(driver, config) -> str | None:
    """What a long run will do and the options that shorten it, or None for a run with
    MANY_STEPS or fewer steps still to take."""
    steps = driver.num_steps - driver.index
    exponential = getattr(driver.stepper, "steps_exponentially", False)  # `auto`'s
    if steps <= MANY_STEPS or (exponential and driver.max_span > 1):
        return None
    scheme = config.time_scheme
    stages = config.explicit_stages if scheme in ("ssp", "auto") else _STAGES[scheme]
    plural = "s" if stages > 1 else ""
    label = "heun; implicit where stiff" if scheme == "auto" else scheme
    if config.optimizer == "tdvp":
        work = f"{stages} TDVP stage{plural} ({label})"
    else:
        work = f"{stages} fit{plural} ({label}) of up to {config.iterations} iterations"
    if scheme == "implicit":
        options = ["a larger --dt (implicit steps take any dt)"]
    elif config.optimizer == "tdvp":
        options = ["a larger --dt"]
    elif scheme == "auto":
        options = [
            "a larger --dt (Heun steps while dt·a₀ <= 0.9 where the mass is, adaptive "
            "implicit ones where not)"
        ]
    else:
        options = [
            "a larger --dt (explicit steps are positive while dt·a₀ <= 0.9 where the mass is; "
            "the run warns where it is not)"
        ]
    if stages > 1:
        unit = "stage" if config.optimizer == "tdvp" else "fit"
        options.append(f"--integrator euler (one {unit} per step, first order)")
    if scheme not in ("implicit", "auto") and config.optimizer in ("adam", "sgd"):
        options.append("--integrator implicit (any dt)")
    options.append("a shorter --t-end")
    default = "" if config.dt is not None else ", the network's default"
    fewer = ", ".join(options)
    grown = " (fewer where steps grow)" if driver.max_span > 1 else ""
    return f"{steps:,} steps of dt {driver.dt:g}{default}{grown}, each {work}. Fewer steps: {fewer}"


def _growth(driver) -> str:
    """How far the steps may grow (`Driver.max_span`), for the run's first line."""
    if driver.max_span == 1:
        return ""
    return f" (grown where q moves slowly, up to {driver.max_span * driver.dt:g})"


# The default study: the autoregulatory feedback loop (a gene switching between a free and a
# bound state, G_u + G_b = 1 conserved, and a protein whose production depends on it, which
# gives its distribution a long shoulder), from the free gene and no protein, tracked by a NADE
# and checked against the exact solution at every save time, with every run setting at its
# default (its 130 states on the gene's law are summed: exponential steps), from a dt of the
# explicit map's limit, where the steps start before they grow.
STUDY_SYSTEM = "autoregulation"
# Where the study compares the upper tails: a floor of leaked mass shows at 1e-6 and below.
STUDY_TAIL_LEVELS = (1e-2, 1e-4, 1e-6, 1e-8)
STUDY_SETTINGS: dict = {
    "t_end": 2.0,
    "dt": 0.008,  # dt * a_0 <= 0.82 on the whole box (a_0 <= 102)
    "save_every": 0.25,
}


def _tail_line(d: dict) -> str:
    """The VAN's upper-tail probabilities over the exact ones at the last time, per species,
    at the exact law's STUDY_TAIL_LEVELS quantiles."""
    tails = d["tails"]
    parts = []
    for name, counts, ratios in zip(d["species"], tails["count"], tails["log10_ratio"]):
        cells = [
            f"{10 ** float(r):.3g} (n >= {int(c)})"
            for c, r in zip(counts, ratios)
            if c >= 0 and np.isfinite(float(r))
        ]
        if cells:
            parts.append(f"{name}: " + ", ".join(cells))
    levels = " / ".join(f"{v:g}" for v in tails["levels"])
    return (
        f"upper tails at t = {tails['time']:g}, VAN / exact at the exact {levels} quantiles: "
        + ("; ".join(parts) or "none inside the box")
    )


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="the default study: a VAN run and the exact solution, compared (a few minutes)",
        description=f"Run a NADE on {STUDY_SYSTEM!r} ({STUDY_SETTINGS}), solve the same "
        "network exactly (FSP), and write both results, a comparison plot and a table of "
        "Hellinger distances per species and save time.",
    )
    p.add_argument(
        "--out",
        dest="study_out",  # not RunConfig.out: the VAN writes to DIR/van
        default="study",
        metavar="DIR",
        help="output directory (study): DIR/van and DIR/fsp hold the two results",
    )
    p.add_argument("--system", default=STUDY_SYSTEM, help=f"network ({STUDY_SYSTEM})")
    p.add_argument("--config", metavar="TOML", help="run settings file overriding the study's")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no bars")
    p.add_argument("--device", default=argparse.SUPPRESS, help="torch device (cpu)")
    p.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="random seed (0)")
    p.set_defaults(handler=_cmd_study)


def _cmd_study(args: argparse.Namespace) -> int:
    import time

    from . import metrics
    from .api import run
    from .evolve import TrainingError
    from .exact import FSPSettings, solve_fsp
    from .io import resolve_network
    from .paths import check_output_dir
    from .plot import plot_comparison

    out = check_output_dir(args.study_out, "--out")
    network = resolve_network(args.system)
    settings = dict(STUDY_SETTINGS) if args.system == STUDY_SYSTEM else {}
    config = _run_config(args, **settings)
    if config.out is not None:  # from --config: the study owns its layout
        print(f"nncme study: note: out = {config.out!r} in --config is ignored; the VAN "
              f"writes to {out / 'van'}", file=sys.stderr)  # fmt: skip
    config = config.replace(out=str(out / "van"))
    print(f"nncme study: {network.name}, VAN ({config.model}) against the exact solution")
    began = time.perf_counter()
    try:
        van = run(network, config).result
    except TrainingError as exc:
        print(f"nncme study: error: {exc}", file=sys.stderr)
        return 1
    van_s = time.perf_counter() - began
    began = time.perf_counter()
    fsp = solve_fsp(network, van.times, FSPSettings(quiet=config.quiet))
    fsp.save(out / "fsp")
    fsp_s = time.perf_counter() - began
    d = metrics.compare(fsp, van, tail_levels=STUDY_TAIL_LEVELS)
    plot = plot_comparison(fsp, van, d, out / "comparison.png")
    _write_json(out / "distances.json", d)
    print(_distance_table(d, 200))
    worst = d["worst"]
    print(
        f"max Hellinger {d['max_hellinger']:.4f} ({worst['species']} at t = {worst['time']:g}); "
        f"max relative error of means {float(np.nanmax(d['mean_rel_error'])):.2%}"
    )
    print(_tail_line(d))
    print(
        f"VAN {van_s:.1f} s, exact {fsp_s:.1f} s; wrote {out}/: van/, fsp/ (each a result "
        f"directory), {plot.name}, distances.json"
    )
    return 0


def _add_amortise(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "amortise",
        help="train one conditional VAN over a box of rate constants and initial counts",
        description="Train one network q(n | c, t) for every context c of a box at once "
        "(nncme.amortise); answer with `nncme sweep`.",
    )
    p.add_argument("network", help="a built-in system or a .toml/.json/.xml file")
    p.add_argument(
        "--vary",
        action="append",
        required=True,
        metavar="NAME=LO:HI[:log|linear]",
        help="a reaction's rate constant or a species' initial count to vary (repeat)",
    )
    p.add_argument("--out", required=True, help="directory of the run")
    p.add_argument("--t-end", type=float, help="horizon (default: the network's)")
    p.add_argument("--dt", type=float, help="time step (default: the network's)")
    p.add_argument("--saves", type=int, default=10, help="save times after 0 (evenly spaced)")
    p.add_argument("--model", default="nade", choices=["nade", "transformer"])
    p.add_argument("--hidden", type=int, default=32, help="model width")
    p.add_argument("--contexts", type=int, default=64, help="contexts per iteration")
    p.add_argument("--per-context", type=int, default=32, help="samples per context")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tangent",
        action="store_true",
        help="also fit the derivatives in the rates that vary (sensitivities; 2 D more "
        "target evaluations an iteration for D rates)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_amortise)


def _cmd_amortise(args: argparse.Namespace) -> int:
    from . import parallel
    from .amortise import AmortiseConfig, Vary, amortise
    from .io import resolve_network

    network = resolve_network(args.network)
    try:
        varies = [Vary.parse(v) for v in args.vary]
        config = AmortiseConfig(
            model=args.model,
            hidden=args.hidden,
            contexts=args.contexts,
            per_context=args.per_context,
            dt=args.dt,
            t_end=args.t_end,
            saves=args.saves,
            seed=args.seed,
            tangent=args.tangent,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    main = True
    try:
        out = amortise(
            network,
            varies,
            args.out,
            config,
            resume=args.resume,
            device=args.device,
            progress=not args.quiet,
        )
        main = parallel.is_main()  # under torchrun, rank 0 alone speaks
    except ValueError as exc:  # a --resume of another run
        raise UsageError(str(exc)) from None
    finally:
        parallel.teardown()
    if main:
        print(f"amortised {network.name} over {', '.join(v.name for v in varies)}: {out}")
    return 0


def _parse_axis(text: str) -> tuple[str, np.ndarray]:
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    try:
        if not sep or len(parts) not in (1, 3, 4):
            raise ValueError
        if len(parts) == 1:
            return name.strip(), np.array([float(x) for x in parts[0].split(",")])
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) == 4 and parts[3] == "log":
            return name.strip(), np.geomspace(lo, hi, n)
        return name.strip(), np.linspace(lo, hi, n)
    except ValueError:
        raise UsageError(
            f"--grid takes NAME=LO:HI:N[:log] or NAME=V1,V2,..., got {text!r}"
        ) from None


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="statistics of an amortised run over a grid of contexts (table and figure)",
    )
    p.add_argument("run", help="directory of an `nncme amortise` run")
    p.add_argument("--t", type=float, help="save time (default: the last)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=LO:HI:N[:log]",
        help="a varied quantity's grid (NAME=V1,V2,... lists values); others sit mid-range",
    )
    p.add_argument("--statistic", default="mean", help="mean, std, fano or bimodality")
    p.add_argument("--species", help="species of the figure (default: the widest)")
    p.add_argument("--out", help="directory for sweep.json and the figure (default: the run)")
    p.set_defaults(handler=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .amortise import STATISTICS, AmortisedSolution, sweep
    from .plot import plot_sweep

    solution = AmortisedSolution(args.run)
    if args.statistic not in STATISTICS:
        raise UsageError(f"--statistic must be one of {STATISTICS}")
    axes = dict(_parse_axis(g) for g in args.grid)
    if not 1 <= len(axes) <= 2:
        raise UsageError("--grid: give one or two of " + ", ".join(solution.space.names))
    t = float(solution.times[-1] if args.t is None else args.t)
    try:
        result = sweep(solution, axes, t)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    names = solution.network.species_names
    if args.species is None:
        species = int(np.argmax(solution.network.limits))
    elif args.species in names:
        species = names.index(args.species)
    else:
        raise UsageError(f"--species must be one of {names}")
    out = Path(args.out or args.run)
    _write_json(out / "sweep.json", _jsonable(result))
    path = plot_sweep(
        result, args.statistic, species, list(axes), out / f"sweep_{args.statistic}.png"
    )
    if result["outside"].any():
        print(f"note: {int(result['outside'].sum())} grid points lie outside the trained box")
    z = result["stats"][args.statistic][:, species]
    print(
        f"{args.statistic} of {names[species]} at t = {t:g} over {len(z)} contexts: "
        f"{np.nanmin(z):.4g} .. {np.nanmax(z):.4g}; wrote {out / 'sweep.json'} and {path}"
    )
    return 0


def _add_paths(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "paths",
        help="trajectories sampled from an amortised run's transition kernel",
        description="Sample paths n(0), n(lag), ... by chaining q(n' | n, c, lag) of an "
        "`nncme amortise` run that varies the initial count of every species that changes "
        "(nncme.amortise.AmortisedSolution.paths). Writes paths.npz (times, states, outside), "
        "paths.json (means, standard deviations and lag-one correlations) and paths.png.",
    )
    p.add_argument("run", help="directory of an `nncme amortise` run")
    p.add_argument("--lag", type=float, required=True, help="time between two points of a path")
    p.add_argument("--steps", type=int, required=True, help="number of lags")
    p.add_argument("--count", type=int, default=10_000, help="number of paths (default 10000)")
    p.add_argument(
        "--at",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a varied rate's value or a species' count at the start; others sit mid-box",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for the files (default: the run's)")
    p.set_defaults(handler=_cmd_paths)


def _cmd_paths(args: argparse.Namespace) -> int:
    from .amortise import AmortisedSolution
    from .paths import atomic_write, check_output_dir
    from .plot import plot_paths

    solution = AmortisedSolution(args.run)
    out = Path(args.out or args.run)
    check_output_dir(out, "--out")
    start = _held_context(solution, args.at)
    for j, kind in enumerate(solution.space.kinds):  # a start is whole counts
        if kind == "initial":
            start[j] = np.round(start[j])
    try:
        paths = solution.paths(
            start, args.lag, args.steps, count=args.count, seed=args.seed, progress=True
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "paths.npz", "wb") as f:
        np.savez_compressed(
            f,
            times=paths.times,
            states=paths.states,
            outside=paths.outside,
            species=np.array(paths.species),
        )
    x = paths.states.astype(np.float64)
    corr = [paths.autocorrelation(i, 1) for i in range(len(paths.species))]
    report = {
        "context": dict(zip(solution.space.names, start.tolist())),
        "lag": args.lag,
        "count": args.count,
        "times": paths.times,
        "species": paths.species,
        "means": x.mean(axis=0),
        "stds": x.std(axis=0),
        "lag_one_correlation": np.stack(corr, axis=1),
        "outside_share": float(paths.outside.mean()),
    }
    _write_json(out / "paths.json", _jsonable(report))
    figure = plot_paths(paths, out / "paths.png")
    print(
        f"{args.count:,} paths of {solution.network.name} to t = {paths.times[-1]:g} "
        f"(lag {args.lag:g}); wrote {out / 'paths.npz'}, {out / 'paths.json'} and {figure}"
    )
    if paths.outside.any():
        print(
            f"note: {100 * paths.outside.mean():.2g} % of the steps started outside the trained "
            "box of initial counts (extrapolated); amortise over a wider range"
        )
    return 0


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="maximum-likelihood rate constants of snapshot data under an amortised run",
        description="Fit the varied rate constants of an `nncme amortise` run to snapshot "
        "counts (a CSV with one column per species, one row per cell) at one save time.",
    )
    p.add_argument("run", help="directory of an `nncme amortise` run")
    p.add_argument("data", help="CSV: a header naming the species, one row of counts per cell")
    p.add_argument("--t", type=float, required=True, help="the save time the data were taken at")
    p.add_argument(
        "--at",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a varied quantity held fixed (an initial count, or a known rate); others start "
        "mid-box",
    )
    p.add_argument("--out", help="where infer.json goes (default: the run's directory)")
    p.set_defaults(handler=_cmd_infer)


def _cmd_infer(args: argparse.Namespace) -> int:
    from .amortise import AmortisedSolution

    solution = AmortisedSolution(args.run)
    names = solution.network.species_names
    with open(args.data) as f:
        header = [h.strip() for h in f.readline().split(",")]
    if sorted(header) != sorted(names):
        raise UsageError(f"{args.data}: the header must name the species {names}, got {header}")
    table = np.loadtxt(args.data, delimiter=",", skiprows=1, ndmin=2)
    cells = table[:, [header.index(n) for n in names]]
    if (cells != np.round(cells)).any() or (cells < 0).any():
        raise UsageError(f"{args.data}: counts must be whole numbers >= 0")
    start = _held_context(solution, args.at)
    try:
        fit = solution.fit_rates(cells.astype(np.int64), args.t, start=start)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cov = np.linalg.pinv(fit["fisher"])
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    rates = [n for n, k in zip(solution.space.names, solution.space.kinds) if k == "rate"]
    report = {"cells": len(cells), "t": args.t, "log_likelihood": fit["log_likelihood"]}
    report["rates"] = {}
    for r, name in enumerate(rates):
        value = float(fit["values"][solution.space.names.index(name)])
        lo, hi = value * np.exp(-1.6449 * sd[r]), value * np.exp(1.6449 * sd[r])
        report["rates"][name] = {"estimate": value, "sd_log": float(sd[r]), "interval_90": [lo, hi]}
        print(f"{name} = {value:.4g}  (90 % interval {lo:.4g} .. {hi:.4g})")
    if fit["at_box_edge"]:
        print("note: an estimate sits on the edge of the trained box; the data may lie outside it")
    report["at_box_edge"] = fit["at_box_edge"]
    out = Path(args.out or args.run)
    _write_json(out / "infer.json", report)
    return 0


def _held_context(solution: AmortisedSolution, items: Sequence[str]) -> np.ndarray:
    """The context a fit starts from: mid-box, with the --at NAME=VALUE quantities held."""
    start = solution.space.middle()
    for item in items:
        name, _, value = item.partition("=")
        if name not in solution.space.names:
            raise UsageError(f"--at {item}: this run varies {solution.space.names}")
        start[solution.space.names.index(name)] = float(value)
    return start


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        help="rate constants that match measured observables (means, Fano factors, histograms)",
        description="Fit the varied rate constants to observables through an amortised run "
        "(nncme.fit): RUN is an `nncme amortise` directory, or a network, which is first "
        "amortised over --vary into --out (to the last observable's time; resumed if there).",
    )
    p.add_argument("target", help="an `nncme amortise` directory, or a network with --vary")
    p.add_argument(
        "observables",
        help="CSV: kind,species,t,value,sigma[,weight,lo,hi,width] (kinds: mean, variance, "
        "fano, covariance (species A:B), histogram (bin lo..hi), tail (n >= lo))",
    )
    p.add_argument("--vary", action="append", default=[], metavar="NAME=LO:HI[:log|linear]")
    p.add_argument("--out", help="with a network: the amortised run's directory")
    p.add_argument(
        "--at",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a varied quantity held fixed (an initial count, or a known rate)",
    )
    p.add_argument("--starts", type=int, default=5, help="local fits from Sobol points")
    p.add_argument("--method", default="auto", choices=["auto", "exact", "sample"])
    p.add_argument("--samples", type=int, default=20000, help="draws per time (method sample)")
    p.add_argument("--quiet", action="store_true", help="no progress bar while amortising")
    p.set_defaults(handler=_cmd_fit)


def _cmd_fit(args: argparse.Namespace) -> int:
    from .amortise import AmortiseConfig, AmortisedSolution, Vary, amortise
    from .fit import fit_observables
    from .observables import read_observables

    try:
        observables = read_observables(args.observables)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    run = Path(args.target)
    if not (run / "amortise.json").exists():
        from .io import resolve_network

        if not args.vary or not args.out:
            raise UsageError(f"{args.target} is not an amortised run: give --vary and --out")
        network = resolve_network(args.target)
        try:
            varies = [Vary.parse(v) for v in args.vary]
            config = AmortiseConfig(t_end=max(o.t for o in observables))
            run = amortise(
                network,
                varies,
                args.out,
                config,
                resume=(Path(args.out) / "state.pt").exists(),
                progress=not args.quiet,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    solution = AmortisedSolution(run)
    start = _held_context(solution, args.at)
    try:
        fit = fit_observables(
            solution,
            observables,
            start=start,
            starts=args.starts,
            method=args.method,
            samples=args.samples,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for r, name in enumerate(fit["rates"]):
        lo, hi = fit["interval_90"][r]
        edge = "  (on the box's edge)" if fit["at_box_edge"][r] else ""
        print(f"{name} = {fit['estimate'][r]:.4g}  (90 % interval {lo:.4g} .. {hi:.4g}){edge}")
    print(
        f"chi2 = {fit['chi2']:.3g} over {fit['dof']} degrees of freedom; "
        f"{fit['evaluations']} evaluations, {fit['seconds']:.1f} s ({fit['method']} sums)"
    )
    _write_json(run / "fit.json", _jsonable(fit))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nncme",
        description="Solve chemical master equations with variational autoregressive networks.",
    )
    parser.add_argument("--version", action="version", version=f"nncme {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS = [
    _add_info,
    _add_show,
    _add_systems,
    _add_fsp,
    _add_ssa,
    _add_compare,
    _add_run,
    _add_study,
    _add_amortise,
    _add_sweep,
    _add_infer,
    _add_paths,
    _add_fit,
]


# A file given on the command line that cannot be read (paths.check_input_file).
_INPUT_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, NetworkError, UsageError, *_INPUT_ERRORS) as exc:
        print(f"nncme {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nncme {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `nncme show ... | head`: the reader left; silence the flush at interpreter exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the disk filled, a directory vanished: one line, not a traceback
        print(f"nncme {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
