"""How a VAN moves within one stage of a time step.

`TransitionTarget` computes log (T q_old)(n) at given states and `StageTarget` a convex
combination of such maps (a stage of a Runge–Kutta step); an `Update` fits the model to a
target: `KLUpdate` (reverse KL, or the log-variance divergence, with a torch optimiser) or
`NaturalGradientUpdate` (the same gradient preconditioned by the centred Fisher matrix).
`TDVPRightHandSide` gives d theta/dt from the local generator instead. `FisherSolver` is the
regularised solve both second-order methods share, on `nncme.ops.fisher_solve`.
`fit_enumerated` fits a distribution given on a list of states exactly. The time schemes that
combine these into whole steps are `nncme.steppers`.
"""

from __future__ import annotations

from .gradients import (
    GRADIENTS,
    add_to_parameters,
    flat_grad,
    flat_parameters,
    grad_of_sum,
    per_sample_grads,
    set_flat_parameters,
    use_gram,
)
from .implicit import (
    BDF2Source,
    ImplicitTarget,
    ImplicitUpdate,
    bdf2_coefficients,
    bdf2_error,
    implicit_support,
    local_error,
)
from .linear import CV_GRID, SPACES, CrossValidation, FisherSolver, ScoreSolution, SolveInfo
from .natgrad import NaturalGradientUpdate
from .target import (
    Distribution,
    DivergenceError,
    NonFiniteError,
    StageTarget,
    StepSizeError,
    TargetValues,
    Term,
    TrainingError,
    TransitionTarget,
    check_step_size,
    explore_ahead,
    step_motion,
    transition_support,
)
from .tdvp import TDVPEvaluation, TDVPRightHandSide
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
    "CV_GRID",
    "GRADIENTS",
    "OPTIMIZERS",
    "SPACES",
    "BDF2Source",
    "CrossValidation",
    "Distribution",
    "DivergenceError",
    "FisherSolver",
    "ImplicitTarget",
    "ImplicitUpdate",
    "KLUpdate",
    "NaturalGradientUpdate",
    "NonFiniteError",
    "ScoreSolution",
    "SolveInfo",
    "StageTarget",
    "StepProblem",
    "StepReport",
    "StepSizeError",
    "TDVPEvaluation",
    "TDVPRightHandSide",
    "TargetValues",
    "Term",
    "TrainingError",
    "TransitionTarget",
    "Update",
    "add_to_parameters",
    "bdf2_coefficients",
    "bdf2_error",
    "check_step_size",
    "explore_ahead",
    "fit_enumerated",
    "flat_grad",
    "flat_parameters",
    "grad_of_sum",
    "implicit_support",
    "local_error",
    "make_optimizer",
    "per_sample_grads",
    "set_flat_parameters",
    "step_motion",
    "transition_support",
    "use_gram",
]
