"""Shared pieces of the operator benchmarks: timing, peak memory, device names, JSON output.

Every benchmark checks correctness before it times anything, warms up, synchronises the GPU,
reports medians of the fused operator and of its plain-PyTorch reference side by side, and writes
`benchmarks/results/<bench>_<device>.json` with the device's name inside.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# NNCME_BENCH_RESULTS redirects the JSON (smoke runs that must not overwrite the measured files).
RESULTS = Path(os.environ.get("NNCME_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
# Load average when the benchmark started: on a shared machine the numbers depend on it.
LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], object], device: torch.device | str, repeats: int, warmup: int = 1
) -> tuple[float, list[float]]:
    """Median wall time of fn() over `repeats` runs after `warmup` runs (GPU synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def repeats_for(seconds_per_call: float, budget: float = 4.0, most: int = 20) -> int:
    """As many repeats as fit a time budget, at least 1 (slow references run once or twice)."""
    return max(1, min(most, int(budget / max(seconds_per_call, 1e-6))))


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return name


def device_info(device: torch.device | str) -> dict:
    """The device's name and what else decides the numbers (threads, load, versions)."""
    device = torch.device(device)
    info = {
        "device": device.type,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "load_average_1min_start": LOAD_AT_START,
        "load_average_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["name"] = props.name
        info["cuda"] = torch.version.cuda
        info["multiprocessors"] = props.multi_processor_count
    else:
        info["name"] = f"{info['cpu']} ({info['cpu_threads']} threads)"
    return info


def cuda_peak_mb(fn: Callable[[], object], device: torch.device | str) -> float:
    """GPU memory fn() allocates at its peak beyond what was allocated before (its inputs), MiB."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def input_mb(args) -> float:
    """MiB held by the distinct tensors among args."""
    seen, total = set(), 0
    for a in args:
        if isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() not in seen:
            seen.add(a.untyped_storage().data_ptr())
            total += a.untyped_storage().nbytes()
    return total / 2**20


def cpu_peak_mb(fn: Callable[[], object], args=()) -> float | None:
    """Peak memory of fn() beyond its inputs `args`, in MiB: the profiler's memory timeline
    (every allocation and free through torch's CPU allocator, with the inputs the ops read
    counted as live from the start) minus the inputs. Buffers a kernel takes with plain malloc
    (per-thread scratch) are not seen; None where this torch's profiler cannot build the
    timeline (a private API)."""
    try:
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        ) as prof:
            fn()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(
            torch.device("cpu")
        )
        peak = max((sum(row) for row in sizes), default=0) / 2**20
        return max(0.0, peak - input_mb(args))
    except Exception as exc:  # pragma: no cover - depends on torch internals
        print(f"(no CPU memory timeline: {type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def git_commit() -> str | None:
    """The short commit of this checkout, "+dirty" where python/ or csrc/ has changes."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(  # pathspecs from the top of the work tree, not from benchmarks/
            ["git", "status", "--porcelain", "--", ":/python", ":/csrc"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def results_path(bench: str, device: torch.device | str, tag: str = "") -> Path:
    """benchmarks/results/<bench>_<device>[_<tag>].json."""
    suffix = f"_{tag}" if tag else ""
    return RESULTS / f"{bench}_{torch.device(device).type}{suffix}.json"


def write_results(bench: str, device: torch.device | str, payload: dict, tag: str = "") -> Path:
    """benchmarks/results/<bench>_<device>[_<tag>].json with the device description."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = results_path(bench, device, tag)
    data = {"benchmark": bench, **device_info(device), **payload}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec)."""
    widths = [max(len(h), 10) for _, h, _ in columns]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for row in rows:
        cells = []
        for (key, _, fmt), w in zip(columns, widths):
            value = row.get(key)
            text = "-" if value is None else format(value, fmt)
            cells.append(text.rjust(w))
        print("  ".join(cells))
