"""Check the benchmark network files against their exact (FSP) solution.

For each file in benchmarks/networks/ (or those named): the state count, the FSP time, the
largest probability on the box boundary over `--num-times` times spanning [0, t_end] (it must
stay below 1e-6 for the count limits to be enough), the largest dt * a_0(n) over the states that
carry probability above 1e-6 at some of those times (how far the file's dt is from the explicit
step's limit dt * a_0 < 1) and the largest mean of dt * a_0 under P(t), and the final means.

    python benchmarks/check_networks.py                      # every file
    python benchmarks/check_networks.py schlogl_box1000.toml # some of them
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from nncme.exact import FSP, FSPSettings
from nncme.io import load_network
from nncme.results import boundary_mask

NETWORKS = Path(__file__).resolve().parent / "networks"


def network_files(names: list[str] | None = None) -> list[Path]:
    """The network files of the benchmark, sorted, or those named (file names or stems)."""
    files = sorted(p for p in NETWORKS.iterdir() if p.suffix in (".toml", ".json"))
    if not names:
        return files
    chosen = []
    for name in names:
        path = Path(name)
        if path.exists():
            chosen.append(path)
            continue
        hits = [p for p in files if name in (p.name, p.stem)]
        if not hits:
            known = ", ".join(p.stem for p in files)
            raise SystemExit(f"no network file {name!r} in {NETWORKS}; known: {known}")
        chosen.extend(hits)
    return chosen


def check(path: Path, num_times: int) -> dict:
    network = load_network(path)
    t0 = time.perf_counter()
    fsp = FSP(network, FSPSettings(quiet=True))
    times = np.linspace(0.0, network.t_end, num_times)
    mask = boundary_mask(fsp.states, network.reactant_matrix, network.change_matrix, network.limits)
    boundary, means, occupied = [], None, np.zeros(fsp.num_states, dtype=bool)
    exit_rate = np.zeros(fsp.num_states)
    mean_exit = 0.0  # the largest mean of a_0 under P(t) over the times
    for j, p in fsp.iter_solve(times):
        boundary.append(float(p[mask].sum()))
        occupied |= p > 1e-6
        a0 = -fsp.generator(float(times[j])).diagonal()
        exit_rate = np.maximum(exit_rate, a0)
        mean_exit = max(mean_exit, float(a0 @ p))
        means = (fsp.states * p[:, None]).sum(axis=0)
    seconds = time.perf_counter() - t0
    worst = int(np.argmax(boundary))
    return {
        "file": path.name,
        "L": network.L,
        "K": network.K,
        "states": fsp.num_states,
        "laws": len(network.conservation_laws),
        "t_end": network.t_end,
        "dt": network.dt,
        "fsp_s": seconds,
        "boundary": boundary[worst],
        "boundary_t": float(times[worst]),
        "dt_a0": network.dt * float(exit_rate[occupied].max()),
        "dt_a0_mean": network.dt * mean_exit,
        "means": dict(zip(network.species_names, np.round(means, 3).tolist())),
        "method": fsp.method_used,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="*", help="files or stems (default: all)")
    parser.add_argument("--num-times", type=int, default=201, help="times on [0, t_end]")
    args = parser.parse_args(argv)
    bad = 0
    for path in network_files(args.networks):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = check(path, args.num_times)
        ok = row["boundary"] < 1e-6
        bad += not ok
        print(
            f"{row['file']:32s} L={row['L']:2d} K={row['K']:2d} states={row['states']:>8,d} "
            f"laws={row['laws']} t_end={row['t_end']:g} dt={row['dt']:g} "
            f"boundary={row['boundary']:.1e}@{row['boundary_t']:.3g} "
            f"dt*a0={row['dt_a0']:.2f} (mean {row['dt_a0_mean']:.2f}) "
            f"fsp={row['fsp_s']:.1f}s [{row['method']}] "
            f"{'ok' if ok else 'LIMITS TOO SMALL'}"
        )
        print(f"    final means {row['means']}")
        sys.stdout.flush()
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
