"""nncme's build backend: scikit-build-core, after a check that the build can work at all.

nncme's C++ operators are compiled against the torch they will run with (its headers, its C++
ABI), so the build must see the torch that is installed where nncme goes. A default
`pip install .` builds in an isolated environment holding only [build-system] requires, which
has no torch (torch is not listed there on purpose: pip would fetch another torch, often a
multi-GB CUDA one, and build against it). So every wheel hook first checks that torch, the build
requirements and a CMake are importable or found here; if not, it stops at once, before pip
resolves nncme's dependencies (and downloads torch), with the commands that work. The sdist hooks
need no torch and go straight through.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # scikit-build-core depends on tomli there
        import tomli as tomllib
except ImportError:  # Python 3.10 without scikit-build-core: the check says what to install
    tomllib = None

_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _requirements() -> tuple[list[str], str, str]:
    """nncme's torch requirement, the [build-system] requires and the CMake version, from
    pyproject.toml."""
    if tomllib is None:
        return "torch", ["scikit-build-core", "pybind11"], ""
    data = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))
    torch = next(r for r in data["project"]["dependencies"] if r.startswith("torch"))
    cmake = data["tool"]["scikit-build"]["cmake"]["version"]
    return torch, list(data["build-system"]["requires"]), cmake


def _unmet(requirements: list[str]) -> list[str]:
    """Those of `requirements` that the Python running this build lacks or has too old."""
    unmet = []
    for text in requirements:
        try:
            from packaging.requirements import Requirement  # scikit-build-core's dependency
        except ImportError:  # no scikit-build-core either: presence is all we can check
            name = text.split(">")[0].split("=")[0].split("<")[0].strip()
            if importlib.util.find_spec(name.replace("-", "_")) is None:
                unmet.append(text)
            continue
        req = Requirement(text)
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(text)
            continue
        if not req.specifier.contains(version, prereleases=True):
            unmet.append(f"{text} (found {version})")
    return unmet


def _cmake_requirements(hook: str, config_settings: Any) -> list[str]:
    """What scikit-build-core asks for besides [build-system] requires: a `cmake` when no
    system CMake is new enough (and `ninja`, which it can do without where make exists)."""
    import scikit_build_core.build as skbuild

    asked = getattr(skbuild, hook)(config_settings)
    return [r for r in asked if r.startswith("cmake")]


def _torch_hidden() -> bool:
    """Whether this interpreter has torch outside the build's isolation: pip isolates a build
    through PYTHONPATH and PYTHONNOUSERSITE, which a fresh interpreter without them escapes."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    try:
        return subprocess.run([sys.executable, "-c", probe], env=env, check=False).returncode == 0
    except OSError:
        return False


def _interpreter() -> str:
    """The Python to name in the advice: this one, unless it is a throwaway build venv (as
    `python -m build` and `uv build` make: build-env-*, .tmp*), which is no use to name. pip
    isolates a build in the user's own interpreter."""
    if Path(sys.prefix).name.startswith(("build-env-", ".tmp")):
        return "python"
    return sys.executable


def _check(requires_hook: str, config_settings: Any) -> None:
    """Stop with the working commands unless torch and every build requirement are here."""
    torch, build, cmake = _requirements()
    unmet = _unmet([torch, *build])
    if importlib.util.find_spec("scikit_build_core") is not None and not unmet:
        unmet = _unmet(_cmake_requirements(requires_hook, config_settings))
    if not unmet:
        return
    hidden = importlib.util.find_spec("torch") is None and _torch_hidden()
    if hidden:
        why = (
            f"torch is installed for {sys.executable}, but this build cannot see it: it runs "
            "in an isolated build environment (pip's default), which holds only the build "
            "requirements"
        )
    else:
        why = f"{sys.executable} lacks {', '.join(unmet)}"
    pip = f"{_interpreter()} -m pip install"
    torch_unmet = any(r.startswith(torch) for r in unmet) and not hidden
    commands = [f'{pip} "{torch}"    # the CPU or CUDA build you want'] if torch_unmet else []
    tools = " ".join(f'"{r}"' for r in [*build, f"cmake{cmake}", "ninja"])
    commands += [f"{pip} {tools}", f"{pip} --no-build-isolation ."]
    print(
        f"\nnncme cannot be built here: {why}.\n"
        "Its C++ operators are compiled against the torch they will run with, so torch must be "
        "installed first and the build must run where it is (--no-build-isolation). Run:\n\n"
        + "".join(f"    {c}\n" for c in commands),
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(1)


# ------------------------------------------------------------------------ PEP 517 / 660 hooks
def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    _check("get_requires_for_build_wheel", config_settings)
    import scikit_build_core.build as skbuild

    return skbuild.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    _check("get_requires_for_build_editable", config_settings)
    import scikit_build_core.build as skbuild

    return skbuild.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Any = None) -> str:
    _check("get_requires_for_build_wheel", config_settings)
    import scikit_build_core.build as skbuild

    return skbuild.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Any = None
) -> str:
    _check("get_requires_for_build_editable", config_settings)
    import scikit_build_core.build as skbuild

    return skbuild.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(
    wheel_directory: str, config_settings: Any = None, metadata_directory: str | None = None
) -> str:
    _check("get_requires_for_build_wheel", config_settings)
    import scikit_build_core.build as skbuild

    return skbuild.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(
    wheel_directory: str, config_settings: Any = None, metadata_directory: str | None = None
) -> str:
    _check("get_requires_for_build_editable", config_settings)
    import scikit_build_core.build as skbuild

    return skbuild.build_editable(wheel_directory, config_settings, metadata_directory)


def get_requires_for_build_sdist(config_settings: Any = None) -> list[str]:
    import scikit_build_core.build as skbuild

    return skbuild.get_requires_for_build_sdist(config_settings)


def build_sdist(sdist_directory: str, config_settings: Any = None) -> str:
    import scikit_build_core.build as skbuild

    return skbuild.build_sdist(sdist_directory, config_settings)
