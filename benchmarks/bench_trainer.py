"""End-to-end time per VAN time step, fused operators against the reference, with a profile.

    python benchmarks/bench_trainer.py                       # toggle switch, the issue's settings
    python benchmarks/bench_trainer.py --optimizer adam --steps 60 --device cuda
    python benchmarks/bench_trainer.py --threads 1 --profile-steps 0

The issue-5 setting: the toggle switch, a NADE of width 16, batch 2000, float64, one update per
time step (`iterations=1`, no exploration states), dt = 0.003 (NNCME-2 uses 0.005, which
breaks dt * a_0 < 1 at the corners of this box: nncme stops on it). Each run
starts from a NADE first trained (fused, `--pretrain-iterations` updates per step) from the
initial counts to `--pretrain-t`, so the timed steps see a distribution spread over many states
as in most of a real run (one update per step from a point mass would leave it on a handful,
and a step would cost less than it does in practice); then `--steps` timed steps follow, after
`--warmup` untimed ones, with the fused operators and again with the reference. A step's time
is the
wall time between the trainer's per-step callbacks, so it holds everything the run loop does
per step: copying the old model, sampling, scoring the old model at the samples and their
neighbours, the transition log-sum, the gradient, the optimiser and the log line.

A profile (torch.profiler, CPU) of some steps with the fused operators says where the time goes;
the floor is the time of the step's unavoidable work measured on its own: one fused sample of B
states, one forward+backward of log q at them, one fused log q_old of the distinct states and
their neighbours, and one fused transition log-sum.

Writes benchmarks/results/trainer_<device>[_<tag>].json.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nncme
from bench_common import median_seconds, print_table, write_results
from nncme import ops, systems
from nncme.api import build_driver
from nncme.config import RunConfig
from nncme.optim.target import TransitionTarget
from nncme.sampling import unique_states

# Targets of issue 5 (seconds per step) and the public NNCME-2 code's times at these settings.
TARGETS = {"cpu": 0.5, "cuda": 3.5e-3}
NNCME2 = {"cpu": 10.9, "cuda": 69e-3}


def settings(args: argparse.Namespace, impl: str, steps: int, iterations: int) -> RunConfig:
    return RunConfig(
        model="nade",
        hidden=args.hidden,
        batch=args.batch,
        dtype=args.dtype,
        optimizer=args.optimizer,
        iterations=iterations,
        integrator=args.integrator,
        min_iterations=1,
        tolerance=0.0,
        relative_tolerance=0.0,
        explore=args.explore,
        first_iterations=200,
        dt=args.dt,
        t_end=args.dt * steps,
        save_every=args.dt * steps,
        eval_samples=1000,
        device=args.device,
        impl=impl,
        seed=args.seed,
        quiet=True,
    )


def pretrained(args: argparse.Namespace):
    """A NADE trained by Adam from the initial counts to --pretrain-t (the timed runs' start)."""
    steps = round(args.pretrain_t / args.dt)
    config = settings(args, "auto", steps, args.pretrain_iterations)
    # Adam with Heun steps: TDVP cannot leave a point mass
    config = config.replace(explore=0.2, optimizer="adam", integrator="heun")
    began = time.perf_counter()
    model = nncme.run(systems.get(args.system), config).model
    print(f"pretrained to t = {args.pretrain_t:g} in {time.perf_counter() - began:.0f} s")
    return model


def step_times(args: argparse.Namespace, impl: str, start, timed: int, profile_steps: int = 0):
    """Wall seconds of `timed` steps after `args.warmup`; optionally a profile before them.

    The driver is stepped one step at a time, so each time holds everything a run does per
    step (the observers included)."""
    driver = build_driver(
        systems.get(args.system),
        settings(args, impl, args.warmup + profile_steps + timed, args.iterations),
        start=start,
    )
    stamps: list[float] = []
    profiler = None
    while not driver.done:
        info = driver.step()
        if info.model.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if profile_steps and info.step == args.warmup:
            profiler = torch.profiler.profile(activities=_activities(args.device))
            profiler.start()
        if profiler is not None and info.step == args.warmup + profile_steps:
            profiler.stop()
    times = [b - a for a, b in itertools.pairwise(stamps)][-timed:]
    return times, profiler, driver.model


def _activities(device: str):
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


def floor_seconds(model, args: argparse.Namespace) -> dict:
    """The unavoidable work of one step, each piece timed alone with the fused operators."""
    device = model.device
    net = systems.get(args.system).compile(device, model.dtype)
    gen = torch.Generator(device=device).manual_seed(1)
    B = args.batch
    with torch.no_grad():
        states, _ = model.sample(B, gen)
    distinct, _ = unique_states(states, net.limits)  # the states the gradient scores
    coef = torch.randn(distinct.shape[0], dtype=model.dtype, device=device)
    nbr, valid = ops.neighbors(states, net, impl="fused")
    unique, _ = unique_states(torch.cat([states, nbr[valid]]), net.limits)
    lq = torch.zeros(B, dtype=model.dtype, device=device)
    lq_nbr = torch.zeros(valid.shape, dtype=model.dtype, device=device)

    def sample():
        with torch.no_grad():
            model.sample(B, gen)

    def score_old():
        with torch.no_grad():
            model.log_prob(unique)

    def transition():
        ops.transition_logsum(states, lq, lq_nbr, net, 0.0, args.dt, impl="fused")

    def grad():
        model.zero_grad(set_to_none=True)
        (coef * model.log_prob(distinct)).sum().backward()

    def target_call():
        TransitionTarget(model, net, 0.0, args.dt, impl="fused")(states)

    parts = {
        "sample": sample,
        "log_q_old_unique": score_old,
        "transition_logsum": transition,
        "log_q_forward_backward_distinct": grad,
    }
    out = {name: median_seconds(fn, device, repeats=20, warmup=2)[0] for name, fn in parts.items()}
    out["floor"] = sum(out.values())
    out["target_with_neighbours_and_unique"] = median_seconds(target_call, device, 20, 2)[0]
    out["distinct_samples"] = int(distinct.shape[0])
    out["distinct_samples_and_neighbours"] = int(unique.shape[0])
    return out


def profile_rows(profiler, device: str, top: int = 15) -> list[dict]:
    events = profiler.key_averages()
    key = "self_cpu_time_total"
    if device.startswith("cuda"):
        # averaged events carry only self_device_time_total in torch >= 2.4 (no CUDA alias)
        first = next(iter(events), None)
        key = "self_device_time_total"
        if first is not None and not hasattr(first, key):
            key = "self_cuda_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [
        {
            "op": e.key[:48],
            "calls": e.count,
            "self_ms": getattr(e, key) / 1e3,
            "share": getattr(e, key) / total,
        }
        for e in rows
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--system", default="toggle_switch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--dt", type=float, default=0.003)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--iterations", type=int, default=1, help="updates per fit")
    p.add_argument(
        "--integrator", default="euler", help="euler: one fit (TDVP: one stage) per time step"
    )
    p.add_argument("--explore", type=float, default=0.0)
    p.add_argument("--pretrain-t", type=float, default=0.5)
    p.add_argument("--pretrain-iterations", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="timed steps")
    p.add_argument("--reference-steps", type=int, default=20)
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    start = pretrained(args)
    fused_times, profiler, model = step_times(args, "auto", start, args.steps, args.profile_steps)
    ref_times, _, _ = step_times(args, "reference", start, args.reference_steps)
    fused, ref = statistics.median(fused_times), statistics.median(ref_times)
    kind = torch.device(args.device).type
    rows.append(
        {
            "system": args.system,
            "optimizer": args.optimizer,
            "B": args.batch,
            "H": args.hidden,
            "fused_ms": fused * 1e3,
            "ref_ms": ref * 1e3,
            "speedup": ref / fused,
            "target_ms": TARGETS.get(kind, float("nan")) * 1e3,
            "nncme2_ms": NNCME2.get(kind, float("nan")) * 1e3,
        }
    )
    print_table(
        rows,
        [
            ("system", "system", "s"),
            ("optimizer", "optimizer", "s"),
            ("B", "B", "d"),
            ("fused_ms", "step ms", ".2f"),
            ("ref_ms", "ref ms", ".2f"),
            ("speedup", "ref/fused", ".2f"),
            ("target_ms", "target ms", ".1f"),
            ("nncme2_ms", "NNCME-2 ms", ".1f"),
        ],
    )
    floor = floor_seconds(model, args)
    print("\nfloor (each piece alone, fused, median ms):")
    for name, value in floor.items():
        print(f"  {name:34s} {value * 1e3 if isinstance(value, float) else value:10.3f}")
    prof = profile_rows(profiler, args.device) if profiler is not None else []
    if prof:
        print(f"\nprofile of {args.profile_steps} steps (fused), top ops by self time:")
        print_table(
            prof,
            [
                ("op", "op", "s"),
                ("calls", "calls", "d"),
                ("self_ms", "self ms", ".2f"),
                ("share", "share", ".1%"),
            ],
        )
    payload = {
        "settings": {k: v for k, v in vars(args).items()},
        "rows": rows,
        "fused_step_seconds": fused_times,
        "reference_step_seconds": ref_times,
        "floor_seconds": floor,
        "profile": prof,
    }
    path = write_results("trainer", args.device, payload, args.tag)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
