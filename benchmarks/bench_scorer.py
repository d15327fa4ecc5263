"""A summed fit's evaluation: log q and its gradient over a listed support, by
`AutoregressiveModel.scorer` (each distinct prefix through the network once) against
`log_prob` (every state through it), on the supports of benchmark networks.

    python benchmarks/bench_scorer.py [--threads N] [--quick]

Correctness first: the largest |log q| difference between the two. Each time is one
evaluation with its backward pass (what an L-BFGS fit pays per evaluation), NADE H = 16,
float64. Writes benchmarks/results/scorer_<device>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import nncme.io
from bench_common import median_seconds, print_table, repeats_for, write_results
from nncme.exact import enumerate_states
from nncme.models import build_model
from nncme.systems import get

HERE = Path(__file__).resolve().parent
# (label, where the network comes from): boxes and conservation-law supports of 1e3-1.1e5 states
NETWORKS = [
    ("schlogl_box1000", HERE / "networks" / "schlogl_box1000.toml"),
    ("sir80", HERE / "networks" / "sir80.toml"),
    ("stiff_gene", HERE / "networks" / "stiff_gene.toml"),
    ("toggle_switch", "toggle_switch"),
    ("michaelis_menten", HERE / "networks" / "michaelis_menten.toml"),
    ("lotka_volterra", HERE / "networks" / "lotka_volterra.json"),
    ("cascade3", HERE / "networks" / "cascade3.toml"),
    ("telegraph_bursty", HERE / "networks" / "telegraph_bursty.toml"),
    ("two_stage_wide_box", HERE / "networks" / "two_stage_wide_box.toml"),
    ("cascade10", HERE / "networks" / "cascade10.json"),
    ("repressilator", HERE / "networks" / "repressilator.toml"),
]


def load(source) -> object:
    return nncme.io.load_network(source) if isinstance(source, Path) else get(source)


def measure(label: str, source, quick: bool) -> dict:
    net = load(source)
    states = torch.from_numpy(enumerate_states(net, max_states=1_000_000))
    model = build_model("nade", net, hidden=16, dtype=torch.float64)
    start = time.perf_counter()
    score = model.scorer(states)
    build = time.perf_counter() - start
    with torch.no_grad():
        diff = float((score() - model.log_prob(states)).abs().max())

    def evaluate(fn):
        def once():
            model.zero_grad(set_to_none=True)
            fn().sum().backward()

        return once

    shared, direct = evaluate(score), evaluate(lambda: model.log_prob(states))
    t_once, _ = median_seconds(shared, "cpu", 1)
    t_shared, _ = median_seconds(shared, "cpu", repeats_for(t_once, 1 if quick else 4))
    d_once, _ = median_seconds(direct, "cpu", 1, warmup=0)
    reps = repeats_for(d_once, 0 if quick else 6, most=5)
    t_direct = d_once if reps <= 1 else median_seconds(direct, "cpu", reps, warmup=0)[0]
    row = dict(
        network=label,
        states=int(states.shape[0]),
        L=int(net.L),
        Mmax=int(model.max_count),
        scorer_ms=t_shared * 1e3,
        log_prob_ms=t_direct * 1e3,
        speedup=t_direct / t_shared,
        build_ms=build * 1e3,
        max_log_q_diff=diff,
    )
    print(
        f"  {label}: {row['states']} states, scorer {row['scorer_ms']:.2f} ms, log_prob "
        f"{row['log_prob_ms']:.1f} ms, {row['speedup']:.1f}x (build {row['build_ms']:.0f} ms)",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(label, source, args.quick) for label, source in NETWORKS]
    print()
    print_table(
        rows,
        [
            ("network", "network", "s"),
            ("states", "states", "d"),
            ("L", "L", "d"),
            ("Mmax", "Mmax", "d"),
            ("scorer_ms", "scorer ms", ".2f"),
            ("log_prob_ms", "log_prob ms", ".1f"),
            ("speedup", "speedup", ".1f"),
            ("build_ms", "build ms", ".0f"),
            ("max_log_q_diff", "dlogq", ".1e"),
        ],
    )
    tag = f"{args.threads}thread" if args.threads else ""
    path = write_results("scorer", "cpu", {"model": "nade H=16 float64", "rows": rows}, tag)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
