"""Toggle switch: a VAN's marginals and joint distribution over time, against the exact FSP.

Two genes repress each other through their proteins (`nncme systems toggle_switch`). From both
genes free and no protein, a NADE tracks P(n, t) with Heun steps; FSP solves the same network
exactly at the save times. Written under --out:

    toggle_switch_marginals.png  every species at the worst and the final time, linear and log
    toggle_switch_joint.png      the joint of P_A and P_B over time: FSP above, the VAN below
    van/, fsp/                   both results (`nncme compare OUT/fsp OUT/van`)

The last line printed is the check: the largest Hellinger distance against FSP over every
species and save time.

    python examples/plot_toggle_switch.py           # to t = 0.5 (examples/README.md: cost)
    python examples/plot_toggle_switch.py --quick   # seconds: a coarse run, for the tests
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nncme
from nncme import metrics, plot, systems
from nncme.exact import FSPSettings, solve_fsp

# dt = 0.0025 keeps dt * a_0 < 1 at every state the samples visit (a_0 reaches 250 at the
# box's far corner; 0.004 stops the run there at t = 0.65).
FULL = dict(t_end=0.5, dt=0.0025, save_every=0.125, batch=1000)
QUICK = dict(
    t_end=0.02,
    dt=0.0025,
    save_every=0.01,
    batch=200,
    iterations=5,
    first_iterations=300,
    eval_samples=2000,
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a coarse run of seconds")
    parser.add_argument("--t-end", type=float, help=f"end time (default {FULL['t_end']})")
    parser.add_argument("--out", default="gallery/toggle_switch", help="output directory")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.t_end is not None:
        settings["t_end"] = args.t_end
    out = Path(args.out)

    network = systems.toggle_switch()
    began = time.perf_counter()
    van = nncme.run(network, quiet=True, out=str(out / "van"), **settings).result
    van_s = time.perf_counter() - began
    exact = solve_fsp(network, van.times, FSPSettings(quiet=True, out=str(out / "fsp")))
    d = metrics.compare(exact, van)

    plot.plot_comparison(exact, van, d, out / "toggle_switch_marginals.png")
    plot.plot_joint(van, out / "toggle_switch_joint.png", reference=exact, distances=d)
    worst = d["worst"]
    print(f"VAN {van_s:.0f} s to t = {van.times[-1]:g}; wrote {out}/")
    print(
        f"max Hellinger of VAN (van/) against FSP (fsp/) {d['max_hellinger']:.4f} "
        f"({worst['species']} at t = {worst['time']:g})"
    )
    return d


if __name__ == "__main__":
    main()
