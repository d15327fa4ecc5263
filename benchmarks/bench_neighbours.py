"""One step target (log T q_old at a batch of states) on lattices of growing size: the way it is
evaluated now against the direct way, time and peak memory.

    python benchmarks/bench_neighbours.py                        # 2x2, 4x4, 8x8 on the CPU
    python benchmarks/bench_neighbours.py --sizes 16x16 --now-only --device cuda

The target scores q_old at every state and at its K neighbours n - s_k and needs each
neighbour's exit rate (the saturated map). On a 2-D reaction-diffusion lattice of L sites
K ~ 5.5 L, so done directly that is a (B, K, L) neighbour tensor, a sort of B K rows of L
counts, B K full NADE evaluations and B K^2 propensities. Now (`nncme.optim.TransitionTarget`):
distinct states by 62-bit hashes where the box is beyond int64 keys, the neighbours' exit rates
from the reactions each change touches (`nncme.ops.NeighbourExitRates`), and NADE's
neighbours scored from the prefix they share with their state (`NADE.score_neighbours`), in
chunks under a neighbour budget, with a memo of log q_old that keeps new states only while
batches repeat. "direct" switches these off in the same code (int64 keys where they fit, with every
new state memoised; else a sort of the rows and no memo: the path before). Both must agree (their
largest difference of log T q is in the table). Also timed: iterations of a fit to one Euler
stage (Adam, the mixture proposal, explored states; `--iterations`), each with its own
target, as a run's first stage is.

Lattice: birth-death on every site (birth 4, death 1, hopping 1), limit 25 per site; states:
B draws of an untrained NADE (hidden 16; spread over the box, so nearly all neighbours are
distinct: the work a trained model's tails also ask for); dt 1e-3. `--model transformer`: the
same with the Transformer of `nncme run --model transformer` (width 16, 2 layers, 4 heads),
whose neighbours are scored from the cached keys and values of their shared prefix
(`Transformer.score_neighbours`); "direct" scores every distinct neighbour in full. JSON:
benchmarks/results/neighbours_<device>[_<tag>].json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    cpu_peak_mb,
    cuda_peak_mb,
    git_commit,
    median_seconds,
    print_table,
    repeats_for,
    sync,
    write_results,
)
from nncme import ops
from nncme.io import resolve_network
from nncme.models import build_model, frozen_copy
from nncme.optim import KLUpdate, StepProblem
from nncme.optim import target as target_module
from nncme.optim.target import StageTarget, Term, TransitionTarget
from nncme.sampling import make_proposal

KINETICS = "kinetics=birth_death,x0=2,k=4,gamma=1,hopping=1"


class Direct:
    """The target with hashing, touched-reaction exit rates and prefix scoring switched off."""

    def __init__(self, net) -> None:
        self.exits = ops.neighbour_exit_rates(net)

    def __enter__(self) -> None:
        self.saved = (self.exits.sparse, target_module.unique_states, target_module.MEMO_MIN_HITS,
                      TransitionTarget._old_log_prob)  # fmt: skip
        self.exits.sparse = False
        target_module.MEMO_MIN_HITS = 0.0  # every new state kept
        memoised = TransitionTarget._old_log_prob

        def old_log_prob(target, unique):  # no memo where int64 keys do not fit
            if target_module.state_keys(unique, target.net.limits) is None:
                return target_module.score(target.old, unique, target.rows)
            return memoised(target, unique)

        TransitionTarget._old_log_prob = old_log_prob
        keyed = target_module.unique_states

        def unique(rows, limits):  # int64 keys where they fit, else a sort of the rows
            if target_module.state_keys(rows, limits) is None:
                return torch.unique(rows, dim=0, return_inverse=True)
            return keyed(rows, limits)

        target_module.unique_states = unique

    def __exit__(self, *exc) -> None:
        (self.exits.sparse, target_module.unique_states, target_module.MEMO_MIN_HITS,
         TransitionTarget._old_log_prob) = self.saved  # fmt: skip


def fit_iteration(model, compiled, args) -> float:
    """Seconds per iteration of a fit to one Euler stage (Adam, the default proposal's draws
    with explored states one reaction ahead, batch B), over `args.iterations` iterations."""
    frozen = frozen_copy(model)
    fitted = copy.deepcopy(model)
    update = KLUpdate(torch.optim.Adam(fitted.parameters(), lr=0.01), iterations=args.iterations,
                      explore=0.2, lr_decay=1.0)  # fmt: skip
    target = StageTarget([Term(frozen, 0.0, 1.0, 1.0)], compiled, args.dt)
    generator = torch.Generator(compiled.device).manual_seed(1)
    problem = StepProblem(fitted, target, make_proposal("mixture"), args.batch, generator, 0.0,
                          args.dt)  # fmt: skip
    start = time.perf_counter()
    report = update.run(problem)
    sync(compiled.device)
    return (time.perf_counter() - start) / report.iterations


def measure(shape: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    net = resolve_network(f"reaction_diffusion:shape={shape},{KINETICS}")
    compiled = net.compile(device, torch.float64)
    options = {"hidden": 16, "layers": 2, "heads": 4} if args.model == "transformer" else {}
    model = build_model(args.model, net, dtype=torch.float64, device=device, seed=0, **options)
    states, _ = model.sample(args.batch, torch.Generator(device).manual_seed(0))
    row = {"shape": shape, "model": args.model, "sites": net.L, "reactions": net.K,
           "batch": args.batch, "parameters": model.num_parameters()}  # fmt: skip

    def now():
        return TransitionTarget(model, compiled, 0.0, args.dt)(states).log_tq

    def peak(fn):
        return cuda_peak_mb(fn, device) if device.type == "cuda" else cpu_peak_mb(fn, [states])

    value = now()
    first, _ = median_seconds(now, device, 1, warmup=0)
    row["seconds"], _ = median_seconds(now, device, repeats_for(first, 6.0, 5), warmup=0)
    row["peak_mb"] = peak(now)
    row["path"] = "prefix" if TransitionTarget(model, compiled, 0.0, args.dt)._by_prefix else "-"
    row["iteration_seconds"] = fit_iteration(model, compiled, args)
    if not args.now_only:
        with Direct(compiled):
            direct = now()
            first, _ = median_seconds(now, device, 1, warmup=0)
            row["direct_seconds"], _ = median_seconds(
                now, device, repeats_for(first, 6.0, 3), warmup=0
            )
            row["direct_peak_mb"] = peak(now)
            row["direct_iteration_seconds"] = fit_iteration(model, compiled, args)
        row["ratio"] = row["direct_seconds"] / row["seconds"]
        row["iteration_ratio"] = row["direct_iteration_seconds"] / row["iteration_seconds"]
        row["max_difference"] = float((value - direct).abs().max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="nade", choices=["nade", "transformer"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", nargs="*", default=["2x2", "4x4", "8x8"])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--dt", type=float, default=1e-3)
    parser.add_argument("--iterations", type=int, default=10, help="of the timed fit")
    parser.add_argument("--now-only", action="store_true", help="skip the direct way")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(shape, args) for shape in args.sizes]
    print_table(
        rows,
        [
            ("shape", "lattice", "s"),
            ("sites", "sites", "d"),
            ("reactions", "K", "d"),
            ("seconds", "now s", ".3f"),
            ("direct_seconds", "direct s", ".3f"),
            ("ratio", "ratio", ".1f"),
            ("iteration_seconds", "it. s", ".3f"),
            ("direct_iteration_seconds", "direct it. s", ".3f"),
            ("peak_mb", "now MiB", ".0f"),
            ("direct_peak_mb", "direct MiB", ".0f"),
            ("max_difference", "max diff", ".1e"),
        ],
    )
    note = f"{args.threads} thread(s); B = {args.batch}; dt = {args.dt}; model {args.model}"
    path = write_results(
        "neighbours", args.device, {"note": note, "commit": git_commit(), "rows": rows}, args.tag
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
