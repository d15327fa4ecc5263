"""Plain-PyTorch definitions of nncme's operators.

Each function here *defines* the operator of the same name in `torch.ops.nncme`: the compiled
CPU and CUDA kernels must agree with it (tests compare them on random inputs), and it is the
fallback where no kernel exists (NNCME_FORCE_REFERENCE=1 or impl="reference"). Signatures match
the operator schemas in csrc/registration.cpp argument for argument.

Network arguments (see `nncme.network.CompiledNetwork`):
    rxn_ptr (K+1,) int64, rxn_entries (nnz, 3) int64 rows (species, reactant order, change),
    limits (L,) int64, rates (K,) float, convention (K,) int64 per reaction (0 falling |
    1 binomial | 2 power), and the factor table: reaction k owns factors
    factor_ptr[k]:factor_ptr[k+1] ((K+1,) int64), factor f reads species factor_index[f] ((F,)
    int64) with factor_params[f] ((F, 3) float) = (kind, a, b): kind 0 Hill activation
    x^b / (a^b + x^b), 1 Hill repression a^b / (a^b + x^b), 2 complement f(a - x, b) in the
    reaction's convention, 0 where a - x < 0.
"""

from __future__ import annotations

import math

import torch

from .masks import ConservationMask, allowed_counts

__all__ = [
    "fisher_solve",
    "fisher_solve_gram",
    "hill_factor",
    "mass_action_factor",
    "nade_log_prob",
    "nade_sample",
    "neighbors",
    "propensities",
    "transition_logsum",
]

FALLING, BINOMIAL, POWER = 0, 1, 2
ACTIVATION, REPRESSION, COMPLEMENT = 0, 1, 2
SIGMOID, TANH = 0, 1
AUTO_SPACE, PARAMETER_SPACE, SAMPLE_SPACE = 0, 1, 2


def mass_action_factor(
    n: torch.Tensor, order: torch.Tensor, convention: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Elementwise mass-action factor f(n, r): n(n-1)..(n-r+1), C(n, r) or n^r.

    order and convention (codes FALLING, BINOMIAL, POWER) broadcast against n.
    """
    n = n.to(dtype)
    order = order.expand_as(n)
    power = (convention == POWER).expand_as(n)
    binomial = (convention == BINOMIAL).expand_as(n)
    out = torch.ones_like(n)
    max_order = int(order.max()) if order.numel() else 0
    for j in range(max_order):
        term = torch.where(power, n, n - j)
        out = torch.where(order > j, out * term, out)
    for j in range(2, max_order + 1):
        out = torch.where(binomial & (order >= j), out / j, out)
    return out


def hill_factor(
    x: torch.Tensor, half: torch.Tensor, coef: torch.Tensor, repress: torch.Tensor
) -> torch.Tensor:
    """x^n/(K^n+x^n) (activation) or K^n/(K^n+x^n) (repression), overflow-free."""
    small = x <= half
    ratio = torch.where(small, (x / half) ** coef, (half / x) ** coef)  # <= 1 either way
    low, high = ratio / (1 + ratio), 1 / (1 + ratio)
    act = torch.where(small, low, high)
    rep = torch.where(small, high, low)
    return torch.where(repress > 0.5, rep, act)


def _in_box(states: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    return ((states >= 0) & (states < limits)).all(dim=-1)


def _reaction_of_entry(rxn_ptr: torch.Tensor) -> torch.Tensor:
    K = rxn_ptr.shape[0] - 1
    return torch.repeat_interleave(torch.arange(K, device=rxn_ptr.device), rxn_ptr.diff())


def _dense_change(rxn_ptr: torch.Tensor, rxn_entries: torch.Tensor, L: int) -> torch.Tensor:
    K = rxn_ptr.shape[0] - 1
    change = torch.zeros(K, L, dtype=torch.int64, device=rxn_ptr.device)
    change[_reaction_of_entry(rxn_ptr), rxn_entries[:, 0]] = rxn_entries[:, 2]
    return change


def _reaction_terms(
    counts: torch.Tensor,
    ok: torch.Tensor,
    rxn_ptr: torch.Tensor,
    rxn_entries: torch.Tensor,
    rates: torch.Tensor,
    convention: torch.Tensor,
) -> torch.Tensor:
    """rates_k * prod over entries of f(count, order), 0 where any entry is not ok.

    counts, ok: (B, nnz) per entry of the reaction table.  Returns (B, K).
    """
    B = counts.shape[0]
    K = rates.shape[0]
    of_entry = _reaction_of_entry(rxn_ptr)
    rxn = of_entry.expand(B, -1)
    factor = mass_action_factor(counts, rxn_entries[:, 1], convention[of_entry], rates.dtype)
    a = rates.unsqueeze(0).expand(B, K).contiguous()
    a = a.scatter_reduce(1, rxn, factor, reduce="prod")
    blocked = torch.zeros(B, K, dtype=torch.int64, device=counts.device)
    blocked = blocked.scatter_reduce(1, rxn, (~ok).to(torch.int64), reduce="amax")
    return torch.where(blocked > 0, torch.zeros_like(a), a)


def _factors_at(
    states: torch.Tensor,
    shift: torch.Tensor | None,
    convention: torch.Tensor,
    factor_ptr: torch.Tensor,
    factor_index: torch.Tensor,
    factor_params: torch.Tensor,
) -> torch.Tensor:
    """(B, K) product of each reaction's factors, the species read from states (minus
    shift[k, species] if given: the neighbour n - s_k); 1 for reactions without factors."""
    B, K = states.shape[0], factor_ptr.shape[0] - 1
    out = torch.ones(B, K, dtype=factor_params.dtype, device=states.device)
    if factor_index.numel() == 0:
        return out
    rxn = _reaction_of_entry(factor_ptr)  # (F,) reaction of each factor
    x = states[:, factor_index]  # (B, F)
    if shift is not None:
        x = x - shift[rxn, factor_index]
    kind, a, b = factor_params.unbind(1)
    hill = hill_factor(x.to(factor_params.dtype), a, b, (kind == REPRESSION).to(a.dtype))
    free = a.to(torch.int64) - x  # complement: the implicit species' count
    order = torch.where(kind == COMPLEMENT, b, torch.zeros_like(b)).to(torch.int64)
    comp = mass_action_factor(free.clamp(min=0), order, convention[rxn], a.dtype)
    comp = torch.where(free < 0, torch.zeros_like(comp), comp)
    value = torch.where(kind == COMPLEMENT, comp, hill)
    return out.scatter_reduce(1, rxn.expand(B, -1), value, reduce="prod")


def propensities(
    states: torch.Tensor,
    rxn_ptr: torch.Tensor,
    rxn_entries: torch.Tensor,
    limits: torch.Tensor,
    rates: torch.Tensor,
    convention: torch.Tensor,
    factor_ptr: torch.Tensor,
    factor_index: torch.Tensor,
    factor_params: torch.Tensor,
) -> torch.Tensor:
    """a_k(n) for a batch of states with the truncation rule.

    Args:
        states: (B, L) int64 counts.

    Returns:
        (B, K) in rates.dtype: rate_k * prod_i f(n_i, r_ki) * prod of k's factors at n, and 0
        where n is outside the box or n + s_k would leave it.
    """
    sp, _, change = rxn_entries.unbind(1)
    n = states[:, sp]  # (B, nnz)
    after = n + change
    fires = (after >= 0) & (after < limits[sp])
    a = _reaction_terms(n, fires, rxn_ptr, rxn_entries, rates, convention)
    a = a * _factors_at(states, None, convention, factor_ptr, factor_index, factor_params)
    return torch.where(_in_box(states, limits).unsqueeze(1), a, torch.zeros_like(a))


def neighbors(
    states: torch.Tensor, rxn_ptr: torch.Tensor, rxn_entries: torch.Tensor, limits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The states n - s_k from which reaction k leads into n.

    Args:
        states: (B, L) int64.

    Returns:
        nbr: (B, K, L) int64, n - s_k where valid, else n itself (so a model can score every
            row safely).
        valid: (B, K) bool, n and n - s_k both inside the box.
    """
    L = states.shape[1]
    change = _dense_change(rxn_ptr, rxn_entries, L)  # (K, L)
    nbr = states.unsqueeze(1) - change.unsqueeze(0)
    valid = _in_box(nbr, limits) & _in_box(states, limits).unsqueeze(1)
    nbr = torch.where(valid.unsqueeze(-1), nbr, states.unsqueeze(1).expand_as(nbr))
    return nbr, valid


def inflow_propensities(
    states: torch.Tensor,
    rxn_ptr: torch.Tensor,
    rxn_entries: torch.Tensor,
    limits: torch.Tensor,
    rates: torch.Tensor,
    convention: torch.Tensor,
    factor_ptr: torch.Tensor,
    factor_index: torch.Tensor,
    factor_params: torch.Tensor,
) -> torch.Tensor:
    """(B, K) a_k(n - s_k): the propensity of reaction k at the neighbour that leads into n.

    0 where n or n - s_k is outside the box. O(B * (nnz + F)) memory.
    """
    L = states.shape[1]
    sp, _, change = rxn_entries.unbind(1)
    m = states[:, sp] - change  # neighbour counts at the entries
    ok = (m >= 0) & (m < limits[sp])
    a = _reaction_terms(m, ok, rxn_ptr, rxn_entries, rates, convention)
    shift = _dense_change(rxn_ptr, rxn_entries, L)
    a = a * _factors_at(states, shift, convention, factor_ptr, factor_index, factor_params)
    return torch.where(_in_box(states, limits).unsqueeze(1), a, torch.zeros_like(a))


def transition_logsum(
    states: torch.Tensor,
    log_q: torch.Tensor,
    log_q_nbr: torch.Tensor,
    rxn_ptr: torch.Tensor,
    rxn_entries: torch.Tensor,
    limits: torch.Tensor,
    rates: torch.Tensor,
    convention: torch.Tensor,
    factor_ptr: torch.Tensor,
    factor_index: torch.Tensor,
    factor_params: torch.Tensor,
    dt: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log (T q)(n) with T = I + dt W, and the TDVP local generator.

    Args:
        states: (B, L) int64 samples n.
        log_q: (B,) log q(n) of the previous distribution.
        log_q_nbr: (B, K) log q(n - s_k) (any finite value or -inf where the neighbour is
            outside the box: those terms are dropped).
        dt: time step; dt * sum_k a_k(n) must be < 1 (the stay term is log(1 - dt a_0(n)); at
            or beyond 1 it is -inf or NaN, which callers must check through the exit rate).

    Returns:
        log_Tq: (B,) log[q(n) (1 - dt a_0(n)) + dt sum_k a_k(n - s_k) q(n - s_k)].
        local_gen: (B,) (W q)(n) / q(n) = sum_k a_k(n - s_k) q(n - s_k) / q(n) - a_0(n).
        exit_rate: (B,) a_0(n) = sum_k a_k(n).
    """
    args = (
        rxn_ptr,
        rxn_entries,
        limits,
        rates,
        convention,
        factor_ptr,
        factor_index,
        factor_params,
    )
    exit_rate = propensities(states, *args).sum(dim=1)
    a_in = inflow_propensities(states, *args)  # (B, K)
    live = a_in > 0
    neg_inf = torch.full_like(a_in, -math.inf)
    inflow = torch.where(live, math.log(dt) + torch.log(a_in) + log_q_nbr, neg_inf)
    stay = log_q + torch.log1p(-dt * exit_rate)
    log_tq = torch.logsumexp(torch.cat([stay.unsqueeze(1), inflow], dim=1), dim=1)
    ratio = torch.where(
        live, a_in * torch.exp(log_q_nbr - log_q.unsqueeze(1)), torch.zeros_like(a_in)
    )
    local_gen = ratio.sum(dim=1) - exit_rate
    return log_tq, local_gen, exit_rate


def _activate(a: torch.Tensor, activation: int) -> torch.Tensor:
    return torch.sigmoid(a) if activation == SIGMOID else torch.tanh(a)


def _nade_loop(
    hidden0: torch.Tensor,
    embed: torch.Tensor,
    head_w: torch.Tensor,
    head_b: torch.Tensor,
    limits: torch.Tensor,
    cons: ConservationMask,
    cons_start: torch.Tensor,
    activation: int,
    alpha: float,
    uniforms: torch.Tensor | None,
    given: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Species-by-species NADE pass: draws from the tempered conditionals, or scores `given`."""
    B = hidden0.shape[0]
    L, M, _ = embed.shape
    dtype = hidden0.dtype
    a = hidden0
    remainders = cons_start.expand(B, -1) if cons.num_laws else None
    samples = torch.zeros(B, L, dtype=torch.int64, device=hidden0.device)
    log_q = torch.zeros(B, dtype=dtype, device=hidden0.device)
    log_rho = torch.zeros(B, dtype=dtype, device=hidden0.device)
    rows = torch.arange(B, device=hidden0.device)
    for i in range(L):
        logits = _activate(a, activation) @ head_w[i].T + head_b[i]  # (B, M)
        allowed = allowed_counts(i, M, limits[i], remainders, cons).expand(B, M)
        dead = ~allowed.any(dim=1)
        masked = logits.masked_fill(~allowed, -math.inf)
        logp = torch.log_softmax(masked, dim=1)
        logr = logp if alpha == 1.0 else torch.log_softmax(alpha * masked, dim=1)
        if given is None:
            cdf = torch.cumsum(torch.exp(logr), dim=1)
            idx = (cdf <= uniforms[:, i : i + 1]).sum(dim=1)
            last = M - 1 - torch.argmax(allowed.flip(1).to(torch.int8), dim=1)
            idx = torch.minimum(idx, last)  # u beyond the rounded total: last allowed count
        else:
            idx = given[:, i]
        idx = torch.where(dead, torch.zeros_like(idx), idx)
        samples[:, i] = idx
        lp = logp[rows, idx.clamp(0, M - 1)]
        lr = logr[rows, idx.clamp(0, M - 1)]
        bad = dead | (idx < 0) | (idx >= M)
        log_q = log_q + torch.where(bad, torch.full_like(lp, -math.inf), lp)
        log_rho = log_rho + torch.where(bad, torch.full_like(lr, -math.inf), lr)
        a = a + embed[i][idx.clamp(0, M - 1)]
        if remainders is not None:
            remainders = remainders - cons.weights[:, i].unsqueeze(0) * idx.unsqueeze(1)
    return samples, log_q, log_rho


def nade_sample(
    uniforms: torch.Tensor,
    hidden0: torch.Tensor,
    embed: torch.Tensor,
    head_w: torch.Tensor,
    head_b: torch.Tensor,
    limits: torch.Tensor,
    cons_weights: torch.Tensor,
    cons_start: torch.Tensor,
    cons_law_meta: torch.Tensor,
    cons_group_meta: torch.Tensor,
    cons_table: torch.Tensor,
    alpha: float,
    activation: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw B states from a NADE, species by species, by inverse CDF of given uniforms.

    The NADE: a_0 = hidden0; for species i: h_i = act(a_i), logits_i = head_w[i] h_i +
    head_b[i], counts >= M_i and counts that break a conservation law masked, q(n_i | n_<i) =
    softmax(logits_i); a_{i+1} = a_i + embed[i, n_i]. The proposal tempers each conditional:
    rho(n_i | n_<i) proportional to q(n_i | n_<i)^alpha over the allowed counts.

    Args:
        uniforms: (B, L) in [0, 1), one per species: n_i is the first count whose cumulative
            proposal probability exceeds u_i.
        hidden0: (B, H) initial pre-activation (bias, plus context for conditional models).
        embed: (L, M, H) embedding of each count per species.
        head_w: (L, M, H), head_b: (L, M) output heads.
        limits: (L,) int64 count limits (<= M).
        cons_*: conservation tables (C = 0 for none); cons_start (B, C) or (C,) int64 totals.
        alpha: tempering exponent (1: sample q itself).
        activation: 0 sigmoid, 1 tanh.

    Returns:
        samples (B, L) int64; log_q (B,) and log_rho (B,) in hidden0.dtype. A sample that
        reaches a species with no allowed count (possible only when conservation tables are
        not exact) has count 0 there and log_q = log_rho = -inf.
    """
    cons = ConservationMask(cons_weights, cons_law_meta, cons_group_meta, cons_table)
    return _nade_loop(
        hidden0, embed, head_w, head_b, limits, cons, cons_start, activation, alpha, uniforms, None
    )


def nade_log_prob(
    states: torch.Tensor,
    hidden0: torch.Tensor,
    embed: torch.Tensor,
    head_w: torch.Tensor,
    head_b: torch.Tensor,
    limits: torch.Tensor,
    cons_weights: torch.Tensor,
    cons_start: torch.Tensor,
    cons_law_meta: torch.Tensor,
    cons_group_meta: torch.Tensor,
    cons_table: torch.Tensor,
    activation: int,
) -> torch.Tensor:
    """log q(n) of given states (B, L) under the NADE of `nade_sample` (no gradient needed).

    Returns (B,) in hidden0.dtype; -inf for states outside the limits or breaking a law.
    """
    cons = ConservationMask(cons_weights, cons_law_meta, cons_group_meta, cons_table)
    _, log_q, _ = _nade_loop(
        hidden0, embed, head_w, head_b, limits, cons, cons_start, activation, 1.0, None, states
    )
    return log_q


def _raised_shift(shift: torch.Tensor, mean_diag: torch.Tensor, eps: float) -> torch.Tensor:
    """x10, or from 0 to eps times the mean diagonal (a rounding error of the Gram matrix; eps
    itself for a zero matrix)."""
    scale = torch.where(mean_diag > 0, mean_diag, torch.ones_like(mean_diag))
    return torch.where(shift > 0, shift * 10, eps * scale)


def _factor_with_raises(
    A: torch.Tensor, shift: float, max_raises: int, op: str, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shift policy of both fisher_solve overloads: the lower Cholesky factors of
    A + shift_g I (G, n, n), raising the shift of each block whose factorisation fails
    (_raised_shift) at most max_raises times, then torch.linalg.LinAlgError.

    Returns:
        the factors (G, n, n) and the shifts used (G,) in float64.
    """
    G = A.shape[0]
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    shifts = torch.full((G,), float(shift), dtype=torch.float64, device=A.device)
    mean_diag = A.diagonal(dim1=-2, dim2=-1).mean(-1).to(torch.float64)
    eps = torch.finfo(A.dtype).eps
    for attempt in range(max_raises + 1):
        factor, info = torch.linalg.cholesky_ex(A + shifts.to(A.dtype)[:, None, None] * eye)
        failed = info != 0
        if not bool(failed.any()):
            return factor, shifts
        if attempt == max_raises:
            g = int(failed.nonzero()[0])
            raise torch.linalg.LinAlgError(
                f"{op}: the Cholesky factorisation of block {g} failed with shift "
                f"{float(shifts[g])} after {attempt} raises (max_raises = {max_raises}); "
                f"{what} probably contain NaN or inf"
            )
        shifts = torch.where(failed, _raised_shift(shifts, mean_diag, eps), shifts)
    raise AssertionError("unreachable")


def fisher_solve(
    O: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    shift: float,
    mode: int,
    max_raises: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred, weighted Gram solve of natural gradient and TDVP, per block g.

    With the weighted means mean = sum_n w_n O_n and vbar = sum_n w_n v_n, O_c = sqrt(w) (O - mean)
    and v_c = sqrt(w) (v - vbar), solves (O_c^T O_c + shift I) x = O_c^T v_c: in parameter space
    (a P x P system) or, through the Woodbury identity, in sample space as
    x = O_c^T (O_c O_c^T + shift I)^-1 v_c (N x N, no P x P matrix). Natural gradient: v = the
    loss values f(n) (then O_c^T v_c is the score-function gradient); TDVP: v = the local
    generator (W q)(n)/q(n).

    Args:
        O: (G, N, P) per-sample gradients of log q, G independent blocks.
        v: (G, N) per-sample values.
        w: (G, N) non-negative weights, self-normalised (each block sums to 1).
        shift: lambda >= 0 added to the diagonal.
        mode: 0 the smaller system (parameter space when P <= N), 1 parameter, 2 sample space.
        max_raises: how often a block whose Cholesky factorisation fails may have its shift
            raised (x10; from 0 to eps times its mean diagonal, or eps for a zero matrix)
            before this raises torch.linalg.LinAlgError.

    Returns:
        x: (G, P) and the shift used per block (G,), in O.dtype.
    """
    _, N, P = O.shape
    param_space = mode == PARAMETER_SPACE or (mode == AUTO_SPACE and P <= N)
    mean = (w.unsqueeze(-1) * O).sum(1, keepdim=True)  # (G, 1, P)
    vbar = (w * v).sum(1, keepdim=True)  # (G, 1)
    sw = w.sqrt()
    Oc = (O - mean) * sw.unsqueeze(-1)  # (G, N, P)
    vc = ((v - vbar) * sw).unsqueeze(-1)  # (G, N, 1)
    if param_space:
        A, b = Oc.mT @ Oc, Oc.mT @ vc  # (G, P, P), (G, P, 1)
    else:
        A, b = Oc @ Oc.mT, vc  # (G, N, N), (G, N, 1)
    factor, shifts = _factor_with_raises(
        A, shift, max_raises, "fisher_solve", "the gradients or values"
    )
    y = torch.cholesky_solve(b, factor)
    x = y.squeeze(-1) if param_space else (Oc.mT @ y).squeeze(-1)
    return x, shifts.to(O.dtype)


def fisher_solve_system(
    A: torch.Tensor, b: torch.Tensor, shift: float, max_raises: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The parameter-space solve of `fisher_solve` from its system alone: (A + shift I) x = b
    with the same shift raises, where A = O_c^T O_c and b = O_c^T v_c were summed elsewhere
    (over the ranks of a run in many processes, `nncme.optim.linear.FisherSolver.solve_reduced`).

    Args:
        A: (G, P, P) symmetric positive semi-definite systems.
        b: (G, P) right-hand sides.
        shift: lambda >= 0 added to the diagonal.
        max_raises: as in `fisher_solve`; then torch.linalg.LinAlgError.

    Returns:
        x: (G, P) and the shift used per block (G,), in A.dtype.
    """
    factor, shifts = _factor_with_raises(
        A, shift, max_raises, "fisher_solve.system", "the summed Fisher matrix"
    )
    x = torch.cholesky_solve(b.unsqueeze(-1), factor).squeeze(-1)
    return x, shifts.to(A.dtype)


def fisher_solve_gram(
    K: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    shift: float,
    max_raises: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample-space solve of `fisher_solve` from the Gram matrix K = O O^T alone (the
    operator torch.ops.nncme.fisher_solve.gram).

    With K_c = (I - 1 w^T) K (I - w 1^T) (the Gram matrix of O - mean), A = W^1/2 K_c W^1/2 is
    fisher_solve's sample-space matrix O_c O_c^T and b = W^1/2 (v - w.v) its v_c; solves
    (A + shift I) y = b with the same shift raises, and returns x = O_c^T y as coefficients on
    the rows of O: gamma = W^1/2 y, x = sum_n gamma_n (O_n - mean) = sum_n coef_n O_n with
    coef = gamma - w sum(gamma).

    Args:
        K: (G, N, N) symmetric, uncentred Gram matrix of the N samples of each block.
        v: (G, N) per-sample values.
        w: (G, N) non-negative weights, self-normalised (each block sums to 1).
        shift: lambda >= 0 added to the diagonal of A.
        max_raises: as in `fisher_solve`; then torch.linalg.LinAlgError.

    Returns:
        coef: (G, N) and the shift used per block (G,), in K.dtype.
    """
    wc = w.unsqueeze(-1)  # (G, N, 1)
    row = wc.mT @ K  # (G, 1, N) w^T K
    col = K @ wc  # (G, N, 1) K w
    Kc = K - row - col + row @ wc  # (G, N, N)
    sw = w.sqrt()
    A = sw.unsqueeze(-1) * Kc * sw.unsqueeze(-2)  # (G, N, N)
    b = ((v - (w * v).sum(1, keepdim=True)) * sw).unsqueeze(-1)  # (G, N, 1)
    factor, shifts = _factor_with_raises(
        A, shift, max_raises, "fisher_solve.gram", "the Gram matrix or values"
    )
    gamma = torch.cholesky_solve(b, factor).squeeze(-1) * sw  # (G, N)
    coef = gamma - w * gamma.sum(1, keepdim=True)
    return coef, shifts.to(K.dtype)
