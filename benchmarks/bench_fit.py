"""Rate constants fitted to observables through an amortised run, against the truth.

    python benchmarks/bench_fit.py                      # the gene box of bench_amortise.py
    python benchmarks/bench_fit.py --case autoregulation  # its autoregulatory loop's box
    python benchmarks/bench_fit.py --datasets 10 --ssa-datasets 1

The amortised run is bench_amortise.py's (runs/amortise/<case>, trained there at defaults
if missing). Per synthetic data set: true rates drawn from the box (uniform on its scales), the
exact law (FSP) at three times, `--cells` cells drawn independently at each (snapshots destroy
the cells), and from them the references with bootstrap errors (`observables.from_snapshots`):
"moments" = mean and Fano factor of each non-conserved species at the three times, then
"histograms" = the protein's marginal histogram in bins at the three times. `fit.fit_observables`
at its defaults recovers the varied rates; reported per set of references: the median and worst
|log(estimate / truth)|, the share of 90 % intervals that cover the truth, model evaluations
and seconds per fit. "exact references": the same fits to FSP's exact moments (1 % sigmas),
which isolates the amortised model's own bias from the data's noise.
Baseline (`--ssa-datasets`): the same moment references fitted with SSA estimates (`--ssa-
trajectories` per evaluation, one seed: common random numbers) and finite differences in
scipy's least_squares from the middle of the box: SSA runs and seconds against nncme's.
Gradient estimator: the score-function gradient of three observables in the conditional model's
parameters (`observables.score_gradient`) at the middle of the box at the last time, against
the exact gradient summed over the box: relative RMS error over repeats against the number of
samples, the replicas they are split into, and StABlE's clipping.
The JSON goes to benchmarks/results/fit_<device>.json (the gene box) or
fit_<device>_<case>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import least_squares

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_amortise import train
from bench_common import device_info, write_results
from nncme.amortise import AmortisedSolution
from nncme.exact import FSP, FSPSettings
from nncme.fit import Z90, fit_observables
from nncme.observables import Observable, evaluate, from_snapshots, score_gradient
from nncme.ssa import SSASettings, simulate

TIMES = [0.5, 1.0, 2.0]
# the protein's histogram bins per case (edges; counts above the last are in no bin)
BINS = {
    "gene": {"P": [0, 2, 4, 6, 8, 10, 13, 16, 20, 40]},
    "autoregulation": {"P": [0, 5, 10, 15, 20, 25, 30, 40, 50, 65, 80, 139]},
}


def exact_laws(solution: AmortisedSolution, truth: np.ndarray) -> tuple[np.ndarray, list]:
    fsp = FSP(solution.space.network_at(truth), FSPSettings(quiet=True))
    laws = [np.clip(p, 0, None) / np.clip(p, 0, None).sum() for p in fsp.solve([0.0, *TIMES])[1:]]
    return fsp.states, laws


def free_species(network) -> list[str]:
    """The species whose moments are references: all but the first of each conservation
    law's (the gene's Off = 1 - On carries On's information, and counted twice it would
    narrow the intervals as if it were new data)."""
    names = network.species_names
    tied = {names[int(np.flatnonzero(law.weights)[0])] for law in network.conservation_laws}
    return [s for s in names if s not in tied]


def references(solution, truth, cells, rng, kind: str, case: str) -> list[Observable]:
    species = solution.network.species_names
    keep = free_species(solution.network)
    states, laws = exact_laws(solution, truth)
    out = []
    for t, p in zip(TIMES, laws):
        counts = states[rng.choice(len(p), size=cells, p=p)]
        if kind == "moments":
            obs = from_snapshots(
                counts, t, species, kinds=("mean", "fano"), seed=int(rng.integers(1 << 30))
            )
            out += [o for o in obs if o.species[0] in keep]
        else:
            obs = from_snapshots(
                counts, t, species, kinds=(), bins=BINS[case], seed=int(rng.integers(1 << 30))
            )
            out += obs
    return out


def exact_references(solution, truth) -> list[Observable]:
    species = solution.network.species_names
    states, laws = exact_laws(solution, truth)
    out = []
    for t, p in zip(TIMES, laws):
        for s in free_species(solution.network):
            for kind in ("mean", "fano"):
                o = Observable(kind, (s,), t, 0.0, 1.0)
                v = float(evaluate([o], torch.as_tensor(states), species, torch.as_tensor(p))[0])
                out.append(Observable(kind, (s,), t, v, 0.01 * abs(v)))
    return out


def summarise(rows: list[dict]) -> dict:
    err = np.array([r["abs_log_error"] for r in rows])
    cover = np.array([r["covered"] for r in rows])
    return {
        "fits": len(rows),
        "median_abs_log_error": np.median(err, axis=0).tolist(),
        "worst_abs_log_error": err.max(axis=0).tolist(),
        "within_5_percent": (err < np.log(1.05)).mean(axis=0).tolist(),
        "coverage_90": cover.mean(axis=0).tolist(),
        "median_sd_log": np.median([r["sd_log"] for r in rows], axis=0).tolist(),
        "median_evaluations": float(np.median([r["evaluations"] for r in rows])),
        "median_seconds": float(np.median([r["seconds"] for r in rows])),
    }


def true_rates(solution, d: int) -> np.ndarray:
    """Data set d's true rates: uniform over the box on its scales (seed d)."""
    u = np.random.default_rng(d).random((1, solution.space.dim))
    return solution.space.from_unit(u)[0]


def one_fit(solution, obs, truth) -> dict:
    fit = fit_observables(solution, obs)
    err = np.abs(np.log(fit["estimate"] / truth))
    return {
        "truth": truth.tolist(),
        "estimate": fit["estimate"].tolist(),
        "sd_log": fit["sd_log"].tolist(),
        "abs_log_error": err.tolist(),
        "covered": (err <= Z90 * fit["sd_log"]).tolist(),
        "chi2": fit["chi2"],
        "dof": fit["dof"],
        "evaluations": fit["evaluations"],
        "seconds": fit["seconds"],
    }


def recovery(solution, datasets: int, cells: int, case: str) -> dict:
    rng = np.random.default_rng(2024)
    out = {}
    for kind in ("moments", "histograms", "exact references"):
        rows = []
        for d in range(datasets):
            truth = true_rates(solution, d)
            obs = (
                exact_references(solution, truth)
                if kind == "exact references"
                else references(solution, truth, cells, rng, kind, case)
            )
            rows.append(one_fit(solution, obs, truth))
        out[kind] = {"summary": summarise(rows), "fits": rows, "observables": len(obs)}
        s = out[kind]["summary"]
        print(
            f"  {kind}: |log error| median {np.round(s['median_abs_log_error'], 4).tolist()}, "
            f"worst {np.round(s['worst_abs_log_error'], 4).tolist()}; 90 % coverage "
            f"{s['coverage_90']}; {s['median_evaluations']:.0f} evaluations, "
            f"{s['median_seconds']:.2f} s per fit",
            flush=True,
        )
    return out


def ssa_residuals(solution, obs: list[Observable], trajectories: int):
    """Scaled residuals from one seeded SSA run per evaluation (common random numbers, so
    finite differences see the rates' effect, not a new draw's noise), and a run counter."""
    species = solution.network.species_names
    ref = np.array([o.value for o in obs])
    sig = np.array([o.sigma for o in obs])
    runs = [0]

    def residuals(x: np.ndarray) -> np.ndarray:
        runs[0] += 1
        v = solution.space.check(np.exp(x))[0]
        settings = SSASettings(trajectories=trajectories, seed=7, quiet=True, threads=1)
        paths, _ = simulate(solution.space.network_at(v), [0.0, *TIMES], settings)
        got = np.zeros(len(obs))
        for i, t in enumerate(TIMES, start=1):
            ks = [k for k, o in enumerate(obs) if o.t == t]
            got[ks] = evaluate([obs[k] for k in ks], paths[:, i], species).numpy()
        return (got - ref) / sig

    return residuals, runs


def ssa_baseline(solution, datasets: int, cells: int, trajectories: int, case: str) -> list[dict]:
    """Fits of the same moment references by SSA estimates and finite differences."""
    rng = np.random.default_rng(99)
    rows = []
    for d in range(datasets):
        truth = true_rates(solution, d)
        obs = references(solution, truth, cells, rng, "moments", case)
        residuals, runs = ssa_residuals(solution, obs, trajectories)
        lo = np.log([v.lo for v in solution.space.varies])
        hi = np.log([v.hi for v in solution.space.varies])
        start = time.perf_counter()
        res = least_squares(
            residuals, 0.5 * (lo + hi), bounds=(lo, hi), method="trf", diff_step=0.02
        )
        seconds = time.perf_counter() - start
        mine = one_fit(solution, obs, truth)
        rows.append(
            {
                "truth": truth.tolist(),
                "ssa_estimate": np.exp(res.x).tolist(),
                "ssa_abs_log_error": np.abs(res.x - np.log(truth)).tolist(),
                "ssa_runs": runs[0],
                "ssa_trajectories": trajectories,
                "ssa_seconds": seconds,
                "nncme": mine,
            }
        )
        print(
            f"  SSA + finite differences: {runs[0]} SSA runs of {trajectories}, {seconds:.1f} s, "
            f"|log error| {np.round(rows[-1]['ssa_abs_log_error'], 4).tolist()}; nncme "
            f"{mine['evaluations']} evaluations, {mine['seconds']:.2f} s, "
            f"{np.round(mine['abs_log_error'], 4).tolist()}",
            flush=True,
        )
    return rows


def gradient_study(solution, repeats: int) -> list[dict]:
    """Relative RMS error of the score-function gradient against the exact one."""
    t = float(solution.times[-1])
    species = solution.network.species_names
    obs = [
        Observable("mean", ("P",), t, 0.0, 1.0),
        Observable("fano", ("P",), t, 0.0, 1.0),
        Observable("tail", ("P",), t, 0.0, 1.0, lo=10),
    ]
    model = solution.at(t)
    middle = solution.space.middle()[None]
    code = torch.as_tensor(solution.space.encode(middle), dtype=solution.dtype)
    totals = torch.as_tensor(solution.space.totals(middle))
    grid = solution.box_states()
    params = [p for p in model.parameters() if p.requires_grad]
    p = model.log_prob(
        grid, context=code.expand(len(grid), -1), totals=totals.expand(len(grid), -1)
    ).exp()
    exact = []
    for v in evaluate(obs, grid, species, p):
        g = torch.autograd.grad(v, params, retain_graph=True, allow_unused=True)
        exact.append(
            torch.cat(
                [(torch.zeros_like(q) if x is None else x).reshape(-1) for x, q in zip(g, params)]
            )
        )
    exact = torch.stack(exact)
    settings = [(n, 8, None) for n in (512, 2048, 8192, 32768)]
    settings += [(8192, r, None) for r in (2, 32)] + [(8192, 8, c) for c in (3.0, 1.0)]
    rows = []
    for n, r, clip in settings:
        errs, seconds = [], []
        for k in range(repeats):
            gen = torch.Generator().manual_seed(1000 + k)
            start = time.perf_counter()
            est = score_gradient(
                model,
                obs,
                species,
                samples=n,
                replicas=r,
                clip=clip,
                generator=gen,
                context=code,
                totals=totals,
            )
            seconds.append(time.perf_counter() - start)
            errs.append(((est.gradient - exact).norm(dim=1) / exact.norm(dim=1)).numpy())
        errs = np.array(errs)
        rows.append(
            {
                "samples": n,
                "replicas": r,
                "clip": clip,
                "observables": [o.name for o in obs],
                "relative_rms_error": np.sqrt((errs**2).mean(axis=0)).tolist(),
                "median_seconds": float(np.median(seconds)),
            }
        )
        print(
            f"  gradient: {n} samples, {r} replicas, clip {clip}: relative RMS error "
            f"{np.round(rows[-1]['relative_rms_error'], 3).tolist()}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="gene", choices=list(BINS))
    parser.add_argument("--runs", default="runs/amortise")
    parser.add_argument("--datasets", type=int, default=30)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--ssa-datasets", type=int, default=3)
    parser.add_argument("--ssa-trajectories", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = Path(args.runs)
    seconds = train(args.case, runs, 4, reuse=True, horizon=None)
    solution = AmortisedSolution(runs / args.case)
    print(f"{args.case}: amortised run of {seconds:.0f} s over {solution.space.names}")
    payload = {
        "device": device_info("cpu"),
        "threads": 1,
        "case": args.case,
        "varies": [vars(v) for v in solution.space.varies],
        "times": TIMES,
        "cells": args.cells,
        "train_seconds": seconds,
        "recovery": recovery(solution, args.datasets, args.cells, args.case),
        "ssa_baseline": ssa_baseline(
            solution, args.ssa_datasets, args.cells, args.ssa_trajectories, args.case
        ),
        "gradient": gradient_study(solution, args.repeats),
    }
    tag = "" if args.case == "gene" else args.case  # fit_cpu.json: the gene box
    print("wrote", write_results("fit", "cpu", payload, tag=tag))


if __name__ == "__main__":
    main()
