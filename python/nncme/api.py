"""`nncme.run`: a VAN run from Python, with the same settings as `nncme run`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .config import RunConfig
from .evolve import Evolution, RunOutput, StepInfo
from .models import AutoregressiveModel

__all__ = ["run"]


def run(
    network: Any,
    config: RunConfig | None = None,
    *,
    start: Any | None = None,
    model: AutoregressiveModel | None = None,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    **overrides: Any,
) -> RunOutput:
    """Track P(n, t) of a network with a VAN from t = 0 to t_end.

    Args:
        network: a ReactionNetwork, or a catalogue name / network file as `nncme run` takes.
        config: the settings (`RunConfig`); keyword overrides are applied on top, with the
            same names (e.g. `run(net, batch=2000, dt=0.005)`).
        start: the distribution at t = 0 (default: the config's `initial`).
        model: a VAN to train (default: built from the config).
        callbacks: called with a `StepInfo` after every time step.

    Returns:
        RunOutput: the `Result` (marginals, moments, ... at t = 0 and every save time), the
        trained model, the per-step history and the output directory.

    Example:
        >>> import nncme
        >>> out = nncme.run("birth_death", t_end=2.0, quiet=True)  # doctest: +SKIP
        >>> out.result.means[-1]  # doctest: +SKIP
    """
    if isinstance(network, str):
        from .io import resolve_network

        network = resolve_network(network)
    config = config or RunConfig()
    if overrides:
        config = config.replace(**overrides)
    return Evolution(network, config, start=start, model=model, callbacks=callbacks).run()
