"""Heun against SSPRK(s, 2) (`--integrator ssp`) where the explicit map's positivity limits
the step: a birth-death (0 -> X at 100, X -> 0 at 5 X, from 0) whose exit rate a_0 ~ 100 + 5 X
is about 200 at its mean, against its exact Poisson law.

    python benchmarks/bench_ssp.py                       # dt = 0.009 to t = 0.36, s = 4
    python benchmarks/bench_ssp.py --dt 0.006 --stages 3 4 6 --tag s

Each row is one `nncme.run` at the defaults but for the integrator, a fixed dt (max_dt = 0:
no growth, so both schemes take the same steps) and the stages: wall time, optimiser
iterations, the largest share of a draw's weight where a stage's map saturated (stiff_mass,
h a_0 / (s - 1) > 0.9 with s = 2 for Heun), the largest Hellinger distance from the exact law
over the save times and the largest relative error of the mean. Writes
benchmarks/results/ssp_<device>[_<tag>].json.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy import stats

import nncme
from bench_common import git_commit, print_table, write_results
from nncme import Reaction, ReactionNetwork
from nncme.config import RunConfig
from nncme.metrics import hellinger

BIRTH, DEATH, LIMIT = 100.0, 5.0, 60


def network(t_end: float, dt: float) -> ReactionNetwork:
    return ReactionNetwork(
        {"X": LIMIT},
        [Reaction({}, {"X": 1}, BIRTH, "birth"), Reaction({"X": 1}, {}, DEATH, "death")],
        {"X": 0},
        t_end=t_end,
        dt=dt,
    )


def exact_marginals(times: np.ndarray) -> np.ndarray:
    """(T, 1, LIMIT): Poisson with mean BIRTH / DEATH (1 - exp(-DEATH t)) (a point mass at 0)."""
    means = BIRTH / DEATH * (1 - np.exp(-DEATH * times))
    return np.stack([stats.poisson.pmf(np.arange(LIMIT), m) for m in means])[:, None, :]


def run_one(integrator: str, stages: int, args: argparse.Namespace) -> dict:
    settings = dict(
        t_end=args.t_end,
        save_every=args.t_end / 4,
        integrator=integrator,
        ssp_stages=stages,
        max_dt=0.0,
        quiet=True,
        seed=args.seed,
    )
    began = time.perf_counter()
    out = nncme.run(network(args.t_end, args.dt), RunConfig(**settings))
    wall = time.perf_counter() - began
    times = out.result.times
    exact = exact_marginals(times)
    h = hellinger(exact, out.result.marginals)
    mean_exact = BIRTH / DEATH * (1 - np.exp(-DEATH * times[1:]))
    later = out.history[1:]  # after the first (exact) step
    return {
        "integrator": integrator,
        "stages": stages if integrator == "ssp" else 2,
        "dt": args.dt,
        "t_end": args.t_end,
        "dt_a0_at_final_mean": args.dt * (BIRTH + DEATH * float(mean_exact[-1])),
        "wall_seconds": wall,
        "iterations": int(sum(r.get("iterations", 0) for r in out.history)),
        "sub_steps": int(sum(r.get("accepted") or 0 for r in later)),
        "stiff_mass_max": max(float(r.get("stiff_mass") or 0.0) for r in later),
        "max_hellinger": float(h.max()),
        "hellinger_per_time": h.max(axis=1).tolist(),
        "max_mean_rel_error": float(np.max(np.abs(out.result.means[1:, 0] / mean_exact - 1))),
        "warnings": out.result.summary.get("warnings"),
        "settings": settings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dt", type=float, default=0.009)
    parser.add_argument("--t-end", type=float, default=0.36)
    parser.add_argument("--stages", type=int, nargs="+", default=[4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    rows = [run_one("heun", 2, args)] + [run_one("ssp", s, args) for s in args.stages]
    print_table(
        rows,
        [
            ("integrator", "integrator", ">10s"),
            ("stages", "stages", "d"),
            ("dt_a0_at_final_mean", "dt a0 mean", ".2f"),
            ("wall_seconds", "wall s", ".0f"),
            ("iterations", "iterations", "d"),
            ("stiff_mass_max", "stiff mass", ".2g"),
            ("max_hellinger", "max H", ".4f"),
            ("max_mean_rel_error", "mean err", ".2%"),
        ],
    )
    payload = {
        "description": "heun against ssp (SSPRK(s, 2)) at a fixed dt past Heun's explicit limit, "
        "birth-death against its exact Poisson law",
        "commit": git_commit(),
        "command": " ".join(["benchmarks/bench_ssp.py", *sys.argv[1:]]),
        "rows": rows,
    }
    print(f"\nwrote {write_results('ssp', 'cpu', payload, tag=args.tag)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
