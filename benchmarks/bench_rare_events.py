"""Rare events: the tails of Schlögl marginals down to 1e-8, VAN against FSP, with vanilla
sampling and each enhanced proposal.

    python benchmarks/bench_rare_events.py                    # both cases, short horizons
    python benchmarks/bench_rare_events.py --optimizer adam --cases schlogl_1

Cases: one Schlögl site from x0 = 250 (the catalogue's `schlogl`, the unstable point, where the
law splits towards both modes; limit 400), and two coupled sites (the catalogue's
reaction-diffusion Schlögl system on a 2-site chain, x0 = 50 per site; limit 80). NADE width 16,
batch 1000, Adam with Euler steps unless told otherwise. The VAN's marginals come from its
exact joint over the box (small here), so they carry no sampling noise of their own: what
differs between proposals is how well training saw the tails. For each marginal at t_end, both
tails (P(X >= c) above the mode, P(X <= c) below it) at the counts c where FSP's tail crosses
1e-4, 1e-6 and 1e-8, and the relative error |P_van / P_fsp - 1| there; and the same against
the exact discrete map, the VAN's time steps applied to the exact P (n steps of I + dt W for
Euler, of I + dt W + dt^2 W^2 / 2 for Heun, on FSP's generator): what a perfect fit of every
step would give, so that the fit's error in the tails is told apart from the time step's.

`--objective log_variance` fits each step by the log-variance divergence under the proposal
instead of the importance-weighted reverse KL (see `nncme.optim.KLUpdate`).

Writes benchmarks/results/rare_events_<device>_<optimizer>[_<objective>].json after every run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nncme
from bench_common import RESULTS, print_table, write_results
from nncme import systems
from nncme.config import RunConfig
from nncme.exact import FSP, FSPSettings, solve_fsp
from nncme.metrics import hellinger

LEVELS = (1e-4, 1e-6, 1e-8)
PROPOSALS = {
    "vanilla": dict(proposal="vanilla"),
    "mixture": dict(proposal="mixture", mixture_eps=0.1),
    "prefix_mixture": dict(proposal="prefix_mixture", mixture_eps=0.1),
    "diffusive": dict(proposal="diffusive", diffusive_width=3),
    "alpha": dict(proposal="alpha", alpha=0.5),
}
# case -> (system, parameters, run settings)
# The limits are cut to where the exact 1e-8 tails end over these horizons (FSP uses the same
# box), so that dt * a_0 < 1 holds on the whole box, which the mixture proposal samples (the
# catalogue's 793 for one site would need dt <= 4.8e-5 for the same horizon); dt so that a step
# moves the law little (dt * a_0 = 0.1 at one site's start, 0.14 at the two sites'): the
# networks are stiff (a_0 = 2,300 at x0 = 250, 28,000 at two sites of 50), so 250 and 200
# explicit steps reach only these horizons.
CASES = {
    "schlogl_1": ("schlogl", {"limit": 400}, dict(t_end=0.01, dt=4e-5)),
    "schlogl_2": (
        "reaction_diffusion",
        {"shape": 2, "limit": 80},
        dict(t_end=0.001, dt=5e-6),
    ),
}


def tails(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper P(X >= c) and lower P(X <= c) tails of a marginal (M,)."""
    return np.cumsum(p[::-1])[::-1], np.cumsum(p)


def tail_table(ref: np.ndarray, van: np.ndarray) -> list[dict]:
    """Relative tail errors of one marginal at FSP's 1e-4, 1e-6, 1e-8 crossing counts."""
    mode = int(np.argmax(ref))
    (ru, rl), (vu, vl) = tails(ref), tails(van)
    out = []
    for side, r, v, counts in (
        ("upper", ru, vu, np.arange(mode, ref.size)),
        ("lower", rl, vl, np.arange(mode, -1, -1)),
    ):
        for level in LEVELS:
            hit = counts[r[counts] <= level]
            if hit.size == 0:
                continue
            c = int(hit[0])
            out.append(dict(side=side, level=level, count=c, fsp=float(r[c]), van=float(v[c]),
                            rel_error=float(abs(v[c] / r[c] - 1))))  # fmt: skip
    return out


def with_earlier(payload: dict, tag: str) -> dict:
    """The payload plus the runs of other (case, proposal) pairs already in the JSON file."""
    path = RESULTS / f"rare_events_cpu_{tag}.json"
    if not path.exists():
        return payload
    done = {(r["case"], r["proposal"]) for r in payload["runs"]}
    old = json.loads(path.read_text()).get("runs", [])
    kept = [r for r in old if (r["case"], r["proposal"]) not in done]
    return {**payload, "runs": kept + payload["runs"]}


def discrete_map(net, settings: dict, integrator: str) -> np.ndarray:
    """Marginals (L, Mmax) at t_end of the exact P stepped by the VAN's own time steps."""
    fsp = FSP(net, FSPSettings(quiet=True))
    W = fsp.generator(0.0)  # the Schlögl networks' rates do not depend on time
    dt, steps = settings["dt"], round(settings["t_end"] / settings["dt"])
    p = fsp.initial_distribution()
    for _ in range(steps):
        wp = W @ p
        p = p + dt * wp + (0.5 * dt * dt * (W @ wp) if integrator == "heun" else 0.0)
    L, M = len(net.limits), max(net.limits)
    out = np.zeros((L, M))
    for i in range(L):
        out[i, : net.limits[i]] = np.bincount(fsp.states[:, i], weights=p, minlength=net.limits[i])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--integrator", default="euler", choices=["euler", "heun"])
    p.add_argument("--objective", default="kl", choices=["kl", "log_variance"])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--proposals", nargs="*", default=list(PROPOSALS))
    args = p.parse_args()
    payload: dict = {"optimizer": args.optimizer, "integrator": args.integrator,
                     "objective": args.objective, "levels": LEVELS, "runs": []}  # fmt: skip
    tag = args.optimizer + ("" if args.objective == "kl" else f"_{args.objective}")
    rows = []
    for case in args.cases:
        system, params, settings = CASES[case]
        net = systems.get(system, **params)
        stepped = discrete_map(net, settings, args.integrator)
        for name in args.proposals:
            cfg = RunConfig(optimizer=args.optimizer, batch=args.batch, quiet=True, threads=1,
                            save_every=settings["t_end"], integrator=args.integrator,
                            objective=args.objective, **settings,
                            **PROPOSALS[name])  # fmt: skip
            began = time.perf_counter()
            out = nncme.run(net, cfg)
            seconds = time.perf_counter() - began
            fsp = solve_fsp(net, out.result.times, FSPSettings(quiet=True))
            van = out.result.marginals[-1]
            h = hellinger(fsp.marginals[-1], van)
            hist = out.history[1:]
            run = dict(case=case, proposal=name, seconds=seconds, hellinger=h.tolist(),
                       hellinger_to_discrete_map=hellinger(stepped, van).tolist(),
                       ess=float(np.mean([x["ess"] for x in hist])),
                       residual=float(np.mean([x["residual"] for x in hist])),
                       settings={**settings, **PROPOSALS[name], "integrator": args.integrator,
                                 "batch": args.batch, "objective": args.objective,
                                 "explore_baseline": cfg.explore_baseline},
                       species=[])  # fmt: skip
            for i, sp in enumerate(out.result.species):
                table = tail_table(fsp.marginals[-1, i], van[i])
                for r, d in zip(table, tail_table(fsp.marginals[-1, i], stepped[i])):
                    # the discrete map's tail at the same count, and the VAN's error against it
                    r["discrete_map"] = d["van"]
                    r["rel_error_to_map"] = float(abs(r["van"] / d["van"] - 1))
                run["species"].append(dict(name=sp, tails=table))
                for r in table:
                    rows.append(dict(case=case, proposal=name, species=sp, **r))
            payload["runs"].append(run)
            path = write_results("rare_events", "cpu", with_earlier(payload, tag), tag=tag)
            print(f"{case} {name}: {seconds:.1f} s, H {np.max(h):.4f}, ESS {run['ess']:.0f}",
                  flush=True)  # fmt: skip
    print_table(rows, [("case", "case", "s"), ("proposal", "proposal", "s"),
                       ("species", "species", "s"), ("side", "side", "s"),
                       ("level", "level", ".0e"), ("count", "count", "d"), ("fsp", "fsp", ".2e"),
                       ("discrete_map", "map", ".2e"), ("van", "van", ".2e"),
                       ("rel_error", "rel err", ".3f"),
                       ("rel_error_to_map", "vs map", ".3f")])  # fmt: skip
    print("wrote", path)


if __name__ == "__main__":
    main()
