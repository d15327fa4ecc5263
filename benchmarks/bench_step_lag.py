"""How much of each step's motion the fits make: a run's error taken apart step by step.

    python benchmarks/bench_step_lag.py --network telegraph_bursty --t-end 0.3
    python benchmarks/bench_step_lag.py --network telegraph_bursty --t-end 0.3 \\
        --set iterations=120 --tag it120

A VAN step fits T q_old, the one-step map of the previous fit, so whatever a fit leaves undone
is never made up: a fit that makes a fraction alpha < 1 of every step's motion leaves a lag that
grows with the number of steps, even where each step's own error is small. This benchmark runs
`nncme.run` (defaults, plus any `--set`) on a network whose box FSP can list, and after every
step enumerates the model on the whole box and compares it with

  one step   exp(dt W) q_prev, the exact one-step map of the previous (normalised) model: the
             step's own error (the fit's and the scheme's);
  exact      the exact law at that time (FSP, stepped with the same dt from the start).

Per step it records the joint Hellinger distance to each, the means of every species under the
model, the one-step map and the exact law, and the fit's work (iterations, capped). Per third of
the run it reports, per species, alpha = (sum of the means' achieved changes) / (sum of their
one-step changes): 1 where the fits make the whole motion, below 1 where they lag; and
alpha_hat, the least-squares coefficient of the achieved change of log q on the requested one
(log exp(dt W) q_prev - log q_prev, weighted by q_prev): the same fraction along the step's
whole direction. At the end: the largest marginal Hellinger distance and the means' relative
errors against the exact law.

Writes benchmarks/results/step_lag_cpu.json (runs keyed by network and tag, merged with earlier
runs of the file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse.linalg as sla
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nncme
from bench_common import RESULTS, print_table, write_results
from bench_defaults import parse_overrides
from check_networks import network_files
from nncme.config import RunConfig
from nncme.exact import FSP
from nncme.io import load_network

MAX_STATES = 200_000  # the model is enumerated on the whole box after every step
TINY = 1e-300


def hellinger(a: np.ndarray, b: np.ndarray) -> float:
    root_a, root_b = np.sqrt(np.clip(a, 0, None)), np.sqrt(np.clip(b, 0, None))
    return float(np.sqrt(0.5 * np.sum((root_a - root_b) ** 2)))


def marginals(states: np.ndarray, p: np.ndarray, limits: list[int]) -> list[np.ndarray]:
    return [np.bincount(states[:, i], weights=p, minlength=n) for i, n in enumerate(limits)]


def projection(q_prev: np.ndarray, requested: np.ndarray, achieved: np.ndarray) -> float:
    """alpha_hat: the q_prev-weighted least-squares coefficient of the achieved change of
    log q on the requested one (both centred), on the states q_prev holds."""
    keep = q_prev > 1e-12
    w = q_prev[keep] / q_prev[keep].sum()
    r = np.log(np.clip(requested[keep], TINY, None)) - np.log(q_prev[keep])
    a = np.log(np.clip(achieved[keep], TINY, None)) - np.log(q_prev[keep])
    r, a = r - (w * r).sum(), a - (w * a).sum()
    return float((w * a * r).sum() / max((w * r * r).sum(), TINY))


class StepRecorder:
    """The per-step comparison (a `nncme.run` callback)."""

    def __init__(self, network: Any) -> None:
        self.fsp = FSP(network)
        if self.fsp.num_states > MAX_STATES:
            raise SystemExit(f"{network.name}: {self.fsp.num_states} states, at most {MAX_STATES}")
        self.limits = [int(n) for n in network.limits]
        self.species = list(network.species_names)
        self.W = self.fsp.generator(0.0).tocsc()
        self.states = torch.as_tensor(self.fsp.states)
        self.q = self.p = self.fsp.initial_distribution()
        self.rows: list[dict[str, Any]] = []

    def means(self, p: np.ndarray) -> list[float]:
        return [float(x) for x in self.fsp.states.T @ p]

    def __call__(self, info: Any) -> None:
        order = [self.species.index(s) for s in info.model.species_order]  # the model's columns
        with torch.no_grad():
            q = torch.exp(info.model.log_prob(self.states[:, order])).double().cpu().numpy()
        W = self.W if not self.fsp.time_dependent else self.fsp.generator(info.t - info.dt)
        one_step = sla.expm_multiply(W * info.dt, self.q)
        self.p = sla.expm_multiply(W * info.dt, self.p)
        exact_marg, model_marg = (
            marginals(self.fsp.states, self.p, self.limits),
            marginals(self.fsp.states, q, self.limits),
        )
        report = info.report
        self.rows.append(dict(
            step=info.step, t=info.t, dt=info.dt, mass=float(q.sum()),
            h_step=hellinger(q, one_step), h_exact=hellinger(q, self.p),
            h_marginal=max(hellinger(a, b) for a, b in zip(model_marg, exact_marg)),
            mean_before=self.means(self.q), mean_model=self.means(q),
            mean_one_step=self.means(one_step), mean_exact=self.means(self.p),
            alpha_hat=projection(self.q, one_step, q),
            iterations=int(report.iterations), capped=bool(report.capped),
            motion_made=float(report.motion_made), motion_spread=float(report.motion_spread),
            batch=int(report.batch),
        ))  # fmt: skip
        self.q = q / q.sum()


def lag_summary(rows: list[dict[str, Any]], species: list[str]) -> list[dict[str, Any]]:
    """alpha per species and alpha_hat per third of the run."""
    out = []
    for part in np.array_split(np.arange(len(rows)), 3):
        if part.size == 0:
            continue
        chosen = [rows[i] for i in part]
        before = np.array([r["mean_before"] for r in chosen])
        achieved = (np.array([r["mean_model"] for r in chosen]) - before).sum(0)
        requested = (np.array([r["mean_one_step"] for r in chosen]) - before).sum(0)
        alpha = {
            s: float(a / r) if abs(r) > 1e-9 else None
            for s, a, r in zip(species, achieved, requested)
        }
        out.append(dict(
            t_from=chosen[0]["t"] - chosen[0]["dt"], t_to=chosen[-1]["t"], alpha=alpha,
            alpha_hat=float(np.median([r["alpha_hat"] for r in chosen])),
            h_step_median=float(np.median([r["h_step"] for r in chosen])),
            capped_share=float(np.mean([r["capped"] for r in chosen])),
            iterations_per_step=float(np.mean([r["iterations"] for r in chosen])),
        ))  # fmt: skip
    return out


def run(network_file: Path, t_end: float, overrides: dict[str, Any], seed: int) -> dict:
    network = load_network(network_file)
    recorder = StepRecorder(network)
    cfg = RunConfig(t_end=t_end, quiet=True, seed=seed, threads=1, **overrides)
    began = time.perf_counter()
    nncme.run(network, cfg, callbacks=[recorder])
    seconds = time.perf_counter() - began
    rows, species = recorder.rows, [s.name for s in network.species]
    last = rows[-1]
    relative = [
        abs(m - e) / e if e >= 0.05 else None
        for m, e in zip(last["mean_model"], last["mean_exact"])
    ]
    return dict(
        network=network.name, t_end=t_end, settings=overrides, seed=seed, seconds=seconds,
        steps=len(rows), species=species, parts=lag_summary(rows, species),
        final_h_marginal=last["h_marginal"], max_h_marginal=max(r["h_marginal"] for r in rows),
        final_mean_relative_error=dict(zip(species, relative)), rows=rows,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", required=True, help="a file (or stem) of benchmarks/networks")
    p.add_argument("--t-end", type=float, required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--tag", default="defaults", help="the run's name in the JSON")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    overrides = parse_overrides(args.set)
    (network_file,) = network_files([args.network])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    result = dict(tag=args.tag, commit=commit)
    result.update(run(network_file, args.t_end, overrides, args.seed))
    path = RESULTS / "step_lag_cpu.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    key = (result["network"], result["tag"], result["t_end"])
    runs = [r for r in runs if (r["network"], r["tag"], r["t_end"]) != key] + [result]
    path = write_results("step_lag", "cpu", dict(runs=runs))
    table = []
    for part in result["parts"]:
        row = {k: v for k, v in part.items() if k != "alpha"}
        row.update({f"alpha_{s}": a for s, a in part["alpha"].items()})
        table.append(row)
    alpha_cols = [(f"alpha_{s}", f"alpha {s}", ".3f") for s in result["species"]]
    print_table(table, [("t_to", "to t", ".3g"), *alpha_cols, ("alpha_hat", "alpha_hat", ".3f"),
                        ("h_step_median", "H step", ".4f"), ("capped_share", "capped", ".2f"),
                        ("iterations_per_step", "iters", ".0f")])  # fmt: skip
    errors = {s: e for s, e in result["final_mean_relative_error"].items() if e is not None}
    print(f"{result['network']} [{args.tag}] t = {args.t_end:g}: largest marginal Hellinger "
          f"{result['max_h_marginal']:.4f} (final {result['final_h_marginal']:.4f}), mean "
          f"errors {', '.join(f'{s} {e:.1%}' for s, e in errors.items())}, "
          f"{result['seconds']:.0f} s")  # fmt: skip
    print("wrote", path)


if __name__ == "__main__":
    main()
