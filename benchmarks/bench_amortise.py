"""Amortised VANs at their DEFAULT settings against FSP at held-out contexts.

    python benchmarks/bench_amortise.py                       # every case
    python benchmarks/bench_amortise.py --cases birth_death --held-out 8

Each case is a network no test contains, a box of varied rate constants (and initial counts),
and a horizon. One `nncme.amortise.amortise(...)` run with `AmortiseConfig` at its defaults
(only t_end and the number of saves given); then, at `--held-out` contexts drawn uniformly
(a fixed NumPy seed, not the training's Sobol sequence) and at every save time after 0, the
Hellinger distance of each species' marginal (the model's exact sums over the box) from
FSP's. Per case: training wall time, steps, sub-steps and capped fits from log.jsonl, and per
context the largest distance over species and times; the median and the worst over contexts.
The same at `--outside` contexts within 10 % of each range beyond the box (extrapolation).
Sensitivities: at the first `--sensitivities` held-out contexts and the last save time,
d means / d log c and d P(n_i = m) / d log c by autograd (`AmortisedSolution.sensitivities`)
against central differences of FSP in log c (step 1e-3), as relative errors where the
difference is above 1e-3 (the issue's criterion: within 2 %).
Inference: `--datasets` synthetic data sets of `--cells` cells each, drawn from FSP at the
last save time at true rates drawn from the prior (the box, uniform on its scales: so a
calibrated posterior's 90 % credible intervals cover exactly 90 % of them);
per data set the maximum-likelihood rates (`AmortisedSolution.fit_rates`, L-BFGS in log c)
and the Laplace 90 % interval of each log rate from the observed information, and the 5-95 %
credible interval of emcee's posterior (`AmortisedSolution.posterior`, the box as prior);
reported: the share of each kind of interval that covers the truth, per rate, the median
|log(estimate / truth)| and the median log width of the credible intervals.
`--t-end` cuts every case's horizon (the MET box's t = 10 and the autoregulation box's t = 2
are hours on one core).
`--reuse` skips training where runs/amortise/<case> holds a completed run (the training time
is then the sum of its log's step times).
`--tangent` trains with tangent fits (`AmortiseConfig.tangent`: each fit also fits the
model's derivatives in the rates that vary); its JSON is amortise_<device>_tangent.json.
The JSON goes to benchmarks/results/amortise_<device>[_<tag>].json after every case
(`--tag`, default "tangent" with `--tangent`: a cut horizon belongs under a tag of its own,
not in the tables' JSONs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import device_info, git_commit, results_path, write_results
from nncme import Reaction, ReactionNetwork
from nncme.amortise import AmortiseConfig, AmortisedSolution, Vary, amortise
from nncme.exact import FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.network import Hill
from nncme.systems._common import poisson_limit
from nncme.systems.autoregulation import autoregulation


def birth_death() -> tuple[ReactionNetwork, list[Vary], float]:
    net = ReactionNetwork(
        {"X": 40},
        [Reaction({}, {"X": 1}, 5.0, "birth"), Reaction({"X": 1}, {}, 1.0, "death")],
        {"X": 0},
        t_end=2.0,
        dt=0.05,
    )
    return net, [Vary("birth", 2.0, 10.0), Vary("death", 0.5, 2.0)], 2.0


def gene() -> tuple[ReactionNetwork, list[Vary], float]:
    """A gene switching on and off (conserved), repressed by its own protein through a Hill
    factor, the protein made while on and lost; production and repression vary."""
    net = ReactionNetwork(
        {"Off": 2, "On": 2, "P": 40},
        [
            Reaction({"Off": 1}, {"On": 1}, 2.0, "activate", hill=Hill("P", 8.0, 2, "repression")),
            Reaction({"On": 1}, {"Off": 1}, 1.0, "deactivate"),
            Reaction({"On": 1}, {"On": 1, "P": 1}, 10.0, "make"),
            Reaction({"P": 1}, {}, 1.0, "decay"),
        ],
        {"Off": 1},
        t_end=2.0,
        dt=0.05,
    )
    return net, [Vary("make", 5.0, 15.0), Vary("activate", 1.0, 4.0)], 2.0


def met_autoregulation() -> tuple[ReactionNetwork, list[Vary], float]:
    """The autoregulatory loop over the box of MET (Liu & Wang, PNAS 2024): sigma_u in
    [0, 2], sigma_b in [0, 0.1], rho_u in [0, 10], rho_b in [0, 100], t in [0, 10], from a
    free gene and no protein. The protein limit holds P for the box's largest rates; dt 0.1
    (each step is cut to the fastest context's motion)."""
    net = autoregulation(sigma_u=2.0, sigma_b=0.1, rho_u=10.0, rho_b=100.0, t_end=10.0, dt=0.1)
    varies = [
        Vary("unbinding", 0.0, 2.0),
        Vary("binding", 0.0, 0.1),
        Vary("production_free", 0.0, 10.0),
        Vary("production_bound", 0.0, 100.0),
    ]
    return net, varies, 10.0


def autoregulation_set2() -> tuple[ReactionNetwork, list[Vary], float]:
    """The autoregulatory loop at its second parameter set (sigma_u 0.69, sigma_b 0.07, rho_u
    7.2, rho_b 40.6), the binding rate and both production rates each varied by a factor 2
    either way, to t = 2 from a free gene and no protein (the box `bench_fit.py` fits rates
    in). The protein limit holds P for the box's largest production rate; dt as the gene
    case's (each step is cut to the fastest context's motion)."""
    net = autoregulation(parameter_set=2, t_end=2.0, dt=0.05, limit=poisson_limit(81.2, offset=1))
    varies = [
        Vary("binding", 0.035, 0.14),
        Vary("production_free", 3.6, 14.4),
        Vary("production_bound", 20.3, 81.2),
    ]
    return net, varies, 2.0


CASES = {
    "birth_death": birth_death,
    "gene": gene,
    "met_autoregulation": met_autoregulation,
    "autoregulation": autoregulation_set2,
}


def read_log(run: Path) -> list[dict]:
    """The steps of a run's log.jsonl after the first fit, the last line of each time (a run
    resumed before `amortise` dropped them logged the steps it redid twice)."""
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()][1:]
    last = {round(r["t"], 9): r for r in lines}
    return sorted(last.values(), key=lambda r: r["t"])


def train(
    name: str, out: Path, saves: int, reuse: bool, horizon: float | None, tangent: bool = False
) -> float:
    net, varies, t_end = CASES[name]()
    t_end = t_end if horizon is None else horizon
    meta = out / name / "amortise.json"
    if reuse and meta.exists() and json.loads(meta.read_text())["status"] == "completed":
        return float(sum(r["seconds"] for r in read_log(out / name)))
    start = time.perf_counter()
    config = AmortiseConfig(t_end=t_end, saves=saves, tangent=tangent)
    amortise(net, varies, out / name, config, progress=False)
    return time.perf_counter() - start


def held_out_contexts(solution: AmortisedSolution, count: int) -> np.ndarray:
    """(count, D) contexts uniform over the box (a fixed NumPy seed, not the training's)."""
    return solution.space.from_unit(
        np.random.default_rng(12345).random((count, solution.space.dim))
    )


def outside_contexts(solution: AmortisedSolution, count: int, margin: float = 0.1) -> np.ndarray:
    """(count, D) contexts outside the box but within `margin` of each range's width beyond
    it (on its scale: log for the log-scaled rates), uniform there (a fixed NumPy seed);
    initial counts stay inside their ranges, a linearly scaled rate stays >= 0."""
    space, rng = solution.space, np.random.default_rng(54321)
    counts = np.array([kind == "initial" for kind in space.kinds])
    out: list[np.ndarray] = []
    while len(out) < count:
        u = rng.uniform(-margin, 1 + margin, space.dim)
        u[counts] = np.clip(u[counts], 0.0, 1.0)
        v = space.from_unit(u[None])[0]
        v = np.where(np.array(space.log_scale) | counts, v, np.maximum(v, 0.0))
        if space.outside(v[None])[0]:
            out.append(v)
    return np.array(out)


def accuracy(solution: AmortisedSolution, held_out: int, outside: bool = False) -> list[dict]:
    """Per held-out context (inside the box, or within 10 % beyond it): the largest
    Hellinger distance over species at each save time after 0, against FSP."""
    values = (outside_contexts if outside else held_out_contexts)(solution, held_out)
    rows = []
    for v in values:
        times = solution.save_times
        exact = solve_fsp(solution.space.network_at(v), times, FSPSettings(quiet=True))
        per_time = []
        for i, t in enumerate(times[1:], start=1):
            got = solution.marginals(v[None], t)
            per_time.append(
                max(
                    float(hellinger(exact.marginals[i, s, : len(m[0])], m[0]))
                    for s, m in enumerate(got)
                )
            )
        rows.append({"context": v.tolist(), "hellinger": per_time, "max": max(per_time)})
        print(f"  {np.round(v, 3).tolist()}: {max(per_time):.4f}", flush=True)
    return rows


def sensitivities(solution: AmortisedSolution, contexts: int, step: float = 1e-3) -> dict:
    """d means / d log c and d P(n_i = m) / d log c at the last save time, by autograd,
    against central differences of FSP (log c +- step), at the first `contexts` held-out
    contexts: relative errors where the difference is above 1e-3 in magnitude."""
    t = float(solution.save_times[-1])
    values = held_out_contexts(solution, contexts)
    cols = solution.rate_columns()
    mean_err, marg_err, rows = [], [], []
    for v in values:
        got = solution.sensitivities(v, t)
        fd_means, fd_marg = [], []
        for j in cols:
            ends = []
            for sign in (1, -1):
                w = v.copy()
                w[j] *= np.exp(sign * step)
                ends.append(
                    solve_fsp(solution.space.network_at(w), [0, t], FSPSettings(quiet=True))
                )
            fd_means.append((ends[0].means[1] - ends[1].means[1]) / (2 * step))
            fd_marg.append((ends[0].marginals[1] - ends[1].marginals[1]) / (2 * step))
        fd_m = np.stack(fd_means, -1)  # (L, R)
        fd_p = np.stack(fd_marg, -1)  # (L, M, R)
        M = got["d_marginals"].shape[1]
        big_m, big_p = np.abs(fd_m) > 1e-3, np.abs(fd_p[:, :M]) > 1e-3
        e_m = np.abs(got["d_means"] - fd_m)[big_m] / np.abs(fd_m)[big_m]
        e_p = np.abs(got["d_marginals"] - fd_p[:, :M])[big_p] / np.abs(fd_p[:, :M])[big_p]
        mean_err.extend(e_m.tolist())
        marg_err.extend(e_p.tolist())
        rows.append(
            {
                "context": v.tolist(),
                "d_means": got["d_means"].tolist(),
                "fd_means": fd_m.tolist(),
                "max_rel_error_means": float(e_m.max()) if e_m.size else None,
                "max_rel_error_marginals": float(e_p.max()) if e_p.size else None,
            }
        )
        print(f"  d means / d log c {np.round(v, 3).tolist()}: {e_m.max():.4f}", flush=True)
    marg = np.array(marg_err)
    return {
        "t": t,
        "rates": [solution.space.names[j] for j in cols],
        "contexts": rows,
        "means_max_rel_error": float(max(mean_err)),
        "means_median_rel_error": float(np.median(mean_err)),
        "marginals_entries": int(marg.size),
        "marginals_median_rel_error": float(np.median(marg)),
        "marginals_share_within_2pct": float((marg <= 0.02).mean()),
        "marginals_max_rel_error": float(marg.max()),
    }


def inference(solution: AmortisedSolution, datasets: int, cells: int) -> dict:
    """Coverage of Laplace 90 % intervals of the log rates over synthetic data sets."""
    rng = np.random.default_rng(777)
    t = float(solution.save_times[-1])
    z = 1.6448536269514722  # the 95 % normal quantile: two-sided 90 %
    cover, errors, credible, widths = [], [], [], []
    for _ in range(datasets):
        truth = solution.space.from_unit(rng.random((1, solution.space.dim)))[0]  # the prior
        states = _exact_draws(solution, truth, t, cells, rng)
        fit = solution.fit_rates(states, t)
        sd = np.sqrt(np.clip(np.diag(np.linalg.pinv(fit["fisher"])), 0, None))
        err = np.log(fit["values"] / truth)
        cover.append(np.abs(err) <= z * sd)
        errors.append(np.abs(err))
        post = solution.posterior(states, t, seed=len(errors))["samples"]
        lo, hi = np.percentile(post, [5, 95], axis=0)
        credible.append((lo <= truth) & (truth <= hi))
        widths.append(np.log(hi / lo))
    cover, errors = np.array(cover), np.array(errors)
    return {
        "datasets": datasets,
        "cells": cells,
        "t": t,
        "coverage_90": cover.mean(axis=0).tolist(),
        "posterior_coverage_90": np.mean(credible, axis=0).tolist(),
        "posterior_median_log_width_90": np.median(widths, axis=0).tolist(),
        "median_abs_log_error": np.median(errors, axis=0).tolist(),
    }


def _exact_draws(solution, truth, t, cells, rng) -> np.ndarray:
    """Cells drawn from the exact joint law at t (FSP over the whole state list)."""
    from nncme.exact import FSP

    net = solution.space.network_at(truth)
    fsp = FSP(net, FSPSettings(quiet=True))
    p = fsp.solve([0.0, t])[-1]
    p = np.clip(p, 0, None)
    idx = rng.choice(len(p), size=cells, p=p / p.sum())
    return fsp.states[idx]


def run_case(name: str, args: argparse.Namespace) -> dict:
    out = Path(args.out)
    seconds = train(name, out, args.saves, args.reuse, args.t_end, args.tangent)
    log = read_log(out / name)
    stepped = [r for r in log if "pieces" in r]  # the exact first step has none
    solution = AmortisedSolution(out / name)
    rows = accuracy(solution, args.held_out)
    worst = [r["max"] for r in rows]
    beyond = accuracy(solution, args.outside, outside=True) if args.outside else []
    return {
        "case": name,
        "varies": [vars(v) for v in solution.space.varies],
        "times": solution.save_times.tolist(),
        "config": vars(solution.config),
        "train_seconds": seconds,
        "steps": len(log),
        "exact_first_step": next((r for r in log if "exact" in r), None),
        "substeps": sum(r["pieces"] for r in stepped),
        "capped_fits": sum(r["capped"] for r in stepped),
        "iterations": sum(r["iterations"] for r in stepped),
        "median_max_hellinger": float(np.median(worst)),
        "worst_max_hellinger": float(np.max(worst)),
        "contexts": rows,
        "outside": {
            "margin": 0.1,
            "median_max_hellinger": float(np.median([r["max"] for r in beyond])),
            "worst_max_hellinger": float(np.max([r["max"] for r in beyond])),
            "contexts": beyond,
        }
        if beyond
        else None,
        "sensitivities": sensitivities(solution, args.sensitivities)
        if args.sensitivities
        else None,
        "inference": inference(solution, args.datasets, args.cells) if args.datasets else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument(
        "--outside", type=int, default=20, help="contexts within 10 %% beyond the box (0: none)"
    )
    parser.add_argument("--saves", type=int, default=4)
    parser.add_argument("--t-end", type=float, help="a shorter horizon than the case's")
    parser.add_argument("--out", help="runs' directory (runs/amortise[_tangent])")
    parser.add_argument("--sensitivities", type=int, default=6, help="contexts (0: none)")
    parser.add_argument("--datasets", type=int, default=50)
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument(
        "--tangent", action="store_true", help="train with tangent fits (AmortiseConfig.tangent)"
    )
    parser.add_argument("--tag", help="JSON name suffix (default: tangent with --tangent)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tag = args.tag if args.tag is not None else ("tangent" if args.tangent else "")
    args.out = args.out or ("runs/amortise_" + tag if tag else "runs/amortise")
    previous = results_path("amortise", "cpu", tag)
    commit = git_commit()  # at the start: the code that runs
    for name in args.cases:
        c = {**run_case(name, args), "commit": commit}
        cases = json.loads(previous.read_text())["cases"] if previous.exists() else []
        cases = [old for old in cases if old["case"] != name] + [c]  # other cases kept
        payload = {"device": device_info("cpu"), "threads": 1, "cases": cases}
        print(
            f"{name}: train {c['train_seconds']:.0f} s, {c['steps']} steps "
            f"({c['substeps']} sub-steps, {c['capped_fits']} capped fits); max Hellinger over "
            f"species and times: median {c['median_max_hellinger']:.4f}, worst "
            f"{c['worst_max_hellinger']:.4f} over {len(c['contexts'])} held-out contexts"
        )
        if c["sensitivities"]:
            sens = c["sensitivities"]
            print(
                "  sensitivities: d means / d log c max rel. error "
                f"{sens['means_max_rel_error']:.4f}; "
                f"d marginals: {sens['marginals_share_within_2pct']:.0%} of "
                f"{sens['marginals_entries']} entries above 1e-3 within 2 %"
            )
        if c["inference"]:
            print(
                f"  inference: 90 % coverage {c['inference']['coverage_90']}, median "
                f"|log error| {c['inference']['median_abs_log_error']}"
            )
        write_results("amortise", "cpu", payload, tag=tag)


if __name__ == "__main__":
    main()
