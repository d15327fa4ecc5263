"""How a VAN moves from one time step to the next.

`TransitionTarget` computes log (T q_old)(n) at given states; an `Update` changes the model to
fit it (`KLUpdate`: reverse KL with a torch optimiser; natural gradient and TDVP plug in as
further updates); `fit_enumerated` fits a distribution given on a list of states exactly.
"""

from __future__ import annotations

from .target import (
    Distribution,
    NonFiniteError,
    StepSizeError,
    TargetValues,
    TrainingError,
    TransitionTarget,
    check_step_size,
    transition_support,
)
from .updates import (
    OPTIMIZERS,
    KLUpdate,
    StepProblem,
    StepReport,
    Update,
    fit_enumerated,
    make_optimizer,
)

__all__ = [
    "OPTIMIZERS",
    "Distribution",
    "KLUpdate",
    "NonFiniteError",
    "StepProblem",
    "StepReport",
    "StepSizeError",
    "TargetValues",
    "TrainingError",
    "TransitionTarget",
    "Update",
    "check_step_size",
    "fit_enumerated",
    "make_optimizer",
    "transition_support",
]
