"""Schlögl: bimodality (FSP against SSA) and the tails on a log scale (a VAN against FSP).

Schlögl's bistable network (`nncme systems schlogl`) starts at its unstable point, X = 250,
and splits into two modes (near 82 and 563) within a few time units. Two figures, under --out:

    schlogl_bimodality.png  the exact law (FSP) and SSA trajectories up to t = 5, at the time
                            they differ most and at the end, linear and log: the trajectories
                            resolve nothing below about 1/N (triangles: counts with none)
    schlogl_tails.png       a VAN against FSP over the first 0.01 time units, on a box of 400
                            counts, down to 1e-12

and the results: fsp/ and ssa/ (bimodality), van/ and fsp_tails/ (tails). The explicit VAN
step needs dt * a_0 < 1 on the whole box (dt = 4e-5 here), so reaching the modes would take
about 10^5 steps; it draws from the mixture proposal and fits the log-variance objective, the
settings that keep its tails from a floor of leaked mass (README, "Measured").

Two check lines: the largest Hellinger distance of SSA against FSP (with what sampling noise
alone gives) and of the VAN against FSP, and the VAN's tail probabilities where FSP's tail
falls to 1e-4, 1e-6 and 1e-8.

    python examples/plot_schlogl.py           # examples/README.md: cost and accuracy
    python examples/plot_schlogl.py --quick   # seconds: a coarse run, for the tests
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import nncme
from nncme import metrics, plot, systems
from nncme.exact import FSPSettings, solve_fsp
from nncme.ssa import SSASettings, solve_ssa

FULL = dict(
    bimodal_times=[0.0, 0.5, 1.0, 2.0, 3.0, 5.0],
    trajectories=5000,
    van=dict(t_end=0.01, dt=4e-5, save_every=0.0025, batch=1000),
)
QUICK = dict(
    bimodal_times=[0.0, 0.1, 0.2],
    trajectories=200,
    van=dict(
        t_end=4e-4,
        dt=4e-5,
        save_every=2e-4,
        batch=200,
        iterations=5,
        first_iterations=300,
        eval_samples=2000,
    ),
)
TAILS = dict(proposal="mixture", mixture_eps=0.1, objective="log_variance")
TAIL_LEVELS = (1e-4, 1e-6, 1e-8)


def check_line(what: str, d: dict) -> str:
    worst = d["worst"]
    return (
        f"max Hellinger of {what} {d['max_hellinger']:.4f} "
        f"({worst['species']} at t = {worst['time']:g})"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a coarse run of seconds")
    parser.add_argument("--out", default="gallery/schlogl", help="output directory")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    out = Path(args.out)

    # 1. bimodality: the exact law against Gillespie trajectories
    network = systems.schlogl()
    times = settings["bimodal_times"]
    exact = solve_fsp(network, times, FSPSettings(quiet=True, out=str(out / "fsp")))
    began = time.perf_counter()
    ssa_settings = SSASettings(
        trajectories=settings["trajectories"], quiet=True, out=str(out / "ssa")
    )
    ssa = solve_ssa(network, times, ssa_settings)
    ssa_s = time.perf_counter() - began
    bimodal = metrics.compare(exact, ssa)
    plot.plot_comparison(exact, ssa, bimodal, out / "schlogl_bimodality.png")

    # 2. tails: a VAN from the point mass, on a box of 400 counts
    small = systems.schlogl(limit=400)
    began = time.perf_counter()
    van = nncme.run(small, quiet=True, out=str(out / "van"), **settings["van"], **TAILS).result
    van_s = time.perf_counter() - began
    exact_tails = solve_fsp(small, van.times, FSPSettings(quiet=True, out=str(out / "fsp_tails")))
    tails = metrics.compare(exact_tails, van, tail_levels=TAIL_LEVELS)
    plot.plot_comparison(exact_tails, van, tails, out / "schlogl_tails.png")

    print(f"SSA {ssa_s:.0f} s, VAN {van_s:.0f} s; wrote {out}/")
    noise = float(np.max(bimodal["noise_hellinger"]))
    print(check_line("SSA (ssa/) against FSP (fsp/)", bimodal), f"(sampling noise {noise:.3f})")
    print(check_line("VAN (van/) against FSP (fsp_tails/)", tails))
    t = tails["tails"]
    ratios = ", ".join(
        f"{level:g}: {'-' if np.isnan(r) else f'{10**r:.2g}'}"
        for level, r in zip(TAIL_LEVELS, t["log10_ratio"][0])
    )
    print(f"VAN / FSP right tail of X at t = {t['time']:g}, where FSP's tail is {ratios}")
    return [bimodal, tails]


if __name__ == "__main__":
    main()
