"""Fused transition log-sum (torch.ops.nncme.transition_logsum) against the plain-PyTorch
reference at the shapes of issue 5: B = 16384 states of a 16-species, 35-reaction network, and
B = 4096 states of a 1024-site lattice with 2000 reactions. Targets: >= 2x the reference on 2 CPU
cores, >= 5x on a GPU; peak memory of both (the fused op needs O(B) beyond its inputs, the
reference O(B nnz)), measured beyond the inputs.

    python benchmarks/bench_transition.py [--device cuda] [--dtypes float64 float32] [--quick]

Writes benchmarks/results/transition_<device>.json.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench_common import (
    cpu_peak_mb,
    cuda_peak_mb,
    median_seconds,
    print_table,
    repeats_for,
    write_results,
)
from nncme import Hill, Reaction, ReactionNetwork
from nncme.ops import reference

TARGET = {"cpu": 2.0, "cuda": 5.0}


def regulatory_network(seed: int = 0) -> ReactionNetwork:
    """16 species, 35 reactions: production (some Hill-regulated), degradation, conversions and
    dimerisations, the mix of a gene-regulatory model."""
    rng = np.random.default_rng(seed)
    names = [f"X{i}" for i in range(16)]
    reactions = []
    for i, s in enumerate(names):
        hill = None
        if i % 3 == 0:
            kind = "repression" if i % 2 else "activation"
            hill = Hill(names[(i + 5) % 16], 10.0, 2.0, kind)
        reactions.append(Reaction({}, {s: 1}, float(rng.uniform(1, 10)), f"make {s}", hill=hill))
        reactions.append(Reaction({s: 1}, {}, float(rng.uniform(0.05, 1)), f"decay {s}"))
    reactions.append(Reaction({"X0": 1}, {"X1": 1}, 0.3, "convert"))
    reactions.append(Reaction({"X2": 2}, {"X3": 1}, 0.01, "dimerise"))
    reactions.append(Reaction({"X4": 1, "X5": 1}, {"X6": 1}, 0.02, "bind"))
    species = {s: int(rng.integers(30, 80)) for s in names}
    return ReactionNetwork(species, reactions, conservation=[])


def lattice_network(sites: int = 1024) -> ReactionNetwork:
    """A 1-D lattice of 1024 sites: hopping to the right neighbour on the first 1000, birth on
    the even and death on the odd ones of those: 2000 reactions."""
    names = [f"S{i}" for i in range(sites)]
    reactions = [Reaction({names[i]: 1}, {names[i + 1]: 1}, 1.0, f"hop {i}") for i in range(1000)]
    for i in range(1000):
        if i % 2 == 0:
            reactions.append(Reaction({}, {names[i]: 1}, 2.0, f"birth {i}"))
        else:
            reactions.append(Reaction({names[i]: 1}, {}, 0.5, f"death {i}"))
    return ReactionNetwork({s: 40 for s in names}, reactions, conservation=[])


CASES = {
    "B16384_K35_L16": (16384, regulatory_network),
    "B4096_K2000_L1024": (4096, lattice_network),
}


def inputs(case: str, dtype: torch.dtype, device: str):
    B, make = CASES[case]
    net = make()
    compiled = net.compile(device, dtype)
    rng = np.random.default_rng(1)
    states = torch.as_tensor(rng.integers(0, net.limits, size=(B, net.L)), device=device)
    log_q = torch.as_tensor(rng.normal(-8, 2, size=B), dtype=dtype, device=device)
    log_q_nbr = torch.as_tensor(rng.normal(-8, 2, size=(B, net.K)), dtype=dtype, device=device)
    args = compiled.operator_args(0.0)
    dt = 0.5 / net.max_exit_rate_bound()
    return (states, log_q, log_q_nbr, *args, dt)


def check(fused, ref, dtype) -> float:
    """Largest error of log T q and of the local generator relative to its scale."""
    worst = 0.0
    for i, (f, r) in enumerate(zip(fused, ref)):
        scale = (ref[2] + ref[1].abs()) if i == 1 else r.abs().clamp(min=1.0)
        worst = max(worst, float(((f - r).abs() / scale).max()))
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    if worst > tol:
        raise SystemExit(f"fused transition_logsum disagrees with the reference: {worst:.2e}")
    return worst


def run_case(case: str, dtype: torch.dtype, device: str, quick: bool) -> dict:
    args = inputs(case, dtype, device)
    fused_fn = lambda: torch.ops.nncme.transition_logsum(*args)  # noqa: E731
    ref_fn = lambda: reference.transition_logsum(*args)  # noqa: E731
    err = check(fused_fn(), ref_fn(), dtype)
    t_once, _ = median_seconds(fused_fn, device, 1)
    t_fused, _ = median_seconds(fused_fn, device, repeats_for(t_once, 2 if quick else 6))
    r_once, _ = median_seconds(ref_fn, device, 1, warmup=0)
    r_reps = repeats_for(r_once, 0 if quick else 10, most=5)
    t_ref = r_once if r_reps <= 1 else median_seconds(ref_fn, device, r_reps, warmup=0)[0]
    name = str(dtype).replace("torch.", "")
    if torch.device(device).type == "cuda":
        peak_fused, peak_ref = cuda_peak_mb(fused_fn, device), cuda_peak_mb(ref_fn, device)
    else:
        peak_fused, peak_ref = cpu_peak_mb(fused_fn, args), cpu_peak_mb(ref_fn, args)
    B, K = args[2].shape
    row = dict(
        case=case,
        B=B,
        K=K,
        L=args[0].shape[1],
        dtype=name,
        fused_ms=t_fused * 1e3,
        reference_ms=t_ref * 1e3,
        speedup=t_ref / t_fused,
        fused_peak_mb=peak_fused,
        reference_peak_mb=peak_ref,
        max_rel_err=err,
    )
    print(
        f"  {case} {name}: fused {t_fused * 1e3:.2f} ms, reference {t_ref * 1e3:.1f} ms, "
        f"{t_ref / t_fused:.1f}x; peak MiB fused {peak_fused} reference {peak_ref}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tag = f"{args.threads}thread" if args.threads else ""
    rows = [
        run_case(case, getattr(torch, name), args.device, args.quick)
        for case in args.cases
        for name in args.dtypes
    ]
    target = TARGET[torch.device(args.device).type]
    for row in rows:
        row["target_speedup"] = target
        row["meets_target"] = row["speedup"] >= target
    print()
    print_table(
        rows,
        [
            ("case", "case", "s"),
            ("dtype", "dtype", "s"),
            ("fused_ms", "fused ms", ".2f"),
            ("reference_ms", "ref ms", ".1f"),
            ("speedup", "speedup", ".1f"),
            ("fused_peak_mb", "fused MiB", ".1f"),
            ("reference_peak_mb", "ref MiB", ".1f"),
        ],
    )
    path = write_results("transition", args.device, {"target_speedup": target, "rows": rows}, tag)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
