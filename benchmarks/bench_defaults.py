"""nncme at its DEFAULT settings on networks no test contains, against the exact (FSP) solution.

    python benchmarks/bench_defaults.py                              # every network file
    python benchmarks/bench_defaults.py --networks cascade3 dimerisation --t-end-scale 0.1
    python benchmarks/bench_defaults.py --set batch=2000 --set lr_decay=1 --tag b2000
    python benchmarks/bench_defaults.py --networks mapk --t-end-scale 0.02 --reference ssa

For each file in benchmarks/networks/ (see check_networks.py for their exact-solution checks):
one `nncme.run(network, RunConfig(t_end=..., quiet=True, seed=...))` with everything else at
its default (the file's own dt; t_end is the file's times `--t-end-scale`), then
`solve_fsp(network, result.times)` at the VAN's save times, and per network:

  status        "completed", "stopped" (at `--time-limit`, or a `--from-run` directory of a
                run killed before t_end: measured over the save times it reached) or "failed"
                (the exception's type and message, and the time the run had reached:
                StepSizeError, NonFiniteError, ...)
  wall time     of the VAN run (and of FSP, apart)
  hellinger     the largest Hellinger distance of the marginals over every species and every
                save time (t = 0, the start distribution, included); at the first save time
                after 0; per time and per species
  mean error    the largest relative error of the means, over species whose exact mean is at
                least 0.05 (at that time)
  tails         for each species and time: the exact upper quantiles q (smallest count with
                P(n >= q) <= 1e-4, 1e-6) and the ratio P_van(n >= q) / P_exact(n >= q); the
                table shows the ratio furthest from 1 (in log) over species and times, where
                P_exact(n >= q) >= level / 100 (see `tails`)
  boundary      the probability on the box boundary, VAN and exact

Where the box has at most `joint_max_states` states the VAN's marginals are exact sums of its
joint, and where the states on the network's conservation laws are that few, exact sums over
them ("laws"); otherwise they come from `eval_samples` samples (averaged conditionals), and the
Hellinger distance has a sampling floor (`sampling_noise_hellinger`, an upper estimate).

A long horizon can be run apart, resumable, and scored here afterwards, whole or as far as it
got: `nncme run FILE --out DIR` (results.npz is rewritten at every save time), then
`--networks FILE --from-run DIR`. `--time-limit S` stops each run here after S seconds.

A catalogue system (`nncme systems`) named in --networks runs from its file written to
runs/catalogue/<name>.toml (its t_end the catalogue's: MAPK's 5000). `--reference ssa` scores
against `--ssa-trajectories` SSA trajectories (default 1e5, seed 0) instead, for boxes FSP
cannot hold (MAPK): the Hellinger distances then have the SSA's sampling floor too
(`sampling_noise_hellinger`, both sides' added in H^2), and the tails are kept only at levels
with at least 10 expected trajectories beyond their quantile.

`--set key=value` overrides a RunConfig field (for comparisons; every override is recorded).
The VAN and FSP results go to runs/defaults[_<tag>]/<network>/{van,fsp} (results.npz,
git-ignored). The JSON, benchmarks/results/defaults_<device>[_<tag>].json, is written after
every network, so a partial run keeps its rows; `--merge` keeps the rows of other networks
already there. Each network runs in its own try/except: one failure does not stop the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nncme
from bench_common import RESULTS, git_commit, print_table, write_results
from check_networks import network_files
from nncme import systems
from nncme.config import RunConfig
from nncme.exact import FSPSettings, count_states, solve_fsp
from nncme.io import load_network, save_network
from nncme.metrics import compare, relative_error, sampling_noise_hellinger, tail_errors
from nncme.observers import LOG
from nncme.results import Result
from nncme.ssa import SSASettings, solve_ssa

BENCH = "defaults"
# VAN and FSP results of each network (results.npz), for a closer look: git-ignored
RUNS = Path(__file__).resolve().parent.parent / "runs"
REPO = str(Path(__file__).resolve().parent.parent) + "/"


def repo_path(path: Path) -> str:
    """A path relative to the repository where it lies inside it, else its last part marked as
    outside it (no machine paths in JSON)."""
    path = path.resolve()
    if path.is_relative_to(RUNS.parent):
        return str(path.relative_to(RUNS.parent))
    return f"<outside the repository>/{path.name}"


def command_word(word: str) -> str:
    """A word of the command line, a path in it as `repo_path` writes it."""
    return repo_path(Path(word)) if word.startswith("/") and Path(word).exists() else word


def short_traceback() -> list[str]:
    """The last lines of the current traceback, with paths relative to the repository."""
    return [line.replace(REPO, "") for line in traceback.format_exc(limit=6).splitlines()[-12:]]


TAIL_LEVELS = (1e-4, 1e-6)
MIN_MEAN = 0.05  # relative errors of means below this exact mean are not counted
# a sampled reference's tail at level l is kept where l * trajectories >= this
TAIL_MIN_EXPECTED = 10


@dataclass(frozen=True)
class Reference:
    """What the VAN is scored against: FSP (exact), or `samples` SSA trajectories."""

    method: str = "fsp"
    samples: int | None = None

    def solve(self, network: Any, times: Any) -> Result:
        if self.method == "fsp":
            return solve_fsp(network, times, FSPSettings(quiet=True))
        return solve_ssa(network, times, SSASettings(trajectories=self.samples, seed=0, quiet=True))

    def tail_levels(self) -> tuple[float, ...]:
        if self.samples is None:
            return TAIL_LEVELS
        return tuple(v for v in TAIL_LEVELS if v * self.samples >= TAIL_MIN_EXPECTED)


def parse_value(text: str) -> Any:
    """A --set value: JSON (numbers, true/false, null, lists), a comma list, or a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text in ("None", "none"):
        return None
    if text in ("True", "False"):
        return text == "True"
    if "," in text:
        return [parse_value(part) for part in text.split(",")]
    return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set: expected key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    RunConfig.from_dict(out, source="--set")  # fail now, before any run, on a bad override
    return out


def _finite(x: float) -> float | None:
    """JSON-safe float: None for nan, +-1e300 for +-inf."""
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return math.copysign(1e300, x)
    return x


def _tolist(a: np.ndarray) -> list:
    return [_tolist(v) if isinstance(v, np.ndarray) else _finite(v) for v in np.asarray(a)]


def tails(exact: Any, van: Any, levels: tuple[float, ...] = TAIL_LEVELS) -> dict[str, Any]:
    """Upper-tail ratios at the exact 1e-4 and 1e-6 quantiles, per time, species and level.

    The quantile q of a level is the smallest count with P_exact(n >= q) <= level. For a
    species of a few counts the tail there can be far below the level (P(n >= 1) = 0.3,
    P(n >= 2) = 1e-9): such points, with P_exact(n >= q) < level / 100, and those where the
    exact tail is 0 (a point mass, the bound of a conservation law) are left out of "worst";
    "worst_any" keeps them (not those with an exact 0).
    """
    te = tail_errors(exact.marginals, van.marginals, levels)  # (T, L, V) arrays
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = te["other"] / te["reference"]
    out: dict[str, Any] = {"levels": list(levels)}
    worst, worst_any, final = {}, {}, {}

    def pick(r: np.ndarray, use: np.ndarray, v: int) -> dict[str, Any] | None:
        if not use.any():
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.where(use, np.abs(np.log10(np.maximum(r, 1e-300))), -1.0)
        j, i = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return {
            "ratio": _finite(r[j, i]),
            "species": exact.species[i],
            "time": float(exact.times[j]),
            "q": int(te["count"][j, i, v]),
            "exact": _finite(te["reference"][j, i, v]),
            "van": _finite(te["other"][j, i, v]),
            "min_ratio": _finite(np.min(np.where(use, r, np.inf))),
            "max_ratio": _finite(np.max(np.where(use, r, -np.inf))),
            "points": int(use.sum()),
        }

    for v, level in enumerate(levels):
        r = ratio[..., v]
        has = (te["count"][..., v] >= 0) & (te["reference"][..., v] > 0)
        real = has & (te["reference"][..., v] >= level / 100)
        key = f"{level:g}"
        final[key] = {
            s: None
            if not has[-1, i]
            else {
                "q": int(te["count"][-1, i, v]),
                "exact": _finite(te["reference"][-1, i, v]),
                "van": _finite(te["other"][-1, i, v]),
                "ratio": _finite(r[-1, i]),
            }
            for i, s in enumerate(exact.species)
        }
        worst[key] = pick(r, real, v)
        worst_any[key] = pick(r, has, v)
    out["worst"] = worst
    out["worst_any"] = worst_any
    out["final_time"] = final
    return out


def measure(
    network: Any, van: Any, reference: Reference, save_dir: Path | None = None
) -> dict[str, Any]:
    """The VAN result against the reference at the VAN's save times (both saved under
    save_dir)."""
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exact = reference.solve(network, van.times)
    reference_s = time.perf_counter() - began
    saved = None
    if save_dir is not None:
        try:
            van.save(save_dir / "van", plots=False)
            exact.save(save_dir / reference.method, plots=False)
            saved = str(save_dir.relative_to(RUNS.parent))
        except Exception as exc:  # the numbers below matter more than the files
            saved = f"not saved: {type(exc).__name__}: {exc}"
    d = compare(exact, van, tail_levels=reference.tail_levels())
    h = np.asarray(d["hellinger"])  # (T, L)
    times = np.asarray(d["times"])
    later = np.nonzero(times > 0)[0]
    first = int(later[0]) if later.size else 0
    mean_exact = np.asarray(d["mean_a"])
    err = relative_error(mean_exact, np.asarray(d["mean_b"]))
    err = np.where(mean_exact >= MIN_MEAN, err, np.nan)
    counted = ~np.isnan(err)
    worst_err = float(np.max(err[counted])) if counted.any() else None
    out: dict[str, Any] = {
        "times": times.tolist(),
        "max_hellinger": float(h.max()),
        "worst": d["worst"],
        "first_save_time": float(times[first]),
        "hellinger_first_save": float(h[first].max()),
        "hellinger_max_per_time": h.max(axis=1).tolist(),
        "hellinger_max_per_species": dict(zip(d["species"], h.max(axis=0).tolist())),
        "hellinger": _tolist(h),
        "max_mean_rel_error": None if worst_err is None else _finite(worst_err),
        "mean_rel_error": _tolist(err),
        "means_exact_final": dict(zip(d["species"], mean_exact[-1].tolist())),
        "means_van_final": dict(zip(d["species"], np.asarray(d["mean_b"])[-1].tolist())),
        "stds_exact_final": dict(zip(d["species"], np.asarray(d["std_a"])[-1].tolist())),
        "stds_van_final": dict(zip(d["species"], np.asarray(d["std_b"])[-1].tolist())),
        "tails": tails(exact, van, reference.tail_levels()),
        "boundary_exact_max": None if exact.boundary is None else float(exact.boundary.max()),
        "boundary_van_max": None if van.boundary is None else float(van.boundary.max()),
        "boundary_van": None if van.boundary is None else _tolist(van.boundary),
        "joint_hellinger_max": None
        if d["joint"] is None
        else float(np.asarray(d["joint"]["hellinger"]).max()),
        "reference": reference.method,
        f"{reference.method}_seconds": reference_s,
        f"{reference.method}_warnings": sorted({str(w.message) for w in caught}),
        "results_saved": saved,
    }
    if reference.method == "fsp":
        out["fsp_states"] = int(exact.summary["states"])
    else:
        out["ssa_trajectories"] = reference.samples
    marginals_from = van.summary.get("marginals_from")
    out["marginals_from"] = marginals_from
    # independent sampling noise of each sampled side adds in H^2
    sampled = [reference.samples or 0]
    if marginals_from not in ("joint", "conservation-law states"):
        sampled.append(int(van.summary.get("eval_samples") or 0))
    h2 = sum(sampling_noise_hellinger(exact.marginals, n) ** 2 for n in sampled if n)
    if np.any(h2):
        out["sampling_noise_hellinger_max"] = float(np.sqrt(h2).max())
    return out


def describe(path: Path, network: Any, args: argparse.Namespace, overrides: dict) -> dict:
    """The row's header: the network, its box and the settings of its run."""
    states, states_exact = count_states(network)
    t_end = float(overrides.get("t_end", network.t_end * args.t_end_scale))
    settings = {"t_end": t_end, "quiet": True, "seed": args.seed, **overrides}
    settings["t_end"] = t_end
    return {
        "network": path.stem,
        "file": repo_path(path),
        "name": network.name,
        "species": list(network.species_names),
        "L": network.L,
        "K": network.K,
        "limits": network.limits.tolist(),
        "box": int(math.prod(int(m) for m in network.limits)),
        "states": states,
        "states_exact": states_exact,
        "convention": network.convention,
        "conservation_laws": len(network.conservation_laws),
        "t_end_file": network.t_end,
        "dt_file": network.dt,
        "t_end": t_end,
        "dt": float(overrides.get("dt", network.dt)),
        "settings": settings,
    }


def run_stats(result: Any, history: list[dict]) -> dict[str, Any]:
    """What the run's summary and per-step log say of its work."""
    return {
        "steps": len(history),
        "iterations_mean": float(np.mean([h.get("iterations", 0) for h in history]))
        if history
        else None,
        "final_loss": result.summary.get("final_loss"),
        "largest_batch": result.summary.get("largest_batch"),
        "longest_step": result.summary.get("longest_step"),
        "grid_steps": result.summary.get("steps"),
        "steps_per_batch": {
            str(b): sum(1 for h in history if h.get("batch") == b)
            for b in sorted({h.get("batch") for h in history if h.get("batch")})
        },
        "work_to_save_time": work_to(result.times, history),
    }


def work_to(times: Any, history: list[dict]) -> list[dict[str, Any]]:
    """Steps, optimiser iterations and step seconds up to each save time (from the log), so
    runs of different lengths compare at a common time."""
    out = []
    for t in np.asarray(times, dtype=float):
        done = [h for h in history if h.get("t", 0.0) <= t * (1 + 1e-9) + 1e-12]
        out.append(
            {
                "t": float(t),
                "steps": len(done),
                "iterations": int(sum(h.get("iterations", 0) or 0 for h in done)),
                "step_seconds": float(sum(h.get("seconds", 0.0) or 0.0 for h in done)),
            }
        )
    return out


def catalogue_file(name: str) -> str:
    """A network name as given, or a catalogue system's (`nncme systems`, not a file of
    benchmarks/networks) written to runs/catalogue/<name>.toml, its file from then on."""
    if Path(name).exists() or name not in systems.names():
        return name
    path = RUNS / "catalogue" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_network(systems.get(name), path)
    return str(path)


def reference_of(args: argparse.Namespace) -> Reference:
    if args.reference == "fsp":
        return Reference()
    return Reference("ssa", args.ssa_trajectories)


def results_dir(args: argparse.Namespace, path: Path) -> Path:
    """Where a network's VAN and FSP results are saved: runs/defaults[_<tag>]/<network>."""
    return RUNS / (f"{BENCH}_{args.tag}" if args.tag else BENCH) / path.stem


def score(row: dict, network: Any, result: Any, directory: Path, reference: Reference) -> None:
    """Add the comparison with the reference at the result's save times to the row (or why
    not)."""
    if not (np.asarray(result.times) > 0).any():
        row["compare_error"] = "no save time after t = 0 reached: nothing to measure"
        return
    try:
        row.update(measure(network, result, reference, directory))
    except Exception as exc:
        row.update(
            stage=f"{reference.method}/compare",
            compare_error=f"{type(exc).__name__}: {exc}",
            traceback=short_traceback(),
        )


def run_network(path: Path, args: argparse.Namespace, overrides: dict[str, Any]) -> dict:
    """One network's run at the settings, stopped after `args.time_limit` seconds if given
    (the row then measures the save times reached), scored against FSP."""
    row: dict[str, Any] = {"network": path.stem, "file": repo_path(path)}
    try:
        network = load_network(path)
    except Exception as exc:
        row.update(status="failed", stage="load", error=type(exc).__name__, message=str(exc))
        return row
    row = describe(path, network, args, overrides)
    progress = {"t": 0.0, "steps": 0, "stopped": False}
    began = time.perf_counter()

    def track(info: Any) -> bool:  # the time reached (for a run that fails later), the limit
        progress["t"] = float(info.t)
        progress["steps"] = int(info.step)
        over = args.time_limit is not None and time.perf_counter() - began > args.time_limit
        progress["stopped"] = over
        return not over

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = nncme.run(network, RunConfig(**row["settings"]), callbacks=[track])
        except Exception as exc:
            row.update(
                status="failed",
                stage="van",
                error=type(exc).__name__,
                message=str(exc),
                traceback=short_traceback(),
                failed_at_t=progress["t"],
                steps_done=progress["steps"],
                wall_seconds=time.perf_counter() - began,
            )
            out = None
    row["van_warnings"] = sorted({str(w.message) for w in caught})[:10]
    if out is None:
        return row
    row["wall_seconds"] = time.perf_counter() - began
    row["status"] = "stopped" if progress["stopped"] else "completed"
    if progress["stopped"]:
        row.update(time_limit=args.time_limit, stopped_at_t=progress["t"])
    row.update(run_stats(out.result, out.history), parameters=int(out.model.num_parameters()))
    score(row, network, out.result, results_dir(args, path), reference_of(args))
    return row


def score_run(path: Path, run_dir: Path, args: argparse.Namespace, overrides: dict) -> dict:
    """Score a result directory written by `nncme run --out` (finished, or killed: its
    results.npz holds the save times reached) instead of running the network here."""
    network = load_network(path)
    row = describe(path, network, args, overrides)
    result = Result.load(run_dir)
    log = run_dir / LOG
    history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    settings = result.summary.get("settings")
    status = str(result.summary.get("status", ""))
    row.update(
        status="completed" if status.startswith("completed") else "stopped",
        run_dir=repo_path(run_dir),
        run_status=status,
        run_settings={**settings, "out": repo_path(run_dir)} if settings else settings,
        t_end=(result.summary.get("settings") or {}).get("t_end", row["t_end"]),
        # written at the last save time (or the end): a killed run's later work is not in it
        wall_seconds=(result.summary.get("timings") or {}).get("run_seconds"),
        wall_seconds_to=float(result.times[-1]),
        stopped_at_t=float(history[-1]["t"]) if history else 0.0,
    )
    row.update(run_stats(result, history))
    score(row, network, result, results_dir(args, path), reference_of(args))
    return row


MARGINALS_FROM = {"joint": "joint", "conservation-law states": "laws", None: None}


def table_row(row: dict) -> dict:
    t = row.get("tails", {}).get("worst", {})
    r4, r6 = t.get("0.0001"), t.get("1e-06")
    status = {"completed": "ok", "stopped": "stopped"}.get(
        row.get("status"), row.get("error", "failed")[:14]
    )
    reached = {"completed": row.get("t_end"), "stopped": row.get("stopped_at_t")}.get(
        row.get("status"), row.get("failed_at_t")
    )
    return {
        "network": row["network"],
        "status": status,
        "t": reached,
        "hmax": row.get("max_hellinger"),
        "hfirst": row.get("hellinger_first_save"),
        "mean": row.get("max_mean_rel_error"),
        "tail4": None if r4 is None else r4["ratio"],
        "tail6": None if r6 is None else r6["ratio"],
        "marg": MARGINALS_FROM.get(row.get("marginals_from"), "sampled"),
        "bvan": row.get("boundary_van_max"),
        "wall": row.get("wall_seconds"),
    }


COLUMNS = [
    ("network", "network".ljust(26), "<26s"),
    ("status", "status".ljust(14), "<14s"),
    ("t", "t reached", ".3g"),
    ("hmax", "max H", ".4f"),
    ("hfirst", "H first", ".4f"),
    ("mean", "mean err", ".2%"),
    ("tail4", "tail 1e-4", ".3g"),
    ("tail6", "tail 1e-6", ".3g"),
    ("marg", "marginals", ">10s"),
    ("bvan", "bnd van", ".1e"),
    ("wall", "wall s", ".0f"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--networks",
        nargs="*",
        default=None,
        help="file names or stems, or catalogue systems (`nncme systems`) (default: all files)",
    )
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    parser.add_argument("--seed", type=int, default=0, help="RunConfig seed")
    parser.add_argument(
        "--t-end-scale", type=float, default=1.0, help="multiply each file's t_end (quick runs)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a RunConfig field (repeatable); recorded in the JSON",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep rows of other networks already in the JSON"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop each network's run after this long and measure the save times it reached",
    )
    parser.add_argument(
        "--from-run",
        nargs="+",
        default=None,
        type=Path,
        metavar="DIR",
        help="score these `nncme run --out DIR` directories (finished or killed) instead of "
        "running: one per --networks entry, in order",
    )
    parser.add_argument(
        "--reference",
        choices=("fsp", "ssa"),
        default="fsp",
        help="score against FSP (exact) or SSA trajectories (boxes FSP cannot hold)",
    )
    parser.add_argument(
        "--ssa-trajectories", type=int, default=100_000, help="SSA trajectories (--reference ssa)"
    )
    args = parser.parse_args(argv)
    if args.ssa_trajectories < 1:
        raise SystemExit("--ssa-trajectories: must be >= 1")
    if not args.t_end_scale > 0:
        raise SystemExit("--t-end-scale: must be > 0")
    if args.time_limit is not None and not args.time_limit > 0:
        raise SystemExit("--time-limit: must be > 0 seconds")
    overrides = parse_overrides(args.overrides)
    files = network_files([catalogue_file(n) for n in args.networks or []] or None)
    if args.from_run is not None and len(args.from_run) != len(files):
        raise SystemExit(
            f"--from-run: {len(args.from_run)} directories for {len(files)} networks "
            "(name the networks with --networks, in the same order)"
        )
    device = str(overrides.get("device", RunConfig().device))
    suffix = f"_{args.tag}" if args.tag else ""
    path = RESULTS / f"{BENCH}_{torch.device(device).type}{suffix}.json"
    kept: list[dict] = []
    if args.merge and path.exists():
        done = {p.stem for p in files}
        kept = [r for r in json.loads(path.read_text()).get("rows", []) if r["network"] not in done]
    header = {
        "description": "nncme.run at its default settings (the file's dt) on benchmarks/networks, "
        f"against {args.reference.upper()} at the VAN's save times",
        "reference": reference_of(args).__dict__,
        "nncme": nncme.__version__,
        "commit": git_commit(),
        "seed": args.seed,
        "t_end_scale": args.t_end_scale,
        "overrides": overrides,
        "time_limit_seconds": args.time_limit,
        "defaults": RunConfig().to_dict(),
        "tail_levels": list(TAIL_LEVELS),
        "min_mean_for_relative_error": MIN_MEAN,
        # the script as a repository path, not this machine's
        "command": " ".join(["benchmarks/bench_defaults.py", *map(command_word, sys.argv[1:])]),
    }
    rows: list[dict] = []
    written = path
    started = time.perf_counter()
    for i, file in enumerate(files):
        print(f"[{time.perf_counter() - started:7.0f} s] {file.name} ...", flush=True)
        try:
            if args.from_run is not None:
                row = score_run(file, args.from_run[i], args, overrides)
            else:
                row = run_network(file, args, overrides)
        except Exception as exc:  # a bug of this script: keep going
            row = {
                "network": file.stem,
                "status": "failed",
                "stage": "benchmark",
                "error": type(exc).__name__,
                "message": str(exc),
                "traceback": short_traceback(),
            }
        rows.append(row)
        t = table_row(row)
        summary = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in t.items()
            if k != "network" and v is not None
        )
        print(f"    {summary}", flush=True)
        if row.get("status") == "failed":
            print(f"    {row.get('error')}: {row.get('message')}", flush=True)
        written = write_results(
            BENCH,
            device,
            {**header, "elapsed_seconds": time.perf_counter() - started, "rows": kept + rows},
            tag=args.tag,
        )
    print()
    print_table([table_row(r) for r in kept + rows], COLUMNS)
    print(
        "\nt reached: t_end, or the time a stopped or failed run had reached (a stopped one is\n"
        "measured at the save times before it). max H: largest Hellinger\n"
        "distance over species and save times; H first: at the first save time after 0.\n"
        f"mean err: largest relative error of the means (exact mean >= {MIN_MEAN}).\n"
        "tail: P_van(n >= q) / P_exact(n >= q) at the exact 1e-4 / 1e-6 quantiles q, furthest\n"
        "from 1 over species and times (where P_exact(n >= q) >= level / 100).\n"
        "marginals: the VAN's, exact sums of its joint (joint) or over the laws' states (laws),\n"
        "or from eval_samples samples (sampled).\n"
        "bnd van: VAN mass on the box boundary."
    )
    print(f"\nwrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
