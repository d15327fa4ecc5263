"""Lattices of growing size at the defaults: cost per step, peak memory and accuracy against
the exact marginals of a diffusing birth-death field (any number of sites).

    python benchmarks/bench_lattice.py                       # 2x2 and 3x3 to t = 0.01
    python benchmarks/bench_lattice.py --sizes 2x2 4x4 8x8 --t-end 0.02 --order snake

Each lattice is `reaction_diffusion` with birth-death kinetics (birth k = 4, death gamma = 1,
hopping 1 to each neighbour, 2 molecules on every site at t = 0): monomolecular, so every
site's marginal is exact at any size (`nncme.exact.monomolecular_marginals`). The run is
`nncme run` with the defaults but for --t-end, --dt and the site --order. Per lattice: the
wall time of the steps (log.jsonl), per step, the optimiser iterations, the process's peak
resident memory (summary.json), and the largest Hellinger distance of a site's marginal from
the exact one over sites and save times. JSON: benchmarks/results/lattice_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, git_commit, print_table, write_results
from nncme.exact import monomolecular_marginals
from nncme.io import resolve_network
from nncme.metrics import hellinger
from nncme.results import Result

KINETICS = "kinetics=birth_death,x0=2,k=4,gamma=1,hopping=1"


def run_lattice(shape: str, args: argparse.Namespace, work: Path) -> dict:
    spec = f"reaction_diffusion:shape={shape},{KINETICS},order={args.order}"
    out = work / shape
    shutil.rmtree(out, ignore_errors=True)
    command = [shutil.which("nncme"), "run", spec, "--t-end", str(args.t_end), "--quiet"]
    command += ["--out", str(out), *(["--dt", str(args.dt)] if args.dt else []), *args.set]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    row = {
        "shape": shape,
        "sites": len(summary["network"]["species"]),
        "network": spec,
        "t_end": args.t_end,
        "dt": args.dt,
        "steps": len(log),
        "seconds": sum(x["seconds"] for x in log),
        "iterations": sum(x["iterations"] for x in log),
        "peak_memory_mb": summary.get("peak_memory_mb", {}).get("host"),
        "largest_batch": summary.get("largest_batch"),
        "status": summary.get("status"),
        "error": (done.stderr.strip().splitlines() or [None])[-1] if done.returncode else None,
    }
    row["seconds_per_step"] = row["seconds"] / max(row["steps"], 1)
    result = Result.load(out)
    exact = monomolecular_marginals(resolve_network(spec), result.times)
    got = result.marginals[1:]
    row["max_hellinger"] = float(np.max(hellinger(got, exact[1:, :, : got.shape[-1]])))
    row["times"] = result.times.tolist()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="*", default=["2x2", "3x3"])
    parser.add_argument("--t-end", type=float, default=0.01)
    parser.add_argument("--dt", type=float, default=0.002)
    parser.add_argument("--order", default="row", choices=["row", "snake", "hilbert"])
    parser.add_argument("--set", nargs="*", default=[], help="more `nncme run` options")
    parser.add_argument("--tag", default="")
    parser.add_argument("--merge", action="store_true", help="keep other lattices' rows")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.sizes:
            row = run_lattice(shape, args, Path(tmp))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times"}))
    print_table(
        rows,
        [
            ("shape", "lattice", "s"),
            ("sites", "sites", "d"),
            ("steps", "steps", "d"),
            ("iterations", "iterations", "d"),
            ("seconds_per_step", "s/step", ".1f"),
            ("peak_memory_mb", "peak MB", ".0f"),
            ("max_hellinger", "max H", ".4f"),
        ],
    )
    note = f"{os.cpu_count()} cores; one thread; order {args.order}"
    commit = git_commit()
    for row in rows:
        row["commit"] = commit
    if args.merge:  # keep the other lattices' rows (each row names its commit)
        path = RESULTS / f"lattice_cpu{'_' + args.tag if args.tag else ''}.json"
        done = {row["shape"] for row in rows}
        kept = [r for r in json.loads(path.read_text())["rows"] if r["shape"] not in done]
        rows = sorted(kept + rows, key=lambda r: r["sites"])
    path = write_results("lattice", "cpu", {"note": note, "rows": rows}, tag=args.tag)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
