"""Batched SSA throughput against a plain per-trajectory Python loop.

Throughput is trajectories x reactions per second: reaction events fired, summed over all
trajectories, per second of wall time. The reference is the textbook direct method, one
trajectory at a time in plain Python (propensities from the same stoichiometry, conventions,
Hill and complement factors and truncation rule). Both are first checked against each other and
against FSP (means at the end time within 5 standard errors), then timed after a warm-up;
medians over repeats.

    python benchmarks/bench_ssa.py                 # CPU, and CUDA if present
    python benchmarks/bench_ssa.py --quick         # smaller batches
    python benchmarks/bench_ssa.py --device cuda --trajectories 1000 100000 1000000

Writes benchmarks/results/bench_ssa_<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time

import numpy as np
import torch

from bench_common import RESULTS, device_info
from nncme import systems
from nncme.exact import FSPSettings, solve_fsp
from nncme.network import ReactionNetwork
from nncme.ssa import SSASettings, simulate

# (system, parameters, time span): short spans keep the reference loop affordable
CASES = [
    ("birth_death", {}, 5.0),
    ("toggle_switch", {}, 2.0),
    ("schlogl", {}, 0.2),
]


def python_loop(network: ReactionNetwork, t_end: float, n: int, seed: int) -> tuple[list, int]:
    """Direct-method SSA, one trajectory at a time in plain Python: final states, events."""
    rng = random.Random(seed)
    rates = network.rates(0.0).tolist()
    limits = network.limits.tolist()
    convs = [network.reaction_convention(k) for k in range(network.K)]
    reactants = [
        [(i, int(r)) for i, r in enumerate(row) if r] for row in network.reactant_matrix.tolist()
    ]
    changes = [[(i, c) for i, c in enumerate(row) if c] for row in network.change_matrix.tolist()]
    hills = [
        [(network.index(h.regulator), h.K, h.n, h.kind == "repression") for h in r.hills]
        for r in network.reactions
    ]
    complements = [
        [(network.index(c.species), c.total, c.order) for c in r.complements]
        for r in network.reactions
    ]
    finals, events = [], 0
    for _ in range(n):
        x = network.initial_state.tolist()
        t = 0.0
        while True:
            a = []
            for k in range(len(rates)):
                if any(not 0 <= x[i] + c < limits[i] for i, c in changes[k]):
                    a.append(0.0)  # the truncation rule
                    continue
                f = rates[k]
                for i, r in reactants[k]:
                    f *= _mass_action(x[i], r, convs[k])
                for j, K, h, repress in hills[k]:
                    act = x[j] ** h / (K**h + x[j] ** h)
                    f *= 1 - act if repress else act
                for j, total, order in complements[k]:
                    f *= _mass_action(total - x[j], order, convs[k])
                a.append(f)
            a0 = sum(a)
            if a0 <= 0:
                break
            t += rng.expovariate(a0)
            if t > t_end:
                break
            target, k, acc = rng.random() * a0, 0, a[0]
            while target >= acc and k < len(a) - 1:
                k += 1
                acc += a[k]
            for i, c in changes[k]:
                x[i] += c
            events += 1
        finals.append(x)
    return finals, events


def _mass_action(n: int, r: int, conv: int) -> float:
    if conv == 2:
        return float(n) ** r
    f = 1.0
    for j in range(r):
        f *= n - j
    return f / math.factorial(r) if conv == 1 else f


def _check(net: ReactionNetwork, t_end: float, device: str) -> None:
    """Batched SSA, the reference loop and FSP agree on the means at t_end."""
    exact = solve_fsp(net, [0.0, t_end], FSPSettings(quiet=True))
    n = 2000
    states, _ = simulate(net, [t_end], SSASettings(n, device=device, seed=1, quiet=True))
    loop, _ = python_loop(net, t_end, 300, seed=2)
    se = np.maximum(exact.stds[-1], 1e-9)
    for name, x, m in (("batched", states[:, 0].cpu().numpy(), n), ("loop", np.array(loop), 300)):
        err = np.abs(x.mean(axis=0) - exact.means[-1]) / (se / math.sqrt(m))
        if np.any(err > 5):
            raise AssertionError(f"{net.name}: {name} SSA means off by {err.max():.1f} SE")


def _time(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, events = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        events = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), events


def bench(device: str, trajectories: list[int], ref_trajectories: int, repeats: int) -> list:
    rows = []
    dev = torch.device(device)
    for name, params, t_end in CASES:
        net = systems.get(name, **params)
        _check(net, t_end, device)

        def ref(net=net, t_end=t_end):
            return python_loop(net, t_end, ref_trajectories, seed=3)[1]

        ref_s, ref_events = _time(ref, max(1, repeats // 2))
        ref_rate = ref_events / ref_s
        for n in trajectories:

            def run(net=net, t_end=t_end, n=n):
                settings = SSASettings(n, device=device, seed=4, quiet=True)
                _, info = simulate(net, [t_end], settings)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                return info["events"], info["steps"]

            med, (events, steps) = _time(run, repeats)
            rate = events / med
            rows.append(
                {
                    "system": name,
                    "species": net.L,
                    "reactions": net.K,
                    "t_end": t_end,
                    "trajectories": n,
                    "events": events,
                    # one step advances every running trajectory by one event; finished ones
                    # leave the batch, so work follows events, not steps x trajectories
                    "steps": steps,
                    "busy_fraction": events / (steps * n),
                    "median_s": med,
                    "events_per_s": rate,
                    "reference_trajectories": ref_trajectories,
                    "reference_events": ref_events,
                    "reference_median_s": ref_s,
                    "reference_events_per_s": ref_rate,
                    "speedup": rate / ref_rate,
                }
            )
            print(
                f"{name:<14}{n:>9}{events:>13,}{med:>10.3f}{rate:>13.3g}"
                f"{ref_rate:>13.3g}{rate / ref_rate:>9.1f}x",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", action="append", help="cpu, cuda (default: cpu and cuda if any)")
    p.add_argument("--trajectories", type=int, nargs="+", default=None)
    p.add_argument("--reference-trajectories", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for device in devices:
        default = [1_000, 10_000] if device == "cpu" else [10_000, 100_000, 1_000_000]
        if args.quick:
            default = default[:1]
        trajectories = args.trajectories or default
        name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
        print(
            f"\nSSA throughput on {device} ({name or platform.machine()}), "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        print(
            f"{'system':<14}{'traj':>9}{'events':>13}{'median s':>10}{'events/s':>13}"
            f"{'loop ev/s':>13}{'ratio':>10}"
        )
        rows = bench(
            device, trajectories, args.reference_trajectories, 1 if args.quick else args.repeats
        )
        out = {
            "benchmark": "ssa",
            # the machine as the other benchmarks record it (CPU, threads, load, GPU name)
            **device_info(device),
            "device": device,
            "device_name": name or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "rows": rows,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"bench_ssa_{device.replace(':', '')}.json"
        path.write_text(json.dumps(out, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
