"""benchmarks/gpu_check.sh, the prepared GPU run, cannot run here; its dry run can: every step
listed with a timeout, the timeouts summing to under 9 minutes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_lists_every_step_within_the_budget():
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    steps = re.findall(r"^\s*\d+\. (\S+)\s+timeout\s+(\d+) s$", out.stdout, re.MULTILINE)
    names = [name for name, _ in steps]
    for bench in ("nade", "transition", "fisher_solve", "ssa", "trainer"):
        assert f"bench_{bench}" in names
        assert f"benchmarks/bench_{bench}.py --device cuda" in out.stdout
    assert "-m cuda tests/" in out.stdout
    assert sum(int(limit) for _, limit in steps) < 540
