"""The examples gallery: every script runs in quick mode, writes the figures its docstring
names, and prints a check (the largest Hellinger distance against its reference) that agrees
with the results it saved."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from nncme.metrics import compare
from nncme.results import Result

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(EXAMPLES.glob("plot_*.py"))
# "max Hellinger of VAN (van/) against FSP (fsp/) 0.0195 (P_B at t = 0.125)"
CHECK = re.compile(
    r"max Hellinger of \S+ \((\w+)/\) against \S+ \((\w+)/\) ([0-9.]+) \((\S+) at t = (\S+)\)"
)


def test_the_gallery_is_listed():
    assert len(SCRIPTS) >= 3
    listed = (EXAMPLES / "README.md").read_text()
    for script in SCRIPTS:
        assert f"`{script.name}`" in listed, f"{script.name} is missing from examples/README.md"


@pytest.mark.slow  # 3-15 s each, mostly matplotlib drawing 16-species figures
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_gallery_script_in_quick_mode(script, tmp_path, capsys):
    module = runpy.run_path(str(script), run_name="gallery")
    module["main"](["--quick", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    checks = CHECK.findall(text)
    assert checks, f"{script.name} printed no check line:\n{text}"
    for result_dir, reference_dir, value, species, t in checks:
        d = compare(Result.load(tmp_path / reference_dir), Result.load(tmp_path / result_dir))
        assert float(value) == pytest.approx(d["max_hellinger"], abs=5e-5)
        assert species == d["worst"]["species"]
        assert float(t) == pytest.approx(d["worst"]["time"], rel=1e-5)
    figures = re.findall(r"(\w+\.png)", module["__doc__"])
    assert figures, f"{script.name}'s docstring names no figure"
    for name in figures:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
