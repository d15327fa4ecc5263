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
@pytest.mark.parametrize("mode", [1, 2])
def test_non_finite_input_is_a_linalg_error(device, mode):
    """A factorisation that fails after max_raises is torch.linalg.LinAlgError (callers catch
    exactly that and fall back), from the kernel and the reference alike."""
    O, v, w = problem(0, 1, 10, 4, torch.float64, device)
    O[0, 3, 2] = math.nan
    with pytest.raises(torch.linalg.LinAlgError, match=r"failed with shift .* after 3 raises"):
        torch.ops.nncme.fisher_solve(O, v, w, 1e-3, mode, 3)
    with pytest.raises(torch.linalg.LinAlgError, match=r"failed with shift .* after 3 raises"):
        reference.fisher_solve(O, v, w, 1e-3, mode, 3)


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
    with pytest.raises(RuntimeError, match="max_raises"):
        torch.ops.nncme.fisher_solve(O, v, w, 1e-2, 0, -1)


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


# --- fisher_solve.gram: the sample-space solve from the Gram matrix K = O O^T alone ---------


def gram_problem(seed, G, N, P, dtype, device, *, zero_weights=0):
    """problem() with K = O O^T formed in float64; the first `zero_weights` samples of each
    block get weight 0 (the rest renormalised). O, v, w and K in dtype on device."""
    O, v, w = problem(seed, G, N, P, torch.float64, "cpu")
    w[:, :zero_weights] = 0.0
    w = w / w.sum(1, keepdim=True)  # in float64: problem() normalises in float32
    K = O @ O.mT
    return [t.to(dtype).to(device) for t in (O, v, w, K)]


def dense_gram_coef(O, v, w, shift):
    """The coefficients from explicit O in float64: gamma = W^1/2 (O_c O_c^T + shift I)^-1 v_c
    with O_c = W^1/2 (O - mean), coef = gamma - w sum(gamma)."""
    O, v, w = O.double(), v.double(), w.double()
    sw = w.sqrt()
    Oc = (O - (w.unsqueeze(-1) * O).sum(1, keepdim=True)) * sw.unsqueeze(-1)
    vc = (v - (w * v).sum(1, keepdim=True)) * sw
    eye = torch.eye(O.shape[1], dtype=torch.float64, device=O.device)
    gamma = torch.linalg.solve(Oc @ Oc.mT + shift * eye, vc) * sw
    return gamma - w * gamma.sum(1, keepdim=True)


def coef_to_x(O, coef):
    """x = O^T coef per block, in float64."""
    return (O.double().mT @ coef.double().unsqueeze(-1)).squeeze(-1)


GRAM_RTOL = {torch.float32: 1e-3, torch.float64: 1e-10}

# (G, N, P, zero_weights): one sample, two, a few, the usual N and several hundred; P > N (the
# natural-gradient case: more parameters than samples) and P << N (a rank-deficient K).
GRAM_CASES = [
    (G, N, P, z)
    for G in (1, 3)
    for N, P, z in [(1, 4, 0), (2, 5, 0), (7, 30, 2), (64, 150, 5), (64, 3, 0), (300, 420, 40)]
]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("G,N,P,zero_weights", GRAM_CASES)
def test_gram_matches_reference_dense_and_fisher_solve(device, dtype, G, N, P, zero_weights, rng):
    O, v, w, K = gram_problem(
        int(rng.integers(2**31)), G, N, P, dtype, device, zero_weights=zero_weights
    )
    shift = 0.05
    coef, used = torch.ops.nncme.fisher_solve.gram(K, v, w, shift, 10)
    coef_r, used_r = reference.fisher_solve_gram(K, v, w, shift, 10)
    assert coef.shape == (G, N) and coef.dtype == dtype and used.shape == (G,)
    assert used.dtype == dtype and torch.equal(used, used_r)
    assert torch.equal(used, torch.full_like(used, shift))  # shift 0.05 needs no raise
    assert rel_err(coef, coef_r) < GRAM_RTOL[dtype]
    assert rel_err(coef, dense_gram_coef(O, v, w, shift)) < GRAM_RTOL[dtype]
    if zero_weights:
        assert float(coef[:, :zero_weights].abs().max()) == 0.0  # no weight, no coefficient
    # x = O^T coef is fisher_solve's x (either space) and the dense parameter-space solution
    x = coef_to_x(O, coef)
    assert rel_err(x, dense_solution(O, v, w, shift)) < GRAM_RTOL[dtype]
    for mode in (1, 2):
        x_fs, used_fs = torch.ops.nncme.fisher_solve(O, v, w, shift, mode, 10)
        assert torch.equal(used_fs, used)
        assert rel_err(x, x_fs) < GRAM_RTOL[dtype]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_shift_is_raised_from_zero(device, dtype, rng):
    """Shift 0 on a zero Gram matrix: the factorisation fails, the shift goes to eps (the mean
    diagonal is 0), not to 0 * 10; the other blocks, factored alone, are unaffected."""
    _, v, w, K = gram_problem(int(rng.integers(2**31)), 3, 20, 50, dtype, device)
    K[1] = 0.0
    coef, used = torch.ops.nncme.fisher_solve.gram(K, v, w, 0.0, 40)
    coef_r, used_r = reference.fisher_solve_gram(K, v, w, 0.0, 40)
    eps = torch.finfo(dtype).eps
    assert float(used[1]) == eps and float(used_r[1]) == eps
    assert torch.isfinite(coef).all()
    # A = 0: y = b / eps, gamma = w (v - w.v) / eps, coef = gamma - w sum(gamma)
    gamma = w[1] * (v[1] - (w[1] * v[1]).sum()) / eps
    expect = gamma - w[1] * gamma.sum()
    torch.testing.assert_close(coef[1], expect, rtol=GRAM_RTOL[dtype], atol=0)
    assert rel_err(coef[1], coef_r[1]) < GRAM_RTOL[dtype]
    # K = O O^T always leaves A singular (its null vector is sqrt(w)): any raise of the other
    # blocks starts from eps times their mean diagonal and goes up by tens.
    for g in (0, 2):
        if float(used[g]) > 0:
            A_diag = float(
                (w[g] * (K[g].diagonal() - 2 * (K[g] @ w[g]) + w[g] @ K[g] @ w[g])).mean()
            )
            ratio = float(used[g]) / (eps * A_diag)
            assert math.isclose(10 ** round(math.log10(ratio)), ratio, rel_tol=1e-3)
    # a shift of 0 that factors is kept: a positive definite K needs no raise
    Kpd = K[0:1] + 10 * torch.eye(20, dtype=dtype, device=device)
    _, kept = torch.ops.nncme.fisher_solve.gram(Kpd, v[0:1], w[0:1], 1e-3, 0)
    assert torch.equal(kept, torch.full((1,), 1e-3, dtype=dtype, device=device))


@needs_kernel
def test_gram_non_finite_input_is_a_linalg_error(device):
    _, v, w, K = gram_problem(0, 2, 12, 30, torch.float64, device)
    K[1, 4, 4] = math.nan
    for fn in (torch.ops.nncme.fisher_solve.gram, reference.fisher_solve_gram):
        with pytest.raises(torch.linalg.LinAlgError, match=r"block 1 failed with shift .* after 2"):
            fn(K, v, w, 1e-3, 2)
    with pytest.raises(torch.linalg.LinAlgError, match="Gram matrix"):
        ops.fisher_solve_gram(K, v, w, 1e-3, max_raises=2)


@needs_kernel
def test_gram_wrapper(monkeypatch, rng):
    O, v, _, K = gram_problem(int(rng.integers(2**31)), 1, 40, 90, torch.float64, "cpu")
    coef, used = ops.fisher_solve_gram(K[0], v[0], shift=1e-3)
    assert coef.shape == (40,) and used.shape == () and float(used) == 1e-3
    coef_r, _ = ops.fisher_solve_gram(K[0], v[0], shift=1e-3, impl="reference")
    coef_f, _ = ops.fisher_solve_gram(K[0], v[0], shift=1e-3, impl="fused")
    assert rel_err(coef_f, coef_r) < 1e-9 and rel_err(coef, coef_r) < 1e-9
    x, _ = ops.fisher_solve(O[0], v[0], shift=1e-3, space="sample")
    assert rel_err(O[0].mT @ coef, x) < 1e-9
    batched, used_b = ops.fisher_solve_gram(K, v, torch.full_like(v, 1 / 40), shift=1e-3)
    assert batched.shape == (1, 40) and used_b.shape == (1,)
    assert rel_err(batched[0], coef) < 1e-12
    assert ops.resolve_impl("fisher_solve.gram", "cpu") == "fused"
    monkeypatch.setenv("NNCME_FORCE_REFERENCE", "1")
    assert ops.resolve_impl("fisher_solve.gram", "cpu") == "reference"


@needs_kernel
def test_gram_non_contiguous_inputs(device, rng):
    _, v, w, K = gram_problem(int(rng.integers(2**31)), 2, 30, 45, torch.float64, device)
    expect, _ = torch.ops.nncme.fisher_solve.gram(K, v, w, 1e-2, 10)
    K_t = K.transpose(1, 2).contiguous().transpose(1, 2)
    v_t = v.t().contiguous().t()
    w_t = torch.stack([w, w], dim=-1)[..., 0]
    assert not (K_t.is_contiguous() or v_t.is_contiguous() or w_t.is_contiguous())
    got, _ = torch.ops.nncme.fisher_solve.gram(K_t, v_t, w_t, 1e-2, 10)
    assert rel_err(got, expect) < 1e-12


@needs_kernel
def test_gram_opcheck(device):
    _, v, w, K = gram_problem(0, 2, 8, 5, torch.float64, device)
    torch.library.opcheck(torch.ops.nncme.fisher_solve.gram, (K, v, w, 1e-2, 10))


@needs_kernel
def test_gram_errors_are_actionable():
    _, v, w, K = gram_problem(0, 2, 8, 5, torch.float64, "cpu")
    gram = torch.ops.nncme.fisher_solve.gram
    with pytest.raises(RuntimeError, match=r"K \(the Gram matrix O O\^T\) must be"):
        gram(K[:, :, :7], v, w, 1e-2, 10)
    with pytest.raises(RuntimeError, match="v must have shape"):
        gram(K, v[:, :3], w, 1e-2, 10)
    with pytest.raises(RuntimeError, match="w must have shape"):
        gram(K, v, w[:1], 1e-2, 10)
    with pytest.raises(RuntimeError, match="dtype of K"):
        gram(K, v.float(), w, 1e-2, 10)
    with pytest.raises(RuntimeError, match="shift"):
        gram(K, v, w, math.inf, 10)
    with pytest.raises(RuntimeError, match="max_raises"):
        gram(K, v, w, 1e-2, -1)


@pytest.mark.cuda
@needs_kernel
def test_gram_cuda_matches_cpu(rng):
    _, v, w, K = gram_problem(int(rng.integers(2**31)), 2, 700, 900, torch.float64, "cpu")
    coef, used = torch.ops.nncme.fisher_solve.gram(K, v, w, 1e-2, 10)
    coef_g, used_g = torch.ops.nncme.fisher_solve.gram(K.cuda(), v.cuda(), w.cuda(), 1e-2, 10)
    assert torch.equal(used_g.cpu(), used) and rel_err(coef_g.cpu(), coef) < 1e-9


@pytest.mark.cuda
@needs_kernel
def test_fisher_operands_on_two_devices_are_named():
    O, v, w, K = gram_problem(0, 1, 8, 5, torch.float64, "cpu")
    with pytest.raises(RuntimeError, match="w must be on cuda"):
        torch.ops.nncme.fisher_solve(O.cuda(), v.cuda(), w, 1e-2, 0, 10)
    with pytest.raises(RuntimeError, match="v must be on cuda"):
        torch.ops.nncme.fisher_solve.gram(K.cuda(), v, w.cuda(), 1e-2, 10)
