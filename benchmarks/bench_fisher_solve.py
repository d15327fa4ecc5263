"""The batched Cholesky Fisher/TDVP solve (torch.ops.nncme.fisher_solve) against its reference
(centre O, form the Gram matrix, torch.linalg.cholesky_ex + cholesky_solve) at the trainer's
sizes: G = 1, N = 1000..4096 samples, P = 1e3..1e5 parameters, the smaller system (parameter
space when P <= N, sample space otherwise). The fused op ships as the default of
`nncme.ops.fisher_solve` on a device only where it wins here (ops.FISHER_SOLVE_AUTO).

Also the Gram overload (torch.ops.nncme.fisher_solve.gram against reference.fisher_solve_gram),
the path the default natural-gradient and TDVP runs take with a NADE of more parameters than
samples: N = 500..4096, the Gram matrix K = O O^T formed once (from O of P = 2000 columns) as
the input, only the centring, factorisation and solve timed ("op": "gram" rows;
ops.FISHER_SOLVE_GRAM_AUTO).

    python benchmarks/bench_fisher_solve.py [--device cuda] [--dtypes float64 float32] [--full]
        [--ops O gram] [--sizes I ...] [--gram-sizes N ...] [--threads T] [--tag TAG]

On CPU the default skips N = 4096 with P = 1e5 (two minutes a call on 2 cores; --full runs it).
Writes benchmarks/results/fisher_solve_<device>[_<tag>].json (tag: --tag, else "<T>thread" with
--threads); a partial run (--ops, --sizes, --gram-sizes) should carry a tag.
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
GRAM_SIZES = [500, 1000, 2000, 4096]
GRAM_P = 2000  # columns of the O that K is formed from (outside the timing)
SHIFT = 1e-3


def inputs(N: int, P: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Per-sample scores with a small common mean, loss values, self-normalised weights."""
    g = torch.Generator(device=device).manual_seed(seed)
    O = torch.randn(1, N, P, generator=g, device=device, dtype=dtype)
    O += 0.1 * torch.randn(1, 1, P, generator=g, device=device, dtype=dtype)
    v = torch.randn(1, N, generator=g, device=device, dtype=dtype)
    w = torch.rand(1, N, generator=g, device=device, dtype=dtype) + 0.5
    return O, v, w / w.sum(1, keepdim=True)


def time_against_reference(fused_fn, ref_fn, inputs: tuple, device: str) -> dict:
    """Median times and peak memory of an operator and its reference (checked before)."""
    t_once, _ = median_seconds(fused_fn, device, 1, warmup=0)
    t_fused, _ = median_seconds(fused_fn, device, repeats_for(t_once, 6, most=7), warmup=0)
    r_once, _ = median_seconds(ref_fn, device, 1, warmup=0)
    t_ref, _ = median_seconds(ref_fn, device, repeats_for(r_once, 6, most=7), warmup=0)
    if torch.device(device).type == "cuda":
        peak_fused, peak_ref = cuda_peak_mb(fused_fn, device), cuda_peak_mb(ref_fn, device)
    else:
        peak_fused, peak_ref = cpu_peak_mb(fused_fn, inputs), cpu_peak_mb(ref_fn, inputs)
    return dict(
        fused_ms=t_fused * 1e3,
        reference_ms=t_ref * 1e3,
        speedup=t_ref / t_fused,
        fused_peak_mb=peak_fused,
        reference_peak_mb=peak_ref,
    )


def report(label: str, row: dict) -> None:
    print(
        f"  {label} {row['dtype']}: fused {row['fused_ms']:.1f} ms, reference "
        f"{row['reference_ms']:.1f} ms, {row['speedup']:.2f}x; peak MiB fused "
        f"{row['fused_peak_mb']} reference {row['reference_peak_mb']}",
        flush=True,
    )


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
    row = dict(
        op="O",
        N=N,
        P=P,
        space="parameter" if P <= N else "sample",
        dtype=str(dtype).replace("torch.", ""),
        **time_against_reference(fused_fn, ref_fn, (O, v, w), device),
        rel_err=err,
    )
    report(f"N={N} P={P}", row)
    return row


def run_gram(N: int, dtype: torch.dtype, device: str) -> dict:
    """fisher_solve.gram on K = O O^T (formed once, not timed) against its reference."""
    O, v, w = inputs(N, GRAM_P, dtype, device)
    K = O @ O.mT
    del O
    args = (K, v, w, SHIFT, 10)
    fused_fn = lambda: torch.ops.nncme.fisher_solve.gram(*args)  # noqa: E731
    ref_fn = lambda: reference.fisher_solve_gram(*args)  # noqa: E731
    coef, used = fused_fn()
    coef_r, used_r = ref_fn()
    err = float((coef - coef_r).norm() / coef_r.norm())
    tol = 1e-3 if dtype == torch.float32 else 1e-8
    if err > tol or not torch.equal(used, used_r):
        raise SystemExit(f"fisher_solve.gram disagrees with the reference at N={N}: {err:.2e}")
    row = dict(
        op="gram",
        N=N,
        P=GRAM_P,
        space="sample",
        dtype=str(dtype).replace("torch.", ""),
        **time_against_reference(fused_fn, ref_fn, (K, v, w), device),
        rel_err=err,
        shift_used=float(used[0]),
    )
    report(f"gram N={N}", row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    parser.add_argument("--full", action="store_true", help="all sizes also on CPU")
    parser.add_argument("--sizes", type=int, nargs="*", help="indices into SIZES (O path)")
    parser.add_argument("--ops", nargs="+", choices=["O", "gram"], default=["O", "gram"])
    parser.add_argument("--gram-sizes", type=int, nargs="*", help="N of the Gram path")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tag = args.tag or (f"{args.threads}thread" if args.threads else "")
    on_cpu = torch.device(args.device).type == "cpu"
    sizes = [s for s in SIZES if args.full or not on_cpu or s != (4096, 100000)]
    if args.sizes:
        sizes = [SIZES[i] for i in args.sizes]
    dtypes = [getattr(torch, d) for d in args.dtypes]
    rows, gram_rows = [], []
    if "O" in args.ops:
        rows = [run_size(N, P, d, args.device) for d in dtypes for N, P in sizes]
    if "gram" in args.ops:
        gram_rows = [
            run_gram(N, d, args.device) for d in dtypes for N in args.gram_sizes or GRAM_SIZES
        ]
    columns = [
        ("op", "op", "s"),
        ("N", "N", "d"),
        ("P", "P", "d"),
        ("space", "space", "s"),
        ("dtype", "dtype", "s"),
        ("fused_ms", "fused ms", ".1f"),
        ("reference_ms", "ref ms", ".1f"),
        ("speedup", "speedup", ".2f"),
        ("fused_peak_mb", "fused MiB", ".0f"),
        ("reference_peak_mb", "ref MiB", ".0f"),
    ]
    print()
    print_table(rows + gram_rows, columns)
    wins = all(r["speedup"] > 1.0 for r in rows) if rows else None
    gram_wins = all(r["speedup"] > 1.0 for r in gram_rows) if gram_rows else None
    print(f"\nfused faster at every size: O path {wins}, Gram path {gram_wins}")
    payload = {
        "G": 1,
        "shift": SHIFT,
        "gram_P": GRAM_P,
        "fused_wins_everywhere": wins,
        "gram_fused_wins_everywhere": gram_wins,
        "rows": rows + gram_rows,
    }
    path = write_results("fisher_solve", args.device, payload, tag)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
