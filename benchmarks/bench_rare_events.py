"""Rare events: the tails of Schlögl marginals down to 1e-8, VAN against FSP, with vanilla
sampling and each enhanced proposal.

    python benchmarks/bench_rare_events.py                    # both cases, short horizons
    python benchmarks/bench_rare_events.py --optimizer adam --cases schlogl_1

Cases: one Schlögl site from x0 = 250 (the catalogue's `schlogl`, the unstable point, where the
law splits towards both modes; limit 400), and two coupled sites (the catalogue's
reaction-diffusion Schlögl system on a 2-site chain, x0 = 50 per site; limit 80). NADE width 16,
batch 1000, Adam with Heun steps unless told otherwise. The VAN's marginals come from its exact
joint over the box (small here), so they carry no sampling noise of their own: what differs
between proposals is how well training saw the tails. For each marginal at t_end, both tails
(P(X >= c) above the mode, P(X <= c) below it) at the counts c where FSP's tail crosses 1e-4,
1e-6 and 1e-8, and the relative error |P_van / P_fsp - 1| there.

Writes benchmarks/results/rare_events_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import print_table, write_results
from nncme import systems
from nncme.config import RunConfig
from nncme.evolve import Evolution
from nncme.exact import FSPSettings, solve_fsp
from nncme.metrics import hellinger

LEVELS = (1e-4, 1e-6, 1e-8)
PROPOSALS = {
    "vanilla": dict(proposal="vanilla"),
    "mixture": dict(proposal="mixture", mixture_eps=0.1),
    "diffusive": dict(proposal="diffusive", diffusive_width=4),
    "alpha": dict(proposal="alpha", alpha=0.5),
}
# case -> (system, parameters, run settings)
# The limits are cut to where the exact 1e-8 tails end over these horizons (FSP uses the same
# box), so that dt * a_0 < 1 holds on the whole box, which the mixture proposal samples (the
# catalogue's 793 for one site would need dt <= 4.8e-5 for the same horizon); dt so that a step
# moves the law little (dt * a_0 = 0.1 at one site's start, 0.14 at the two sites'): the
# networks are stiff (a_0 = 2,300 at x0 = 250, 28,000 at two sites of 50), so 500 and 400
# explicit steps reach only these horizons.
CASES = {
    "schlogl_1": ("schlogl", {"limit": 400}, dict(t_end=0.02, dt=4e-5)),
    "schlogl_2": (
        "reaction_diffusion",
        {"shape": 2, "limit": 80},
        dict(t_end=0.002, dt=5e-6),
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--proposals", nargs="*", default=list(PROPOSALS))
    args = p.parse_args()
    payload: dict = {"optimizer": args.optimizer, "levels": LEVELS, "runs": []}
    rows = []
    for case in args.cases:
        system, params, settings = CASES[case]
        net = systems.get(system, **params)
        for name in args.proposals:
            cfg = RunConfig(optimizer=args.optimizer, batch=args.batch, quiet=True, threads=1,
                            save_every=settings["t_end"], **settings,
                            **PROPOSALS[name])  # fmt: skip
            began = time.perf_counter()
            out = Evolution(net, cfg).run()
            seconds = time.perf_counter() - began
            fsp = solve_fsp(net, out.result.times, FSPSettings(progress=False))
            h = hellinger(fsp.marginals[-1], out.result.marginals[-1])
            hist = out.history[1:]
            run = dict(case=case, proposal=name, seconds=seconds, hellinger=h.tolist(),
                       ess=float(np.mean([x["ess"] for x in hist])),
                       residual=float(np.mean([x["residual"] for x in hist])),
                       settings={**settings, **PROPOSALS[name]}, species=[])  # fmt: skip
            for i, sp in enumerate(out.result.species):
                table = tail_table(fsp.marginals[-1, i], out.result.marginals[-1, i])
                run["species"].append(dict(name=sp, tails=table))
                for r in table:
                    rows.append(dict(case=case, proposal=name, species=sp, **r))
            payload["runs"].append(run)
            print(f"{case} {name}: {seconds:.1f} s, H {np.max(h):.4f}, ESS {run['ess']:.0f}",
                  flush=True)  # fmt: skip
    print_table(rows, [("case", "case", "s"), ("proposal", "proposal", "s"),
                       ("species", "species", "s"), ("side", "side", "s"),
                       ("level", "level", ".0e"), ("count", "count", "d"), ("fsp", "fsp", ".2e"),
                       ("van", "van", ".2e"), ("rel_error", "rel err", ".3f")])  # fmt: skip
    print("wrote", write_results("rare_events", "cpu", payload, tag=args.optimizer))


if __name__ == "__main__":
    main()
