"""Trajectory ensembles from an amortised run's transition kernel, against exact one- and
two-time statistics (FSP) and against SSA paths.

    python benchmarks/bench_paths.py                          # train, then every start
    python benchmarks/bench_paths.py --cases autorepressor    # one case
    python benchmarks/bench_paths.py --reuse                  # reuse runs/paths/<case>

Each case is a network no test contains, with one rate constant varied: `autorepressor` (one
protein repressing its own production through a Hill factor) and `two_stage_feedback` (mRNA M
and protein P, the protein repressing transcription). One `nncme.amortise.amortise(...)` run
at the defaults of `AmortiseConfig` (only t_end = the lag and one save time given) over a box
that holds every count of the network's box as a start, so q(n' | n, c, lag) is the
network's transition kernel. Then, per start (held-out rates), `--count` paths of `--steps`
lags (`AmortisedSolution.paths`) and `--ssa` SSA trajectories recorded at the same times,
each against FSP: per time and species the Hellinger distance of the marginal, and the
correlation of X(t) with X(t + lag) and X(t + 2 lag) (exact: E[X(t) X(t + s)] =
x . exp(s W) (x * P_t)); SSA's own distances give the noise level of a sampled ensemble of
that size. Also the kernel itself: the largest Hellinger distance of the run's q(. | n, c, lag)
from FSP over the starts of the paths' first steps, and over `--held-out` contexts drawn
uniformly from the box (a fixed NumPy seed): the amortisation issue's measure (median and
worst). Wall times of path sampling, SSA and FSP.
The JSON goes to benchmarks/results/paths_<device>.json after every case.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse.linalg import expm_multiply

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, git_commit, write_results
from nncme import Reaction, ReactionNetwork
from nncme.amortise import AmortiseConfig, AmortisedSolution, PathEnsemble, Vary, amortise
from nncme.exact import FSP, FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.network import Hill
from nncme.ssa import SSASettings, simulate


def autorepressor() -> tuple[ReactionNetwork, list[Vary], list[tuple[float, ...]]]:
    net = ReactionNetwork(
        {"X": 40},
        [
            Reaction({}, {"X": 1}, 15.0, "make", hill=Hill("X", 10.0, 2, "repression")),
            Reaction({"X": 1}, {}, 1.0, "decay"),
        ],
        {},
        t_end=10.0,
        dt=0.05,
    )
    # held-out decay rates; starts X
    return net, [Vary("decay", 0.5, 1.5), Vary("X", 0, 39)], [(0.7, 0), (1.2, 0), (0.9, 30)]


def two_stage_feedback() -> tuple[ReactionNetwork, list[Vary], list[tuple[float, ...]]]:
    net = ReactionNetwork(
        {"M": 16, "P": 80},
        [
            Reaction({}, {"M": 1}, 6.0, "transcribe", hill=Hill("P", 20.0, 2, "repression")),
            Reaction({"M": 1}, {}, 1.0, "mrna_decay"),
            Reaction({"M": 1}, {"M": 1, "P": 1}, 2.5, "translate"),
            Reaction({"P": 1}, {}, 0.3, "protein_decay"),
        ],
        {},
        t_end=10.0,
        dt=0.05,
    )
    # held-out translation rates; starts (M, P)
    starts = [(1.8, 0, 0), (2.7, 0, 0), (3.6, 0, 0), (2.7, 10, 70)]
    return net, [Vary("translate", 1.5, 4.0), Vary("M", 0, 15), Vary("P", 0, 79)], starts


CASES = {"autorepressor": autorepressor, "two_stage_feedback": two_stage_feedback}


def train(case: str, out: Path, lag: float, reuse: bool) -> float:
    net, varies, _ = CASES[case]()
    meta = out / "amortise.json"
    if reuse and meta.exists() and json.loads(meta.read_text())["status"] == "completed":
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()][1:]
        return float(sum(r["seconds"] for r in log))
    start = time.perf_counter()
    amortise(net, varies, out, AmortiseConfig(t_end=lag, saves=1), progress=False)
    return time.perf_counter() - start


def exact(net: ReactionNetwork, times: np.ndarray, lag: float, shifts: tuple[int, ...]) -> dict:
    """FSP: marginals (per species (T, M_i)) and correlations {shift: (T - shift, L)}."""
    start = time.perf_counter()
    fsp = FSP(net, FSPSettings(quiet=True))
    P = fsp.solve(times)  # (T, S)
    x = fsp.states.astype(np.float64)  # (S, L)
    W = fsp.generator()
    out = {
        "marginals": [
            np.stack([np.bincount(fsp.states[:, i], weights=p, minlength=m) for p in P])
            for i, m in enumerate(net.limits)
        ],
        "correlations": {},
    }
    mean, var = P @ x, P @ x**2 - (P @ x) ** 2
    for shift in shifts:
        corr = np.full((len(times) - shift, net.L), np.nan)
        for k in range(len(times) - shift):
            for i in range(net.L):
                moved = expm_multiply(W * (shift * lag), x[:, i] * P[k])
                cov = x[:, i] @ moved - mean[k, i] * mean[k + shift, i]
                sd = np.sqrt(var[k, i] * var[k + shift, i])
                corr[k, i] = cov / sd if sd > 0 else np.nan
        out["correlations"][shift] = corr
    out["seconds"] = time.perf_counter() - start
    return out


def compare(got: PathEnsemble, ref: dict, limits: np.ndarray, shifts: tuple[int, ...]) -> dict:
    """Distances of an ensemble from the exact statistics."""
    T = len(got.times)
    h = np.array(
        [
            [float(hellinger(ref["marginals"][i][k], got.marginal(i, k, m))) for k in range(T)]
            for i, m in enumerate(limits)
        ]
    ).T  # (T, L)
    corr = {
        s: np.stack([got.autocorrelation(i, s) for i in range(len(limits))], axis=1) for s in shifts
    }  # (T - s, L)
    return {
        "hellinger": h.tolist(),
        "max_hellinger_after_start": float(h[1:].max()),
        "correlations": {s: c.tolist() for s, c in corr.items()},
        "max_correlation_error": {
            s: float(np.nanmax(np.abs(c - ref["correlations"][s])[1:])) for s, c in corr.items()
        },
    }


def held_out_kernel(solution: AmortisedSolution, lag: float, count: int) -> dict:
    """The largest Hellinger distance over species of q(. | c, lag) from FSP at `count`
    contexts uniform over the box (rates and starts)."""
    rng = np.random.default_rng(7)
    values = solution.space.from_unit(rng.random((count, solution.space.dim)))
    distances = []
    settings = FSPSettings(quiet=True, boundary_warn=1.0)  # starts on the box's edge
    for v in values:
        exact = solve_fsp(solution.space.network_at(v), [0.0, lag], settings).marginals[1]
        got = solution.marginals(v[None], lag)
        distances.append(
            max(float(hellinger(exact[i, : len(m[0])], m[0])) for i, m in enumerate(got))
        )
    d = np.array(distances)
    print(
        f"  kernel at {count} held-out contexts: median {np.median(d):.4f}, worst {d.max():.4f}",
        flush=True,
    )
    return {
        "contexts": values.tolist(),
        "hellinger": d.tolist(),
        "median": float(np.median(d)),
        "p90": float(np.quantile(d, 0.9)),
        "worst": float(d.max()),
    }


def run_case(case: str, args: argparse.Namespace, shifts: tuple[int, ...]) -> dict:
    out = Path(args.out) / case
    seconds = train(case, out, args.lag, args.reuse)
    solution = AmortisedSolution(out)
    _, _, starts = CASES[case]()
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    first = log[0]["first"]
    exact_fit = next((r["exact"] for r in log if "exact" in r), None)  # the exact first step
    print(f"{case}: trained in {seconds:.0f} s ({len(solution.times) - 1} steps)", flush=True)
    limits = solution.network.limits
    rows = []
    for start in starts:
        values = np.array(start, dtype=np.float64)
        net = solution.space.network_at(values)
        times = args.lag * np.arange(args.steps + 1)
        ref = exact(net, times, args.lag, shifts)
        kernel = max(  # the kernel from the start itself: the paths' first step
            float(hellinger(ref["marginals"][i][1], m[0]))
            for i, m in enumerate(solution.marginals(values[None], args.lag))
        )
        t0 = time.perf_counter()
        paths = solution.paths(values, args.lag, args.steps, count=args.count, seed=1)
        van_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ssa, _ = simulate(net, times, SSASettings(trajectories=args.ssa, seed=2, quiet=True))
        ssa_s = time.perf_counter() - t0
        ssa = PathEnsemble(
            times, ssa.cpu().numpy(), np.zeros((args.ssa, args.steps), bool), paths.species
        )
        van = compare(paths, ref, limits, shifts)
        sim = compare(ssa, ref, limits, shifts)
        rows.append({
            "context": dict(zip(solution.space.names, values.tolist())),
            "times": times.tolist(),
            "kernel_hellinger": kernel,
            "paths": args.count,
            "paths_seconds": van_s,
            "outside_share": float(paths.outside.mean()),
            "van": van,
            "ssa_trajectories": args.ssa,
            "ssa_seconds": ssa_s,
            "ssa": sim,
            "fsp_seconds": ref["seconds"],
            "exact_correlations": {s: c.tolist() for s, c in ref["correlations"].items()},
        })  # fmt: skip
        print(
            f"  {np.round(values, 3).tolist()}: kernel {kernel:.4f}; paths {van_s:.2f} s, max H "
            f"{van['max_hellinger_after_start']:.4f} (SSA {args.ssa:,}: "
            f"{sim['max_hellinger_after_start']:.4f}, {ssa_s:.1f} s); correlation errors "
            + ", ".join(
                f"lag {s}: {van['max_correlation_error'][s]:.3f} "
                f"(SSA {sim['max_correlation_error'][s]:.3f})"
                for s in shifts
            ),
            flush=True,
        )
    return {
        "case": case,
        "box": {v.name: [v.lo, v.hi] for v in solution.space.varies},
        "lag": args.lag,
        "steps": args.steps,
        "training_seconds": seconds,
        "training_steps": len(solution.times) - 1,
        "first_fit": first,
        "exact_first_step": exact_fit,
        "held_out_kernel": held_out_kernel(solution, args.lag, args.held_out),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--lag", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--count", type=int, default=20_000, help="paths per start")
    ap.add_argument("--ssa", type=int, default=100_000, help="SSA trajectories per start")
    ap.add_argument("--out", default="runs/paths", help="the amortised runs go to OUT/<case>")
    ap.add_argument("--held-out", type=int, default=50, help="contexts for the kernel")
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args()
    previous = RESULTS / "paths_cpu.json"
    commit = git_commit()  # at the start: the code that runs
    for case in args.cases:
        result = {**run_case(case, args, shifts=(1, 2)), "commit": commit}
        cases = json.loads(previous.read_text())["cases"] if previous.exists() else []
        cases = [c for c in cases if c["case"] != case] + [result]  # other cases kept
        path = write_results("paths", "cpu", {"cases": cases})
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
