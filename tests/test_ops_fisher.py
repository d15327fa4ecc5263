"""The batched Cholesky Fisher/TDVP solve against its reference and against dense algebra."""

from __future__ import annotations

import math

import pytest
import torch

from nncme import ops
from nncme.ops import reference

needs_kernel = pytest.mark.skipif(ops.extension() is None, reason="compiled extension not loaded")

RTOL = {torch.float32: 2e-3, torch.float64: 1e-9}


def problem(seed, G, N, P, dtype, device, *, uniform=False, offset=3.0):
    """Gradients with a non-zero mean (so centring matters), values, normalised weights."""
    g = torch.Generator().manual_seed(seed)
    O = torch.randn(G, N, P, generator=g, dtype=torch.float64) + offset * torch.randn(
        G, 1, P, generator=g, dtype=torch.float64
    )
    v = torch.randn(G, N, generator=g, dtype=torch.float64) + offset
    w = torch.ones(G, N, dtype=torch.float64) if uniform else torch.rand(G, N, generator=g) + 0.1
    w = (w / w.sum(1, keepdim=True)).to(torch.float64)
    return [t.to(dtype).to(device) for t in (O, v, w)]


def dense_solution(O, v, w, shift):
    """(S + shift I)^-1 g with S the weighted covariance of O and g the covariance of O and v,
    in float64 by a dense solve: what both spaces must give."""
    O, v, w = O.double(), v.double(), w.double()
    mean = (w.unsqueeze(-1) * O).sum(1, keepdim=True)
    vbar = (w * v).sum(1, keepdim=True)
    Oc = O - mean
    S = Oc.mT @ (w.unsqueeze(-1) * Oc)
    g = (Oc.mT @ (w * (v - vbar)).unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(O.shape[-1], dtype=torch.float64, device=O.device)
    return torch.linalg.solve(S + shift * eye, g)


def shifted_residual(O, v, w, shift, x):
    """Backward error of x for (S + shift I) x = g (a block of O, v, w): the residual relative
    to ||S + shift I|| ||x|| + ||g||, about machine epsilon for a backward-stable solve however
    ill-conditioned the system (a tiny shift on a singular S makes the forward error large)."""
    O, v, w, x = O.double(), v.double(), w.double(), x.double()
    Oc = O - (w.unsqueeze(-1) * O).sum(1, keepdim=True)
    S = Oc.mT @ (w.unsqueeze(-1) * Oc)
    g = (Oc.mT @ (w * (v - (w * v).sum(1, keepdim=True))).unsqueeze(-1)).squeeze(-1)
    A = S + shift * torch.eye(O.shape[-1], dtype=torch.float64, device=O.device)
    r = (A @ x.unsqueeze(-1)).squeeze(-1) - g
    scale = torch.linalg.matrix_norm(A, ord=2) * x.norm() + g.norm()
    return float(r.norm() / scale.clamp(min=1e-300))


def rel_err(x, y):
    """Relative error, 0 when both are 0 (one sample: nothing to fit, x = 0)."""
    return float((x.double() - y.double()).norm() / y.double().norm().clamp(min=1e-300))


# (G, N, P, mode): parameter space (P <= N), sample space (P > N), both forced, several Gram
# blocks (n > 256), one sample, one parameter.
CASES = [
    (1, 64, 20, 0),
    (1, 30, 200, 0),
    (3, 40, 40, 1),
    (3, 40, 40, 2),
    (2, 300, 520, 0),
    (1, 530, 280, 0),
    (2, 1, 5, 0),
    (2, 9, 1, 0),
]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("G,N,P,mode", CASES)
def test_fisher_solve_matches_reference_and_dense(device, dtype, G, N, P, mode, rng):
    O, v, w = problem(int(rng.integers(2**31)), G, N, P, dtype, device)
    shift = 0.05
    x, used = torch.ops.nncme.fisher_solve(O, v, w, shift, mode, 10)
    xr, used_r = reference.fisher_solve(O, v, w, shift, mode, 10)
    assert x.shape == (G, P) and x.dtype == dtype and used.shape == (G,)
    assert torch.equal(used, used_r)
    assert rel_err(x, xr) < RTOL[dtype]
    assert rel_err(x, dense_solution(O, v, w, shift)) < RTOL[dtype]


@needs_kernel
def test_parameter_and_sample_space_agree(device, rng):
    """The Woodbury identity: both spaces solve the same system."""
    O, v, w = problem(int(rng.integers(2**31)), 2, 50, 70, torch.float64, device)
    xp, _ = torch.ops.nncme.fisher_solve(O, v, w, 1e-3, 1, 10)
    xs, _ = torch.ops.nncme.fisher_solve(O, v, w, 1e-3, 2, 10)
    assert rel_err(xp, xs) < 1e-8


@needs_kernel
@pytest.mark.parametrize("mode", [1, 2])
def test_panels_cover_the_matrix(device, mode, rng, monkeypatch):
    """Tiny panels (many passes over O) give the single-panel answer."""
    O, v, w = problem(int(rng.integers(2**31)), 2, 90, 70, torch.float64, device)
    whole, _ = torch.ops.nncme.fisher_solve(O, v, w, 1e-2, mode, 10)
    monkeypatch.setenv("NNCME_FISHER_PANEL_BYTES", "3000")
    panels, _ = torch.ops.nncme.fisher_solve(O, v, w, 1e-2, mode, 10)
    assert rel_err(panels, whole) < 1e-11


@needs_kernel
@pytest.mark.parametrize("mode", [1, 2])
def test_shift_is_raised_where_the_factorisation_fails(device, mode, rng):
    """Shift 0 on singular Gram matrices: a block whose factorisation fails gets a raised shift
    (a zero matrix always fails: eps), the others keep theirs, and every answer solves its own
    shifted system."""
    G, N, P = 3, 16, 16  # centred: rank <= N - 1 < 16 in either space
    O, v, w = problem(int(rng.integers(2**31)), G, N, P, torch.float64, device)
    O[1] = O[1] * 0 + 1.0  # block 1: every sample equal, and with weights 1/16 (exact) the
    w[1] = 1.0 / N  # centred gradients and the Gram matrix are exactly 0
    x, used = torch.ops.nncme.fisher_solve(O, v, w, 0.0, mode, 40)
    assert torch.isfinite(x).all()
    assert float(used[1]) == torch.finfo(torch.float64).eps
    assert float(x[1].abs().max()) == 0.0  # nothing to fit in block 1
    # The parameter-space solve is backward stable whatever the shift; the sample-space
    # (Woodbury) answer maps back through 1/shift, so with a shift near eps on a singular Gram
    # matrix its parameter-space residual is not small, and only the bookkeeping is checked.
    for g in range(G if mode == 1 else 0):
        if float(used[g]) > 0:
            block = (O[g : g + 1], v[g : g + 1], w[g : g + 1], float(used[g]))
            assert shifted_residual(*block, x[g : g + 1]) < 1e-10
    _, used_r = reference.fisher_solve(O, v, w, 0.0, mode, 40)
    assert float(used_r[1]) == float(used[1])
    O2, v2, w2 = problem(1, 2, 40, 5, torch.float64, device)
    _, kept = torch.ops.nncme.fisher_solve(O2, v2, w2, 0.0, 1, 5)
    assert torch.equal(kept, torch.zeros(2, dtype=torch.float64, device=device))


@needs_kernel
def test_non_finite_input_is_an_error(device):
    O, v, w = problem(0, 1, 10, 4, torch.float64, device)
    O[0, 3, 2] = math.nan
    with pytest.raises(RuntimeError, match="failed with shift"):
        torch.ops.nncme.fisher_solve(O, v, w, 1e-3, 0, 3)
    with pytest.raises(RuntimeError, match="failed with shift"):
        reference.fisher_solve(O, v, w, 1e-3, 0, 3)


@needs_kernel
def test_non_contiguous_inputs(device, rng):
    O, v, w = problem(int(rng.integers(2**31)), 2, 30, 45, torch.float64, device)
    expect, _ = torch.ops.nncme.fisher_solve(O, v, w, 1e-2, 0, 10)
    O_t = O.transpose(1, 2).contiguous().transpose(1, 2)
    v_t = v.t().contiguous().t()
    w_t = torch.stack([w, w], dim=-1)[..., 0]
    assert not (O_t.is_contiguous() or v_t.is_contiguous() or w_t.is_contiguous())
    got, _ = torch.ops.nncme.fisher_solve(O_t, v_t, w_t, 1e-2, 0, 10)
    assert rel_err(got, expect) < 1e-12


@needs_kernel
def test_wrapper(monkeypatch, rng):
    O, v, _ = problem(int(rng.integers(2**31)), 1, 40, 25, torch.float64, "cpu", uniform=True)
    x, used = ops.fisher_solve(O[0], v[0], shift=1e-3)
    assert x.shape == (25,) and used.shape == ()
    xr, _ = ops.fisher_solve(O[0], v[0], shift=1e-3, impl="reference")
    xf, _ = ops.fisher_solve(O[0], v[0], shift=1e-3, impl="fused")
    assert rel_err(xf, xr) < 1e-9 and rel_err(x, xr) < 1e-9
    w = torch.full((1, 40), 1 / 40, dtype=torch.float64)
    assert rel_err(x, dense_solution(O, v, w, 1e-3)[0]) < 1e-9
    with pytest.raises(ValueError, match="space"):
        ops.fisher_solve(O, v, space="both")
    monkeypatch.setenv("NNCME_FORCE_REFERENCE", "1")
    assert ops.resolve_impl("fisher_solve", "cpu") == "reference"


@pytest.mark.cuda
@needs_kernel
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_fisher_cuda_matches_cpu(mode, rng):
    """The composite on cuBLAS/cuSOLVER against the CPU one, several Gram blocks."""
    O, v, w = problem(int(rng.integers(2**31)), 2, 700, 600, torch.float64, "cpu")
    x, used = torch.ops.nncme.fisher_solve(O, v, w, 1e-2, mode, 10)
    xg, used_g = torch.ops.nncme.fisher_solve(O.cuda(), v.cuda(), w.cuda(), 1e-2, mode, 10)
    assert torch.equal(used_g.cpu(), used) and rel_err(xg.cpu(), x) < 1e-9


@needs_kernel
def test_fisher_opcheck(device):
    O, v, w = problem(0, 2, 8, 5, torch.float64, device)
    torch.library.opcheck(torch.ops.nncme.fisher_solve.default, (O, v, w, 1e-2, 0, 10))


@needs_kernel
def test_fisher_errors_are_actionable():
    O, v, w = problem(0, 2, 8, 5, torch.float64, "cpu")
    with pytest.raises(RuntimeError, match="v must have shape"):
        torch.ops.nncme.fisher_solve(O, v[:, :3], w, 1e-2, 0, 10)
    with pytest.raises(RuntimeError, match="dtype of O"):
        torch.ops.nncme.fisher_solve(O, v.float(), w, 1e-2, 0, 10)
    with pytest.raises(RuntimeError, match="shift"):
        torch.ops.nncme.fisher_solve(O, v, w, -1.0, 0, 10)
    with pytest.raises(RuntimeError, match="mode"):
        torch.ops.nncme.fisher_solve(O, v, w, 1e-2, 3, 10)


def test_cholesky_reads_only_the_lower_triangle():
    """fisher_solve leaves the upper triangle of the Gram matrix unwritten on CPU: it relies on
    LAPACK's potrf (lower) not reading it. NaN above the diagonal must not matter."""
    X = torch.randn(2, 30, 45, dtype=torch.float64)
    A = X @ X.mT + torch.eye(30, dtype=torch.float64)
    B = A.clone()
    rows, cols = torch.triu_indices(30, 30, 1)
    B[:, rows, cols] = math.nan
    L1, info1 = torch.linalg.cholesky_ex(A)
    L2, info2 = torch.linalg.cholesky_ex(B)
    assert torch.equal(info1, info2) and torch.equal(L1, L2)
