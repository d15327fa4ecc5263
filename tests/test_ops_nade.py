"""Fused NADE sampling and log-probability operators against the plain-PyTorch reference.

The reference (`nncme.ops.reference.nade_sample` / `nade_log_prob`) defines the operators. The
kernels must (1) draw the same samples from the same uniforms, up to draws whose uniform lies
within rounding of a CDF boundary (an agreement rate), (2) report log q and log rho that equal
the reference's log-probabilities of the samples they drew, and (3) score given states like the
reference, including states outside the limits or breaking a conservation law.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nncme import ops
from nncme.conservation import ConservationLaw, FeasibilityTables
from nncme.ops import reference
from nncme.ops.masks import ConservationMask

needs_kernel = pytest.mark.skipif(ops.extension() is None, reason="compiled extension not loaded")

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}

# (B, L, M, H): typical, one species, one category, 1000 categories, 500 species, wide hidden.
SHAPES = [
    (64, 4, 80, 16),
    (33, 16, 10, 16),
    (9, 1, 7, 5),
    (12, 3, 1, 4),
    (10, 3, 1000, 8),
    (4, 500, 3, 4),
    (5, 3, 6, 150),
]


def nade_inputs(
    seed: int,
    B: int,
    L: int,
    M: int,
    H: int,
    dtype: torch.dtype,
    device: str,
    *,
    limits: torch.Tensor | None = None,
    tables: FeasibilityTables | None = None,
    scale: float = 0.5,
) -> dict:
    """Random NADE weights, limits (<= M) and uniforms; conservation tables if given."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    if limits is None:
        limits = torch.randint(1, M + 1, (L,), generator=g)
        limits[torch.randint(L, (1,), generator=g)] = M
    if tables is None:
        C = 0
        cons = dict(
            cons_weights=torch.zeros(0, L, dtype=torch.int64),
            cons_start=torch.zeros(0, dtype=torch.int64),
            cons_law_meta=torch.zeros(0, 4, dtype=torch.int64),
            cons_group_meta=torch.zeros(0, 2, dtype=torch.int64),
            cons_table=torch.zeros(0, dtype=torch.bool),
        )
    else:
        C = tables.weights.shape[0]
        cons = dict(
            cons_weights=torch.as_tensor(tables.weights),
            cons_start=torch.as_tensor(tables.totals).expand(B, C).contiguous(),
            cons_law_meta=torch.as_tensor(tables.law_meta),
            cons_group_meta=torch.as_tensor(tables.group_meta),
            cons_table=torch.as_tensor(tables.table),
        )
    out = dict(
        uniforms=torch.rand(B, L, generator=g, dtype=torch.float64).to(dtype),
        hidden0=randn(B, H),
        embed=randn(L, M, H) * 2,
        head_w=randn(L, M, H) * 2,
        head_b=randn(L, M),
        limits=limits.to(torch.int64),
        **cons,
    )
    return {k: v.to(device) for k, v in out.items()}


ORDER = [
    "hidden0",
    "embed",
    "head_w",
    "head_b",
    "limits",
    "cons_weights",
    "cons_start",
    "cons_law_meta",
    "cons_group_meta",
    "cons_table",
]


def sample_args(inp: dict, alpha: float, activation: int) -> tuple:
    return (inp["uniforms"], *(inp[k] for k in ORDER), alpha, activation)


def log_prob_args(states: torch.Tensor, inp: dict, activation: int) -> tuple:
    return (states, *(inp[k] for k in ORDER), activation)


def reference_scores(
    states: torch.Tensor, inp: dict, alpha: float, activation: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q, log rho) of given states under the reference NADE and its tempered proposal."""
    cons = ConservationMask(
        inp["cons_weights"], inp["cons_law_meta"], inp["cons_group_meta"], inp["cons_table"]
    )
    _, log_q, log_rho = reference._nade_loop(
        inp["hidden0"],
        inp["embed"],
        inp["head_w"],
        inp["head_b"],
        inp["limits"],
        cons,
        inp["cons_start"],
        activation,
        alpha,
        None,
        states,
    )
    return log_q, log_rho


def check_sample(
    inp: dict, alpha: float, activation: int, dtype, min_agreement: float, own: bool = True
):
    """Fused against reference draws; own=True also scores the fused draws with the reference
    (one more reference pass, skipped for the longest species loops)."""
    fused = torch.ops.nncme.nade_sample(*sample_args(inp, alpha, activation))
    ref = reference.nade_sample(*sample_args(inp, alpha, activation))
    samples, log_q, log_rho = fused
    B, L = inp["uniforms"].shape
    assert samples.shape == (B, L) and samples.dtype == torch.int64
    assert log_q.shape == (B,) and log_q.dtype == dtype and log_rho.dtype == dtype
    same = (samples == ref[0]).all(dim=1)
    assert same.float().mean().item() >= min_agreement, f"agreement {same.float().mean():.4f}"
    torch.testing.assert_close(log_q[same], ref[1][same], equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(log_rho[same], ref[2][same], equal_nan=True, **TOL[dtype])
    if not own:
        return fused
    # Whatever was drawn, the kernel's log q and log rho are those of its own samples.
    ref_q, ref_rho = reference_scores(samples, inp, alpha, activation)
    torch.testing.assert_close(log_q, ref_q, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(log_rho, ref_rho, equal_nan=True, **TOL[dtype])
    return fused


def agreement_floor(dtype: torch.dtype, L: int) -> float:
    """Draws may differ where u is within rounding of a CDF boundary: ~1e-15 of draws in
    float64, ~1e-5 in float32 (logits summed in another order). Generous floors."""
    return 0.99 if dtype == torch.float64 else max(0.5, 1.0 - 2e-3 * L)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,L,M,H", SHAPES)
def test_nade_sample_matches_reference(device, dtype, B, L, M, H, rng):
    seed = int(rng.integers(2**31))
    inp = nade_inputs(seed, B, L, M, H, dtype, device)
    # long species loops run the (slow) reference once; short ones also untempered and sigmoid
    cases = [(0.6, 1)] if L > 100 else [(1.0, 0), (0.6, 1)]
    for alpha, activation in cases:
        check_sample(inp, alpha, activation, dtype, agreement_floor(dtype, L), own=L <= 100)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nade_sample_agreement_rate_large_batch(device, dtype, rng):
    """Draw for draw at the benchmark's shape class: nearly every sample is identical."""
    seed = int(rng.integers(2**31))
    inp = nade_inputs(seed, 512, 12, 100, 32, dtype, device)
    floor = 0.998 if dtype == torch.float64 else 0.98
    check_sample(inp, 1.7, 0, dtype, floor)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,L,M,H", SHAPES)
def test_nade_log_prob_matches_reference(device, dtype, B, L, M, H, rng):
    seed = int(rng.integers(2**31))
    inp = nade_inputs(seed, B, L, M, H, dtype, device)
    g = torch.Generator().manual_seed(seed + 1)
    states = torch.randint(0, M, (B, L), generator=g)
    # some counts at or beyond the limit, some negative, some far outside
    bad = torch.rand(B, L, generator=g) < 0.05
    states[bad] = torch.tensor([-1, M, M + 7, -50])[
        torch.randint(4, (int(bad.sum()),), generator=g)
    ]
    states = states.to(device)
    for activation in (0, 1) if L <= 100 else (1,):
        fused = torch.ops.nncme.nade_log_prob(*log_prob_args(states, inp, activation))
        ref = reference.nade_log_prob(*log_prob_args(states, inp, activation))
        assert fused.shape == (B,) and fused.dtype == dtype
        torch.testing.assert_close(fused, ref, equal_nan=True, **TOL[dtype])
    # the kernel's own samples score as the sampler reported
    samples, log_q, _ = torch.ops.nncme.nade_sample(*sample_args(inp, 1.0, 0))
    scored = torch.ops.nncme.nade_log_prob(*log_prob_args(samples, inp, 0))
    torch.testing.assert_close(scored, log_q, **TOL[dtype])


def random_laws(
    rng: np.random.Generator, limits: np.ndarray, n_laws: int, feasible: bool = True
) -> FeasibilityTables:
    """Laws over random species subsets with small positive weights; totals from a state in the
    box (feasible) or below every reachable total (infeasible: every count is masked)."""
    L = limits.shape[0]
    state = rng.integers(0, limits)  # one state meets every law
    laws = []
    for c in range(n_laws):
        weights = np.zeros(L, dtype=np.int64)
        members = rng.choice(L, size=min(L, int(rng.integers(2, 5))), replace=False)
        weights[members] = rng.integers(1, 3, size=members.shape[0])
        total = int(weights @ state) if feasible else -1
        laws.append(ConservationLaw(weights, total, f"law{c}"))
    return FeasibilityTables.build(laws, limits)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_laws", [1, 3])
def test_nade_conservation_laws_hold_exactly(device, dtype, n_laws, rng):
    L, M = 7, 6
    limits = rng.integers(2, M + 1, size=L)
    tables = random_laws(rng, limits, n_laws)
    seed = int(rng.integers(2**31))
    inp = nade_inputs(
        seed, 200, L, M, 12, dtype, device, limits=torch.as_tensor(limits), tables=tables
    )
    for alpha in (1.0, 0.5):
        samples, log_q, log_rho = check_sample(inp, alpha, 0, dtype, agreement_floor(dtype, L))
        s = samples.cpu().numpy()
        assert (s < limits).all() and (s >= 0).all()
        if tables.exact:
            assert torch.isfinite(log_q).all() and torch.isfinite(log_rho).all()
            for w, total in zip(tables.weights, tables.totals):
                assert (s @ w == total).all()
    # scoring states that break a law gives -inf
    states = torch.randint(0, M, (200, L)).clamp(max=torch.as_tensor(limits - 1)).to(device)
    fused = torch.ops.nncme.nade_log_prob(*log_prob_args(states, inp, 1))
    ref = reference.nade_log_prob(*log_prob_args(states, inp, 1))
    torch.testing.assert_close(fused, ref, equal_nan=True, **TOL[dtype])
    breaks = np.zeros(200, dtype=bool)
    for w, total in zip(tables.weights, tables.totals):
        breaks |= states.cpu().numpy() @ w != total
    assert torch.isneginf(fused[torch.as_tensor(breaks, device=device)]).all()


@needs_kernel
def test_nade_cons_start_vector_and_per_sample(device, rng):
    """cons_start may be (C,) for one total, or (B, C) with a total per sample."""
    L, M = 5, 4
    limits = np.full(L, M)
    tables = random_laws(rng, limits, 2)
    inp = nade_inputs(
        3, 50, L, M, 8, torch.float64, device, limits=torch.as_tensor(limits), tables=tables
    )
    per_sample = check_sample(inp, 1.0, 0, torch.float64, 0.99)
    inp1 = dict(inp, cons_start=inp["cons_start"][0].clone())
    vector = check_sample(inp1, 1.0, 0, torch.float64, 0.99)
    assert torch.equal(per_sample[0], vector[0])
    # different totals per sample: each sample meets its own
    totals = []
    for _ in range(50):
        state = rng.integers(0, limits)
        totals.append(tables.weights @ state)
    inp2 = dict(inp, cons_start=torch.as_tensor(np.array(totals), device=device))
    samples = check_sample(inp2, 1.0, 0, torch.float64, 0.99)[0].cpu().numpy()
    assert ((samples @ tables.weights.T) == np.array(totals)).all()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nade_dead_ends(device, dtype, rng):
    """All counts masked: a species with limit 0, or laws whose totals no state can reach. The
    reference's convention: count 0 there, log q = log rho = -inf."""
    L, M = 4, 5
    limits = torch.tensor([3, 0, 5, 2])
    inp = nade_inputs(1, 20, L, M, 6, dtype, device, limits=limits)
    samples, log_q, log_rho = check_sample(inp, 0.8, 0, dtype, 0.99)
    assert (samples[:, 1] == 0).all()
    assert torch.isneginf(log_q).all() and torch.isneginf(log_rho).all()
    tables = random_laws(rng, np.full(L, M), 2, feasible=False)
    inp = nade_inputs(2, 20, L, M, 6, dtype, device, limits=torch.full((L,), M), tables=tables)
    samples, log_q, log_rho = check_sample(inp, 1.0, 1, dtype, 0.99)
    assert torch.isneginf(log_q).all()
    scored = torch.ops.nncme.nade_log_prob(*log_prob_args(samples, inp, 1))
    assert torch.isneginf(scored).all()


@needs_kernel
def test_nade_non_contiguous_inputs(device, rng):
    B, L, M, H = 24, 5, 9, 7
    inp = nade_inputs(int(rng.integers(2**31)), B, L, M, H, torch.float64, device)
    ref = torch.ops.nncme.nade_sample(*sample_args(inp, 0.9, 0))
    strided = dict(inp)
    strided["uniforms"] = inp["uniforms"].t().contiguous().t()
    strided["hidden0"] = torch.cat([inp["hidden0"], inp["hidden0"]], dim=1)[:, :H]
    strided["embed"] = inp["embed"].transpose(1, 2).contiguous().transpose(1, 2)
    strided["head_w"] = inp["head_w"].permute(2, 0, 1).contiguous().permute(1, 2, 0)
    strided["head_b"] = inp["head_b"].t().contiguous().t()
    strided["limits"] = torch.stack([inp["limits"], inp["limits"]], dim=1)[:, 0]
    assert not strided["head_w"].is_contiguous() and not strided["limits"].is_contiguous()
    out = torch.ops.nncme.nade_sample(*sample_args(strided, 0.9, 0))
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    states = ref[0].t().contiguous().t()
    torch.testing.assert_close(
        torch.ops.nncme.nade_log_prob(*log_prob_args(states, strided, 0)), ref[1]
    )


@needs_kernel
def test_nade_uniform_edges(device):
    """u = 0 takes the first allowed count with mass; u just below 1 the last allowed one."""
    L, M = 3, 6
    inp = nade_inputs(5, 4, L, M, 4, torch.float64, device, limits=torch.tensor([6, 4, 1]))
    inp["uniforms"] = torch.tensor(
        [[0.0, 0.0, 0.0], [1 - 1e-16, 1 - 1e-16, 0.5], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]],
        dtype=torch.float64,
        device=device,
    )
    fused = torch.ops.nncme.nade_sample(*sample_args(inp, 1.0, 0))
    ref = reference.nade_sample(*sample_args(inp, 1.0, 0))
    assert torch.equal(fused[0], ref[0])
    assert (
        (fused[0][:, 0] <= 5).all() and (fused[0][:, 1] <= 3).all() and (fused[0][:, 2] == 0).all()
    )
    assert (fused[0][3] == torch.tensor([5, 3, 0], device=device)).all()


@needs_kernel
def test_nade_base_isa_matches(monkeypatch, rng):
    """The baseline SIMD body (forced) gives the same answers as the default one."""
    inp = nade_inputs(int(rng.integers(2**31)), 40, 6, 33, 20, torch.float64, "cpu")
    default = torch.ops.nncme.nade_sample(*sample_args(inp, 0.7, 1))
    monkeypatch.setenv("NNCME_CPU_ISA", "base")
    base = torch.ops.nncme.nade_sample(*sample_args(inp, 0.7, 1))
    assert torch.equal(default[0], base[0])
    torch.testing.assert_close(default[1], base[1], rtol=1e-12, atol=1e-12)
    check_sample(inp, 0.7, 1, torch.float64, 0.99)


@needs_kernel
def test_nade_huge_category_count(device, rng):
    """20000 categories: on CUDA a warp's state no longer fits in shared memory and lives in a
    global workspace instead."""
    inp = nade_inputs(int(rng.integers(2**31)), 6, 2, 20000, 4, torch.float64, device)
    check_sample(inp, 1.0, 0, torch.float64, 0.99)


@pytest.mark.cuda
@needs_kernel
def test_nade_global_workspace_is_reused_across_a_large_batch(rng):
    """On the global-workspace path (a warp's state does not fit in shared memory) the grid
    holds only the warps that can be resident, each looping over sample groups with one
    workspace slot: a batch of many more sample groups than resident warps (H200: 132
    multiprocessors) must match the CPU kernel row for row, the last rows included."""
    B, L, M, H = 200_000, 2, 1600, 8  # float64: 4 samples x 1600 logits per warp > 48 KiB / 4
    cpu = nade_inputs(int(rng.integers(2**31)), B, L, M, H, torch.float64, "cpu")
    gpu = {k: v.cuda() for k, v in cpu.items()}
    a = torch.ops.nncme.nade_sample(*sample_args(cpu, 0.8, 0))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    b = torch.ops.nncme.nade_sample(*sample_args(gpu, 0.8, 0))
    torch.cuda.synchronize()
    # one slot per sample group would be 50000 slots of 4 x (2 H + M) values (2.6 GB)
    per_group = (B // 4) * 4 * (2 * H + M) * 8
    assert torch.cuda.max_memory_allocated() - before < per_group / 2
    same = (a[0] == b[0].cpu()).all(dim=1)
    assert same.double().mean() >= 0.999 and bool(same[-100:].all())
    torch.testing.assert_close(b[1].cpu()[same], a[1][same], **TOL[torch.float64])
    torch.testing.assert_close(b[2].cpu()[same], a[2][same], **TOL[torch.float64])
    torch.testing.assert_close(
        torch.ops.nncme.nade_log_prob(*log_prob_args(a[0].cuda(), gpu, 0)).cpu(),
        torch.ops.nncme.nade_log_prob(*log_prob_args(a[0], cpu, 0)),
        **TOL[torch.float64],
    )


@pytest.mark.cuda
@needs_kernel
def test_nade_operands_on_two_devices_are_named():
    """The dispatcher picks the CUDA kernel when any operand is on the GPU: each other operand
    is checked and named."""
    gpu = nade_inputs(0, 4, 3, 5, 4, torch.float64, "cuda")
    for name in ["uniforms", *ORDER[1:]]:
        with pytest.raises(RuntimeError, match=f"{name} must be on cuda"):
            torch.ops.nncme.nade_sample(*sample_args(dict(gpu, **{name: gpu[name].cpu()}), 1, 0))
    with pytest.raises(RuntimeError, match="states must be on cuda"):
        states = torch.zeros(4, 3, dtype=torch.int64)
        torch.ops.nncme.nade_log_prob(*log_prob_args(states, gpu, 0))


@pytest.mark.cuda
@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nade_cuda_kernel_matches_cpu_kernel(dtype, rng):
    """The two compiled kernels on the benchmark's shape class, draw for draw."""
    seed = int(rng.integers(2**31))
    cpu = nade_inputs(seed, 2048, 20, 100, 64, dtype, "cpu")
    gpu = {k: v.cuda() for k, v in cpu.items()}
    for alpha in (1.0, 0.7):
        a = torch.ops.nncme.nade_sample(*sample_args(cpu, alpha, 0))
        b = torch.ops.nncme.nade_sample(*sample_args(gpu, alpha, 0))
        same = (a[0] == b[0].cpu()).all(dim=1)
        assert same.double().mean() >= (0.999 if dtype == torch.float64 else 0.98)
        torch.testing.assert_close(b[1].cpu()[same], a[1][same], **TOL[dtype])
        torch.testing.assert_close(b[2].cpu()[same], a[2][same], **TOL[dtype])
    states = a[0]
    torch.testing.assert_close(
        torch.ops.nncme.nade_log_prob(*log_prob_args(states.cuda(), gpu, 1)).cpu(),
        torch.ops.nncme.nade_log_prob(*log_prob_args(states, cpu, 1)),
        **TOL[dtype],
    )


@needs_kernel
def test_nade_opcheck(device):
    inp = nade_inputs(0, 6, 3, 5, 4, torch.float64, device)
    torch.library.opcheck(torch.ops.nncme.nade_sample.default, sample_args(inp, 0.8, 0))
    states = torch.randint(0, 5, (6, 3), device=device)
    torch.library.opcheck(torch.ops.nncme.nade_log_prob.default, log_prob_args(states, inp, 1))


@needs_kernel
def test_nade_errors_are_actionable():
    inp = nade_inputs(0, 4, 3, 5, 4, torch.float64, "cpu")
    with pytest.raises(RuntimeError, match="uniforms must have shape"):
        torch.ops.nncme.nade_sample(*sample_args(dict(inp, uniforms=inp["uniforms"][:, :2]), 1, 0))
    with pytest.raises(RuntimeError, match="alpha"):
        torch.ops.nncme.nade_sample(*sample_args(inp, 0.0, 0))
    with pytest.raises(RuntimeError, match="activation"):
        torch.ops.nncme.nade_sample(*sample_args(inp, 1.0, 2))
    with pytest.raises(RuntimeError, match="head_w must have the shape"):
        torch.ops.nncme.nade_sample(*sample_args(dict(inp, head_w=inp["head_w"][:, :4]), 1, 0))
    with pytest.raises(RuntimeError, match="must have the dtype of hidden0"):
        torch.ops.nncme.nade_sample(*sample_args(dict(inp, embed=inp["embed"].float()), 1, 0))
    with pytest.raises(RuntimeError, match="states must be int64"):
        torch.ops.nncme.nade_log_prob(*log_prob_args(inp["uniforms"], inp, 0))
    with pytest.raises(RuntimeError, match="cons_start"):
        torch.ops.nncme.nade_sample(
            *sample_args(dict(inp, cons_start=torch.zeros(4, 2, dtype=torch.int64)), 1, 0)
        )


@needs_kernel
def test_nade_empty_batch(device):
    inp = nade_inputs(0, 0, 3, 5, 4, torch.float32, device)
    samples, log_q, log_rho = torch.ops.nncme.nade_sample(*sample_args(inp, 1.0, 0))
    assert samples.shape == (0, 3) and log_q.shape == (0,) and log_rho.shape == (0,)


def test_nade_sample_draws_from_the_conditionals():
    """The reference itself: a one-species NADE draws each count with its softmax probability
    (chi-square), so agreeing with it means sampling the right distribution."""
    M, B = 5, 40000
    inp = nade_inputs(11, B, 1, M, 3, torch.float64, "cpu", limits=torch.tensor([M]))
    inp["hidden0"] = inp["hidden0"][:1].expand(B, -1).contiguous()
    samples, log_q, _ = reference.nade_sample(*sample_args(inp, 1.0, 0))
    h = torch.sigmoid(inp["hidden0"][0])
    p = torch.softmax(inp["head_w"][0] @ h + inp["head_b"][0], 0)
    counts = torch.bincount(samples[:, 0], minlength=M).double()
    chi2 = float((((counts - B * p) ** 2) / (B * p)).sum())
    assert chi2 < 25.0  # 4 degrees of freedom: p ~ 5e-5
    torch.testing.assert_close(log_q, p.log()[samples[:, 0]])
