"""How a VAN moves from one time step to the next.

`TransitionTarget` computes log (T q_old)(n) at given states (`HeunTarget` the corrector of
the second-order step); an `Update` changes the model to
fit it: `KLUpdate` (reverse KL with a torch optimiser), `NaturalGradientUpdate` (the same
gradient preconditioned by the centred Fisher matrix) or `TDVPUpdate` (d theta/dt from the
local generator, integrated by `Euler`, `Heun` or `RK4`, optionally with adaptive steps).
`FisherSolver` is their shared regularised solve on `nncme.ops.fisher_solve`, and
`per_sample_grads` their per-sample gradients. `fit_enumerated` fits a distribution given on
a list of states exactly.
"""

from __future__ import annotations

from .gradients import (
    GRADIENTS,
    add_to_parameters,
    flat_parameters,
    nade_gram,
    per_sample_grads,
    set_flat_parameters,
    use_gram,
)
from .linear import CV_GRID, SPACES, CrossValidation, FisherSolver, GramSolution, SolveInfo
from .natgrad import NaturalGradientUpdate
from .target import (
    Distribution,
    HeunTarget,
    NonFiniteError,
    StepSizeError,
    TargetValues,
    TrainingError,
    TransitionTarget,
    check_step_size,
    transition_support,
)
from .tdvp import (
    INTEGRATORS,
    RK4,
    Euler,
    Heun,
    Integrator,
    TDVPEvaluation,
    TDVPRightHandSide,
    TDVPUpdate,
    make_integrator,
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
    "CV_GRID",
    "GRADIENTS",
    "INTEGRATORS",
    "OPTIMIZERS",
    "RK4",
    "SPACES",
    "CrossValidation",
    "Distribution",
    "Euler",
    "FisherSolver",
    "GramSolution",
    "Heun",
    "HeunTarget",
    "Integrator",
    "KLUpdate",
    "NaturalGradientUpdate",
    "NonFiniteError",
    "SolveInfo",
    "StepProblem",
    "StepReport",
    "StepSizeError",
    "TDVPEvaluation",
    "TDVPRightHandSide",
    "TDVPUpdate",
    "TargetValues",
    "TrainingError",
    "TransitionTarget",
    "Update",
    "add_to_parameters",
    "check_step_size",
    "fit_enumerated",
    "flat_parameters",
    "make_integrator",
    "make_optimizer",
    "nade_gram",
    "per_sample_grads",
    "set_flat_parameters",
    "transition_support",
    "use_gram",
]
