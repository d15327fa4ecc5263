"""Loading the compiled extension `nncme._C`, and which operators have kernels where.

`import torch` must come first: it loads libc10 and libtorch, which nncme._C links against.
With NNCME_REQUIRE_EXTENSION=1 (as CI sets it) a missing or broken extension is an error,
never a quiet fallback to the reference operators.
"""

from __future__ import annotations

import os
import warnings

import torch

__all__ = ["extension", "extension_error", "force_reference", "has_kernel"]

_C = None
_error: str | None = None
try:
    from .. import _C  # type: ignore[attr-defined,no-redef]
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _error = f"{type(exc).__name__}: {exc}"
    if os.environ.get("NNCME_REQUIRE_EXTENSION", "0") == "1":
        raise ImportError(
            f"nncme._C could not be loaded ({_error}) and NNCME_REQUIRE_EXTENSION=1. Rebuild with "
            "`pip install --no-build-isolation -e .` against the installed torch."
        ) from exc
    warnings.warn(
        f"nncme._C could not be loaded ({_error}); using the plain-PyTorch reference operators.",
        stacklevel=2,
    )


def extension():
    """The loaded `nncme._C` module, or None."""
    return _C


def extension_error() -> str | None:
    """Why the extension did not load, or None."""
    return _error


def force_reference() -> bool:
    """NNCME_FORCE_REFERENCE=1 routes every operator to its reference."""
    return os.environ.get("NNCME_FORCE_REFERENCE", "0") == "1"


def has_kernel(op: str, device: torch.device | str) -> bool:
    """Whether torch.ops.nncme.<op> has a compiled kernel for this device type."""
    if _C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(torch.device(device).type)
    if key is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"nncme::{op}", key)
    except RuntimeError:
        return False
