"""The `nncme` command.

Each subcommand has an `_add_<name>` function that declares its arguments and a handler
`_cmd_<name>(args) -> int` (the exit status). User errors (a bad network, a bad option) print
one clear line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .network import NetworkError

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


# ------------------------------------------------------------------- shared solver options
def add_time_options(p: argparse.ArgumentParser) -> None:
    """--times / --num-times / --t-end: the times at which results are recorded."""
    g = p.add_argument_group("times")
    g.add_argument(
        "--times",
        metavar="LIST",
        help="record times: a comma list (0,0.5,2) or START:STOP:NUM (evenly spaced); "
        "default: --num-times points on [0, --t-end]",
    )
    g.add_argument(
        "--t-end", type=float, metavar="T", help="end time (default: the network's t_end)"
    )
    g.add_argument(
        "--num-times",
        type=int,
        default=11,
        metavar="N",
        help="number of evenly spaced record times on [0, t_end] (default 11)",
    )


def add_run_options(p: argparse.ArgumentParser, default_device: str = "cpu") -> None:
    """--out / --device / --seed / --quiet, shared by the solver commands."""
    g = p.add_argument_group("run")
    g.add_argument(
        "--out", metavar="DIR", help="result directory (default: results/NETWORK/METHOD)"
    )
    g.add_argument(
        "--device",
        default=default_device,
        help=f"torch device: cpu, cuda, cuda:N (default {default_device})",
    )
    g.add_argument(
        "--seed",
        type=int,
        help="random seed of sampling solvers (default: fresh, reported in summary.json); "
        "FSP is deterministic and ignores it",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def times_from_args(args: argparse.Namespace, network) -> np.ndarray:
    """The record times given by add_time_options' flags, for this network."""
    if args.times:
        text = args.times.strip()
        try:
            if ":" in text:
                start, stop, num = text.split(":")
                times = np.linspace(float(start), float(stop), int(num))
            else:
                times = np.array([float(x) for x in text.split(",") if x.strip()])
        except ValueError:
            raise UsageError(
                f"--times: expected a comma list or START:STOP:NUM, got {args.times!r}"
            ) from None
        if args.t_end is not None:
            raise UsageError("--times and --t-end: give one of them")
    else:
        t_end = network.t_end if args.t_end is None else args.t_end
        if not t_end > 0:
            raise UsageError(f"--t-end: must be > 0, got {t_end!r}")
        if args.num_times < 1:
            raise UsageError(f"--num-times: must be >= 1, got {args.num_times}")
        times = np.linspace(0.0, t_end, args.num_times) if args.num_times > 1 else np.array([t_end])
    if times.size == 0 or not np.all(np.isfinite(times)) or times[0] < 0:
        raise UsageError("--times: need finite times >= 0")
    if np.any(np.diff(times) <= 0):
        raise UsageError("--times: must be strictly increasing")
    return times


def out_dir(args: argparse.Namespace, network, method: str) -> Path:
    """--out, or results/NETWORK/METHOD."""
    if args.out:
        return Path(args.out)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in network.name)
    return Path("results") / name / method


def _solve_and_save(args: argparse.Namespace, method: str, solve) -> int:
    """Resolve the network, run `solve(network, times)`, save, print a short report."""
    from .io import resolve_network

    network = resolve_network(args.network)
    times = times_from_args(args, network)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = solve(network, times)
        out = result.save(out_dir(args, network, method), plots=not args.no_plots)
    for w in caught:  # one line each, like errors
        print(f"nncme {method}: warning: {w.message}", file=sys.stderr)
    info = result.summary
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
    _print_final_moments(result, out)
    return 0


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
    p = sub.add_parser(
        "fsp",
        help="exact solution by finite state projection (small networks)",
        description="Solve the CME exactly on the count-limit box (reduced by conservation "
        "laws) and write results.npz, summary.json and plots.",
    )
    p.add_argument("network", help="a built-in system (see `nncme systems`) or a .toml/.json file")
    add_time_options(p)
    add_run_options(p)
    g = p.add_argument_group("fsp")
    g.add_argument(
        "--max-states",
        type=int,
        default=None,
        help="refuse larger state spaces (default 2,000,000)",
    )
    g.add_argument(
        "--method",
        default="auto",
        choices=["auto", "uniformization", "expm", "DOP853", "BDF", "Radau"],
        help="integrator (default auto: uniformization for constant rates, DOP853 for "
        "time-dependent ones, BDF where either would need millions of sparse products)",
    )
    g.add_argument("--rtol", type=float, default=None, help="ODE relative tolerance (1e-10)")
    g.add_argument("--atol", type=float, default=None, help="ODE absolute tolerance (1e-14)")
    g.add_argument("--no-joint", action="store_true", help="do not store the joint distribution")
    g.add_argument("--no-plots", action="store_true", help="do not write PNG figures")
    p.set_defaults(handler=_cmd_fsp)


def _cmd_fsp(args: argparse.Namespace) -> int:
    from .exact import FSPSettings, solve_fsp

    fields = {
        "method": args.method,
        "device": args.device,
        "keep_joint": not args.no_joint,
        "progress": not args.quiet,
    }
    for name in ("max_states", "rtol", "atol"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    settings = FSPSettings(**fields)
    return _solve_and_save(args, "fsp", lambda net, times: solve_fsp(net, times, settings))


def _add_ssa(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ssa",
        help="batched Gillespie simulation (any size; CPU or GPU)",
        description="Simulate many trajectories with the direct method (exact thinning for "
        "time-dependent rates) and write their statistics in the results format.",
    )
    p.add_argument("network", help="a built-in system (see `nncme systems`) or a .toml/.json file")
    g = p.add_argument_group("ssa")
    g.add_argument(
        "--trajectories", "-n", type=int, default=100_000, help="number of trajectories (100000)"
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="trajectories simulated together (default: up to 32768 on CPU, 131072 on GPU)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's; 1 is best on a busy machine)",
    )
    g.add_argument("--no-joint", action="store_true", help="do not store the empirical joint")
    g.add_argument("--no-plots", action="store_true", help="do not write PNG figures")
    add_time_options(p)
    add_run_options(p)
    p.set_defaults(handler=_cmd_ssa)


def _cmd_ssa(args: argparse.Namespace) -> int:
    from .ssa import SSASettings, solve_ssa

    settings = SSASettings(
        trajectories=args.trajectories,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        threads=args.threads,
        keep_joint=not args.no_joint,
        progress=not args.quiet,
    )
    return _solve_and_save(args, "ssa", lambda net, times: solve_ssa(net, times, settings))


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
    from .results import Result

    a, b = Result.load(args.a), Result.load(args.b)
    try:
        d = metrics.compare(a, b)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"A: {args.a} ({_describe(a)})")
    print(f"B: {args.b} ({_describe(b)})")
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
        line += (
            f"; sampling noise alone: {float(np.max(d['noise_hellinger'])):.2g} "
            "(noise H: the distance expected from finite samples of an exact answer)"
        )
    status = 0
    if args.max_hellinger is not None:
        ok = d["max_hellinger"] <= args.max_hellinger
        line += f" {'<=' if ok else '>'} {args.max_hellinger:g}: {'ok' if ok else 'FAILED'}"
        status = 0 if ok else 1
    print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(_jsonable(d), indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        from .plot import plot_comparison

        print(f"wrote {plot_comparison(a, b, d, args.plot)}")
    return status


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
    return "\n".join(rows)


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
def _parse_times(text: str) -> list[float]:
    """--times as the solver commands take it: a comma list or START:STOP:NUM."""
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            return np.linspace(float(start), float(stop), int(num)).tolist()
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(
            f"--times: expected a comma list or START:STOP:NUM, got {text!r}"
        ) from None


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per RunConfig field, same name with dashes (--t-end <-> t_end)."""
    import dataclasses

    from .config import RunConfig

    g = p.add_argument_group("run settings (also valid as keys of a --config TOML file)")
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = str(f.type)
        kw: dict = {"default": argparse.SUPPRESS, "help": help_text}
        if kind == "bool":
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            g.add_argument(flag, action=action, **kw)
            continue
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if kind.startswith("list"):
            kw.update(type=_parse_times, metavar="LIST")
        elif kind.startswith("int"):
            kw.update(type=int, metavar="N")
        elif kind.startswith("float"):
            kw.update(type=float, metavar="X")
        if f.default is not None and not isinstance(f.default, bool):
            kw["help"] = f"{help_text} (default {f.default})"
        g.add_argument(flag, **kw)


def _run_config(args: argparse.Namespace, **defaults):
    """The RunConfig of `nncme run`: defaults < --config file < command-line options."""
    import dataclasses

    from .config import ConfigError, RunConfig

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if hasattr(args, f.name)
    }
    try:
        from_file = RunConfig.read_toml(args.config) if getattr(args, "config", None) else {}
        source = args.config if from_file else "options"
        return RunConfig.from_dict({**defaults, **from_file, **given}, source=source)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="track P(n, t) with a variational autoregressive network (VAN)",
        description="Train a VAN through time from the initial counts to t_end and write "
        "results.npz, summary.json, plots, log.jsonl (one line per step) and checkpoint.pt "
        "(at each save time; --resume continues from it).",
    )
    p.add_argument("network", help="a built-in system (see `nncme systems`) or a .toml/.json file")
    p.add_argument("--config", metavar="TOML", help="run settings file (same names as options)")
    _add_config_options(p)
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from .api import build_driver
    from .config import ConfigError
    from .evolve import TrainingError
    from .io import resolve_network
    from .observers import Recorder

    network = resolve_network(args.network)
    config = _run_config(args)
    if config.out is None:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in network.name)
        config = config.replace(out=str(Path("results") / name / "van"))
    try:
        driver = build_driver(network, config)
    except ValueError as exc:  # ConfigError, model-option errors, a checkpoint of another run
        raise UsageError(str(exc)) from None
    model = driver.model
    print(
        f"van {network.name}: {config.model} ({model.num_parameters():,} parameters, "
        f"{config.dtype}, {model.device}), {driver.num_steps} steps of dt "
        f"{driver.dt:g} to t = {driver.t_end:g}, batch {config.batch}"
    )
    try:
        driver.run()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except TrainingError as exc:
        print(f"nncme run: error: {exc}", file=sys.stderr)
        return 1
    result = driver.observer(Recorder).result(driver.elapsed)
    seconds = driver.elapsed
    steps = max(1, driver.num_steps)
    print(f"  {seconds:.1f} s ({1000 * seconds / steps:.1f} ms per step)")
    _print_final_moments(result, Path(config.out))
    return 0


# The default study: the autoregulatory feedback loop (a gene switching between a free and a
# bound state, G_u + G_b = 1 conserved, and a protein whose production depends on it, which
# gives its distribution a long shoulder), from the free gene and no protein, tracked by a NADE
# and checked against the exact solution at every save time. The run's default budget (batch
# 1000, up to 60 iterations per fit, Heun steps); dt as large as dt * a_0 < 1 allows, so it
# takes about 3 minutes on one core of the 2-core development machine.
STUDY_SYSTEM = "autoregulation"
STUDY_SETTINGS: dict = {
    "t_end": 2.0,
    "dt": 0.008,  # dt * a_0 <= 0.82 on the whole box (a_0 <= 102)
    "save_every": 0.25,
}


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="the default study: a VAN run and the exact solution, compared (a few minutes)",
        description=f"Run a NADE on {STUDY_SYSTEM!r} ({STUDY_SETTINGS}), solve the same "
        "network exactly (FSP), and write both results, a comparison plot and a table of "
        "Hellinger distances per species and save time.",
    )
    p.add_argument("--out", default="study", metavar="DIR", help="output directory (study)")
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
    from .plot import plot_comparison

    out = Path(args.out)
    network = resolve_network(args.system)
    settings = dict(STUDY_SETTINGS) if args.system == STUDY_SYSTEM else {}
    config = _run_config(args, **settings, out=str(out / "van"))
    print(f"nncme study: {network.name}, VAN ({config.model}) against the exact solution")
    began = time.perf_counter()
    try:
        van = run(network, config).result
    except TrainingError as exc:
        print(f"nncme study: error: {exc}", file=sys.stderr)
        return 1
    van_s = time.perf_counter() - began
    began = time.perf_counter()
    fsp = solve_fsp(network, van.times, FSPSettings(progress=not config.quiet))
    fsp.save(out / "fsp")
    fsp_s = time.perf_counter() - began
    d = metrics.compare(fsp, van)
    plot = plot_comparison(fsp, van, d, out / "comparison.png")
    (out / "distances.json").write_text(json.dumps(_jsonable(d), indent=2))
    print(_distance_table(d, 200))
    worst = d["worst"]
    print(
        f"max Hellinger {d['max_hellinger']:.4f} ({worst['species']} at t = {worst['time']:g}); "
        f"max relative error of means {float(np.nanmax(d['mean_rel_error'])):.2%}"
    )
    print(f"VAN {van_s:.1f} s, exact {fsp_s:.1f} s; wrote {out}/ (van/, fsp/, {plot.name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nncme",
        description="Solve chemical master equations with variational autoregressive networks.",
    )
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
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (NetworkError, UsageError, FileNotFoundError) as exc:
        print(f"nncme {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nncme {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `nncme show ... | head`: the reader left; silence the flush at interpreter exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
