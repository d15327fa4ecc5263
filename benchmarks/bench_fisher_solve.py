"""The batched Cholesky Fisher/TDVP solve (torch.ops.nncme.fisher_solve) against its reference
(centre O, form the Gram matrix, torch.linalg.cholesky_ex + cholesky_solve) at the trainer's
sizes: G = 1, N = 1000..4096 samples, P = 1e3..1e5 parameters, the smaller system (parameter
space when P <= N, sample space otherwise). The fused op ships as the default of
`nncme.ops.fisher_solve` on a device only where it wins here (ops.FISHER_SOLVE_AUTO).

    python benchmarks/bench_fisher_solve.py [--device cuda] [--dtypes float64 float32] [--full]

On CPU the default skips N = 4096 with P = 1e5 (two minutes a call on 2 cores; --full runs it).
Writes benchmarks/results/fisher_solve_<device>.json.
"""

from __future__ import annotations

import argparse

import torch

import nncme  # noqa: F401  (loads the operators)
from bench_common import (
    cpu_peak_mb,
    cuda_peak_mb,
    median_seconds,
    print_table,
    repeats_for,
    write_results,
)
from nncme.ops import reference

SIZES = [(1000, 1000), (1000, 10000), (1000, 100000), (4096, 1000), (4096, 10000), (4096, 100000)]
SHIFT = 1e-3


def inputs(N: int, P: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Per-sample scores with a small common mean, loss values, self-normalised weights."""
    g = torch.Generator(device=device).manual_seed(seed)
    O = torch.randn(1, N, P, generator=g, device=device, dtype=dtype)
    O += 0.1 * torch.randn(1, 1, P, generator=g, device=device, dtype=dtype)
    v = torch.randn(1, N, generator=g, device=device, dtype=dtype)
    w = torch.rand(1, N, generator=g, device=device, dtype=dtype) + 0.5
    return O, v, w / w.sum(1, keepdim=True)


def run_size(N: int, P: int, dtype: torch.dtype, device: str) -> dict:
    O, v, w = inputs(N, P, dtype, device)
    args = (O, v, w, SHIFT, 0, 10)
    fused_fn = lambda: torch.ops.nncme.fisher_solve(*args)  # noqa: E731
    ref_fn = lambda: reference.fisher_solve(*args)  # noqa: E731
    x, used = fused_fn()
    xr, used_r = ref_fn()
    err = float((x - xr).norm() / xr.norm())
    tol = 1e-3 if dtype == torch.float32 else 1e-8
    if err > tol or not torch.equal(used, used_r):
        raise SystemExit(f"fisher_solve disagrees with the reference at N={N} P={P}: {err:.2e}")
    t_once, _ = median_seconds(fused_fn, device, 1, warmup=0)
    t_fused, _ = median_seconds(fused_fn, device, repeats_for(t_once, 6, most=7), warmup=0)
    r_once, _ = median_seconds(ref_fn, device, 1, warmup=0)
    t_ref, _ = median_seconds(ref_fn, device, repeats_for(r_once, 6, most=7), warmup=0)
    if torch.device(device).type == "cuda":
        peak_fused, peak_ref = cuda_peak_mb(fused_fn, device), cuda_peak_mb(ref_fn, device)
    else:
        peak_fused, peak_ref = cpu_peak_mb(fused_fn, (O, v, w)), cpu_peak_mb(ref_fn, (O, v, w))
    name = str(dtype).replace("torch.", "")
    row = dict(
        N=N,
        P=P,
        space="parameter" if P <= N else "sample",
        dtype=name,
        fused_ms=t_fused * 1e3,
        reference_ms=t_ref * 1e3,
        speedup=t_ref / t_fused,
        fused_peak_mb=peak_fused,
        reference_peak_mb=peak_ref,
        rel_err=err,
    )
    print(
        f"  N={N} P={P} {name}: fused {t_fused * 1e3:.1f} ms, reference {t_ref * 1e3:.1f} ms, "
        f"{t_ref / t_fused:.2f}x; peak MiB fused {peak_fused} reference {peak_ref}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    parser.add_argument("--full", action="store_true", help="all sizes also on CPU")
    parser.add_argument("--sizes", type=int, nargs="*", help="indices into SIZES")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tag = f"{args.threads}thread" if args.threads else ""
    on_cpu = torch.device(args.device).type == "cpu"
    sizes = [s for s in SIZES if args.full or not on_cpu or s != (4096, 100000)]
    if args.sizes:
        sizes = [SIZES[i] for i in args.sizes]
    rows = [run_size(N, P, getattr(torch, d), args.device) for d in args.dtypes for N, P in sizes]
    wins = all(r["speedup"] > 1.0 for r in rows)
    print()
    print_table(
        rows,
        [
            ("N", "N", "d"),
            ("P", "P", "d"),
            ("space", "space", "s"),
            ("dtype", "dtype", "s"),
            ("fused_ms", "fused ms", ".1f"),
            ("reference_ms", "ref ms", ".1f"),
            ("speedup", "speedup", ".2f"),
            ("fused_peak_mb", "fused MiB", ".0f"),
            ("reference_peak_mb", "ref MiB", ".0f"),
        ],
    )
    print(f"\nfused faster at every size: {wins}")
    payload = {"G": 1, "shift": SHIFT, "fused_wins_everywhere": wins, "rows": rows}
    path = write_results("fisher_solve", args.device, payload, tag)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
