"""nncme: neural-network solutions of the chemical master equation.

A variational autoregressive network carries the joint distribution P(n, t) of all species
counts through time; exact (FSP) and stochastic (SSA) solvers in the same package check it.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

from .network import (
    CompiledNetwork,
    Complement,
    Exponential,
    Hill,
    NetworkError,
    PiecewiseConstant,
    RateFunction,
    Reaction,
    ReactionNetwork,
    Sinusoidal,
    Species,
    Table,
)
from .ops import _ext

try:  # one home for the version: pyproject.toml, through the installed package's metadata
    __version__ = metadata.version("nncme")
except (
    metadata.PackageNotFoundError
):  # pragma: no cover - the source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "CompiledNetwork",
    "Complement",
    "Exponential",
    "Hill",
    "NetworkError",
    "PiecewiseConstant",
    "RateFunction",
    "Reaction",
    "ReactionNetwork",
    "RunConfig",
    "Sinusoidal",
    "Species",
    "Table",
    "__version__",
    "build_info",
    "run",
]


def build_info() -> dict[str, Any]:
    """How nncme was built and what it runs on.

    Returns:
        torch version built against and running, whether the extension loaded, CUDA kernels
        built or not, CUDA archs, OpenMP, and the torch threads available.
    """
    ext = _ext.extension()
    info: dict[str, Any] = {
        "nncme": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "extension": ext is not None,
        "threads": torch.get_num_threads(),
    }
    if ext is None:
        info["extension_error"] = _ext.extension_error()
        return info
    built = ext.build_info()
    info.update(
        built_against_torch=built["torch_version"],
        cuda=built["cuda"],
        cuda_archs=built["cuda_archs"],
        openmp=built["openmp"],
        compiler=built.get("compiler", ""),
    )
    return info


def __getattr__(name: str) -> Any:
    """`nncme.run` and `nncme.RunConfig`, imported on first use (they pull in the trainer)."""
    if name == "run":
        from .api import run

        return run
    if name == "RunConfig":
        from .config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'nncme' has no attribute {name!r}")
