"""How much error the time steps themselves add: a VAN started from (almost) the exact answer.

    python benchmarks/bench_step_drift.py                           # the settings below
    python benchmarks/bench_step_drift.py --settings lr_decay_0.1 --steps 100

A whole run mixes two errors: lag behind a fast-moving start and what every step's fit leaves
behind (sampling noise, an unfinished optimisation), which adds up along the slow modes of the
network. This benchmark isolates the second. A NADE is fitted to the exact FSP joint of the
toggle switch at t0 (cross-entropy over every state, cached in runs/step_drift/), then
`--steps` VAN steps run from it with each setting; the reference is FSP started from the fitted
model's own joint, so the start's small fit error does not count. The Hellinger distance of
every marginal after the steps is the error the steps added. Each setting is one RunConfig
(Heun, dt 0.0025, batch 2000, NADE H = 16 unless it says otherwise).

Writes benchmarks/results/step_drift_cpu.json (merged with earlier settings' results).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nncme
from bench_common import RESULTS, print_table, write_results
from nncme import systems
from nncme.config import RunConfig
from nncme.exact import FSP, FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.models import build_model

COMMON = dict(dt=0.0025, batch=2000, hidden=16, integrator="heun")
SETTINGS = {
    "constant_lr": dict(lr_decay=1.0),
    "lr_decay_0.1": dict(lr_decay=0.1),
    "lr_decay_0.1_it30": dict(lr_decay=0.1, iterations=30),
    "constant_lr_it30": dict(lr_decay=1.0, iterations=30),
    "alpha_lr_decay_0.1": dict(lr_decay=0.1, proposal="alpha", alpha=0.5),
}
RUNS = Path(__file__).resolve().parent.parent / "runs" / "step_drift"  # git-ignored


def fitted_start(net, t0: float, iterations: int) -> torch.nn.Module:
    """A NADE fitted to the exact joint at t0 by cross-entropy (Adam, cosine rate), cached."""
    model = build_model("nade", net, hidden=COMMON["hidden"], dtype=torch.float64, seed=0)
    cache = RUNS / f"fit_{net.name}_t{t0:g}_{iterations}.pt"
    if cache.exists():
        model.load_state_dict(torch.load(cache))
        return model
    exact = solve_fsp(net, [0.0, t0], FSPSettings(quiet=True))
    p = torch.as_tensor(exact.joint[1])
    keep = p > 1e-9
    states, p = torch.as_tensor(exact.joint_states)[keep], p[keep] / p[keep].sum()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    for _ in range(iterations):
        opt.zero_grad()
        (-(p * model.log_prob(states)).sum()).backward()
        opt.step()
        schedule.step()
    RUNS.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model


def run_setting(net, start, name: str, steps: int, seed: int) -> dict:
    horizon = steps * COMMON["dt"]
    settings = {**COMMON, **SETTINGS[name]}
    cfg = RunConfig(t_end=horizon, save_every=horizon / 2, quiet=True, seed=seed, threads=1,
                    out=str(RUNS / name), **settings)  # fmt: skip
    with torch.no_grad():
        p0 = torch.exp(start.log_prob(torch.as_tensor(FSP(net).states))).numpy()
    began = time.perf_counter()
    out = nncme.run(net, cfg, start=start)
    seconds = time.perf_counter() - began
    exact = solve_fsp(net, out.result.times, FSPSettings(quiet=True), p0=p0 / p0.sum())
    h = hellinger(exact.marginals[1:], out.result.marginals[1:])  # (T, L), after t0
    hist = out.history[1:]
    return dict(setting=name, settings=settings, steps=steps, seconds=seconds,
                seconds_per_step=seconds / steps,
                iterations_per_step=float(np.mean([x["iterations"] for x in hist])),
                times_after_t0=list(out.result.times[1:]), hellinger=h.tolist(),
                max_hellinger=float(h.max()), final_hellinger=float(h[-1].max()))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--t0", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--fit-iterations", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    args = p.parse_args()
    torch.set_num_threads(1)
    net = systems.get("toggle_switch")
    start = fitted_start(net, args.t0, args.fit_iterations)
    path = RESULTS / "step_drift_cpu.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    for name in args.settings:
        run = run_setting(net, start, name, args.steps, args.seed)
        runs = [r for r in runs if r["setting"] != name or r["steps"] != args.steps] + [run]
        payload = dict(system="toggle_switch", t0=args.t0, fit_iterations=args.fit_iterations,
                       runs=runs)  # fmt: skip
        path = write_results("step_drift", "cpu", payload)
        print(f"{name}: max H {run['max_hellinger']:.4f} after {args.steps} steps, "
              f"{run['seconds']:.0f} s", flush=True)  # fmt: skip
    print_table(runs, [("setting", "setting", "s"), ("steps", "steps", "d"),
                       ("iterations_per_step", "iters", ".0f"),
                       ("seconds_per_step", "s/step", ".2f"),
                       ("max_hellinger", "max H", ".4f")])  # fmt: skip
    print("wrote", path)


if __name__ == "__main__":
    main()
