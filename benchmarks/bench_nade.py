"""Fused NADE sampling (torch.ops.nncme.nade_sample) and scoring (nade_log_prob) against the
plain-PyTorch reference loop, at the shapes of issue 5: B = 4096 with (L, M, H) = (20, 100, 64),
(4, 80, 16), (16, 10, 16) and (500, 50, 32). Targets: >= 3x the reference on 2 CPU cores, >= 20x
on an H100 (sampling).

    python benchmarks/bench_nade.py [--device cuda] [--dtypes float32 float64] [--quick]

Correctness first: the fraction of samples drawn identically from the same uniforms, and the
largest log q difference on those rows. Writes benchmarks/results/nade_<device>.json.
"""

from __future__ import annotations

import argparse
import math

import torch

import nncme  # noqa: F401  (loads the operators)
from bench_common import median_seconds, print_table, repeats_for, write_results
from nncme.ops import reference

SHAPES = [(4096, 20, 100, 64), (4096, 4, 80, 16), (4096, 16, 10, 16), (4096, 500, 50, 32)]
TARGET = {"cpu": 3.0, "cuda": 20.0}


def inputs(B: int, L: int, M: int, H: int, dtype: torch.dtype, device: str, seed: int = 0):
    """A freshly initialised NADE (weights ~ N(0, 1/H)), hidden0 its bias for every sample."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    no_laws = dict(
        cons_weights=torch.zeros(0, L, dtype=torch.int64),
        cons_start=torch.zeros(0, dtype=torch.int64),
        cons_law_meta=torch.zeros(0, 4, dtype=torch.int64),
        cons_group_meta=torch.zeros(0, 2, dtype=torch.int64),
        cons_table=torch.zeros(0, dtype=torch.bool),
    )
    tensors = dict(
        uniforms=torch.rand(B, L, generator=g, dtype=torch.float64).to(dtype),
        hidden0=randn(1, H).expand(B, H).contiguous(),
        embed=randn(L, M, H, scale=1 / math.sqrt(H)),
        head_w=randn(L, M, H, scale=3 / math.sqrt(H)),
        head_b=randn(L, M),
        limits=torch.full((L,), M, dtype=torch.int64),
        **no_laws,
    )
    return {k: v.to(device) for k, v in tensors.items()}


ORDER = ["hidden0", "embed", "head_w", "head_b", "limits", "cons_weights", "cons_start"]
ORDER += ["cons_law_meta", "cons_group_meta", "cons_table"]


def run_shape(B, L, M, H, dtype, device, quick: bool) -> list[dict]:
    inp = inputs(B, L, M, H, dtype, device)
    sample_args = (inp["uniforms"], *(inp[k] for k in ORDER), 1.0, 0)
    fused = torch.ops.nncme.nade_sample(*sample_args)
    ref = reference.nade_sample(*sample_args)
    same = (fused[0] == ref[0]).all(dim=1)
    agreement = float(same.double().mean())
    log_q_err = float((fused[1][same] - ref[1][same]).abs().max()) if same.any() else math.nan
    scored = torch.ops.nncme.nade_log_prob(fused[0], *(inp[k] for k in ORDER), 0)
    scored_ref = reference.nade_log_prob(fused[0], *(inp[k] for k in ORDER), 0)
    score_err = float((scored - scored_ref).abs().max())
    rows = []
    for op, fused_fn, ref_fn in [
        (
            "sample",
            lambda: torch.ops.nncme.nade_sample(*sample_args),
            lambda: reference.nade_sample(*sample_args),
        ),
        (
            "log_prob",
            lambda: torch.ops.nncme.nade_log_prob(fused[0], *(inp[k] for k in ORDER), 0),
            lambda: reference.nade_log_prob(fused[0], *(inp[k] for k in ORDER), 0),
        ),
    ]:
        t_once, _ = median_seconds(fused_fn, device, 1)
        t_fused, _ = median_seconds(fused_fn, device, repeats_for(t_once, 2 if quick else 5))
        r_once, _ = median_seconds(ref_fn, device, 1, warmup=0)
        r_reps = repeats_for(r_once, 0 if quick else 10, most=5)
        t_ref = r_once if r_reps <= 1 else median_seconds(ref_fn, device, r_reps, warmup=0)[0]
        rows.append(
            dict(
                op=op,
                B=B,
                L=L,
                M=M,
                H=H,
                dtype=str(dtype).replace("torch.", ""),
                fused_ms=t_fused * 1e3,
                reference_ms=t_ref * 1e3,
                speedup=t_ref / t_fused,
                agreement=agreement,
                max_log_q_diff=log_q_err,
                max_log_prob_diff=score_err,
            )
        )
        print(
            f"  {op:8s} B={B} L={L} M={M} H={H} {rows[-1]['dtype']}: fused {t_fused * 1e3:.2f} ms, "
            f"reference {t_ref * 1e3:.1f} ms, {t_ref / t_fused:.1f}x",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--shapes", type=int, nargs="*", help="indices into SHAPES")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tag = f"{args.threads}thread" if args.threads else ""
    device = args.device
    shapes = [SHAPES[i] for i in args.shapes] if args.shapes else SHAPES
    rows = []
    for B, L, M, H in shapes:
        for name in args.dtypes:
            rows.extend(run_shape(B, L, M, H, getattr(torch, name), device, args.quick))
    target = TARGET[torch.device(device).type]
    for row in rows:
        row["target_speedup"] = target
        row["meets_target"] = row["speedup"] >= target
    print()
    print_table(
        rows,
        [
            ("op", "op", "s"),
            ("L", "L", "d"),
            ("M", "M", "d"),
            ("H", "H", "d"),
            ("dtype", "dtype", "s"),
            ("fused_ms", "fused ms", ".2f"),
            ("reference_ms", "ref ms", ".1f"),
            ("speedup", "speedup", ".1f"),
            ("agreement", "agree", ".4f"),
            ("max_log_q_diff", "dlogq", ".1e"),
        ],
    )
    path = write_results(
        "nade", device, {"batch": 4096, "target_speedup": target, "rows": rows}, tag
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
