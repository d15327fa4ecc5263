"""Adam against natural gradient and TDVP: wall time and accuracy on the toggle switch (against
FSP) and MAPK (against SSA), and per-sample gradients analytic against torch.func.

    python benchmarks/bench_second_order.py                     # both systems, short horizons
    python benchmarks/bench_second_order.py --t-toggle 5 --t-mapk 1   # the issue's horizons

Each case is one `nncme.run` per optimiser with the settings below, and the reference at the
same save times. A run "reaches" the target when the Hellinger distance of every marginal at
every save time is <= 0.02. The wall time covers the whole run (first step included). The
first step is the same exact fit for all three (Adam on the enumerated T p0).

Writes benchmarks/results/second_order_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nncme
from bench_common import median_seconds, print_table, write_results
from nncme import systems
from nncme.config import RunConfig
from nncme.exact import FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.optim import FisherSolver, per_sample_grads
from nncme.optim.updates import EXPLORE_BASELINES
from nncme.sampling import unique_states
from nncme.ssa import SSASettings, solve_ssa

TARGET = 0.02
# optimiser -> settings on top of the common ones (RunConfig defaults otherwise)
OPTIMIZERS = {
    "adam": dict(optimizer="adam"),
    "natgrad": dict(optimizer="natgrad", iterations=10),
    # TDVP moves log q only where states are drawn: from a point mass it needs the wide
    # mixture proposal besides the states one reaction ahead (tests/test_tdvp.py)
    "tdvp": dict(optimizer="tdvp", integrator="heun", proposal="mixture", mixture_eps=0.1),
    # the same with the shift chosen by cross-validation at each evaluation
    "tdvp_cv": dict(
        optimizer="tdvp", integrator="heun", proposal="mixture", mixture_eps=0.1, cv_shift=True
    ),
}


def gradient_timing(name: str, batch: int, hidden: int) -> dict:
    """Per-sample gradients analytic vs torch.func, and one sample-space Fisher solve with the
    gradients formed (`gradients="analytic"`) vs from the NADE Gram matrix (`"gram"`: the
    closed-form O O^T, `fisher_solve.gram` and one backward pass for x = O^T beta), both
    through `FisherSolver.solve_scores`, the path the runs take."""
    net = systems.get(name)
    from nncme.models import build_model

    model = build_model("nade", net, hidden=hidden)
    states, _ = model.sample(batch, torch.Generator().manual_seed(0))
    states, _ = unique_states(states, model.limits)
    a = per_sample_grads(model, states, "analytic")
    f = per_sample_grads(model, states, "func")
    err = float((a - f).abs().max())
    ta, _ = median_seconds(lambda: per_sample_grads(model, states, "analytic"), "cpu", 3)
    tf, _ = median_seconds(lambda: per_sample_grads(model, states, "func"), "cpu", 3)
    N, P = a.shape
    v = torch.randn(N, dtype=a.dtype, generator=torch.Generator().manual_seed(1))
    w = torch.full((N,), 1.0 / N, dtype=a.dtype)
    with_gradients = FisherSolver(1e-3, space="sample", gradients="analytic")
    with_gram = FisherSolver(1e-3, space="sample", gradients="gram")

    def explicit() -> torch.Tensor:
        return with_gradients.solve_scores(model, states, v, w).x

    def gram() -> torch.Tensor:
        return with_gram.solve_scores(model, states, v, w).x

    solve_err = float((explicit() - gram()).abs().max() / explicit().abs().max())
    te, _ = median_seconds(explicit, "cpu", 3)
    tg, _ = median_seconds(gram, "cpu", 3)
    return dict(system=name, batch=batch, states=N, parameters=P, analytic_s=ta, func_s=tf,
                speedup=tf / ta, max_abs_diff=err, solve_gradients_s=te, solve_gram_s=tg,
                gram_speedup=te / tg, solve_rel_diff=solve_err)  # fmt: skip


def run_case(
    system: str,
    t_end: float,
    dt: float,
    reference,
    common: dict,
    optimizers: list[str],
    saves: int = 5,
) -> list[dict]:
    net = systems.get(system)
    rows = []
    for opt in optimizers:
        extra = OPTIMIZERS[opt]
        settings = {**common, **extra}  # an optimiser's own proposal (TDVP's) wins
        cfg = RunConfig(t_end=t_end, dt=dt, save_every=t_end / saves, quiet=True, **settings)
        began = time.perf_counter()
        out = nncme.run(net, cfg)
        seconds = time.perf_counter() - began
        ref = reference(out.result.times)
        h = hellinger(ref.marginals, out.result.marginals)  # (T, L)
        hist = out.history[1:]
        row = dict(system=system, optimizer=opt, t_end=t_end, dt=dt, seconds=seconds,
                   max_hellinger=float(np.nanmax(h)), final_hellinger=float(np.nanmax(h[-1])),
                   reached=bool(np.nanmax(h) <= TARGET),
                   iterations_per_step=float(np.mean([x["iterations"] for x in hist])),
                   seconds_per_step=float(np.mean([x["seconds"] for x in hist])),
                   max_hellinger_per_time=np.nanmax(h, axis=1).tolist(),
                   settings=settings)  # fmt: skip
        rows.append(row)
        print(f"  {system} {opt}: {seconds:.1f} s, max H {np.nanmax(h):.4f}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--t-toggle", type=float, default=0.5)
    p.add_argument("--t-mapk", type=float, default=1.0)
    p.add_argument("--dt-toggle", type=float, default=0.003)
    # MAPK: dt * a_0 < 1 over the states TDVP's mixture proposal draws needs dt <= 0.0029
    p.add_argument("--dt-mapk", type=float, default=0.0025)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--ssa", type=int, default=100_000)
    p.add_argument(
        "--saves", type=int, default=5, help="save times after t = 0 (where H is checked)"
    )
    p.add_argument("--explore-baseline", default="samples", choices=EXPLORE_BASELINES)
    p.add_argument(
        "--proposal",
        default=RunConfig().proposal,
        help="training proposal of adam/natgrad (TDVP: mixture)",
    )
    p.add_argument(
        "--alpha", type=float, default=RunConfig().alpha, help="the alpha proposal's exponent"
    )
    p.add_argument("--skip", nargs="*", default=[])
    p.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    p.add_argument("--tag", default="", help="suffix of the JSON file (partial runs)")
    p.add_argument("--no-timing", action="store_true", help="skip the gradient/solve timings")
    args = p.parse_args()
    common = dict(
        batch=args.batch,
        hidden=16,
        eval_samples=20000,
        explore_baseline=args.explore_baseline,
        proposal=args.proposal,
        alpha=args.alpha,
    )
    payload: dict = {"target_hellinger": TARGET, "gradients": [], "runs": []}
    print("per-sample gradients (analytic NADE vs torch.func) and one sample-space solve")
    for name in () if args.no_timing else ("toggle_switch", "mapk"):
        payload["gradients"].append(gradient_timing(name, args.batch, 16))
    if payload["gradients"]:
        print_table(payload["gradients"], [("system", "system", "s"), ("parameters", "P", "d"),
                ("analytic_s", "analytic s", ".3f"), ("func_s", "func s", ".3f"),
                ("speedup", "speedup", ".1f"), ("states", "N", "d"),
                ("solve_gradients_s", "solve O s", ".3f"), ("solve_gram_s", "solve K s", ".3f"),
                ("gram_speedup", "K speedup", ".1f")])  # fmt: skip
    if "toggle" not in args.skip:
        net = systems.get("toggle_switch")

        def fsp(times):
            return solve_fsp(net, times, FSPSettings(quiet=True))

        payload["runs"] += run_case(
            "toggle_switch", args.t_toggle, args.dt_toggle, fsp, common, args.optimizers, args.saves
        )
    if "mapk" not in args.skip:
        net = systems.get("mapk")
        cache: dict = {}

        def ssa(times):
            if "r" not in cache:
                cache["r"] = solve_ssa(
                    net, times, SSASettings(trajectories=args.ssa, seed=0, quiet=True)
                )
            return cache["r"]

        payload["runs"] += run_case(
            "mapk", args.t_mapk, args.dt_mapk, ssa, common, args.optimizers, args.saves
        )
    print_table(payload["runs"], [("system", "system", "s"), ("optimizer", "optimizer", "s"),
                ("t_end", "t_end", "g"), ("seconds", "wall s", ".1f"),
                ("seconds_per_step", "s/step", ".3f"), ("iterations_per_step", "iters", ".1f"),
                ("max_hellinger", "max H", ".4f"), ("reached", "<= 0.02", "")])  # fmt: skip
    print("wrote", write_results("second_order", "cpu", payload, tag=args.tag))


if __name__ == "__main__":
    main()
