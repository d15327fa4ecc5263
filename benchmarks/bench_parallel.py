"""Scaling of a run from one process to several (torch.distributed) at a fixed global batch.

    python benchmarks/bench_parallel.py                  # the default cases, 1 and 2 processes
    python benchmarks/bench_parallel.py --processes 1 2 4 --case lattice4x4

Each case is run with `nncme run` (one process) and `torchrun --nproc-per-node N $(which
nncme) run` at the same global batch and the same settings otherwise, each process on one
thread (OMP_NUM_THREADS=1). Per run: the wall time of the steps (log.jsonl's seconds, rank
0's), the optimiser iterations they took (their random streams differ, so the counts do), the
time per iteration, and the efficiency T_1 / (N T_N) per iteration; rank 0's peak memory;
and the largest Hellinger distance of the run's marginals from the exact ones (every case is
monomolecular), so a faster run that answers worse shows.
JSON: benchmarks/results/parallel_cpu.json.
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
from bench_common import print_table, write_results
from nncme.exact import monomolecular_marginals
from nncme.io import resolve_network
from nncme.metrics import hellinger
from nncme.results import Result

# name -> (network spec, global batch, t_end, dt)
CASES = {
    "birth_death": ("birth_death", 1000, 0.5, 0.05),
    "lattice2x2": (
        "reaction_diffusion:shape=2x2,kinetics=birth_death,x0=2,k=4,gamma=1,hopping=1",
        2000,
        0.05,
        0.01,
    ),
    "lattice3x3": (
        "reaction_diffusion:shape=3x3,kinetics=birth_death,x0=2,k=4,gamma=1,hopping=1",
        4000,
        0.004,
        0.002,
    ),
}


def run_case(name: str, processes: int, work: Path, extra: list[str]) -> dict:
    spec, batch, t_end, dt = CASES[name]
    out = work / f"{name}_{processes}"
    shutil.rmtree(out, ignore_errors=True)
    nncme = shutil.which("nncme")
    command = [nncme, "run", spec, "--batch", str(batch), "--t-end", str(t_end)]
    command += ["--dt", str(dt), "--quiet", "--out", str(out), *extra]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                   str(processes), *command]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{name} over {processes}: {done.stderr[-2000:]}")
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    later = log[1:]  # the first step is the start's own fit
    seconds = sum(x["seconds"] for x in later)
    iterations = sum(x["iterations"] for x in later)
    row = {
        "case": name,
        "network": spec,
        "processes": processes,
        "batch": batch,
        "steps": len(later),
        "seconds": seconds,
        "iterations": iterations,
        "ms_per_iteration": 1000 * seconds / max(iterations, 1),
    }
    result = Result.load(out)  # every case is monomolecular: exact marginals at any size
    exact = monomolecular_marginals(resolve_network(spec), result.times)
    got = result.marginals[1:]
    row["max_hellinger"] = float(np.max(hellinger(got, exact[1:, :, : got.shape[-1]])))
    row["peak_memory_mb"] = json.loads((out / "summary.json").read_text())["peak_memory_mb"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--processes", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--set", nargs="*", default=[], help="more `nncme run` options")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.case:
            base = None
            for n in args.processes:
                row = run_case(name, n, Path(tmp), args.set)
                if n == 1:
                    base = row["ms_per_iteration"]
                if base is not None:
                    row["efficiency"] = base / (n * row["ms_per_iteration"])
                rows.append(row)
                print(json.dumps(row))
    print_table(
        rows,
        [
            ("case", "case", "s"),
            ("processes", "processes", "d"),
            ("batch", "batch", "d"),
            ("iterations", "iterations", "d"),
            ("ms_per_iteration", "ms/iter", ".2f"),
            ("efficiency", "efficiency", ".2f"),
            ("max_hellinger", "max H", ".4f"),
        ],
    )
    cpus = os.cpu_count()
    note = f"{cpus} cores; one thread per process; gloo over localhost"
    path = write_results("parallel", "cpu", {"note": note, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
