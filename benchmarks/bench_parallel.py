"""Scaling of a run from one process to several (torch.distributed) at a fixed global batch.

    python benchmarks/bench_parallel.py                  # the default cases, 1 and 2 processes
    python benchmarks/bench_parallel.py --processes 1 2 4 --case lattice4x4

Each case is run with `nncme run` (one process) and `torchrun --nproc-per-node N $(which
nncme) run` at the same global batch and the same settings otherwise, each process on one
thread (OMP_NUM_THREADS=1). Per run: the wall time of the steps (log.jsonl's seconds, rank
0's), the optimiser iterations they took (their random streams differ, so the counts do), the
time per iteration, and the efficiency T_1 / (N T_N) per iteration; rank 0's peak memory;
and the largest Hellinger distance of the run's marginals from the exact ones (every case is
monomolecular), so a faster run that answers worse shows. Cases named `..._natgrad` and
`..._tdvp` take that optimiser: over ranks each either gathers the batch's distinct states and
solves the one system (sample space, where it is the smaller one: the solve is not split), or
sums the parameter-space system of its own states with the others' (`..._summed`: the scores
and the P^2 N products are split, the P x P solve is not).
`amortise_birth_death` is `nncme amortise` over a box of birth rates (the contexts of every fit
split over the processes), scored at three contexts of the box.
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
from bench_common import RESULTS, cpu_name, git_commit, print_table, write_results
from nncme.amortise import AmortisedSolution
from nncme.exact import monomolecular_marginals
from nncme.io import resolve_network
from nncme.metrics import hellinger
from nncme.results import Result

# name -> (network spec, global batch, t_end, dt[, more `nncme run` options])
BIRTH_DEATH_2X2 = "reaction_diffusion:shape=2x2,kinetics=birth_death,x0=2,k=4,gamma=1,hopping=1"
LATTICE_3X3 = "reaction_diffusion:shape=3x3,kinetics=birth_death,x0=2,k=4,gamma=1,hopping=1"
NATGRAD_H2 = ["--optimizer", "natgrad", "--hidden", "2", "--solve-space"]
CASES = {
    "birth_death": ("birth_death", 1000, 0.5, 0.05),
    "lattice2x2": (BIRTH_DEATH_2X2, 2000, 0.05, 0.01),
    "birth_death_natgrad": ("birth_death", 1000, 0.5, 0.05, ["--optimizer", "natgrad"]),
    # TDVP's explicit steps need dt a_0 < 1 where its draws go (0.05 and, on the 2x2
    # lattice, 0.01 stopped runs; a failed run is recorded as such)
    "birth_death_tdvp": ("birth_death", 1000, 0.5, 0.01, ["--optimizer", "tdvp"]),
    "lattice2x2_natgrad": (BIRTH_DEATH_2X2, 2000, 0.05, 0.01, ["--optimizer", "natgrad"]),
    "lattice2x2_tdvp": (BIRTH_DEATH_2X2, 2000, 0.05, 0.002, ["--optimizer", "tdvp"]),
    "lattice3x3": (LATTICE_3X3, 4000, 0.004, 0.002),
    # natural gradient with a model small enough (hidden 2) for its parameter-space system
    # to be about as large as the sample-space one at 4,000 draws: over ranks the first is
    # summed (P^2 numbers travel), the second gathers the distinct states
    "lattice2x2_natgrad_summed": (BIRTH_DEATH_2X2, 4000, 0.03, 0.01, [*NATGRAD_H2, "parameter"]),
    "lattice2x2_natgrad_gathered": (BIRTH_DEATH_2X2, 4000, 0.03, 0.01, [*NATGRAD_H2, "sample"]),
}


# name -> (network spec, --vary, contexts x states per context, t_end, dt)
AMORTISED = {"amortise_birth_death": ("birth_death", "birth=2:10", (64, 32), 0.5, 0.05)}
SCORED_AT = (3.0, 6.0, 9.0)  # contexts of the amortised case's box, scored against exact laws


def run_case(name: str, processes: int, work: Path, extra: list[str]) -> dict:
    out = work / f"{name}_{processes}"
    shutil.rmtree(out, ignore_errors=True)
    nncme = shutil.which("nncme")
    if name in AMORTISED:
        spec, vary, (contexts, per), t_end, dt = AMORTISED[name]
        batch = contexts * per
        command = [nncme, "amortise", spec, "--vary", vary, "--contexts", str(contexts)]
        command += ["--per-context", str(per), "--t-end", str(t_end), "--dt", str(dt)]
        command += ["--saves", "5", "--quiet", "--out", str(out)]
    else:
        spec, batch, t_end, dt, *more = CASES[name]
        command = [nncme, "run", spec, "--batch", str(batch), "--t-end", str(t_end)]
        command += ["--dt", str(dt), "--quiet", "--out", str(out), *(more[0] if more else [])]
        command += extra
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                   str(processes), *command]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{name} over {processes}: {done.stderr[-2000:]}")
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    if name in AMORTISED:
        return amortised_row(name, processes, batch, out, log)
    later = log[1:]  # the first step is the start's own fit
    seconds = sum(x["seconds"] for x in later)
    iterations = sum(x["iterations"] for x in later)
    settings = json.loads((out / "summary.json").read_text())["settings"]
    row = {
        "case": name,
        "network": spec,
        "optimizer": settings["optimizer"],
        "hidden": settings["hidden"],
        "solve_space": settings["solve_space"],
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


def amortised_row(name: str, processes: int, batch: int, out: Path, log: list[dict]) -> dict:
    """An amortised run's stepped fits (after its exact first step), scored at SCORED_AT."""
    later = [x for x in log if "pieces" in x]
    seconds = sum(x["seconds"] for x in later)
    iterations = sum(x["iterations"] for x in later)
    answer = AmortisedSolution(out)
    worst = 0.0
    for value in SCORED_AT:
        exact = monomolecular_marginals(answer.space.network_at([value]), answer.times)
        for k, t in enumerate(answer.times[1:], 1):
            got = answer.marginals(np.array([[value]]), float(t))
            worst = max(worst, float(hellinger(got[0][0], exact[k, 0, : got[0].shape[1]])))
    meta = json.loads((out / "amortise.json").read_text())
    return {
        "case": name,
        "network": AMORTISED[name][0],
        "optimizer": f"amortise ({AMORTISED[name][1]})",
        "processes": meta["processes"],
        "batch": batch,
        "steps": len(later),
        "seconds": seconds,
        "iterations": iterations,
        "ms_per_iteration": 1000 * seconds / max(iterations, 1),
        "max_hellinger": worst,
        "peak_memory_mb": {"host": None, "gpu": None},
    }


def earlier_rows(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """The rows and failures already in the JSON whose (case, processes) this run does not
    measure again."""
    path = RESULTS / "parallel_cpu.json"
    if not path.exists():
        return [], []
    data = json.loads(path.read_text())
    again = {(c, n) for c in args.case for n in args.processes}
    keep = [r for r in data.get("rows", []) if (r["case"], r["processes"]) not in again]
    for r in keep:  # rows of an earlier run keep the machine that measured them
        r.setdefault("machine", data.get("cpu", "?"))
    failed = [f for f in data.get("failures", []) if (f["case"], f["processes"]) not in again]
    return keep, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [*CASES, *AMORTISED]
    parser.add_argument("--case", nargs="*", default=names, choices=names)
    parser.add_argument("--processes", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--set", nargs="*", default=[], help="more `nncme run` options")
    parser.add_argument(
        "--merge", action="store_true", help="keep the JSON's rows of other cases and processes"
    )
    args = parser.parse_args()
    rows, failures = [], []
    kept, kept_failures = earlier_rows(args) if args.merge else ([], [])
    cpus = os.cpu_count()
    note = f"{cpus} cores; one thread per process; gloo over localhost"
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.case:
            base = None
            for n in args.processes:
                try:
                    row = run_case(name, n, Path(tmp), args.set)
                except RuntimeError as exc:  # a run that stopped: recorded, not scored
                    failures.append({"case": name, "processes": n, "error": str(exc)[-600:]})
                    print(f"FAILED {name} over {n}: {str(exc)[-300:]}")
                    continue
                if n == 1:
                    base = row["ms_per_iteration"]
                if base is not None:
                    row["efficiency"] = base / (n * row["ms_per_iteration"])
                row["commit"] = git_commit()
                row["machine"] = cpu_name()
                rows.append(row)
                print(json.dumps(row))
                payload = {"note": note, "rows": kept + rows, "failures": kept_failures + failures}
                write_results("parallel", "cpu", payload)  # after every run: kept if stopped
    print_table(
        rows,
        [
            ("case", "case", "s"),
            ("optimizer", "optimizer", "s"),
            ("processes", "processes", "d"),
            ("batch", "batch", "d"),
            ("iterations", "iterations", "d"),
            ("ms_per_iteration", "ms/iter", ".2f"),
            ("efficiency", "efficiency", ".2f"),
            ("max_hellinger", "max H", ".4f"),
        ],
    )
    payload = {"note": note, "rows": kept + rows, "failures": kept_failures + failures}
    path = write_results("parallel", "cpu", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
