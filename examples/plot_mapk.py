"""MAPK: a VAN's means and standard deviations of 16 species over time, against SSA.

ERK's dual phosphorylation by MEK and dephosphorylation by MKP3 (`nncme systems mapk`: 16
species, 35 reactions) has too many states for FSP, so 10^5 Gillespie trajectories are the
reference. Its start state is left slowly (a_0 = 0.01), which is what a VAN's fit must see
(README, "Leaving a point mass"). A NADE with Heun steps (batch 500) tracks it to t = 1.
Written under --out:

    mapk_means.png      mean ± std of every species over time: the VAN over SSA
    mapk_marginals.png  the six species farthest from SSA, at the worst and the final time,
                        linear and log
    van/, ssa/          both results (`nncme compare OUT/ssa OUT/van`)

The check line: the largest Hellinger distance against SSA over every species and save time,
with what SSA's own sampling noise alone gives, and the largest error of the means.

    python examples/plot_mapk.py           # to t = 1 (examples/README.md: cost)
    python examples/plot_mapk.py --quick   # seconds: a coarse run, for the tests
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import nncme
from nncme import metrics, plot, systems
from nncme.ssa import SSASettings, solve_ssa

# dt: the VAN's samples reach states with a_0 up to about 300 by t = 2 (dt = 0.01 stops
# there), so dt * a_0 < 1 needs dt <= 0.003.
FULL = dict(t_end=1.0, dt=0.0018, save_every=0.1, batch=500)
QUICK = dict(
    t_end=0.01,
    dt=0.0025,
    save_every=0.005,
    batch=200,
    iterations=5,
    first_iterations=300,
    eval_samples=2000,
)
TRAJECTORIES = {False: 100_000, True: 2000}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a coarse run of seconds")
    parser.add_argument("--t-end", type=float, help=f"end time (default {FULL['t_end']})")
    parser.add_argument("--out", default="gallery/mapk", help="output directory")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.t_end is not None:
        settings["t_end"] = args.t_end
    out = Path(args.out)

    network = systems.mapk()
    began = time.perf_counter()
    van = nncme.run(network, quiet=True, out=str(out / "van"), **settings).result
    van_s = time.perf_counter() - began
    began = time.perf_counter()
    ssa_settings = SSASettings(
        trajectories=TRAJECTORIES[args.quick], quiet=True, out=str(out / "ssa")
    )
    ssa = solve_ssa(network, van.times, ssa_settings)
    ssa_s = time.perf_counter() - began
    d = metrics.compare(ssa, van)

    plot.plot_moments(van, out / "mapk_means.png", reference=ssa, distances=d)
    plot.plot_comparison(ssa, van, d, out / "mapk_marginals.png")
    worst = d["worst"]
    noise = float(np.max(d["noise_hellinger"]))
    mean_error = float(np.max(np.abs(d["mean_b"] - d["mean_a"])))
    print(f"VAN {van_s:.0f} s to t = {van.times[-1]:g}, SSA {ssa_s:.0f} s; wrote {out}/")
    print(
        f"max Hellinger of VAN (van/) against SSA (ssa/) {d['max_hellinger']:.4f} "
        f"({worst['species']} at t = {worst['time']:g}), SSA's sampling noise alone {noise:.3f}; "
        f"largest error of the means {mean_error:.3g} molecules"
    )
    return d


if __name__ == "__main__":
    main()
