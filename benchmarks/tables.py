"""Write the measured tables of README.md (and benchmarks/results/README.md) from the JSON in
benchmarks/results/, so that every number in them has one home.

    python benchmarks/tables.py            # rewrite every table between its markers
    python benchmarks/tables.py --check    # exit 1, naming the tables, where a README differs
    python benchmarks/tables.py --print accuracy

A table lives between `<!-- tables:NAME -->` and `<!-- /tables:NAME -->`; everything outside
the markers (the prose that explains a table) is left alone. Each row names the JSON file it
comes from and the machine that file records (CPU, threads, load average). Only the JSON
already in benchmarks/results/ is read; nothing is measured here. The accuracy table lists the
settings of each run that differ from today's `RunConfig` defaults, so it imports nncme.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent
README = ROOT / "README.md"
RESULTS_README = RESULTS / "README.md"

SYSTEMS = {
    "birth_death": "birth–death",
    "autoregulation": "autoregulatory loop",
    "schlogl": "Schlögl",
    "toggle_switch": "toggle switch",
    "mapk": "MAPK",
}
OPTIMIZERS = {
    "adam": "Adam",
    "sgd": "SGD",
    "natgrad": "natural gradient",
    "tdvp": "TDVP",
    "tdvp_cv": "TDVP, `--cv-shift`",
}
OBJECTIVES = {"kl": "reverse KL", "log_variance": "log-variance"}
# bench_defaults.py runs of each optimiser at the defaults: optimiser -> JSON tags (a later
# file's row of a network replaces an earlier one's: a network run again alone)
OPTIMIZER_RUNS = {"adam": ["adam18", "adam18_dimer"], "natgrad": ["natgrad18"], "tdvp": ["tdvp18"]}
PROPOSAL_ORDER = ["vanilla", "auto", "mixture", "prefix_mixture", "diffusive", "alpha"]
# RunConfig fields that are not settings of the computation (or have their own column)
NOT_SETTINGS = {"t_end", "out", "quiet", "resume", "threads", "device", "times"}


# --------------------------------------------------------------------------- reading the JSON


@functools.cache
def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def files(pattern: str) -> list[str]:
    return sorted(p.name for p in RESULTS.glob(pattern))


# --------------------------------------------------------------------------- formatting

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def pow10(e: int) -> str:
    return "10" + str(e).translate(_SUPERSCRIPT)


def sig(x: float, n: int = 2) -> str:
    """x to n significant digits as a plain decimal: 0.0032, 0.088, 6.7, 65, 707."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    r = float(f"{x:.{n - 1}e}")
    decimals = max(0, n - 1 - math.floor(math.log10(abs(r))))
    return f"{r:.{decimals}f}"


def hell(x: float) -> str:
    """A Hellinger distance: four decimals, one significant digit below 0.0001 (0.00003)."""
    return f"{x:.4f}" if x >= 5e-5 else sig(x, 1)


def sci(x: float, n: int = 2) -> str:
    """n significant digits; a·10ᵏ outside 0.001..99 (relative errors from 0.01 to 10⁶)."""
    if x == 0 or not math.isfinite(x):
        return sig(x, n)
    r = float(f"{x:.{n - 1}e}")
    if 1e-3 <= abs(r) < 10**n:
        return sig(x, n)
    e = math.floor(math.log10(abs(r)))
    return f"{r / 10**e:.{n - 1}f}·{pow10(e)}"


def num(x: float) -> str:
    """A setting's value as given on the command line: 0.0025, 4·10⁻⁵, 2000."""
    if isinstance(x, float) and x != 0 and abs(x) < 1e-3:
        e = math.floor(math.log10(abs(x)))
        mantissa = f"{x / 10**e:g}"
        return pow10(e) if mantissa == "1" else f"{mantissa}·{pow10(e)}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def ratio(x: float) -> str:
    return f"{x:.2f}" if x < 2 else f"{x:.1f}" if x < 10 else f"{x:.0f}"


def span(values: Iterable[float], fmt: Callable[[float], str] = ratio) -> str:
    values = list(values)
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def milliseconds(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:,.0f} s"


def mib(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else sig(x, 2)


def count(n: int, thing: str) -> str:
    return f"{'one' if n == 1 else n} {thing}{'' if n == 1 else 's'}"


def threads_of(d: dict) -> int | None:
    if "cpu_threads" in d:
        return d["cpu_threads"]
    if "threads" in d:
        return d["threads"]
    m = re.search(r"(\d+) threads?$", d.get("device_name", ""))
    return int(m.group(1)) if m else None


def machine(d: dict) -> str:
    """What a JSON file says about the machine: CPU (or GPU), threads, cores, load average."""
    if str(d.get("device", "cpu")).startswith("cuda"):
        parts = [d.get("name") or d.get("device_name", "GPU")]
    else:
        cpu = d.get("cpu") or re.sub(r"( CPU)?, \d+ threads?$", "", d.get("device_name", "?"))
        parts = [cpu]
        threads = threads_of(d)
        if threads is not None:
            parts.append(count(threads, "thread"))
        if d.get("cpu_count"):
            parts.append(f"{d['cpu_count']} cores")
    start = d.get("load_average_1min_start", d.get("load_average_1min"))
    end = d.get("load_average_1min_end")
    if start is not None:
        parts.append(f"load {start:.1f}" + (f" → {end:.1f}" if end is not None else ""))
    return ", ".join(parts)


def code(name: str) -> str:
    return f"`{name}`"


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def system_name(name: str) -> str:
    return SYSTEMS.get(name, name.replace("_", " "))


def proposal_label(settings: dict, optimizer: str = "") -> str:
    proposal = settings.get("proposal", "auto")
    if proposal == "auto":  # RunConfig: vanilla, but mixture for tdvp
        proposal = "mixture" if optimizer.startswith("tdvp") else "vanilla"
    eps = settings.get("mixture_eps", 0.1)
    return {
        "mixture": f"mixture ε = {eps:g}",
        "prefix_mixture": f"prefix mixture ε = {eps:g}",
        "diffusive": f"diffusive d = {settings.get('diffusive_width', 2)}",
        "alpha": f"α = {settings.get('alpha', 0.8):g}",
    }.get(proposal, proposal)


def baseline_label(settings: dict) -> str:
    b = settings.get("explore_baseline")
    return code(b) if b else "not recorded"


def notes(names: Iterable[str]) -> list[str]:
    """The `note` each file carries, one line per distinct note."""
    by_note: dict[str, list[str]] = {}
    for name in names:
        if load(name).get("note"):
            by_note.setdefault(load(name)["note"], []).append(code(name))
    return [f"{', '.join(who)}: {note}" for note, who in by_note.items()]


# --------------------------------------------------------------------------- the tables


def table_headline() -> list[str]:
    """One line per hot path: the trainer step, the three operators, the SSA."""
    rows = []
    for name in ("trainer_cpu.json", "trainer_cpu_tdvp.json"):
        d = load(name)
        s, r = d["settings"], d["rows"][0]
        if s["optimizer"] == "tdvp":
            stages = 1 if s["integrator"] == "euler" else 2
            update = f"{count(stages, 'TDVP stage')} per step"
        else:
            update = f"{count(s['iterations'], OPTIMIZERS[s['optimizer']] + ' update')} per step"
        what = (
            f"end-to-end VAN step, {system_name(s['system'])}, NADE H = {s['hidden']}, "
            f"B = {s['batch']}, {s['dtype']}, {update} (`bench_trainer.py`)"
        )
        result = (
            f"{milliseconds(r['fused_ms'])} per step (reference operators "
            f"{milliseconds(r['ref_ms'])}; target {milliseconds(r['target_ms'])}; NNCME-2 "
            f"{milliseconds(r['nncme2_ms'])})"
        )
        rows.append([what, result, machine(d), code(name)])

    name = "nade_cpu_1thread.json"
    d = load(name)
    by_op = {op: [r for r in d["rows"] if r["op"] == op] for op in ("sample", "log_prob")}
    shapes = {(r["L"], r["M"], r["H"]) for r in d["rows"]}
    dtypes = sorted({r["dtype"] for r in d["rows"]})
    rows.append(
        [
            f"NADE sampling and scoring, B = {d['batch']}, {count(threads_of(d), 'thread')} "
            "(`bench_nade.py`)",
            f"sampling {span(r['speedup'] for r in by_op['sample'])}×, log-probability "
            f"{span(r['speedup'] for r in by_op['log_prob'])}× the reference ({len(shapes)} "
            f"shapes, {' and '.join(dtypes)})",
            machine(d),
            code(name),
        ]
    )

    names = files("transition_cpu*.json")
    trows = [r for n in names for r in load(n)["rows"]]
    rows.append(
        [
            f"transition log-sum, B = {span((r['B'] for r in trows), '{:,}'.format)}, "
            f"K = {span((r['K'] for r in trows), '{:,}'.format)} (`bench_transition.py`)",
            f"{span(r['speedup'] for r in trows)}× the reference, "
            f"{span((r['fused_peak_mb'] for r in trows), mib)} MiB beyond the inputs "
            f"(reference: {span((r['reference_peak_mb'] for r in trows), mib)} MiB)",
            "; ".join(machine(load(n)) for n in names),
            ", ".join(code(n) for n in names),
        ]
    )

    name = "fisher_solve_cpu.json"
    d = load(name)
    frows = d["rows"]
    rows.append(
        [
            f"batched Cholesky solve, G = {d['G']}, N = {span((r['N'] for r in frows), str)}, "
            f"P = {span((r['P'] for r in frows), '{:,}'.format)} (`bench_fisher_solve.py`)",
            f"{span(r['speedup'] for r in frows)}× `cholesky_ex` + `cholesky_solve`, peak memory "
            f"{span(r['fused_peak_mb'] / r['reference_peak_mb'] for r in frows)}× the reference's",
            machine(d),
            code(name),
        ]
    )

    name = "fisher_solve_cpu_gram.json"
    d = load(name)
    grows = [r for r in d["rows"] if r.get("op") == "gram"]
    rows.append(
        [
            f"the same from the Gram matrix (`fisher_solve.gram`, the default natural-gradient "
            f"and TDVP path), N = {span((r['N'] for r in grows), str)} (`bench_fisher_solve.py`)",
            f"{span(r['speedup'] for r in grows)}× the reference, peak memory "
            f"{span(r['fused_peak_mb'] / r['reference_peak_mb'] for r in grows)}× the "
            "reference's",
            machine(d),
            code(name),
        ]
    )

    name = "bench_ssa_cpu.json"
    d = load(name)
    srows = d["rows"]
    systems = ", ".join(dict.fromkeys(system_name(r["system"]) for r in srows))
    rows.append(
        [
            f"Gillespie SSA, batched, {count(threads_of(d), 'thread')} (`bench_ssa.py`)",
            f"{span(r['speedup'] for r in srows)}× a per-trajectory Python loop "
            f"({span((r['trajectories'] for r in srows), '{:,}'.format)} trajectories; "
            f"{systems})",
            machine(d),
            code(name),
        ]
    )

    name = "scorer_cpu_1thread.json"
    d = load(name)
    shared = [r for r in d["rows"] if r["speedup"] > 1.5]
    rows.append(
        [
            f"a summed fit's evaluation with its backward pass over a listed support, "
            f"{span((r['states'] for r in d['rows']), '{:,}'.format)} states, one pass per "
            f"prefix (`ListedScorer`, `bench_scorer.py`)",
            f"{span(r['speedup'] for r in shared)}× scoring every state "
            f"({span(r['scorer_ms'] for r in shared)} ms) on {len(shared)} of "
            f"{len(d['rows'])} supports; "
            + ", ".join(
                f"{r['network']} {r['speedup']:.1f}×" for r in d["rows"] if r not in shared
            ),
            machine(d),
            code(name),
        ]
    )
    return markdown(["what", "result", "machine", "JSON"], rows)


@functools.cache
def run_defaults() -> dict:
    """RunConfig's defaults; a field resolved per run (`RunConfig.resolved`) -> the values it
    resolves to, as a tuple."""
    try:
        from nncme.config import DRAWN_DT_TOLERANCE, SUMMED_DT_TOLERANCE, RunConfig
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            f"tables.py needs nncme importable (the RunConfig defaults): {exc}"
        ) from exc
    config = RunConfig()
    defaults = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {**defaults, "dt_tolerance": (SUMMED_DT_TOLERANCE, DRAWN_DT_TOLERANCE)}


def differing_settings(settings: dict) -> str:
    """The settings of a run that differ from today's RunConfig defaults, as CLI flags."""
    defaults = run_defaults()
    flags = []
    # the time step first (no default: the network's), then the rest in the JSON's order
    for key, value in sorted(settings.items(), key=lambda kv: kv[0] != "dt"):
        if key in NOT_SETTINGS or value is None:
            continue
        if key == "save_every" and math.isclose(value, settings["t_end"] / 10):
            continue  # the default save times
        default = defaults.get(key, object())
        if default == value or (isinstance(default, tuple) and value in default):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return code(" ".join(flags)) if flags else "defaults"


def argmax2(values: list[list[float]]) -> tuple[int, int]:
    """(time index, species index) of the largest entry of a (T, L) list (NaN never wins)."""
    cells = [(j, i) for j in range(len(values)) for i in range(len(values[j]))]
    return max(cells, key=lambda ji: -math.inf if values[ji[0]][ji[1]] is None
               or math.isnan(values[ji[0]][ji[1]]) else values[ji[0]][ji[1]])  # fmt: skip


def table_accuracy() -> list[str]:
    """bench_accuracy.py: one row per case and file (accuracy_cpu*.json)."""
    order = list(SYSTEMS)
    cases = [(name, r) for name in files("accuracy_cpu*.json") for r in load(name)["results"]]
    cases.sort(key=lambda c: order.index(c[1]["system"]) if c[1]["system"] in order else 99)
    rows = []
    for name, r in cases:
        d = load(name)
        t_h, i_h = argmax2(r["hellinger"])
        t_m, i_m = argmax2(r["mean_rel_error"])
        bounds = r["bounds"]
        bound = f"H ≤ {bounds['hellinger']:g}"
        if bounds.get("mean_rel_error") is not None:
            bound += f", mean ≤ {100 * bounds['mean_rel_error']:g} %"
        rows.append(
            [
                system_name(r["system"]),
                f"t = {r['settings']['t_end']:g}",
                differing_settings(r["settings"]),
                f"{sig(r['max_hellinger'], 3)} ({r['species'][i_h]}, t = {r['times'][t_h]:g})",
                f"{bound}: {'pass' if r['pass'] else 'fail'}",
                f"{sig(100 * r['max_mean_rel_error'], 3)} % "
                f"({r['species'][i_m]}, t = {r['times'][t_m]:g})",
                f"{seconds(r['van_seconds'])} ({sig(r['ms_per_step'] / 1000, 2)} s per step)",
                machine(d),
                code(name),
            ]
        )
    header = ["system", "horizon", "settings besides the defaults", "max Hellinger (where)",
              "bound", "max mean error (where)", "wall time", "machine", "JSON"]  # fmt: skip
    return [*markdown(header, rows), "", *notes(n for n, _ in cases)]


def _rare_runs(case: str) -> list[tuple[str, dict]]:
    names = files("rare_events_cpu_*.json")
    # today's explore baseline first, then the superseded `_own` files; KL before log-variance
    names.sort(key=lambda n: ("_own" in n, "log_variance" in n, n))
    runs = [(n, r) for n in names for r in load(n)["runs"] if r["case"] == case]
    return sorted(
        runs,
        key=lambda nr: (
            names.index(nr[0]),
            PROPOSAL_ORDER.index(nr[1]["proposal"]) if nr[1]["proposal"] in PROPOSAL_ORDER else 99,
        ),
    )


def _tail_cell(d: dict, species: dict, side: str) -> str:
    by_level = {t["level"]: t["rel_error"] for t in species["tails"] if t["side"] == side}
    return " / ".join(sci(by_level[v]) if v in by_level else "–" for v in d["levels"])


def _rare_table(case: str) -> list[str]:
    runs = _rare_runs(case)
    levels = " / ".join(num(v) for v in load(runs[0][0])["levels"])
    species = [s["name"] for s in runs[0][1]["species"]]
    header = ["proposal", "objective", "explore baseline", "max Hellinger"]
    for name in species:
        prefix = f"{name} " if len(species) > 1 else ""
        header += [f"{prefix}upper tail error at {levels}", f"{prefix}lower tail error at {levels}"]
    header += ["wall time", "machine", "JSON"]
    rows = []
    for name, run in runs:
        d, s = load(name), run["settings"]
        row = [
            proposal_label(s),
            OBJECTIVES.get(s.get("objective", d["objective"]), s.get("objective", "")),
            baseline_label(s),
            sig(max(run["hellinger"]), 2),
        ]
        for sp in run["species"]:
            row += [_tail_cell(d, sp, "upper"), _tail_cell(d, sp, "lower")]
        rows.append([*row, seconds(run["seconds"]), machine(d), code(name)])
    first, first_file = runs[0][1]["settings"], load(runs[0][0])
    steps = round(first["t_end"] / first["dt"])
    caption = (
        f"Case `{case}`: {steps} {first.get('integrator', first_file['integrator']).title()} "
        f"steps of dt = {num(first['dt'])} to t = {num(first['t_end'])}, batch "
        f"{first['batch']}, {OPTIMIZERS.get(first_file['optimizer'], first_file['optimizer'])}; "
        "relative error of the VAN's tail probability at the counts where the "
        f"exact tail crosses {levels}."
    )
    return [caption, "", *markdown(header, rows), "", *notes(dict.fromkeys(n for n, _ in runs))]


def table_rare_events_one_site() -> list[str]:
    return _rare_table("schlogl_1")


def table_rare_events_two_sites() -> list[str]:
    return _rare_table("schlogl_2")


def table_second_order() -> list[str]:
    """bench_second_order.py: every run of every second_order_cpu_*.json."""
    names = files("second_order_cpu_*.json")
    runs = [(n, r) for n in names for r in load(n)["runs"]]
    order = list(SYSTEMS)
    opts = list(OPTIMIZERS)
    runs.sort(
        key=lambda nr: (
            order.index(nr[1]["system"]) if nr[1]["system"] in order else 99,
            nr[1]["t_end"],
            nr[1]["settings"].get("batch", 0),
            nr[0],
            opts.index(nr[1]["optimizer"]) if nr[1]["optimizer"] in opts else 99,
        )
    )
    rows = []
    for name, r in runs:
        d, s = load(name), r["settings"]
        h = sig(r["max_hellinger"], 3)
        if r["max_hellinger"] <= d.get("target_hellinger", 0):
            h = f"**{h}**"
        per_time = r.get("max_hellinger_per_time")
        rows.append(
            [
                system_name(r["system"]),
                f"t = {r['t_end']:g}, dt = {num(r['dt'])}",
                OPTIMIZERS.get(r["optimizer"], r["optimizer"]),
                str(s.get("batch", "")),
                proposal_label(s, r["optimizer"]),
                baseline_label(s),
                h,
                " / ".join(sig(v, 2) for v in per_time[1:]) if per_time else "not recorded",
                seconds(r["seconds"]),
                f"{sig(r['seconds_per_step'], 3)} s",
                f"{r['iterations_per_step']:.1f}",
                machine(d),
                code(name),
            ]
        )
    header = ["system", "horizon", "optimiser", "batch", "proposal", "explore baseline",
              "max Hellinger", "max Hellinger at each save time", "wall time", "per step",
              "iterations per step", "machine", "JSON"]  # fmt: skip
    targets = sorted({load(n).get("target_hellinger") for n in names} - {None})
    footer = [f"Bold: at or below the target {' / '.join(f'{t:g}' for t in targets)} at every "
              "save time (`target_hellinger` in the JSON)."]  # fmt: skip
    return [*markdown(header, rows), "", *footer, *notes(names)]


def table_second_order_gram() -> list[str]:
    """The sample-space solve from the NADE Gram matrix against explicit per-sample gradients."""
    rows = []
    for name in files("second_order_cpu_*.json"):
        d = load(name)
        for g in d.get("gradients", []):
            rows.append(
                [
                    system_name(g["system"]),
                    f"{g['parameters']:,}",
                    f"{g['states']} of {g['batch']}",
                    f"{g['solve_gradients_s']:.3f} s",
                    f"{g['solve_gram_s']:.3f} s",
                    f"{g['gram_speedup']:.1f}×",
                    f"{g['analytic_s']:.3f} s / {g['func_s']:.3f} s",
                    machine(d),
                    code(name),
                ]
            )
    header = ["system", "parameters P", "distinct states N", "solve with gradients O",
              "solve from O Oᵀ", "speedup", "gradients: analytic / torch.func", "machine",
              "JSON"]  # fmt: skip
    return markdown(header, rows)


def table_nade_cpu_1thread() -> list[str]:
    """benchmarks/results/README.md: the single-thread NADE ratios per shape."""
    d = load("nade_cpu_1thread.json")
    dtypes = list(dict.fromkeys(r["dtype"] for r in d["rows"]))
    ops = ["sample", "log_prob"]
    cols = [(op, dt) for op in ops for dt in dtypes]
    shapes = list(dict.fromkeys((r["L"], r["M"], r["H"]) for r in d["rows"]))
    speed = {(r["L"], r["M"], r["H"], r["op"], r["dtype"]): r["speedup"] for r in d["rows"]}
    header = [f"NADE, B = {d['batch']}, {count(threads_of(d), 'thread')}"]
    header += [f"{op} {dt.replace('float', 'f')}" for op, dt in cols]
    rows = [
        [f"L={L}, M={M}, H={H}"] + [f"{speed[(L, M, H, op, dt)]:.1f}x" for op, dt in cols]
        for L, M, H in shapes
    ]
    return [*markdown(header, rows), "", f"Machine: {machine(d)} (`nade_cpu_1thread.json`)."]


def table_amortise() -> list[str]:
    """Amortised runs at their defaults against FSP at held-out contexts, and the coverage of
    their Laplace intervals (bench_amortise.py)."""
    d = load("amortise_cpu.json")
    tangent = load("amortise_cpu_tangent.json")
    header = [
        "box", "training", "held-out contexts: median / worst max Hellinger",
        "10 % beyond the box: median / worst", "90 % Laplace intervals cover",
        "90 % posterior intervals cover", "median abs log error",
        "d means / d log c: worst / median error",
    ]  # fmt: skip
    rows = []
    order = ["birth_death", "gene", "met_autoregulation", "autoregulation"]  # bench_amortise
    cases = [(c, "") for c in d["cases"]] + [(c, ", --tangent") for c in tangent["cases"]]
    for c, how in sorted(cases, key=lambda x: (order.index(x[0]["case"]), x[1])):
        box = ", ".join(f"{v['name']} {sig(v['lo'])}–{sig(v['hi'])}" for v in c["varies"])
        inf = c.get("inference") or {}
        sens = c.get("sensitivities")
        names = [v["name"] for v in c["varies"]]
        rows.append([
            f"{c['case']}{how}: {box}, t ≤ {sig(c['times'][-1])}",
            f"{seconds(c['train_seconds'])}, {c['steps']} steps",
            f"{sig(c['median_max_hellinger'])} / {sig(c['worst_max_hellinger'])} "
            f"({len(c['contexts'])})",
            beyond_box(c.get("outside")),
            ", ".join(f"{n} {x:.0%}" for n, x in zip(names, inf.get("coverage_90", []))),
            ", ".join(
                f"{n} {x:.0%}" for n, x in zip(names, inf.get("posterior_coverage_90", []))
            ),
            ", ".join(f"{n} {sig(x)}" for n, x in zip(names, inf.get("median_abs_log_error", []))),
            f"{sens['means_max_rel_error']:.1%} / {sens['means_median_rel_error']:.1%}"
            if sens else "",
        ])  # fmt: skip
    datasets = {c["inference"]["datasets"] for c in d["cases"] if c.get("inference")}
    cells = {c["inference"]["cells"] for c in d["cases"] if c.get("inference")}
    return [
        *markdown(header, rows),
        "",
        f"Intervals: {', '.join(map(str, datasets))} data sets of {', '.join(map(str, cells))} "
        f"cells each at the last time. Machine: {machine(d)} (`amortise_cpu.json`, "
        "`amortise_cpu_tangent.json`).",
    ]


def beyond_box(outside: dict | None) -> str:
    """ "median / worst (contexts)" of the contexts beyond the box, or "" (not measured)."""
    if not outside:
        return ""
    return (
        f"{sig(outside['median_max_hellinger'])} / {sig(outside['worst_max_hellinger'])} "
        f"({len(outside['contexts'])})"
    )


def exact_fit(case: dict) -> str:
    """ ", exact first step fitted to X nats" where the run took its first step exactly."""
    exact = case.get("exact_first_step")
    return f", exact first step fitted to {sig(exact['loss'])} nats" if exact else ""


def held_out(case: dict) -> str:
    """ "; the kernel at N held-out contexts: median / worst" where the bench measured it."""
    k = case.get("held_out_kernel")
    if not k:
        return ""
    return (
        f"; the kernel at {len(k['hellinger'])} held-out contexts (rates and starts): "
        f"median {sig(k['median'])}, worst {sig(k['worst'])}"
    )


def table_fit() -> list[str]:
    """Rate constants fitted to observables through an amortised run, against the truth, and
    SSA with finite differences on the same references (bench_fit.py)."""
    d = load("fit_cpu.json")
    names = [v["name"] for v in d["varies"]]
    header = [
        "references", "fits", "median abs log error", "worst", "90 % intervals cover",
        "evaluations, s per fit",
    ]  # fmt: skip
    rows = []
    for kind, r in d["recovery"].items():
        s = r["summary"]
        rows.append([
            f"{kind} ({r['observables']} observables)",
            str(s["fits"]),
            ", ".join(f"{n} {sig(x)}" for n, x in zip(names, s["median_abs_log_error"])),
            ", ".join(f"{n} {sig(x)}" for n, x in zip(names, s["worst_abs_log_error"])),
            ", ".join(f"{n} {x:.0%}" for n, x in zip(names, s["coverage_90"])),
            f"{s['median_evaluations']:.0f}, {s['median_seconds']:.2f} s",
        ])  # fmt: skip
    base = d["ssa_baseline"]
    if base:
        errors = [b["ssa_abs_log_error"] for b in base]
        rows.append([
            f"moments, SSA ({base[0]['ssa_trajectories']} paths) + finite differences",
            str(len(base)),
            ", ".join(f"{n} {sig(statistics.median(e))}" for n, e in zip(names, zip(*errors))),
            ", ".join(f"{n} {sig(max(e))}" for n, e in zip(names, zip(*errors))),
            "-",
            f"{statistics.median(b['ssa_runs'] for b in base):.0f} SSA runs, "
            f"{statistics.median(b['ssa_seconds'] for b in base):.2f} s",
        ])  # fmt: skip
    times = ", ".join(sig(t) for t in d["times"])
    return [
        *markdown(header, rows),
        "",
        f"Box: {d['case']} ({', '.join(names)}), amortised in {seconds(d['train_seconds'])}; "
        f"references at t = {times} from {d['cells']} cells per time, true rates drawn from "
        f"the box. Machine: {machine(d)} (`fit_cpu.json`).",
    ]


def table_supervision() -> list[str]:
    """Runs with and without observable supervision against the exact moment equations
    (bench_supervision.py)."""
    d = load("supervision_cpu.json")
    header = [
        "network, span", "supervise", "largest mean error", "largest variance error",
        "at the last time: worst mean, variance", "wall",
    ]  # fmt: skip
    rows = []
    for case in d["cases"]:
        for r in case["runs"]:
            last_mean = max((x for x in r["mean_rel_error_last"] if x is not None), default=0)
            last_var = max((x for x in r["variance_rel_error_last"] if x is not None), default=0)
            rows.append([
                f"{case['network']} ({len(r['species'])} species), t ≤ {sig(r['t_end'])}",
                "moments" if r["supervise"] else "-",
                f"{r['max_mean_rel_error']:.1%}",
                f"{r['max_variance_rel_error']:.1%}",
                f"{last_mean:.1%}, {last_var:.1%}",
                seconds(r["wall_seconds"]) if r.get("wall_seconds") else "-",
            ])  # fmt: skip
    return [
        *markdown(header, rows),
        "",
        "Errors relative to the exact moments, over species and save times where the exact "
        f"moment is at least 0.05. {d.get('note', '')} Machine: {machine(d)} "
        "(`supervision_cpu.json`).",
    ]


def table_optimizers() -> list[str]:
    """Adam, natural gradient and TDVP at the defaults on the same networks (bench_defaults.py
    with `--set optimizer=...`, a tenth of each file's horizon)."""
    files = [f"defaults_cpu_{tag}.json" for tags in OPTIMIZER_RUNS.values() for tag in tags]
    by_network = {
        name: {r["network"]: r for tag in tags for r in load(f"defaults_cpu_{tag}.json")["rows"]}
        for name, tags in OPTIMIZER_RUNS.items()
    }
    networks = list(by_network["adam"])

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        if r.get("status") not in ("completed", "stopped"):
            return f"{r.get('error', r.get('status'))} at t = {sig(r.get('failed_at_t') or 0)}"
        reached = "" if r["status"] == "completed" else f" to t = {sig(r['stopped_at_t'])}"
        return (
            f"{hell(r['max_hellinger'])} ({hell(r['hellinger_first_save'])}){reached}, "
            f"{seconds(r['wall_seconds'])}"
        )

    header = [
        "network, t ≤",
        *[f"{OPTIMIZERS.get(n, n)}: max H (first save), wall" for n in OPTIMIZER_RUNS],
    ]
    rows = [
        [
            f"{n}, {sig(by_network['adam'][n]['t_end'])}",
            *[cell(by_network[o].get(n)) for o in OPTIMIZER_RUNS],
        ]
        for n in networks
    ]
    d = load(files[0])
    return [
        *markdown(header, rows),
        "",
        "Every setting at its default but the optimiser (`nncme run FILE --optimizer ...` with "
        "the file's dt), a tenth of each file's horizon; max H: the largest Hellinger distance "
        "of a marginal from FSP over species and save times, the first save time's in brackets. "
        f"Machine: {machine(d)}, the runs sharing its cores "
        f"({', '.join(f'`{f}`' for f in files)}).",
    ]


# bench_defaults.py runs at every default (no --set), oldest code first: the table keeps each
# network's newest row at a tenth of its file's horizon, else its newest at another horizon
DEFAULTS_RUNS = [
    "motion_a", "motion_b", "motion_c", "motion_d", "motion_mm", "follow_lag_b",
    "tele_follow_lag", "follow_lag_keep_c3", "first_a", "first_b", "first_c", "tele_first_t2",
    "full_a", "full_b", "review_c", "review_schlogl", "full_c", "full_d", "grow14_tele",
    "review14", "s15_schlogl", "s15_toggle10", "s15_full_a", "s15_full_b", "adam18",
    "adam18_dimer", "review17_c3", "review17_pfs", "s19_new", "s19_mm", "s19_full", "s20_laws",
    "s20_mm", "s20_order", "s21_enum_small", "s21_enum_full", "s21_enum_trim_full",
    "s21_enum_schlogl_tenth", "s22_bdf2_schlogl_tenth", "s22_bdf2_small", "s23_small",
    "s23_schlogl_tenth", "s24_small", "s24_full", "s25_small_a", "s25_small_b", "s25_mm",
    "s25_toggle10c", "s26_enum_a", "s26_enum_b", "s26_enum_c", "s29_mm",
]  # fmt: skip


# the fits summed over a small support (`--enumerate-states`) against the draws before it,
# and the exponential steps that sums allow: network -> (the draws' run, the sums' run with
# Heun and implicit steps, the exponential steps' run), bench_defaults.py at every default
ENUMERATED_RUNS = {
    "birth_death_seasonal": ("adam18", "s21_enum_small", "s24_small"),
    "positive_feedback_switch": ("review17_pfs", "s21_enum_small", "s24_small"),
    "dimerisation": ("s20_order", "s21_enum_small", "s24_small"),
    "trimerisation": ("s20_order", "s21_enum_trim_full", "s24_full"),
    "bursty4": ("s19_new", "s21_enum_full", "s24_full"),
    "coalescence": ("s19_new", "s21_enum_full", "s24_full"),
    "schlogl_box1000": ("s15_schlogl", "s23_schlogl_tenth", "s24_small"),
}


def defaults_row(network: str, tag: str) -> tuple[dict, dict]:
    """(the JSON, the network's row) of `defaults_cpu_<tag>.json`."""
    d = load(f"defaults_cpu_{tag}.json")
    return d, next(r for r in d["rows"] if r["network"] == network)


def run_cells(r: dict, mean: bool = False) -> list[str]:
    """A defaults run's max H (first save), worst mean error (with `mean`), tail ratio at
    1e-6 and wall time to the time it reached."""
    reached = sig(r["t_end"]) if r["status"] == "completed" else sig(r["stopped_at_t"])
    worst = (r.get("tails") or {}).get("worst", {}).get("1e-06")
    return [
        f"{hell(r['max_hellinger'])} ({hell(r['hellinger_first_save'])})",
        *([f"{sig(100 * r['max_mean_rel_error'])}%"] if mean else []),
        "-" if worst is None else sig(worst["ratio"]),
        f"{seconds(r['wall_seconds'])} to t = {reached}",
    ]


def table_enumerated() -> list[str]:
    """The networks whose support the fits now sum over: their draws before, the sums with
    Heun and implicit steps, the sums with exponential steps."""

    groups = ("draws", "sums, Heun/BDF2", "sums, exponential")
    header = ["network (states)"]
    for group in groups:
        header += [f"{group}: max H (first save)", "tail 1e-6", "wall"]
    rows, runs = [], {}
    for network, tags in ENUMERATED_RUNS.items():
        found = [defaults_row(network, tag) for tag in tags]
        runs |= {f"defaults_cpu_{tag}.json": d for tag, (d, _) in zip(tags, found, strict=True)}
        states = found[-1][1]["states"]
        rows.append([f"`{network}` ({states:,})", *[c for _, r in found for c in run_cells(r)]])
    return with_runs(
        markdown(header, rows),
        "`nncme run FILE` at every default (the file's dt) against FSP; max H: the largest "
        "Hellinger distance of a marginal over species and save times (the first save time's "
        "in brackets); tail: P_van(n >= q) / P_exact(n >= q) at the exact upper 1e-6 "
        "quantile, furthest from 1 over species and times; wall: one thread, the runs sharing "
        "the cores, so loose. The draws' schlogl_box1000 run is the full horizon's (saves "
        "every 0.1), stopped at its time limit; both sums' runs a tenth's (saves every 0.05). ",
        runs,
    )


def with_runs(table: list[str], text: str, runs: dict[str, dict]) -> list[str]:
    """A table, then its caption ending with the JSON files it read and their code and CPU."""
    files = ", ".join(f"`{f}` ({d['commit']}, {cpu_short(d)})" for f, d in sorted(runs.items()))
    return [*table, "", f"{text}Runs (code, CPU): {files}."]


# networks of drawn fits, their batch fixed (the defaults before it followed the fits' noise,
# or max_batch_factor 1), then following the noise: label -> ((tag, network), (tag, network))
NOISE_RUNS = {
    "protein_dimer_drawn": (
        ("s30_own3_protein_dimer_drawn", "protein_dimer_drawn"),
        ("s31_pdd_noise_full", "protein_dimer_drawn"),
    ),
    "hill_cascade": (
        ("s31_hill_cascade_fixed", "hill_cascade"),
        ("s31_hill_cascade", "hill_cascade"),
    ),
}


def table_noise() -> list[str]:
    """Drawn fits with the batch fixed, then following the fits' noise."""
    rows, runs = draws_then_sums(NOISE_RUNS)
    for row, (_, (tag, network)) in zip(rows, NOISE_RUNS.values(), strict=True):
        r = defaults_row(network, tag)[1]  # the run following the noise
        row.append(", ".join(f"{n} at {b}" for b, n in r["steps_per_batch"].items()))
    header = pair_header("batch fixed", "batch following the noise")
    return with_runs(
        markdown([*header, "steps per batch"], rows),
        "`nncme run FILE` at every default to the file's t_end (dt 0.01: the files name none) "
        "against FSP; columns as in the tables above. The fixed batch's protein_dimer_drawn "
        "run is the defaults' before the batch followed the noise, hill_cascade's is "
        "`--max-batch-factor 1` (no batch growth at all). ",
        runs,
    )


# drawn fits: mixture draws under reverse KL (the defaults before), then tempered draws under
# the log-variance objective (the defaults now for three or more free counts; the two-count
# two_stage_wide_box shows why two keep the mixture)
TEMPERED_RUNS = {
    "protein_dimer_drawn": (
        ("s31_pdd_noise_full", "protein_dimer_drawn"),
        ("s32_protein_dimer_drawn_alphalv", "protein_dimer_drawn"),
    ),
    "hill_cascade": (
        ("s31_hill_cascade", "hill_cascade"),
        ("s32_hill_cascade_alphalv", "hill_cascade"),
    ),
    "cascade10": (("s32_cascade10_mixkl", "cascade10"), ("s32_cascade10_alphalv", "cascade10")),
    "mapk": (("s32_mapk20_head", "mapk"), ("s32_mapk20_alphalv", "mapk")),
    "two_stage_wide_box": (
        ("s32_wide_drawn_mixkl", "two_stage_wide_box"),
        ("s32_wide_drawn_alphalv", "two_stage_wide_box"),
    ),
}


def table_tempered() -> list[str]:
    """Drawn fits: mixture draws under reverse KL, then tempered draws under the log-variance
    objective (`TEMPERED_RUNS`)."""
    rows, runs = draws_then_sums(TEMPERED_RUNS)
    header = pair_header("mixture, reverse KL", "tempered, log-variance")
    return with_runs(
        markdown(header, rows),
        "`nncme run` at every default but the proposal and objective (each run names both) "
        "against FSP (MAPK: 10⁵ SSA trajectories, which resolve no 1e-6 tail); the files' "
        "t_end, cascade10's and two_stage_wide_box's a tenth, MAPK to t = 20; "
        "two_stage_wide_box with `--enumerate-states 0` (its 80,000 states drawn, not summed: "
        "the fits of two free counts, which keep the mixture). Columns as in the tables "
        "above. ",
        runs,
    )


# the supports summed since an evaluation runs one row per distinct prefix (`ListedScorer`):
# label -> ((the draws' run, its network), (the sums' run, its network)), at every default
PREFIX_RUNS = {
    "toggle_switch": (("s15_toggle10", "toggle_switch"), ("s25_toggle10c", "toggle_switch")),
    "sir80": (("s20_laws", "sir80"), ("s25_small_a", "sir80")),
    "futile_cycle": (("s20_laws", "futile_cycle"), ("s25_small_b", "futile_cycle")),
    "stiff_gene": (("first_b", "stiff_gene"), ("s25_small_a", "stiff_gene")),
    "self_replicator_n60": (
        ("first_b", "self_replicator_n60"),
        ("s25_small_a", "self_replicator_n60"),
    ),
    "brusselator": (("adam18", "brusselator"), ("s25_small_b", "brusselator")),
    "michaelis_menten": (("s20_mm", "michaelis_menten"), ("s25_mm", "michaelis_menten")),
}


def draws_then_sums(pairs: dict) -> tuple[list[list[str]], dict[str, dict]]:
    """Rows of draws-then-sums cells (`run_cells` with means) of each label's two runs, and
    the JSONs read."""
    rows, runs = [], {}
    for label, pair in pairs.items():
        cells: list[str] = []
        for tag, network in pair:
            d, r = defaults_row(network, tag)
            runs[f"defaults_cpu_{tag}.json"] = d
            cells += run_cells(r, mean=True)
        rows.append([f"`{label}` ({r['states']:,})", *cells])
    return rows, runs


def pair_header(*groups: str) -> list[str]:
    """The header of rows of `draws_then_sums`: each group's `run_cells` with means."""
    cells = ("max H (first save)", "worst mean error", "tail 1e-6", "wall")
    return ["network (states)"] + [f"{group}: {cell}" for group in groups for cell in cells]


DRAWS_THEN_SUMS = pair_header("draws", "sums, exponential")


def table_prefixes() -> list[str]:
    """The networks summed since a sum runs one row per prefix: their draws before, their
    sums with exponential steps now."""
    rows, runs = draws_then_sums(PREFIX_RUNS)
    return with_runs(
        markdown(DRAWS_THEN_SUMS, rows),
        "`nncme run FILE` at every default (the file's dt) against FSP, each network's horizon "
        "as in the defaults table (a tenth, or t = 10 of the toggle switch's 40); columns as in "
        "the table above. ",
        runs,
    )


# the supports summed since `enumerate_states` is 131,072 and `Enumerated.MAX_ROWS` 4,096:
# label -> ((the draws' run, its network), (the sums' run, its network)), at every default
LARGE_SUPPORT_RUNS = {
    "cascade3": (("review17_c3", "cascade3"), ("s26_enum_a", "cascade3")),
    "telegraph_bursty": (("grow14_tele", "telegraph_bursty"), ("s26_enum_a", "telegraph_bursty")),
    "lotka_volterra": (("review_c", "lotka_volterra"), ("s26_enum_b", "lotka_volterra")),
    "two_stage_wide_box": (
        ("first_a", "two_stage_wide_box"),
        ("s26_enum_b", "two_stage_wide_box"),
    ),
    "repressilator": (("first_a", "repressilator"), ("s26_enum_c", "repressilator")),
}


def table_large_supports() -> list[str]:
    """The networks summed since the limits rose: their draws before, their sums now."""
    rows, runs = draws_then_sums(LARGE_SUPPORT_RUNS)
    return with_runs(
        markdown(DRAWS_THEN_SUMS, rows),
        "`nncme run FILE` at every default (the file's dt) against FSP to a tenth of the file's "
        "horizon; columns as in the tables above. ",
        runs,
    )


# the catalogue's MAPK at every default to t = 100, against 10^5 SSA trajectories
MAPK_RUN = "s27_mapk100_mom"


def table_mapk() -> list[str]:
    """MAPK at every default against SSA: per save time, the largest Hellinger distance of a
    marginal (and whose), the worst mean error, and the steps and step seconds to it; the
    sampling floor of both sides in the caption."""
    d, r = defaults_row("mapk", MAPK_RUN)
    h = r["hellinger"]  # (T, L)
    species = list(r["hellinger_max_per_species"])
    errors = r["mean_rel_error"]
    work = {round(w["t"], 9): w for w in r["work_to_save_time"]}
    rows = []
    for j, t in enumerate(r["times"]):
        if t <= 0:
            continue
        worst = max(range(len(species)), key=lambda i: h[j][i])
        err = [e for e in errors[j] if e is not None]
        w = work.get(round(t, 9), {})
        rows.append([
            sig(t), f"{hell(h[j][worst])} ({species[worst]})",
            f"{100 * max(err):.2g}%" if err else "-",
            f"{w.get('steps', 0):,}", seconds(w.get("step_seconds", 0.0)),
        ])  # fmt: skip
    header = ["t", "max H (species)", "worst mean error", "steps", "step seconds to t"]
    return with_runs(
        markdown(header, rows),
        f"`nncme run mapk --t-end 100` at every other default against {r['ssa_trajectories']:,} "
        f"SSA trajectories (`{d['command']}`): the VAN's marginals from 20,000 draws, so each "
        "distance has a "
        f"sampling floor of up to {hell(r['sampling_noise_hellinger_max'])} (both sides' "
        "noise); mean error over species whose mean is at least 0.05. ",
        {f"defaults_cpu_{MAPK_RUN}.json": d},
    )


def newest_default_rows() -> dict[str, tuple[str, dict, dict]]:
    """network -> (file, its JSON, the row) of DEFAULTS_RUNS' newest row, a tenth preferred."""
    tenth: dict[str, tuple[str, dict, dict]] = {}
    other: dict[str, tuple[str, dict, dict]] = {}
    for tag in DEFAULTS_RUNS:
        name = f"defaults_cpu_{tag}.json"
        d = load(name)
        if d.get("overrides"):
            raise ValueError(f"{name} overrides {d['overrides']}: not a run at the defaults")
        for r in d["rows"]:
            into = tenth if abs(r["t_end"] - 0.1 * r["t_end_file"]) < 1e-9 else other
            into[r["network"]] = (name, d, r)
    return {n: tenth.get(n) or other[n] for n in sorted({*tenth, *other})}


def cpu_short(d: dict) -> str:
    """ "EPYC" or "Xeon": the two development machines, told apart."""
    return next((w for w in ("EPYC", "Xeon") if w in d.get("cpu", "")), d.get("cpu", "-"))


def table_defaults() -> list[str]:
    """Every benchmark network at nncme's defaults: the newest measured run of each."""

    def reached(r: dict) -> str:
        if r["status"] == "completed":
            return sig(r["t_end"])
        if r["status"] == "stopped":
            return f"{sig(r['stopped_at_t'])} of {sig(r['t_end'])} (stopped)"
        return f"{r.get('error', 'failed')} at t = {sig(r.get('failed_at_t') or 0)}"

    def tail(r: dict, level: str) -> str:
        worst = (r.get("tails") or {}).get("worst", {}).get(level)
        return "-" if worst is None else sig(worst["ratio"])

    def hellinger(r: dict) -> str:
        if r.get("max_hellinger") is None:
            return "-"
        return f"{hell(r['max_hellinger'])} ({hell(r['hellinger_first_save'])})"

    header = [
        "network", "t reached", "max H (first save)", "worst mean error", "tail ratio 1e-4",
        "tail ratio 1e-6", "marginals", "wall", "code, CPU, JSON",
    ]  # fmt: skip
    rows, whole = [], []
    for network, (name, d, r) in newest_default_rows().items():
        if abs(r["t_end"] - 0.1 * r["t_end_file"]) > 1e-9:
            whole.append(network)
        err = r.get("max_mean_rel_error")
        marg = {"joint": "joint", "conservation-law states": "laws"}
        rows.append([
            f"`{network}`", reached(r), hellinger(r), "-" if err is None else f"{100 * err:.2g}%",
            tail(r, "0.0001"), tail(r, "1e-06"), marg.get(r.get("marginals_from"), "sampled"),
            seconds(r["wall_seconds"]), f"{d['commit']}, {cpu_short(d)}, `{name}`",
        ])  # fmt: skip
    return [
        *markdown(header, rows),
        "",
        "`nncme run FILE` with the file's own dt (0.01 where it names none) and every other "
        "setting at its default, to a tenth of the file's horizon where such a run exists "
        f"(else another horizon: {', '.join(whole) or 'none'}), each network's newest such "
        "run; the code is the commit the JSON names. "
        "max H: the largest Hellinger distance "
        "of a marginal from FSP over species and save times (the first save time's in brackets); "
        "mean error over species whose exact mean is at least 0.05; tail ratio: P_van(n >= q) / "
        "P_exact(n >= q) at the exact upper 1e-4 and 1e-6 quantiles q, furthest from 1 over "
        "species and times (0 where no sampled state reached q); marginals: exact sums of the "
        "VAN's joint, or over the states on the conservation laws, or from 20,000 samples (a "
        "Hellinger floor of up to 0.02). Runs stopped by `--time-limit` are scored to the save "
        "times they reached. CPU: a 2-core AMD EPYC or Intel Xeon, one thread per run, two to "
        "four runs sharing the cores (load averages in the JSON), so wall times are loose.",
    ]


def optimizer_cell(row: dict) -> str:
    """A parallel row's optimiser, with its hidden width and solve space where not the
    default (16, auto)."""
    cell = row.get("optimizer", "adam")
    if row.get("hidden", 16) != 16:
        cell += f", hidden {row['hidden']}"
    space = row.get("solve_space", "auto")
    if space != "auto":
        cell += ", P x P summed" if space == "parameter" else ", states gathered"
    return cell


def table_parallel() -> list[str]:
    """One process against several at the same global batch (bench_parallel.py)."""
    d = load("parallel_cpu.json")
    header = [
        "network", "optimizer", "batch", "processes", "iterations", "ms per iteration",
        "efficiency", "rank 0 peak memory", "max Hellinger vs exact", "machine",
    ]  # fmt: skip
    rows = [
        [
            f"`{r['network']}`",
            optimizer_cell(r),
            f"{r['batch']:,}",
            str(r["processes"]),
            f"{r['iterations']:,}",
            f"{r['ms_per_iteration']:.1f}",
            f"{r['efficiency']:.2f}" if r.get("efficiency") is not None else "-",
            "-"
            if r["peak_memory_mb"]["host"] is None
            else f"{r['peak_memory_mb']['host']:,.0f} MB",
            hell(r["max_hellinger"]),
            r.get("machine", d.get("cpu", "?")),
        ]
        for r in d["rows"]
    ]
    return [
        *markdown(header, rows),
        "",
        "Steps after the first (birth_death: t <= 0.5, dt 0.05, 0.01 with TDVP; 2x2: t <= 0.05, "
        "dt 0.01, 0.002 with TDVP (natgrad at hidden 2: batch 4,000, t <= 0.03, the solve "
        "over ranks as named); 3x3: t <= 0.004, dt 0.002; amortised: the steps after the "
        "exact first one, 64 contexts x 32 states, t <= 0.5, dt 0.05, Hellinger at birth 3, 6 "
        "and 9 at 5 save times), rank 0's time; efficiency T_1 / (N T_N) per iteration "
        "(the processes' random streams differ, so their iteration counts do); Hellinger over "
        f"sites and save times, every step included. {d['note']}. "
        f"Machine per row; the last run's: {machine(d)} (`parallel_cpu.json`).",
        *[
            f"\nStopped: `{f['case']}` over {f['processes']} process(es): "
            f"{f['error'].splitlines()[-1][-200:]}"
            for f in d.get("failures", [])
        ],
    ]


def table_lattice() -> list[str]:
    """Lattices at the defaults against exact marginals (bench_lattice.py)."""
    d = load("lattice_cpu.json")
    header = ["lattice", "sites", "span, dt", "iterations", "s per step", "peak memory",
              "max Hellinger vs exact"]  # fmt: skip
    rows = [
        [
            r["shape"],
            str(r["sites"]),
            f"t ≤ {sig(r['t_end'])}, {sig(r['dt'])}",
            f"{r['iterations']:,}",
            f"{r['seconds_per_step']:.1f}",
            f"{r['peak_memory_mb']:,.0f} MB",
            hell(r["max_hellinger"]),
        ]
        for r in d["rows"]
    ]
    return [
        *markdown(header, rows),
        "",
        "Birth-death on every site (birth 4, death 1, hopping 1, 2 molecules per site at t = 0); "
        "every step included, the first one's exact start too. "
        f"{d['note']}. Machine: {machine(d)} (`lattice_cpu.json`).",
    ]


def table_neighbours(name: str = "neighbours_cpu.json") -> list[str]:
    """One step target on lattices, now against the direct way (bench_neighbours.py)."""
    d = load(name)
    model = (
        "the Transformer of `nncme run --model transformer` (width 16, 2 layers, 4 heads)"
        if d["rows"][0].get("model") == "transformer"
        else "a NADE (hidden 16)"
    )
    header = ["lattice", "sites", "reactions", "target now", "direct", "ratio",
              "fit iteration now", "direct", "peak memory now", "direct",
              "largest difference"]  # fmt: skip

    def mb(x):
        return "-" if x is None else f"{x:,.0f} MiB"

    rows = [
        [
            r["shape"],
            str(r["sites"]),
            str(r["reactions"]),
            f"{r['seconds']:.3f} s",
            "-" if r.get("direct_seconds") is None else f"{r['direct_seconds']:.3f} s",
            "-" if r.get("ratio") is None else f"{r['ratio']:.1f}",
            f"{r['iteration_seconds']:.3f} s",
            "-"
            if r.get("direct_iteration_seconds") is None
            else f"{r['direct_iteration_seconds']:.3f} s",
            mb(r.get("peak_mb")),
            mb(r.get("direct_peak_mb")),
            "-" if r.get("max_difference") is None else f"{r['max_difference']:.1e}",
        ]
        for r in d["rows"]
    ]
    return [
        *markdown(header, rows),
        "",
        f"log T q_old at B states drawn from an untrained model, {model}, of a birth-death "
        "lattice (limit 25 per site); median wall time of one evaluation; a fit iteration: "
        "draws of the mixture proposal, explored states, the target and the gradient, mean of "
        "10 (Adam, one Euler stage); peak memory of one target beyond the states (torch's CPU "
        f"allocator). {d['note']}. Commit {d.get('commit')}. "
        f"Machine: {machine(d)} (`{name}`).",
    ]


# file -> table name -> function
def table_paths() -> list[str]:
    """Trajectory ensembles from an amortised run's transition kernel against FSP's one- and
    two-time statistics, with SSA ensembles for the noise level (bench_paths.py)."""
    d = load("paths_cpu.json")
    header = [
        "case", "context", "kernel: max Hellinger", "paths: max Hellinger (SSA)",
        "lag-one correlation error (SSA)", "lag-two correlation error (SSA)",
        "paths / SSA wall time",
    ]  # fmt: skip
    rows, notes_ = [], []
    for c in d["cases"]:
        for r in c["rows"]:
            v, s = r["van"], r["ssa"]
            rows.append([
                f"`{c['case']}`",
                ", ".join(f"{k} {sig(x)}" for k, x in r["context"].items()),
                sig(r["kernel_hellinger"]),
                f"{sig(v['max_hellinger_after_start'])} ({sig(s['max_hellinger_after_start'])})",
                f"{sig(v['max_correlation_error']['1'])} ({sig(s['max_correlation_error']['1'])})",
                f"{sig(v['max_correlation_error']['2'])} ({sig(s['max_correlation_error']['2'])})",
                f"{seconds(r['paths_seconds'])} / {seconds(r['ssa_seconds'])}",
            ])  # fmt: skip
        box = ", ".join(f"{k} {sig(lo)}–{sig(hi)}" for k, (lo, hi) in c["box"].items())
        r0 = c["rows"][0]
        notes_.append(
            f"`{c['case']}`: amortised over {box} to t = {sig(c['lag'])} in "
            f"{seconds(c['training_seconds'])} ({c['training_steps']} steps, first fit "
            f"{sig(c['first_fit']['loss'])} nats{exact_fit(c)}){held_out(c)}; "
            f"{r0['paths']:,} paths of {c['steps']} lags "
            f"of {sig(c['lag'])}, {r0['ssa_trajectories']:,} SSA trajectories."
        )
    return [
        *markdown(header, rows),
        "",
        *notes_,
        f"Errors over every species and time after the start. Machine: {machine(d)} "
        "(`paths_cpu.json`).",
    ]


TABLES: dict[Path, dict[str, Callable[[], list[str]]]] = {
    README: {
        "headline": table_headline,
        "accuracy": table_accuracy,
        "second_order": table_second_order,
        "second_order_gram": table_second_order_gram,
        "rare_events_one_site": table_rare_events_one_site,
        "rare_events_two_sites": table_rare_events_two_sites,
        "amortise": table_amortise,
        "paths": table_paths,
        "fit": table_fit,
        "supervision": table_supervision,
        "optimizers": table_optimizers,
        "enumerated": table_enumerated,
        "prefixes": table_prefixes,
        "noise": table_noise,
        "tempered": table_tempered,
        "large_supports": table_large_supports,
        "mapk": table_mapk,
        "defaults": table_defaults,
        "parallel": table_parallel,
        "lattice": table_lattice,
        "neighbours": table_neighbours,
        "neighbours_transformer": lambda: table_neighbours("neighbours_cpu_transformer.json"),
    },
    RESULTS_README: {"nade_cpu_1thread": table_nade_cpu_1thread},
}


# --------------------------------------------------------------------------- the markers


def block(name: str) -> re.Pattern:
    return re.compile(
        rf"(<!-- tables:{re.escape(name)} -->\n)(.*?)(<!-- /tables:{re.escape(name)} -->)",
        re.DOTALL,
    )


def render(lines: list[str]) -> str:
    return "\n" + "\n".join(lines).rstrip("\n") + "\n\n"


def update(text: str, tables: dict[str, Callable[[], list[str]]]) -> tuple[str, list[str]]:
    """text with every table rewritten, and the problems: tables that differ or lack markers."""
    problems = []
    for name, make in tables.items():
        found = block(name).findall(text)
        if len(found) != 1:
            problems.append(f"{name}: {len(found)} marker pairs (want one)")
            continue
        new = render(make())
        if found[0][1] != new:
            problems.append(f"{name}: differs from the JSON")
            text = block(name).sub(lambda m, new=new: m.group(1) + new + m.group(3), text)
    return text, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on drift")
    parser.add_argument("--print", metavar="NAME", help="print one table and exit")
    args = parser.parse_args(argv)
    if args.print:
        for tables in TABLES.values():
            if args.print in tables:
                print("\n".join(tables[args.print]()))
                return 0
        names = [n for tables in TABLES.values() for n in tables]
        parser.error(f"no table {args.print!r}; tables: {', '.join(names)}")
    status = 0
    for path, tables in TABLES.items():
        old = path.read_text()
        new, problems = update(old, tables)
        where = path.relative_to(ROOT)
        for problem in problems:
            print(f"{where}: table {problem}", file=sys.stderr)
        if args.check:
            if problems:
                status = 1
                diff = difflib.unified_diff(
                    old.splitlines(), new.splitlines(), f"{where} (now)", f"{where} (from JSON)",
                    lineterm="", n=0,
                )  # fmt: skip
                print("\n".join(list(diff)[:60]), file=sys.stderr)
        elif new != old:
            path.write_text(new)
            print(f"rewrote {where}")
        if any("marker" in p for p in problems):
            status = 1
    if args.check and status:
        print("run `python benchmarks/tables.py` to rewrite them from the JSON", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
