"""One settings style for `nncme run`, `nncme fsp` and `nncme ssa`: shared names, generated
flags, config files, errors, and the one parser of a list of times."""

from __future__ import annotations

import dataclasses
import json
import typing

import numpy as np
import pytest

from nncme import systems
from nncme.cli import build_parser, main
from nncme.config import (
    SHARED,
    ConfigError,
    RunConfig,
    parse_times,
    settings_from_args,
)
from nncme.exact import FSPSettings, solve_fsp
from nncme.results import Result
from nncme.ssa import SSASettings, solve_ssa

COMMANDS = {"run": RunConfig, "fsp": FSPSettings, "ssa": SSASettings}


def _subparser(command: str):
    return build_parser()._subparsers._group_actions[0].choices[command]


@pytest.mark.parametrize("cls", COMMANDS.values(), ids=COMMANDS.keys())
def test_shared_ideas_have_one_name_type_and_default(cls):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, spec in SHARED.items():
        assert name in fields, f"{cls.__name__} lacks the shared field {name}"
        assert hints[name] == spec.type, name
        assert fields[name].default == spec.default, name
    assert not {"progress", "num_times"} & set(fields)  # the old names are gone


def test_shared_ideas_cover_what_every_command_has():
    common = set.intersection(*({f.name for f in dataclasses.fields(c)} for c in COMMANDS.values()))
    assert common == set(SHARED)
    assert {"quiet", "threads", "seed", "device", "t_end", "times", "save_every", "out"} == common


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_is_a_flag_and_every_flag_a_field(command):
    flags = {s for a in _subparser(command)._actions for s in a.option_strings}
    for f in dataclasses.fields(COMMANDS[command]):
        flag = "--" + f.name.replace("_", "-")
        assert flag in flags, f"nncme {command} has no {flag}"
        if f.default is True:  # on by default: --x/--no-x
            assert "--no-" + flag[2:] in flags
    fields = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(COMMANDS[command])}
    extra = {s for s in flags if not s.startswith("--no-")} - fields
    assert extra == {"-h", "--help", "--config"}


def test_flags_become_settings():
    args = _subparser("ssa").parse_args(
        ["birth_death", "--seed", "3", "--no-keep-joint", "--times", "0:1:3", "--quiet"]
    )
    settings = settings_from_args(SSASettings, args)
    assert settings == SSASettings(seed=3, keep_joint=False, times=[0.0, 0.5, 1.0], quiet=True)
    args = _subparser("fsp").parse_args(["birth_death", "--method", "BDF", "--rtol", "1e-8"])
    assert settings_from_args(FSPSettings, args) == FSPSettings(method="BDF", rtol=1e-8)


def test_one_config_file_serves_fsp_and_ssa(tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text(
        "t_end = 1.0\nsave_every = 0.25\nseed = 5\nthreads = 1\nquiet = true\n"
        "[ssa]\ntrajectories = 500\nkeep_joint = false\n"
        "[fsp]\nmethod = 'expm'\n"
        "[run]\nbatch = 64\n"
    )
    fsp, ssa = tmp_path / "fsp", tmp_path / "ssa"
    assert main(["fsp", "birth_death", "--config", str(cfg), "--out", str(fsp)]) == 0
    assert main(["ssa", "birth_death", "--config", str(cfg), "--out", str(ssa), "--seed", "6"]) == 0
    a, b = Result.load(fsp), Result.load(ssa)
    np.testing.assert_allclose(a.times, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(b.times, a.times)
    assert a.summary["settings"]["method"] == "expm" and a.summary["integrator"] == "expm"
    # the command line (--seed 6) overrides the file (seed = 5), which overrides the defaults
    assert b.summary["ssa"]["seed"] == 6 and b.summary["samples"] == 500
    assert b.summary["settings"]["keep_joint"] is False and b.joint is None
    assert RunConfig.from_toml(cfg).batch == 64 and RunConfig.from_toml(cfg).seed == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["fsp", "--rtol", "0"], "rtol: must be finite and > 0"),
        (["fsp", "--max-states", "0"], "max_states: must be an integer >= 1"),
        (["fsp", "--times", "1,0.5"], "times: must be strictly increasing"),
        (["fsp", "--save-every", "-1"], "save_every: must be finite and > 0"),
        (["ssa", "--trajectories", "0"], "trajectories: must be an integer >= 1"),
        (["ssa", "--threads", "-2"], "threads: must be an integer >= 0"),
        (["ssa", "--device", "gpu"], "device: not a torch device"),
        (["ssa", "--times", "0:1"], "times: expected a comma list"),
        (["ssa", "--boundary-warn", "2"], "boundary_warn: must be finite and in [0, 1]"),
        (["run", "--times", "0:1:0"], "times: NUM in START:STOP:NUM must be an integer >= 1"),
    ],
)
def test_bad_values_exit_2_naming_the_field(tmp_path, capsys, args, message):
    command, *rest = args
    code = main([command, "birth_death", "--quiet", "--out", str(tmp_path), *rest])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["fsp", "ssa"])
def test_unknown_config_key_is_named(tmp_path, capsys, command):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[{command}]\nqueit = true\n")
    assert main([command, "birth_death", "--config", str(cfg)]) == 2
    assert "did you mean 'quiet'" in capsys.readouterr().err


def test_python_errors_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError, match="method: must be one of"):
        FSPSettings(method="rk45")
    with pytest.raises(ValueError, match="seed: must be an integer >= 0"):
        SSASettings(seed=-1)
    with pytest.raises(ConfigError, match="unknown option 'progress'"):
        SSASettings.from_dict({"progress": False})
    assert SSASettings(trajectories=2.0).trajectories == 2  # whole floats (TOML 1e5) are ints


@pytest.mark.parametrize(
    "text, times",
    [
        ("0,0.5,2", [0.0, 0.5, 2.0]),
        (" 1.5 ", [1.5]),
        ("0:2:5", [0.0, 0.5, 1.0, 1.5, 2.0]),
        ("1:1:1", [1.0]),
        ([0, 0.5], [0.0, 0.5]),
    ],
)
def test_times_forms(text, times):
    assert parse_times(text) == pytest.approx(times)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b", "expected a comma list"),
        ("0:1", "expected a comma list"),
        ("0:1:0", "must be an integer >= 1"),
        ("0:1:2.5", "must be an integer >= 1"),
        ("", "give at least one time"),
        ("1,0.5", "strictly increasing"),
        ("1,1", "strictly increasing"),
        ("-1,2", "finite and >= 0"),
        ("0,inf", "finite and >= 0"),
        (["x"], "list of numbers"),
    ],
)
def test_times_errors(text, message):
    with pytest.raises(ConfigError, match=f"times: .*{message}"):
        parse_times(text)


def test_record_times():
    assert FSPSettings().record_times(2.0) == pytest.approx(np.linspace(0, 2, 11))
    assert SSASettings(save_every=0.5).record_times(1.0) == pytest.approx([0, 0.5, 1.0])
    assert SSASettings(t_end=1.0, save_every=0.4).record_times(9) == pytest.approx([0, 0.4, 0.8, 1])
    assert SSASettings(times="0.5,3").record_times(1.0) == [0.5, 3.0]  # times alone: as given
    assert SSASettings(times="0,0.5,3", t_end=1).record_times(9) == [0.0, 0.5, 1.0]
    # run rounds its default save interval to whole steps
    expected = [0.09 * k for k in range(1, 12)] + [1.0]  # t_end / 10 = 0.1 -> 3 steps of 0.03
    assert RunConfig().save_times(1.0, dt=0.03) == pytest.approx(expected)


def test_solvers_take_times_and_out_from_settings(tmp_path):
    net = systems.birth_death()
    settings = SSASettings(trajectories=300, t_end=1.0, save_every=0.5, quiet=True, threads=1)
    a, b = solve_ssa(net, settings=settings), solve_ssa(net, settings=settings)
    np.testing.assert_array_equal(a.marginals, b.marginals)  # seed 0 by default: reproducible
    assert a.summary["ssa"]["seed"] == 0 and list(a.times) == [0.0, 0.5, 1.0]
    out = tmp_path / "fsp"
    solve_fsp(net, None, FSPSettings(t_end=1.0, out=str(out), plots=False, quiet=True))
    saved = json.loads((out / "summary.json").read_text())
    assert saved["settings"]["seed"] == 0 and not (out / "marginals.png").exists()
