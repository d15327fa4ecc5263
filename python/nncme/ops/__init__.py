"""nncme's operators: thin wrappers that pick the compiled kernel or the reference.

`impl="auto"` uses torch.ops.nncme.<op> where the extension has a kernel for the device (and
NNCME_FORCE_REFERENCE is not set), else the plain-PyTorch definition in `reference`.
`impl="fused"` insists on the kernel, `impl="reference"` on the definition.
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._ext import extension, extension_error, force_reference, has_kernel
from .masks import ConservationMask, allowed_counts, allowed_counts_all
from .nade import nade_log_prob, nade_sample

__all__ = [
    "ConservationMask",
    "allowed_counts",
    "allowed_counts_all",
    "extension",
    "fisher_solve",
    "fisher_solve_gram",
    "fisher_solve_system",
    "has_kernel",
    "inflow_propensities",
    "nade_log_prob",
    "nade_sample",
    "neighbors",
    "neighbour_changes",
    "neighbour_exit_rates",
    "propensities",
    "reference",
    "resolve_impl",
    "transition_logsum",
]

IMPLS = ("auto", "fused", "reference")


def resolve_impl(op: str, device: torch.device | str, impl: str = "auto") -> str:
    """'fused' or 'reference' for this operator on this device."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return "reference"
    available = has_kernel(op, device)
    if impl == "fused":
        if not available:
            why = extension_error() or f"no {torch.device(device).type} kernel was built"
            raise RuntimeError(f"nncme::{op} has no compiled kernel for {device}: {why}")
        return "fused"
    return "fused" if available and not force_reference() else "reference"


def _call(op: str, device: torch.device, impl: str, *args):
    if resolve_impl(op, device, impl) == "fused":
        return getattr(torch.ops.nncme, op)(*args)
    return getattr(reference, op)(*args)


def propensities(
    states: torch.Tensor,
    net,
    t: float = 0.0,
    *,
    impl: str = "auto",
    rates: torch.Tensor | None = None,
) -> torch.Tensor:
    """a_k(n, t) for a batch of states with the truncation rule.

    Args:
        states: (B, L) integer counts.
        net: a CompiledNetwork (ReactionNetwork.compile) on the states' device.
        t: time (for time-dependent rates and custom propensities).
        rates: (K,) rate constants in place of the network's at t (ones give each reaction's
            state-dependent factor alone, which per-sample rates then scale).

    Returns:
        (B, K) in net.dtype.
    """
    states = states.to(torch.int64)
    args = net.operator_args(t)
    if rates is not None:
        args = (*args[:3], rates.to(device=states.device, dtype=net.dtype), *args[4:])
    a = _call("propensities", states.device, impl, states, *args)
    if net.custom:
        a = _apply_custom(a, states, net, t)
    return a


class NeighbourExitRates:
    """a_0(n - s_k) for every reaction k, from the propensities at n and the few reactions
    whose propensity k's change touches.

    The exit rate of each neighbour n - s_k by itself is a (B K, K) propensity evaluation:
    quadratic in the number of reactions, which on a lattice grows with the sites (K ~ 5.5 L
    for a 2-D reaction-diffusion grid). But s_k changes one or two species, and only the
    reactions that read them (as reactants, through factors, or through the truncation rule
    at the species they change) change their propensity: a_0(n - s_k) = a_0(n) +
    sum_{r in D_k} [a_r(n - s_k) - a_r(n)], one small evaluation per k over D_k alone.

    `sparse` says whether that pays (sum_k |D_k| <= K^2 / 4; never with custom propensities,
    which may read any species): where it does not, the caller evaluates the neighbours
    directly.

    Args:
        net: a CompiledNetwork.
    """

    def __init__(self, net) -> None:
        K = net.num_reactions
        ptr, entries = net.rxn_ptr.tolist(), net.rxn_entries.tolist()
        fptr, fspecies = net.factor_ptr.tolist(), net.factor_index.tolist()
        readers: dict[int, set[int]] = {}
        for r in range(K):
            read = {entries[j][0] for j in range(ptr[r], ptr[r + 1])}
            read |= {fspecies[j] for j in range(fptr[r], fptr[r + 1])}
            for i in read:
                readers.setdefault(i, set()).add(r)
        groups = []  # D_k
        for k in range(K):
            moved = {entries[j][0] for j in range(ptr[k], ptr[k + 1]) if entries[j][2] != 0}
            groups.append(sorted(set().union(*(readers.get(i, set()) for i in moved))))
        self.net = net
        self.sparse = not net.custom and 4 * sum(map(len, groups)) <= K * K
        self._tables = [self._table(group) for group in groups] if self.sparse else []

    def _table(self, group: list[int]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The operator's reaction and factor tables of the reactions in group (their rates
        are taken at call time)."""
        net = self.net
        index = torch.tensor(group, dtype=torch.int64, device=net.device)

        def rows(ptr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            lo, hi = ptr[index], ptr[index + 1]
            counts = hi - lo
            picked = [
                torch.arange(a, b, device=net.device) for a, b in zip(lo.tolist(), hi.tolist())
            ]
            flat = torch.cat(picked) if picked else lo[:0]
            new_ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
            return new_ptr, flat

        rxn_ptr, rxn_rows = rows(net.rxn_ptr)
        factor_ptr, factor_rows = rows(net.factor_ptr)
        tables = (
            rxn_ptr, net.rxn_entries[rxn_rows], net.limits, net.convention[index],
            factor_ptr, net.factor_index[factor_rows], net.factor_params[factor_rows],
        )  # fmt: skip
        return index, tables

    def __call__(
        self, states: torch.Tensor, own: torch.Tensor, t: float, *, impl: str = "auto"
    ) -> torch.Tensor:
        """states (B, L), their propensities own (B, K) -> a_0(n - s_k) (B, K); meaningless
        where n - s_k leaves the box (the caller masks those)."""
        if not self.sparse:
            raise ValueError("the network's dependencies are dense: evaluate the neighbours")
        rates = self.net.rates(t)
        out = own.sum(dim=1, keepdim=True).repeat(1, own.shape[1])
        for k, (index, (ptr, entries, limits, conv, fptr, findex, fparams)) in enumerate(
            self._tables
        ):
            if not index.numel():
                continue
            moved = states - self.net.change[k]
            args = (ptr, entries, limits, rates[index], conv, fptr, findex, fparams)
            at = _call("propensities", states.device, impl, moved, *args)  # (B, |D_k|)
            out[:, k] += (at - own[:, index]).sum(dim=1)
        return out


def neighbour_changes(net) -> tuple[torch.Tensor, torch.Tensor]:
    """The species each neighbour n - s_k differs at, ascending, padded with L (K, W), and
    its count there minus n's, -s_k (K, W), 0 at the padding (built once per network)."""
    found = getattr(net, "_neighbour_changes", None)
    if found is None:
        K, L = net.change.shape
        moved = net.change != 0
        W = max(1, int(moved.sum(dim=1).max())) if K else 1
        order = torch.sort(torch.where(moved, torch.arange(L, device=moved.device), L), dim=1)
        sites = order.values[:, :W]
        steps = -net.change.gather(1, sites.clamp(max=L - 1)) * (sites < L)
        found = net._neighbour_changes = (sites, steps)
    return found


def neighbour_exit_rates(net) -> NeighbourExitRates:
    """The network's `NeighbourExitRates` (built once per compiled network)."""
    found = getattr(net, "_neighbour_exit_rates", None)
    if found is None:
        found = NeighbourExitRates(net)
        net._neighbour_exit_rates = found
    return found


def _truncation_ok(states: torch.Tensor, shift: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    after = states + shift
    inside = lambda s: ((s >= 0) & (s < limits)).all(dim=-1)  # noqa: E731
    return inside(states) & inside(after)


def _custom_values(states: torch.Tensor, net, k: int, t: float) -> torch.Tensor:
    fn = net.network.reactions[k].propensity
    values = torch.as_tensor(fn(states.to(torch.float64), t), dtype=net.dtype, device=states.device)
    if values.shape != states.shape[:1]:
        raise ValueError(
            f"custom propensity of reaction {net.network.reactions[k].name!r} returned shape "
            f"{tuple(values.shape)}, expected ({states.shape[0]},)"
        )
    if not torch.isfinite(values).all() or (values < 0).any():
        raise ValueError(
            f"custom propensity of reaction {net.network.reactions[k].name!r} returned negative "
            "or non-finite values"
        )
    return values


def _apply_custom(a: torch.Tensor, states: torch.Tensor, net, t: float) -> torch.Tensor:
    a = a.clone()
    for k in net.custom:
        ok = _truncation_ok(states, net.change[k], net.limits)
        a[:, k] = torch.where(ok, _custom_values(states, net, k, t), torch.zeros_like(a[:, k]))
    return a


def neighbors(
    states: torch.Tensor, net, *, impl: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) states -> neighbours n - s_k (B, K, L) int64 and validity (B, K) bool."""
    states = states.to(torch.int64)
    return _call("neighbors", states.device, impl, states, net.rxn_ptr, net.rxn_entries, net.limits)


def transition_logsum(
    states: torch.Tensor,
    log_q: torch.Tensor,
    log_q_nbr: torch.Tensor,
    net,
    t: float,
    dt: float,
    *,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log (T q)(n), (W q)(n)/q(n) and the exit rate a_0(n); see reference.transition_logsum.

    Args:
        states: (B, L) samples; log_q: (B,) log q_old(n); log_q_nbr: (B, K) log q_old(n - s_k).
        net: CompiledNetwork on the states' device; t: time of the rates; dt: step.
    """
    states = states.to(torch.int64)
    log_q = log_q.to(net.dtype)
    log_q_nbr = log_q_nbr.to(net.dtype)
    if net.custom:
        return _transition_with_custom(states, log_q, log_q_nbr, net, t, dt)
    return _call(
        "transition_logsum",
        states.device,
        impl,
        states,
        log_q,
        log_q_nbr,
        *net.operator_args(t),
        dt,
    )


def inflow_propensities(states: torch.Tensor, net, t: float = 0.0) -> torch.Tensor:
    """a_k(n - s_k, t) (B, K): reaction k at the neighbour that leads into n (0 where n or
    n - s_k is outside the box), in O(B nnz), custom propensities included."""
    states = states.to(torch.int64)
    a_in = reference.inflow_propensities(states, *net.operator_args(t))
    inside = ((states >= 0) & (states < net.limits)).all(dim=-1)
    for k in net.custom:
        nbr = states - net.change[k]
        ok = _truncation_ok(nbr, net.change[k], net.limits) & inside
        vals = _custom_values(torch.where(ok.unsqueeze(1), nbr, states), net, k, t)
        a_in[:, k] = torch.where(ok, vals, torch.zeros_like(vals))
    return a_in


def _transition_with_custom(states, log_q, log_q_nbr, net, t: float, dt: float):
    """The slow general path: custom propensities are evaluated at the neighbours in Python."""
    exit_rate = propensities(states, net, t).sum(dim=1)
    a_in = inflow_propensities(states, net, t)
    live = a_in > 0
    inflow = torch.where(live, math.log(dt) + torch.log(a_in) + log_q_nbr, -math.inf)
    stay = log_q + torch.log1p(-dt * exit_rate)
    log_tq = torch.logsumexp(torch.cat([stay.unsqueeze(1), inflow], dim=1), dim=1)
    ratio = torch.where(live, a_in * torch.exp(log_q_nbr - log_q.unsqueeze(1)), 0.0)
    return log_tq, ratio.sum(dim=1) - exit_rate, exit_rate


# Which implementation of fisher_solve impl="auto" picks per device: the fused composite only
# where benchmarks/bench_fisher_solve.py measured it faster than the reference
# (benchmarks/results/fisher_solve_<device>.json). CUDA stays on the reference until measured.
FISHER_SOLVE_AUTO = {"cpu": "fused", "cuda": "reference"}
# The same choice for fisher_solve.gram (fisher_solve_gram), by the same rule. Its composite is the
# reference's ATen calls (centring, Cholesky with shift raises, solve) with fewer N x N
# temporaries: on CPU it is the default (faster, with less peak memory: the "gram" rows of
# benchmarks/results/fisher_solve_cpu_gram.json); on CUDA it stays on the reference until
# bench_fisher_solve.py --device cuda measures it, as fisher_solve does.
FISHER_SOLVE_GRAM_AUTO = {"cpu": "fused", "cuda": "reference"}


def _fisher_choice(op: str, device: torch.device, impl: str, auto: dict[str, str]) -> str:
    choice = resolve_impl(op, device, impl)
    if impl == "auto" and choice == "fused":
        choice = auto.get(device.type, "reference")
    return choice


_SPACES = {"auto": 0, "parameter": 1, "sample": 2}


def fisher_solve(
    O: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor | None = None,
    shift: float = 1e-4,
    *,
    space: str = "auto",
    max_raises: int = 10,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Natural-gradient / TDVP solve (O_c^T O_c + shift I) x = O_c^T v_c per block.

    See reference.fisher_solve for the exact definition (weighted centring, Woodbury form).

    Args:
        O: (G, N, P) or (N, P) per-sample gradients of log q.
        v: (G, N) or (N,) per-sample values (loss values, or the TDVP local generator).
        w: self-normalised weights of the same shape as v; None means 1/N each.
        shift: the diagonal shift lambda >= 0; raised x10 where a factorisation fails.
        space: "auto" (the smaller system), "parameter" (P x P) or "sample" (N x N, Woodbury).
        max_raises: raises of the shift allowed per block before torch.linalg.LinAlgError.
        impl: "auto" | "fused" | "reference" (auto: see FISHER_SOLVE_AUTO).

    Returns:
        x: (G, P) or (P,), and the shift used: (G,) or a 0-d tensor.

    Raises:
        torch.linalg.LinAlgError: a block still fails to factor after max_raises raises (NaN or
            inf in O or v).
    """
    if space not in _SPACES:
        raise ValueError(f"space must be one of {tuple(_SPACES)}, got {space!r}")
    single = O.dim() == 2
    if single:
        O, v = O.unsqueeze(0), v.unsqueeze(0)
        w = None if w is None else w.unsqueeze(0)
    if w is None:
        w = torch.full_like(v, 1.0 / v.shape[-1])
    choice = _fisher_choice("fisher_solve", O.device, impl, FISHER_SOLVE_AUTO)
    fn = torch.ops.nncme.fisher_solve.default if choice == "fused" else reference.fisher_solve
    x, used = fn(O, v, w, float(shift), _SPACES[space], int(max_raises))
    return (x[0], used[0]) if single else (x, used)


def fisher_solve_system(
    A: torch.Tensor, b: torch.Tensor, shift: float = 1e-4, *, max_raises: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fisher_solve` in parameter space from the system (A + shift I) x = b itself, A (P, P)
    and b (P,) (or (G, P, P), (G, P)) summed by the caller: over the ranks of a run in many
    processes, each holding its own states' share. One path (a P x P Cholesky factorisation
    is torch's own); see reference.fisher_solve_system.

    Returns:
        x: (P,) or (G, P), and the shift used: a 0-d tensor or (G,).
    """
    single = A.dim() == 2
    if single:
        A, b = A.unsqueeze(0), b.unsqueeze(0)
    x, used = reference.fisher_solve_system(A, b, float(shift), int(max_raises))
    return (x[0], used[0]) if single else (x, used)


def fisher_solve_gram(
    K: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor | None = None,
    shift: float = 1e-4,
    *,
    max_raises: int = 10,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fisher_solve` in sample space from the Gram matrix K = O O^T alone (no O needed).

    Solves (W^1/2 K_c W^1/2 + shift I) y = W^1/2 (v - w.v) per block, with K_c the Gram matrix
    centred under w, and returns x = O_c^T W^1/2 y as coefficients on the rows of O; see
    reference.fisher_solve_gram for the exact definition.

    Args:
        K: (G, N, N) or (N, N) symmetric, uncentred Gram matrix of the per-sample gradients.
        v: (G, N) or (N,) per-sample values (loss values, or the TDVP local generator).
        w: self-normalised weights of the same shape as v; None means 1/N each.
        shift: the diagonal shift lambda >= 0; raised x10 where a factorisation fails (from 0:
            to eps times the mean diagonal).
        max_raises: raises of the shift allowed per block before torch.linalg.LinAlgError.
        impl: "auto" | "fused" | "reference" (auto: see FISHER_SOLVE_GRAM_AUTO).

    Returns:
        coef: (G, N) or (N,), with x = sum_n coef_n O_n (the gradient of
        sum_n coef_n log q(n_n): one backward pass, no (N, P) matrix), and the shift used: (G,)
        or a 0-d tensor.

    Raises:
        torch.linalg.LinAlgError: a block still fails to factor after max_raises raises (NaN or
            inf in K or v).
    """
    single = K.dim() == 2
    if single:
        K, v = K.unsqueeze(0), v.unsqueeze(0)
        w = None if w is None else w.unsqueeze(0)
    if w is None:
        w = torch.full_like(v, 1.0 / v.shape[-1])
    choice = _fisher_choice("fisher_solve.gram", K.device, impl, FISHER_SOLVE_GRAM_AUTO)
    fn = torch.ops.nncme.fisher_solve.gram if choice == "fused" else reference.fisher_solve_gram
    coef, used = fn(K, v, w, float(shift), int(max_raises))
    return (coef[0], used[0]) if single else (coef, used)


def _register_fakes() -> None:
    """Shape-only kernels so the ops work under torch.compile and with fake tensors."""

    @torch.library.register_fake("nncme::propensities")
    def _(states, rxn_ptr, rxn_entries, limits, rates, *factor_tables):
        return states.new_empty((states.shape[0], rates.shape[0]), dtype=rates.dtype)

    @torch.library.register_fake("nncme::neighbors")
    def _(states, rxn_ptr, rxn_entries, limits):
        B, L = states.shape
        K = rxn_ptr.shape[0] - 1
        return states.new_empty((B, K, L)), states.new_empty((B, K), dtype=torch.bool)

    @torch.library.register_fake("nncme::transition_logsum")
    def _(
        states,
        log_q,
        log_q_nbr,
        rxn_ptr,
        rxn_entries,
        limits,
        rates,
        convention,
        factor_ptr,
        factor_index,
        factor_params,
        dt,
    ):
        B = states.shape[0]
        out = lambda: states.new_empty((B,), dtype=rates.dtype)  # noqa: E731
        return out(), out(), out()

    @torch.library.register_fake("nncme::nade_sample")
    def _(uniforms, hidden0, embed, *rest):
        B, L = uniforms.shape
        return (
            uniforms.new_empty((B, L), dtype=torch.int64),
            hidden0.new_empty((B,)),
            hidden0.new_empty((B,)),
        )

    @torch.library.register_fake("nncme::nade_log_prob")
    def _(states, hidden0, *rest):
        return hidden0.new_empty((states.shape[0],))

    @torch.library.register_fake("nncme::fisher_solve")
    def _(O, v, w, shift, mode, max_raises):
        G, _, P = O.shape
        return O.new_empty((G, P)), O.new_empty((G,))

    @torch.library.register_fake("nncme::fisher_solve.gram")
    def _(K, v, w, shift, max_raises):
        G, N, _ = K.shape
        return K.new_empty((G, N)), K.new_empty((G,))


if extension() is not None:
    _register_fakes()
