"""The regularised least-squares solve shared by natural gradient and TDVP: one path, through
`nncme.ops.fisher_solve`.

Both solve (S + lambda I) x = b with the centred, weighted Fisher matrix
S = sum_n w_n (O_n - Obar)(O_n - Obar)^T of the score vectors O (N, P) at N distinct states and
b = sum_n w_n (O_n - Obar)(v_n - vbar). `FisherSolver.solve_scores` is the one entry point the
updates call: from the model and the states it takes either the Gram matrix O O^T from the
model's closed form (`fisher_solve.gram`: sample space, no (N, P) matrix; the default for a NADE
with more parameters than states) or the score vectors themselves (`fisher_solve`: parameter
space when P <= N, sample space through Woodbury otherwise).

The shift lambda, in one place. This class chooses the lambda to ask for: fixed
(`adaptive=False`), or relative to the mean non-zero eigenvalue of S (`adaptive=True`, the
default): lambda = shift * tr(S) / min(N - 1, P), so the conditioning of (S + lambda I) stays
about the same as the gradients grow or shrink during a run; or, with `cv=True` (TDVP), the
relative shift of a grid that predicts v best at held-out states (`cross_validate`). The
operator raises the lambda it is given where a Cholesky factorisation fails (x10, at most
`max_raises` times; from 0 to a rounding error of S) and reports the value it used
(`SolveInfo.shift`, logged per step).

Cross-validated shift. With fewer states than parameters the least-squares fit interpolates v
at the states (residual 0) and nothing constrains x elsewhere; a small fixed shift then
follows the sampling noise. The caller deals its distinct states into folds (a state drawn
often then sits in one fold only, so each fit is scored at states it has not seen, which is
where an interpolating fit goes wrong), each fold's fit is scored on the others at every grid
shift, and the shift with the least mean held-out relative misfit is used for the solve on all
states. A held-out misfit >= 1 at every shift says the fit predicts nothing beyond its own
states; the largest shift then moves x only a little, along O_c^T v_c.

Fallback. When the operator cannot factor the system even after its raises (it raises
`torch.linalg.LinAlgError`, and only then), the same Tikhonov solution comes from an
eigendecomposition (Gram path) or an SVD (score path), which need no factorisation;
`SolveInfo.fallback` says so, the step's log counts it, and a warning is issued. NaN or inf in
the inputs is a `NonFiniteError` before any solve.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .. import ops, parallel
from ..models.base import AutoregressiveModel
from ..sampling import distinct_over_ranks
from .gradients import GRADIENTS, num_trainable, per_sample_grads, scores_transposed_times, use_gram
from .target import NonFiniteError

__all__ = [
    "CV_GRID",
    "SPACES",
    "CrossValidation",
    "FisherSolver",
    "ScoreSolution",
    "SolveInfo",
]

SPACES = ("auto", "parameter", "sample")
# relative shifts tried by cross-validation (see the module docstring)
CV_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class SolveInfo:
    """What a solve did.

    Attributes:
        shift: lambda actually used (after any raise by the operator).
        requested: lambda asked for.
        space: "parameter" or "sample".
        fallback: the operator could not factor the system; the eigen/SVD solution was used.
    """

    shift: float
    requested: float
    space: str
    fallback: bool = False


@dataclass
class ScoreSolution:
    """The solution x of a solve from a model's scores at N distinct states.

    Attributes:
        x: (P,) the solution, in `flat_parameters` order.
        fitted: (N,) O_c x, the change of centred log q that x makes at each state.
        info: the shift used, the space, whether the fallback ran.
        grads: (N, P) the score vectors where they were formed (None on the Gram path).
        held_out: the held-out relative misfit at the cross-validated shift (nan without cv).
        fisher: (P, P) S, where the solve summed it over ranks (`FisherSolver.solve_reduced`).
        fit_square: sum_n w_n (O_c x)_n^2 over all states (all ranks'): x^T S x.
        values_square: sum_n w_n (v_n - vbar)^2 over all states.
        misfit: sum_n w_n ((O_c x)_n - (v_n - vbar))^2 over all states.
    """

    x: torch.Tensor
    fitted: torch.Tensor
    info: SolveInfo
    grads: torch.Tensor | None = None
    held_out: float = float("nan")
    fisher: torch.Tensor | None = None
    fit_square: float = float("nan")
    values_square: float = float("nan")
    misfit: float = float("nan")

    @property
    def relative_misfit(self) -> float:
        """sum w (O_c x - v_c)^2 / sum w v_c^2: the share of v's spread x does not fit."""
        return self.misfit / self.values_square if self.values_square > 0 else 0.0


def _with_fit_sums(sol: ScoreSolution, v: torch.Tensor, w: torch.Tensor) -> ScoreSolution:
    """`sol` with its fit sums taken from `fitted` at all the states (one process's solve)."""
    vc = v - w @ v
    sol.fit_square = float((w * sol.fitted**2).sum())
    sol.values_square = float((w * vc**2).sum())
    sol.misfit = float((w * (sol.fitted - vc) ** 2).sum())
    return sol


@dataclass
class CrossValidation:
    """The outcome of `FisherSolver.cross_validate`.

    Attributes:
        shift: the relative shift chosen (an entry of the grid).
        errors: (G,) mean held-out relative misfit sum w (O_c x - v_c)^2 / sum w v_c^2 per
            grid entry (1: no better than x = 0).
    """

    shift: float
    errors: torch.Tensor

    @property
    def error(self) -> float:
        return float(self.errors.min())


def centred_gram(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """K_c = (O - w^T O)(O - w^T O)^T from K = O O^T (N, N) and normalised weights w (N,)."""
    Kw = K @ w
    return K - Kw.unsqueeze(0) - Kw.unsqueeze(1) + w @ Kw


class FisherSolver:
    """(S + lambda I) x = O_c^T v_c with centred, importance-weighted scores and values.

    Args:
        shift: lambda (absolute, or relative to the mean non-zero eigenvalue when adaptive).
        adaptive: scale the shift to tr(S) / min(N - 1, P) (see the module docstring).
        space: "auto" | "parameter" | "sample".
        gradients: how `solve_scores` gets the scores: "auto" (the Gram matrix where the model
            has a closed form and the solve is in sample space, else the closed-form score
            vectors, else torch.func), "gram", "analytic" or "func".
        impl: operator implementation of `nncme.ops.fisher_solve`.
        max_raises: shift raises the operator may make before the fallback.
        min_shift: floor of an adaptive lambda.
        cv: choose the relative shift by cross-validation where the caller passes folds.
        grid: the relative shifts cross-validation tries.
    """

    def __init__(
        self,
        shift: float = 1e-3,
        *,
        adaptive: bool = True,
        space: str = "auto",
        gradients: str = "auto",
        impl: str = "auto",
        max_raises: int = 6,
        min_shift: float = 1e-12,
        cv: bool = False,
        grid: tuple[float, ...] = CV_GRID,
    ) -> None:
        if not shift >= 0:
            raise ValueError(f"shift must be >= 0, got {shift!r}")
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if gradients not in GRADIENTS:
            raise ValueError(f"gradients must be one of {GRADIENTS}, got {gradients!r}")
        if cv and not (grid and all(g > 0 for g in grid)):
            raise ValueError(f"grid must hold positive shifts, got {grid!r}")
        self.shift = float(shift)
        self.adaptive = bool(adaptive)
        self.space = space
        self.gradients = gradients
        self.impl = impl
        self.max_raises = int(max_raises)
        self.min_shift = float(min_shift)
        self.cv = bool(cv)
        self.grid = tuple(float(g) for g in grid)

    # ------------------------------------------------------------------ the shift
    def _lambda(self, shift: float | None, trace: float, N: int, P: int) -> float:
        """The lambda to ask the operator for: fixed, or relative to the mean eigenvalue."""
        shift = self.shift if shift is None else shift
        if not self.adaptive:
            return shift
        return max(self.min_shift, shift * _mean_eigenvalue(trace, N, P))

    def shift_for(self, O: torch.Tensor, w: torch.Tensor, shift: float | None = None) -> float:
        """The lambda this solver asks for with scores O (N, P) and weights w (N,)."""
        w = w / w.sum()
        trace = float((w * ((O - w @ O) ** 2).sum(dim=1)).sum())
        return self._lambda(shift, trace, *O.shape)

    # ------------------------------------------------------------------ the two solves
    def solve(
        self,
        O: torch.Tensor,
        v: torch.Tensor,
        w: torch.Tensor | None = None,
        shift: float | None = None,
    ) -> tuple[torch.Tensor, SolveInfo]:
        """x from the score vectors.

        Args:
            O: (N, P) per-sample gradients of log q.
            v: (N,) per-sample values (natural gradient: the coefficients scaled by 1/w; TDVP:
                the local generator).
            w: (N,) non-negative weights (normalised here); None: 1/N each.
            shift: the shift to use instead of this solver's (relative where adaptive).

        Returns:
            x (P,) and a SolveInfo.
        """
        N, P = O.shape
        w = _normalised(w, N, O)
        if not (torch.isfinite(O).all() and torch.isfinite(v).all()):
            raise NonFiniteError("the per-sample gradients or values contain NaN or inf")
        lam = self.shift_for(O, w, shift)
        space = self.space if self.space != "auto" else ("parameter" if P <= N else "sample")
        try:
            x, used = ops.fisher_solve(
                O, v, w, lam, space=space, max_raises=self.max_raises, impl=self.impl
            )
            return x, SolveInfo(float(used), lam, space)
        except torch.linalg.LinAlgError as exc:
            _warn_fallback(exc)
            x = _svd_solve(O, v, w, max(lam, self.min_shift))
            return x, SolveInfo(lam, lam, space, fallback=True)

    def solve_gram(
        self,
        K: torch.Tensor,
        v: torch.Tensor,
        w: torch.Tensor,
        num_params: int,
        shift: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, SolveInfo]:
        """The same x as `solve`, in sample space, from the Gram matrix K = O O^T (N, N).

        Returns:
            coef (N,) with x = sum_n coef_n O_n (so x is the gradient of
            sum_n coef_n log q(n): one backward pass), fitted (N,) = O_c x, and a SolveInfo.
        """
        N = K.shape[0]
        w = _normalised(w, N, K)
        if not (torch.isfinite(K).all() and torch.isfinite(v).all()):
            raise NonFiniteError("the Gram matrix or the values contain NaN or inf")
        Kc = centred_gram(K, w)
        lam = self._lambda(shift, float((w * Kc.diagonal()).sum()), N, num_params)
        try:
            coef, used = ops.fisher_solve_gram(
                K, v, w, lam, max_raises=self.max_raises, impl=self.impl
            )
            info = SolveInfo(float(used), lam, "sample")
        except torch.linalg.LinAlgError as exc:
            _warn_fallback(exc)
            coef = _eigh_solve(Kc, v, w, max(lam, self.min_shift))
            info = SolveInfo(lam, lam, "sample", fallback=True)
        fitted = K @ coef
        return coef, fitted - w @ fitted, info

    def solve_scores(
        self,
        model: AutoregressiveModel,
        states: torch.Tensor,
        v: torch.Tensor,
        w: torch.Tensor,
        *,
        need_grads: bool = False,
        folds: torch.Tensor | None = None,
    ) -> ScoreSolution:
        """x for a model's scores at distinct states: the path natural gradient and TDVP take.

        Args:
            model: the VAN (its trainable parameters define P).
            states: (N, L) distinct states with log q > -inf.
            v: (N,) values; w: (N,) non-negative weights (normalised here).
            need_grads: form the score vectors (returned in `grads`) even where the Gram
                matrix would do.
            folds: (F, N) weights of F >= 2 folds over the states: choose the shift by
                cross-validation (only where this solver has `cv`).

        Returns:
            A ScoreSolution.
        """
        N, P = states.shape[0], num_trainable(model)
        w = _normalised(w, N, v)
        gram = not need_grads and use_gram(model, N, self.gradients, self.space)
        method = "auto" if self.gradients == "gram" else self.gradients
        O = None if gram else per_sample_grads(model, states, method)
        K = model.closed_form_scores().gram(states) if gram else None
        shift, held_out = None, float("nan")
        if self.cv and folds is not None:
            cv = self.cross_validate(O @ O.mT if K is None else K, v, folds, P)
            shift, held_out = cv.shift, cv.error
        if K is not None:
            coef, fitted, info = self.solve_gram(K, v, w, P, shift)
            x = scores_transposed_times(model, states, coef)
            return _with_fit_sums(ScoreSolution(x, fitted, info, None, held_out), v, w)
        x, info = self.solve(O, v, w, shift)
        return _with_fit_sums(ScoreSolution(x, (O - w @ O) @ x, info, O, held_out), v, w)

    # ------------------------------------------------------------------ over many processes
    def rows_to_reduce(
        self, model: AutoregressiveModel, states: torch.Tensor, bound: int
    ) -> int | None:
        """Over many processes, with this rank's distinct `states` (N_r, L) and `bound`, the
        sum of N_r over the ranks (which the caller reduces with its other numbers): the
        number of distinct states of all ranks where the solve sums its system over the ranks
        (`reduces`, `solve_reduced`), None where it gathers the states (and always with one
        process). Where even the bound rules summing out (the default width: P > N) no key is
        gathered."""
        P = num_trainable(model)
        if not parallel.active() or not self.reduces(P, bound):
            return None
        rows = distinct_over_ranks(states, model.limits)
        return rows if self.reduces(P, rows) else None

    def reduces(self, num_params: int, rows: int) -> bool:
        """Over many processes: whether the solve sums the P x P system over the ranks
        (`solve_reduced`) rather than gathering every rank's states to every rank and solving
        on them (`solve_scores`), for P parameters and `rows` distinct states of all ranks.
        The smaller system: parameter space where P <= rows (space "auto"), as asked
        ("parameter", "sample"); never with cross-validation, whose folds deal out states."""
        if self.cv or self.space == "sample":
            return False
        return self.space == "parameter" or num_params <= rows

    def solve_reduced(
        self,
        model: AutoregressiveModel,
        states: torch.Tensor,
        v: torch.Tensor,
        w: torch.Tensor,
        rows: int,
    ) -> ScoreSolution:
        """`solve_scores` in parameter space over many processes, each rank with its own states.

        Every rank forms the score vectors of its own states only and the sums
        sum w O O^T (P x P), sum w O, sum w v O, sum w, sum w v, sum w v^2; these are summed
        over the ranks in one collective (`nncme.parallel.sum_tensor`), the centred system
        S = sum w O O^T - Obar Obar^T, b = sum w v O - Obar vbar is formed from them and every
        rank solves the same one, so the work of the scores and of the P^2 N products is
        split over the ranks, and what travels is P^2 + 2 P + 3 numbers, not the states.

        Args:
            states: (N_r, L) this rank's distinct states; v: (N_r,) their values.
            w: (N_r,) their weights, normalised over all ranks (the sum over ranks is 1).
            rows: distinct states over all ranks (the mean eigenvalue of the adaptive shift).

        Returns:
            A ScoreSolution with x, the summed S (`fisher`) and the fit sums over all ranks;
            `fitted` (N_r,) is O_c x at this rank's states, `grads` their score vectors.
        """
        P = num_trainable(model)
        method = "auto" if self.gradients == "gram" else self.gradients
        O = per_sample_grads(model, states, method).to(torch.float64)
        w64, v64 = w.to(torch.float64), v.to(torch.float64)
        wO = w64.unsqueeze(1) * O
        local = torch.cat([
            (O.mT @ wO).reshape(-1), wO.sum(0), wO.mT @ v64,
            torch.stack([w64.sum(), (w64 * v64).sum(), (w64 * v64 * v64).sum()]),
        ])  # fmt: skip
        total, _ = parallel.sum_tensor(local)
        if not torch.isfinite(total).all():
            raise NonFiniteError("the per-sample gradients or values contain NaN or inf")
        M, mean = total[: P * P].view(P, P), total[P * P : P * P + P]
        b_raw, (sw, swv, swvv) = total[P * P + P : P * P + 2 * P], total[-3:].tolist()
        vbar = swv / sw
        # centred after the sum: no cancellation to fear, as the weighted mean score is an
        # estimate of E_q[grad log q] = 0, small against the scores' spread
        S = M / sw - torch.outer(mean, mean) / sw**2
        S = 0.5 * (S + S.mT)  # the rounding of the sums leaves it a hair off symmetric
        b = b_raw / sw - mean * vbar / sw
        lam = self._lambda(None, float(S.diagonal().sum()), rows, P)
        try:
            x, used = ops.fisher_solve_system(S, b, lam, max_raises=self.max_raises)
            info = SolveInfo(float(used), lam, "parameter")
        except torch.linalg.LinAlgError as exc:
            _warn_fallback(exc)
            evals, evecs = torch.linalg.eigh(S)
            x = evecs @ ((evecs.mT @ b) / (evals.clamp(min=0) + max(lam, self.min_shift)))
            info = SolveInfo(lam, lam, "parameter", fallback=True)
        fitted = (O - mean / sw) @ x
        fit_square, fit_dot = float(x @ S @ x), float(x @ b)  # sum w (O_c x)^2, (O_c x) v_c
        values_square = max(0.0, swvv / sw - vbar**2)
        dtype = v.dtype
        return ScoreSolution(
            x.to(dtype),
            fitted.to(dtype),
            info,
            O.to(dtype),
            fisher=S.to(dtype),
            fit_square=fit_square,
            values_square=values_square,
            misfit=max(0.0, fit_square - 2.0 * fit_dot + values_square),
        )

    # ------------------------------------------------------------------ cross-validation
    def cross_validate(
        self, K: torch.Tensor, v: torch.Tensor, folds: torch.Tensor, num_params: int
    ) -> CrossValidation:
        """The relative shift of `grid` whose fits predict v best at held-out samples.

        Args:
            K: (N, N) Gram matrix O O^T of the N distinct states.
            v: (N,) values at the states.
            folds: (F, N) non-negative weights of each fold's samples on the states (F >= 2;
                a state no sample of a fold holds has weight 0 there).
            num_params: P (for the relative shift's scale).

        Each fold f is fitted by the sample-space Tikhonov solution at every grid shift (one
        eigendecomposition of its weighted, centred Gram matrix), and scored on the other
        folds' samples: sum w' (O_c x - v_c)^2 / sum w' v_c^2, centred under w'.
        """
        if folds.shape[0] < 2:
            raise ValueError(f"cross-validation needs at least 2 folds, got {folds.shape[0]}")
        grid = torch.tensor(self.grid, dtype=K.dtype, device=K.device)
        errors = torch.zeros_like(grid)
        folds = folds.to(K.dtype)
        for f in range(folds.shape[0]):
            train, held = folds[f], folds.sum(0) - folds[f]
            errors += self._held_out_misfit(K, v, train, held, grid, num_params)
        errors /= folds.shape[0]
        return CrossValidation(self.grid[int(torch.argmin(errors))], errors)

    def _held_out_misfit(
        self,
        K: torch.Tensor,
        v: torch.Tensor,
        train: torch.Tensor,
        held: torch.Tensor,
        grid: torch.Tensor,
        num_params: int,
    ) -> torch.Tensor:
        """(G,) held-out relative misfit of the fit on `train`'s weights at each shift."""
        rows = (train > 0).nonzero().squeeze(1)
        cols = (held > 0).nonzero().squeeze(1)
        if rows.numel() < 2 or cols.numel() < 1:
            return torch.ones_like(grid)
        w = train[rows] / train[rows].sum()
        Kc = centred_gram(K[rows][:, rows], w)
        trace = float((w * Kc.diagonal()).sum())
        scale = _mean_eigenvalue(trace, rows.numel(), num_params) if self.adaptive else 1.0
        sw = w.sqrt()
        evals, evecs = torch.linalg.eigh(sw.unsqueeze(1) * Kc * sw.unsqueeze(0))
        proj = evecs.mT @ (sw * (v[rows] - w @ v[rows]))  # (M,)
        # gamma for every shift at once: (M, G)
        lam = (scale * grid).clamp(min=self.min_shift)
        y = evecs @ (proj.unsqueeze(1) / (evals.clamp(min=0).unsqueeze(1) + lam))
        gamma = sw.unsqueeze(1) * y
        coef = gamma - w.unsqueeze(1) * gamma.sum(0, keepdim=True)
        wh = held[cols] / held[cols].sum()
        fitted = K[cols][:, rows] @ coef  # (H, G): O x at the held-out states
        fitted = fitted - wh @ fitted
        vh = v[cols] - wh @ v[cols]
        norm = float((wh * vh * vh).sum())
        if norm <= 0:
            return torch.zeros_like(grid)
        return (wh.unsqueeze(1) * (fitted - vh.unsqueeze(1)) ** 2).sum(0) / norm


def _normalised(w: torch.Tensor | None, N: int, like: torch.Tensor) -> torch.Tensor:
    """w / sum(w) in the dtype of `like`; 1/N each for None."""
    if w is None:
        return torch.full((N,), 1.0 / N, dtype=like.dtype, device=like.device)
    return (w / w.sum()).to(like.dtype)


def _mean_eigenvalue(trace: float, N: int, P: int) -> float:
    """tr(S) / min(N - 1, P): the mean non-zero eigenvalue of a centred S of N samples."""
    return trace / max(1, min(N - 1, P))


def _warn_fallback(exc: Exception) -> None:
    warnings.warn(
        f"the Fisher/TDVP system could not be factored ({exc}); used the eigen/SVD solution",
        RuntimeWarning,
        stacklevel=3,
    )


def _svd_solve(O: torch.Tensor, v: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """The Tikhonov solution from the SVD of the centred, weighted gradients."""
    sw = w.sqrt()
    Oc = (O - w @ O) * sw.unsqueeze(1)
    vc = (v - w @ v) * sw
    U, s, Vh = torch.linalg.svd(Oc, full_matrices=False)
    return Vh.mT @ ((s / (s * s + lam)) * (U.mT @ vc))


def _eigh_solve(Kc: torch.Tensor, v: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """The Tikhonov coefficients from the eigendecomposition of the weighted, centred Gram
    matrix (the fallback of `solve_gram`)."""
    sw = w.sqrt()
    evals, evecs = torch.linalg.eigh(sw.unsqueeze(1) * Kc * sw.unsqueeze(0))
    y = evecs @ ((evecs.mT @ (sw * (v - w @ v))) / (evals.clamp(min=0) + lam))
    gamma = sw * y
    return gamma - w * gamma.sum()
