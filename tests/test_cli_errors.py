"""What a new user hits first: paths, devices and inputs refused before any work, compare's
refusal of results that share only t = 0, atomic outputs, damaged checkpoints, one writer per
output directory, and a resume that keeps its run's t_end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import nncme
from nncme import metrics
from nncme.cli import main
from nncme.config import ConfigError, RunConfig
from nncme.exact import FSPSettings, solve_fsp
from nncme.observers import CHECKPOINT, PREVIOUS_CHECKPOINT
from nncme.results import Result
from nncme.ssa import SSASettings, solve_ssa
from nncme.systems import birth_death

FAST = ["--batch", "200", "--iterations", "5", "--eval-samples", "500", "--quiet"]
TINY = ["--t-end", "0.04", "--dt", "0.01", "--save-every", "0.02", *FAST]


def _error(capsys) -> str:
    """The one line a failed command printed to stderr."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------ compare
def test_compare_refuses_results_that_share_only_t0(tmp_path, capsys):
    fsp, short = str(tmp_path / "fsp"), str(tmp_path / "short")
    assert main(["fsp", "birth_death", "--t-end", "2", "--save-every", "0.5", "--quiet",
                 "--out", fsp]) == 0  # fmt: skip
    assert main(["fsp", "birth_death", "--t-end", "0.05", "--save-every", "0.01", "--quiet",
                 "--out", short]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["compare", fsp, short, "--max-hellinger", "0.02"]) == 2
    err = _error(capsys)
    assert "share no time after t = 0" in err
    assert "A has 5 times on [0, 2], B has 6 times on [0, 0.05]" in err


def test_compare_lists_its_times_and_explains_its_columns(tmp_path, capsys):
    fsp, ssa = str(tmp_path / "fsp"), str(tmp_path / "ssa")
    grid = ["--t-end", "0.5", "--save-every", "0.25", "--quiet"]
    assert main(["fsp", "birth_death", *grid, "--out", fsp]) == 0
    assert main(["ssa", "birth_death", "--times", "0,0.25,0.4", "--trajectories", "200",
                 "--quiet", "--out", ssa]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["compare", fsp, ssa]) == 0
    out = capsys.readouterr().out
    assert "compared at 2 common times: 0, 0.25 (A has 3 on [0, 0.5], B has 3 on [0, 0.4])" in out
    assert "inf where B puts probability on counts to which A gives none" in out
    assert "(not standard errors)" in out and "noise H:" in out
    # an SSA of 200 samples misses counts the exact answer holds: KL(A|B) is inf; the
    # legend's direction is the printed one, KL(B|A), which stays finite
    d = metrics.compare(Result.load(fsp), Result.load(ssa))
    assert np.isinf(d["kl_ab"][-1]).any() and np.isfinite(d["kl_ba"]).all()


def test_compare_names_a_damaged_results_file(tmp_path, capsys):
    out = tmp_path / "fsp"
    assert main(["fsp", "birth_death", "--t-end", "0.5", "--quiet", "--out", str(out)]) == 0
    data = (out / "results.npz").read_bytes()
    (out / "results.npz").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["compare", str(out), str(out)]) == 2
    assert f"{out / 'results.npz'}: not a readable results file" in _error(capsys)


# ------------------------------------------------------------------------------ before any work
@pytest.mark.parametrize("command", ["fsp", "ssa", "run", "study"])
def test_an_unwritable_out_stops_every_command_before_work(tmp_path, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = [command] + (["birth_death"] if command != "study" else [])
    assert main([*args, "--out", str(blocker / "y"), "--quiet"]) == 2
    err = _error(capsys)
    assert f"out: {blocker / 'y'}: cannot write (parent {blocker} is a regular file)" in err
    assert main([*args, "--out", str(blocker), "--quiet"]) == 2
    assert "cannot write (it is a regular file, not a directory)" in _error(capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["compare", "A", "B", "--json", "{blocker}/d.json"], "--json: {blocker}/d.json: cannot"),
        (["compare", "A", "B", "--plot", "{blocker}/c.png"], "--plot: {blocker}/c.png: cannot"),
        (["systems", "birth_death", "--save", "{blocker}/n.toml"], "network file: {blocker}/n"),
    ],
)
def test_other_outputs_are_checked_first(tmp_path, capsys, args, message):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([a.format(blocker=blocker) for a in args]) == 2
    assert message.format(blocker=blocker) in _error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")
@pytest.mark.parametrize("command", ["fsp", "ssa", "run"])
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys, command):
    assert main([command, "birth_death", "--device", "cuda", "--out", str(tmp_path / "x")]) == 2
    assert "device: 'cuda' requested but torch sees no CUDA GPU" in _error(capsys)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        FSPSettings(device="cuda")  # the Python API: when the settings are made


@pytest.mark.parametrize(
    "device, message", [("mps", "nncme runs on cpu or cuda"), ("gpu", "not a")]
)
def test_unknown_devices_are_named(capsys, device, message):
    assert main(["ssa", "birth_death", "--device", device]) == 2
    assert f"device: {message}" in _error(capsys)


def test_a_directory_is_not_a_missing_network_file(tmp_path, capsys):
    for name in ("nets", "nets.toml"):
        (tmp_path / name).mkdir()
        assert main(["fsp", str(tmp_path / name), "--quiet"]) == 2
        assert f"network file: {tmp_path / name} is a directory, not a file" in _error(capsys)
    assert main(["fsp", str(tmp_path / "gone.toml")]) == 2
    assert "no such file" in _error(capsys)
    assert main(["run", "birth_death", "--config", str(tmp_path / "nets")]) == 2
    assert "config: " in _error(capsys)


def test_a_failed_early_start_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert main(["run", "birth_death", "--resume", "--out", str(out), "--quiet"]) == 2
    assert "no checkpoint" in _error(capsys)
    assert main(["fsp", "birth_death", "--max-states", "3", "--out", str(out), "--quiet"]) == 2
    assert "max_states" in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_the_python_api_checks_out_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"out: .*cannot write"):
        nncme.run(birth_death(), RunConfig(out=str(blocker / "van"), quiet=True))
    with pytest.raises(ConfigError, match=r"out: .*cannot write"):
        solve_fsp(birth_death(), settings=FSPSettings(out=str(blocker), quiet=True))
    with pytest.raises(ConfigError, match=r"out: .*cannot write"):
        solve_ssa(birth_death(), settings=SSASettings(out=str(blocker), quiet=True))


# ------------------------------------------------------------------------------ one writer
def test_a_second_process_on_the_same_out_gets_one_line(tmp_path, capsys):
    out = tmp_path / "fsp"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from nncme.paths import OutputDir
            with OutputDir({str(out)!r}):
                print("locked", flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        for command in ("fsp", "run"):
            assert main([command, "birth_death", "--out", str(out), "--quiet"]) == 2
            err = _error(capsys)
            assert f"out: {out} is in use by another nncme run (pid {holder.pid})" in err
    finally:
        holder.communicate("\n", timeout=60)
    assert main(["fsp", "birth_death", "--t-end", "0.1", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".png") == [
        "results.npz",
        "summary.json",
    ]  # the lock file went with the run, and no temporary file is left


# ------------------------------------------------------------------------------ resume
def test_resume_keeps_the_runs_t_end(tmp_path, capsys):
    out = tmp_path / "van"
    cfg = RunConfig(t_end=0.04, dt=0.01, save_every=0.02, batch=200, iterations=5,
                    eval_samples=500, quiet=True, out=str(out))  # fmt: skip
    stopped = nncme.run(birth_death(), cfg, callbacks=[lambda info: info.step < 2])
    assert stopped.result.times.tolist() == pytest.approx([0, 0.02])
    resume = [a for a in TINY if a not in ("--t-end", "0.04")]
    assert main(["run", "birth_death", *resume, "--out", str(out), "--resume"]) == 0
    assert "to t = 0.04," in capsys.readouterr().out  # not birth_death's own t_end
    assert Result.load(out).times.tolist() == pytest.approx([0, 0.02, 0.04])
    assert json.loads((out / "summary.json").read_text())["status"].startswith("completed")


def test_a_damaged_checkpoint_falls_back_to_the_older_one(tmp_path, capsys):
    """checkpoint.pt truncated: the run resumes from checkpoint.prev.pt (t = 0.02) and, as the
    checkpoint holds everything, recomputes t = 0.04 exactly as the first run did."""
    out = tmp_path / "van"
    assert main(["run", "birth_death", *TINY, "--out", str(out)]) == 0
    first = Result.load(out)
    checkpoint = out / CHECKPOINT
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    longer = [a if a != "0.04" else "0.06" for a in TINY]
    assert main(["run", "birth_death", *longer, "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{checkpoint} is damaged or truncated" in err
    assert f"resuming from the older {out / PREVIOUS_CHECKPOINT} (t = 0.02)" in err
    second = Result.load(out)
    assert second.times.tolist() == pytest.approx([0, 0.02, 0.04, 0.06])
    np.testing.assert_array_equal(second.marginals[:3], first.marginals)
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (out / name).write_bytes(b"")
    assert main(["run", "birth_death", *longer, "--out", str(out), "--resume"]) == 2
    err = _error(capsys)
    assert f"{checkpoint} is damaged or truncated" in err and "start the run again" in err
    (out / PREVIOUS_CHECKPOINT).unlink()
    assert main(["run", "birth_death", *longer, "--out", str(out), "--resume"]) == 2
    assert "no older checkpoint" in _error(capsys)
