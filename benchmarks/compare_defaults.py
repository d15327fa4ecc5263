"""One table from several bench_defaults JSON files: per network, each variant's worst Hellinger
distance and worst relative error of the means (or how the run stopped).

    python benchmarks/compare_defaults.py \
        vanilla=defaults_cpu_review_a.json,defaults_cpu_review_b.json \
        mixture=defaults_cpu_mix_a.json,defaults_cpu_mix_b.json --out defaults_cpu_compare.md

Each argument is LABEL=FILE[,FILE...] (names relative to benchmarks/results); a later file's
row for a network replaces an earlier one's. The markdown names every file, its commit, its
overrides and its t_end scale, so each cell can be traced to the run that made it.
"""

from __future__ import annotations

import argparse
import json

from bench_common import RESULTS


def load_variant(spec: str) -> tuple[str, dict[str, dict], list[dict]]:
    """LABEL=FILE[,FILE...] -> (label, rows by network, the files' headers)."""
    label, _, files = spec.partition("=")
    if not files:
        raise SystemExit(f"{spec!r}: expected LABEL=FILE[,FILE...]")
    rows: dict[str, dict] = {}
    headers = []
    for name in files.split(","):
        data = json.loads((RESULTS / name).read_text())
        keys = ("commit", "overrides", "t_end_scale")
        headers.append({"file": name, **{k: data.get(k) for k in keys}})
        for row in data["rows"]:
            rows[row["network"]] = row
    return label, rows, headers


def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row.get("status") not in ("completed", "stopped") or "max_hellinger" not in row:
        return f"{row.get('error', 'failed')} at t = {row.get('failed_at_t', '?')}"
    mean = row.get("max_mean_rel_error")
    mean_text = f", mean {mean:.1%}" if mean is not None else ""
    reached = ""
    if row["status"] == "stopped":  # measured at the save times before the stop
        stop, last = row.get("stopped_at_t", 0), row["times"][-1]
        reached = f" (stopped at t = {stop:.3g}, measured to {last:g})"
    return f"{row['max_hellinger']:.4f}{mean_text}{reached}"


def table(variants: list[tuple[str, dict[str, dict], list[dict]]]) -> str:
    networks = sorted({n for _, rows, _ in variants for n in rows})
    lines = [
        "| network | " + " | ".join(label for label, _, _ in variants) + " |",
        "| --- |" + " --- |" * len(variants),
    ]
    for n in networks:
        lines.append(f"| {n} | " + " | ".join(cell(rows.get(n)) for _, rows, _ in variants) + " |")
    lines.append("")
    lines.append("Cells: the largest Hellinger distance of a marginal over species and save times,")
    lines.append("and the largest relative error of a mean (species with exact mean >= 0.05).")
    lines.append("")
    for label, _, headers in variants:
        for h in headers:
            lines.append(
                f"- {label}: `{h['file']}`, commit {h['commit']}, overrides "
                f"{h['overrides'] or {}}, t_end x {h['t_end_scale']}"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", metavar="LABEL=FILE[,FILE...]")
    parser.add_argument("--out", help="also write the markdown to benchmarks/results/OUT")
    args = parser.parse_args(argv)
    text = table([load_variant(v) for v in args.variants])
    print(text)
    if args.out:
        (RESULTS / args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
