"""`nncme run` and `nncme study` from the command line: options, config files, errors, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nncme.cli import main
from nncme.results import Result

TINY = ["--t-end", "0.04", "--dt", "0.01", "--batch", "200", "--iterations", "5", "--quiet"]


def test_run_writes_a_result_that_compare_reads(tmp_path, capsys):
    out = tmp_path / "van"
    assert main(["run", "birth_death", *TINY, "--eval-samples", "500", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "van birth_death" in text and "wrote" in text
    result = Result.load(out)
    assert result.method == "van" and result.times[-1] == pytest.approx(0.04)
    assert main(["fsp", "birth_death", "--times", ",".join(map(str, result.times)),
                 "--out", str(tmp_path / "fsp"), "--quiet"]) == 0  # fmt: skip
    assert main(["compare", str(tmp_path / "fsp"), str(out), "--max-hellinger", "0.5"]) == 0


def test_config_file_uses_the_same_names(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('model = "nade"\nhidden = 8\nbatch = 64\nsave_every = 0.02\n')
    out = tmp_path / "van"
    code = main(["run", "birth_death", "--config", str(cfg), *TINY, "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    # the file set hidden and save_every, the command line overrode batch
    assert summary["settings"]["hidden"] == 8 and summary["settings"]["batch"] == 200
    assert summary["times"] == pytest.approx([0, 0.02, 0.04])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch", "0"], "batch: must be an integer >= 1"),
        (["--config", "missing.toml"], "no such file"),
        (["--model", "transformer", "--hidden", "10", "--heads", "4"], "multiple of heads"),
        (["--dt", "5"], "dt: 5 is larger than t_end"),
        (["--resume"], "no checkpoint"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, args, message):
    code = main(["run", "birth_death", "--t-end", "0.05", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_unknown_config_key_is_named(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text("bach = 3\n")
    assert main(["run", "birth_death", "--config", str(cfg)]) == 2
    assert "did you mean 'batch'" in capsys.readouterr().err


def test_step_size_failure_exits_1(tmp_path, capsys):
    """TDVP's flow has no saturated form of the explicit map: too large a dt stops it."""
    code = main(["run", "birth_death", "--t-end", "0.5", "--dt", "0.1", "--quiet",
                 "--optimizer", "tdvp", "--out", str(tmp_path)])  # fmt: skip
    assert code == 1 and "use dt <=" in capsys.readouterr().err


def test_resume_extends_a_finished_run(tmp_path):
    out = str(tmp_path / "van")
    assert main(["run", "birth_death", *TINY, "--out", out]) == 0
    first = Result.load(out)
    longer = [a if a != "0.04" else "0.06" for a in TINY]
    assert main(["run", "birth_death", *longer, "--out", out, "--resume"]) == 0
    second = Result.load(out)
    assert second.times[-1] == pytest.approx(0.06)
    np.testing.assert_array_equal(second.marginals[: len(first.times) - 1],
                                  first.marginals[:-1])  # fmt: skip


def test_study_smoke(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        "t_end = 0.02\ndt = 0.005\nsave_every = 0.01\nbatch = 100\niterations = 2\n"
        f"out = '{tmp_path / 'elsewhere'}'\n"  # the study keeps its own layout, and says so
    )
    code = main(["study", "--out", str(tmp_path / "study"), "--config", str(cfg), "--quiet"])
    assert code == 0
    text, err = capsys.readouterr()
    assert "max Hellinger" in text and "Hellinger" in text
    assert "in --config is ignored" in err and not (tmp_path / "elsewhere").exists()
    study = tmp_path / "study"
    assert {p.name for p in study.iterdir()} == {"van", "fsp", "comparison.png", "distances.json"}
    van, fsp = Result.load(study / "van"), Result.load(study / "fsp")
    assert (van.method, fsp.method) == ("van", "fsp")
    assert (study / "van" / "log.jsonl").exists()
    np.testing.assert_array_equal(van.times, fsp.times)
    assert json.loads((study / "distances.json").read_text())["species"] == fsp.species
