"""What a new user meets first: the build's advice, `nncme --version`, misspelt system names, the
step count of a run before it starts, and the docstring examples (run here as doctests)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import shlex
import sys
from importlib import metadata
from pathlib import Path

import pytest

import nncme
from nncme import systems
from nncme.cli import MANY_STEPS, build_parser, main
from nncme.evolve import Driver
from nncme.io import resolve_network
from nncme.network import NetworkError

REPO = Path(__file__).resolve().parents[1]


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"nncme {metadata.version('nncme')}\n"
    assert nncme.__version__ == metadata.version("nncme")


# ------------------------------------------------------------------------ misspelt names
def test_a_misspelt_system_gets_a_suggestion():
    with pytest.raises(NetworkError) as info:
        resolve_network("toggle_swich")
    assert str(info.value) == "unknown system 'toggle_swich'; did you mean 'toggle_switch'?"
    with pytest.raises(NetworkError, match="did you mean 'reaction_diffusion'"):
        resolve_network("reaction-diffusion:shape=4")
    with pytest.raises(NetworkError, match="unknown system 'xyz'; the catalogue has: birth_death"):
        systems.get("xyz")  # nothing close: the whole catalogue


def test_a_misspelt_parameter_gets_a_suggestion():
    with pytest.raises(NetworkError) as info:
        systems.get("cascade", l=3)  # the parameter is L
    assert str(info.value) == "cascade: unknown parameter 'l'; did you mean 'L'?"


@pytest.mark.parametrize("command", ["show", "systems", "fsp", "ssa", "run"])
def test_every_command_suggests_the_system(command, capsys):
    assert main([command, "toggle_swich"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"nncme {command}: error: unknown system 'toggle_swich'; did you mean 'toggle_switch'?\n"
    )


# ------------------------------------------------------------------------ the run's step count
def _stop_at_once(monkeypatch):
    """Driver.run interrupted before the first step: what `nncme run` printed before it."""

    def interrupted(self, callbacks=()):
        raise KeyboardInterrupt

    monkeypatch.setattr(Driver, "run", interrupted)


def test_run_warns_of_many_steps_before_it_starts(tmp_path, monkeypatch, capsys):
    _stop_at_once(monkeypatch)
    # drawn fits (the toggle switch's box is summed by default, and steps exponentially)
    args = ["run", "toggle_switch", "--t-end", "5", "--enumerate-states", "0", "--quiet"]
    assert main([*args, "--out", str(tmp_path)]) == 130
    out, err = capsys.readouterr()
    # the network's dt: 5 / 0.0005; steps grow up to the time between saves, 5 / 10
    assert "10,000 steps of dt 0.0005 (grown where q moves slowly, up to 0.5) to t = 5" in out
    warning = err.splitlines()[0]
    assert warning.startswith(
        "nncme run: warning: 10,000 steps of dt 0.0005, the network's default (fewer where "
        "steps grow), each 2 fits "
        "(heun; implicit where stiff) of up to 60 iterations. Fewer steps: a larger --dt"
    )
    assert "--integrator euler" in warning


def test_run_names_only_the_options_that_shorten_it(tmp_path, monkeypatch, capsys):
    _stop_at_once(monkeypatch)
    args = ["run", "toggle_switch", "--t-end", "5", "--dt", "0.001", "--integrator", "implicit"]
    assert main([*args, "--quiet", "--out", str(tmp_path)]) == 130
    warning = capsys.readouterr().err.splitlines()[0]
    assert "5,000 steps of dt 0.001 (fewer where steps grow), each 1 fit (implicit)" in warning
    assert "implicit steps take any dt" in warning and "--integrator" not in warning


def test_run_of_exponential_steps_starts_without_a_warning(tmp_path, monkeypatch, capsys):
    """Schlögl's 793 states are summed, so `auto` steps exponentially: 100,000 steps of its dt
    are where the steps start, not what they cost (its run to t = 1 takes about 25)."""
    _stop_at_once(monkeypatch)
    args = ["run", "schlogl", "--t-end", "1", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 130
    out, err = capsys.readouterr()
    assert "100,000 steps of dt 1e-05" in out and "warning" not in err
    assert main([*args[:-2], "--max-dt", "0", "--out", str(tmp_path / "fixed")]) == 130
    assert "100,000 steps of dt 1e-05" in capsys.readouterr().err  # steps of dt: warned


def test_run_of_at_most_2000_steps_starts_without_a_warning(tmp_path, monkeypatch, capsys):
    _stop_at_once(monkeypatch)
    args = ["run", "toggle_switch", "--t-end", "5", "--dt", "0.0025", "--enumerate-states", "0"]
    assert main([*args, "--quiet", "--out", str(tmp_path)]) == 130
    out, err = capsys.readouterr()
    assert "2,000 steps of dt 0.0025" in out and "warning" not in err


def _quick_start() -> list[list[str]]:
    """The argument lists of the `nncme` commands in the README's first code block of "Using it"."""
    block = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Using it\n")[1]
    block = block.split("```")[1]
    return [
        shlex.split(line, comments=True)[1:]
        for line in block.splitlines()
        if line.startswith("nncme ")
    ]


def test_the_quick_start_parses_and_its_runs_are_short(monkeypatch, tmp_path, capsys):
    commands = _quick_start()
    assert [c[0] for c in commands].count("run") >= 2
    parser = build_parser()
    _stop_at_once(monkeypatch)
    monkeypatch.chdir(REPO)  # the example files' paths are the repository's
    for argv in commands:
        parser.parse_args(argv)
        if argv[0] == "run" and "--resume" not in argv:
            assert main([*argv, "--out", str(tmp_path / "van")]) == 130
            out, err = capsys.readouterr()
            steps = int(out.split(" steps")[0].rsplit(" ", 1)[1].replace(",", ""))
            assert steps <= MANY_STEPS and "warning" not in err, (argv, out, err)


@pytest.mark.filterwarnings("ignore:step")  # three iterations per fit: it counts, not fits
def test_a_resumed_run_counts_the_steps_left(tmp_path, capsys):
    tiny = ["--dt", "0.01", "--batch", "100", "--iterations", "3", "--eval-samples", "200"]
    out = str(tmp_path / "van")
    assert main(["run", "birth_death", "--t-end", "0.02", *tiny, "--quiet", "--out", out]) == 0
    capsys.readouterr()
    args = ["run", "birth_death", "--t-end", "0.05", *tiny, "--quiet", "--out", out, "--resume"]
    assert main(args) == 0
    assert "5 steps (3 left) of dt 0.01" in capsys.readouterr().out


# ------------------------------------------------------------------------ docstring examples
def _modules_with_examples() -> list[str]:
    finder = doctest.DocTestFinder()
    names = []
    for info in pkgutil.walk_packages(nncme.__path__, "nncme."):
        module = importlib.import_module(info.name)
        if any(test.examples for test in finder.find(module)):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    """Every `>>>` example of the package runs as written (an expensive one says +SKIP)."""
    monkeypatch.chdir(tmp_path)  # where an example writes files
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_public_api_has_running_examples():
    assert {"nncme.api", "nncme.systems"} <= set(_modules_with_examples())


# ------------------------------------------------------------------------ the build's advice
def _backend():
    path = REPO / "build_backend" / "nncme_backend.py"
    spec = importlib.util.spec_from_file_location("nncme_backend", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_check_passes_where_the_build_works():
    backend = _backend()
    backend._check("get_requires_for_build_wheel", None)  # this environment built nncme


def test_the_build_check_names_what_is_missing_and_the_commands(monkeypatch, capsys):
    backend = _backend()
    torch, build, cmake = backend._requirements()
    assert torch.startswith("torch>=") and "scikit-build-core>=0.10" in build
    missing = "nncme-no-such-package>=1"
    monkeypatch.setattr(backend, "_requirements", lambda: (torch, [*build, missing], cmake))
    with pytest.raises(SystemExit) as info:
        backend._check("get_requires_for_build_wheel", None)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"nncme cannot be built here: {sys.executable} lacks {missing}." in err
    pip = f"    {sys.executable} -m pip install"
    tools = " ".join(f'"{r}"' for r in [*build, missing, f"cmake{cmake}", "ninja"])
    # torch is here, so the advice is the build tools, then the build in this environment
    assert err.rstrip().endswith(f"Run:\n\n{pip} {tools}\n{pip} --no-build-isolation .")
