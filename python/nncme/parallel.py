"""Many processes (torch.distributed): the batch split over ranks, its sums taken over all.

A run under `torchrun --nproc-per-node N $(which nncme) run ...` (or any process group the
caller has set up) draws its share of the batch on each rank, with a generator of its own, and
every quantity the fit computes from the batch is a sum over the whole of it: the importance
weights are normalised over all ranks, the KL baseline, the residuals that stop a step and the
gradient are summed over ranks, and so are the estimates the time schemes take decisions on (how far
a step moves q, the local error of an implicit step, the share of the mass where a step is
stiff). Every rank therefore takes the same decisions and makes the same optimiser step, and a
run is the one process's run at the same global batch, with other random numbers. After each
time step the parameters are broadcast from rank 0, so no floating-point difference between
ranks can build up.

Without a process group of more than one rank every function here gives back what it is
given (the sums are over the one process), and no collective is made.

Natural gradient and TDVP solve one linear system per iteration for all ranks, the smaller of
two (`nncme.optim.linear.FisherSolver.reduces`): where the P parameters are no more than the
N distinct states of all ranks (counted from one int64 key per state,
`nncme.sampling.distinct_over_ranks`), each rank forms the parameter-space system of its own
states and the P^2 + 2P + 3 sums are added over the ranks (`sum_tensor`), so the scores and
their products are split; else the distinct states with their summed weights and values are
gathered to every rank (`gather_rows`: N (L + 2) numbers) and every rank solves the same
sample-space (N x N) system on the same table. Either way every rank makes the same step.
Choices drawn at random inside a solve (the folds of a cross-validated shift, which always
gathers) take a seed all ranks share (`shared_seed`).

The amortised trainer (`nncme.amortise`) splits its contexts over the ranks with the same
collectives.

What is not distributed (refused with an error naming it): supervision, and Pareto smoothing of
the weights (PSIS fits the tail of all the weights at once).
"""

from __future__ import annotations

import datetime
import os
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "Numbers",
    "active",
    "any_true",
    "batch_shares",
    "broadcast_parameters",
    "gather_objects",
    "gather_rows",
    "gather_table",
    "is_main",
    "local_batch",
    "mean",
    "median_of_means",
    "rank",
    "rank_seed",
    "reduce",
    "setup",
    "shared_seed",
    "sum_gradients",
    "sum_tensor",
    "teardown",
    "world_size",
]

# A collective that waits this long for the other ranks raises instead of hanging (one rank
# failed alone, e.g. on its own disk); long enough for the slowest time step.
TIMEOUT = datetime.timedelta(minutes=30)


# gloo sums gradients of up to this many numbers (times the world size) by gathering them
GATHER_LIMIT = 1 << 20


def active() -> bool:
    """Whether a process group of more than one rank is set up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes results and checkpoints."""
    return rank() == 0


def setup(device: str = "cpu") -> str:
    """Join the process group that torchrun's environment describes, if there is one.

    gloo on the CPU, NCCL on GPUs (each rank on the GPU of its LOCAL_RANK). Nothing is done
    when a group exists already (the caller made its own) or when WORLD_SIZE is absent or 1.

    Returns:
        the device this rank runs on ("cuda" becomes "cuda:LOCAL_RANK" under torchrun).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda and torch.device(device).index is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return device


def batch_shares(batch: int) -> list[int]:
    """Every rank's share of a global batch (the first batch % world ranks draw one more)."""
    size = world_size()
    if batch < size:
        raise ValueError(f"batch {batch} is smaller than the number of processes ({size})")
    return [batch // size + (1 if r < batch % size else 0) for r in range(size)]


def teardown() -> None:
    """Leave the process group (at the end of a command run under torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_batch(batch: int) -> int:
    """This rank's share of a global batch."""
    return batch_shares(batch)[rank()]


def rank_seed(seed: int) -> int:
    """The seed of this rank's sampling stream: the run's own on rank 0 (so one process is
    the run it always was), distinct streams elsewhere."""
    return seed if rank() == 0 else seed + 1_000_003 * rank()


def _reduced(value: torch.Tensor, op: Any) -> torch.Tensor:
    out = value.detach().clone()
    dist.all_reduce(out, op=op)
    return out


def any_true(flag: bool) -> bool:
    """Whether any rank's flag is set (so that all ranks raise together)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=_device())
    return float(_reduced(value, _MAX)) > 0


def mean(values: torch.Tensor) -> float:
    """The mean of a 1-D tensor's entries over all ranks' entries."""
    if not active():
        return float(values.mean())
    both = torch.tensor(
        [float(values.sum()), float(values.numel())], dtype=torch.float64, device=_device()
    )
    both = _reduced(both, _SUM)
    return float(both[0] / both[1])


def median_of_means(values: torch.Tensor, groups: int) -> float:
    """A robust mean of a 1-D tensor's entries over all ranks' entries: the median of the
    means of `groups` groups of them (each rank deals its entries to the groups in turn, so a
    group holds entries of every rank); their plain mean where there are fewer than two
    entries a group.

    An estimate of E[x] whose error does not hang on one entry: where x has a heavy right
    tail, a single entry can hold most of the sum and the plain mean of the same law varies
    several fold from draw to draw. Its price is a bias towards the bulk where the tail is
    real and the batch too small to see it.
    """
    n = values.numel()
    local = torch.zeros(2 * groups, dtype=torch.float64)
    slots = torch.arange(n) % groups
    local[:groups].index_add_(0, slots, values.detach().double().cpu())
    local[groups:].index_add_(0, slots, torch.ones(n, dtype=torch.float64))
    sums, _, _ = reduce(local.tolist())
    totals, counts = sums[:groups], sums[groups:]
    if min(counts) < 2:
        return sum(totals) / max(sum(counts), 1.0)
    return statistics.median(s / c for s, c in zip(totals, counts))


Numbers = tuple[list[float], list[float], list[float]]  # sums, maxima, log-sum-exps


def reduce(
    sums: Sequence[float] = (), maxima: Sequence[float] = (), logsumexps: Sequence[float] = ()
) -> Numbers:
    """Several numbers reduced over ranks in one collective: sums, maxima, and log-sum-exps
    (each rank gives its local log sum exp; the result is that of all ranks' terms).

    A collective costs about as much as a short iteration's arithmetic on a CPU (gloo's
    latency is 0.3-2 ms on a small machine), so an iteration packs what it needs at one point
    into one call. Every rank combines the same gathered table in the same order: the results
    agree bit for bit. With one process the numbers come back as given.
    """
    if not active():
        return list(sums), list(maxima), list(logsumexps)
    return _combine(gather_table([*sums, *maxima, *logsumexps]), len(sums), len(maxima))


def gather_table(values: Sequence[float]) -> torch.Tensor:
    """Every rank's numbers as rows of a (ranks, n) float64 CPU table (one row alone)."""
    local = torch.tensor(list(values), dtype=torch.float64)
    if not active():
        return local.unsqueeze(0)
    gathered = [torch.empty_like(local, device=_device()) for _ in range(world_size())]
    dist.all_gather(gathered, local.to(_device()))
    return torch.stack(gathered).cpu()


def gather_rows(*columns: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's rows of `columns`, concatenated in rank order, on every rank.

    Each column is (N, ...) with the same N on this rank (N may differ between ranks); the
    result keeps each column's dtype, device and trailing shape. The rows travel as one
    float64 table (integer columns must stay below 2^53 in size: counts do), so this is two
    collectives: the row counts, then the padded rows. With one process, `columns` as given.
    """
    if not active():
        return columns
    n = columns[0].shape[0]
    flat = [c.reshape(n, -1) for c in columns]
    widths = [f.shape[1] for f in flat]
    table = torch.cat([f.to(torch.float64) for f in flat], dim=1).to(_device())
    counts = [round(float(c)) for c in gather_table([n])[:, 0]]
    padded = torch.zeros(max(counts), table.shape[1], dtype=torch.float64, device=_device())
    padded[:n] = table
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    rows = torch.cat([part[:count] for part, count in zip(parts, counts)])
    out, at = [], 0
    for column, width in zip(columns, widths):
        block = rows[:, at : at + width].to(device=column.device, dtype=column.dtype)
        out.append(block.reshape(rows.shape[0], *column.shape[1:]))
        at += width
    return tuple(out)


def shared_seed(generator: torch.Generator | None) -> int:
    """A seed drawn from rank 0's stream, the same on every rank (each rank's stream advances
    alike), for random choices that every rank must make the same way."""
    device = generator.device if generator is not None else torch.device("cpu")
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=device).cpu()
    if active():
        seed = seed.to(_device())
        dist.broadcast(seed, src=0)
    return int(seed)


def _combine(table: torch.Tensor, n_sums: int, n_maxima: int) -> Numbers:
    a, b = n_sums, n_sums + n_maxima
    return (
        table[:, :a].sum(0).tolist(),
        table[:, a:b].max(0).values.tolist(),
        torch.logsumexp(table[:, b:], 0).tolist(),
    )


def sum_tensor(
    values: torch.Tensor,
    sums: Sequence[float] = (),
    maxima: Sequence[float] = (),
    logsumexps: Sequence[float] = (),
) -> tuple[torch.Tensor, Numbers]:
    """A tensor's sum over ranks, the same on every rank, with the numbers given reduced as
    `reduce` does: one collective where the tensor is small (gloo gathers it with the numbers
    and every rank sums the table in rank order), else an all-reduce of the tensor and one
    of the numbers. With one process, both as given."""
    if not active():
        return values, (list(sums), list(maxima), list(logsumexps))
    flat = values.reshape(-1)
    numbers = [*sums, *maxima, *logsumexps]
    if dist.get_backend() == "gloo" and flat.numel() * world_size() <= GATHER_LIMIT:
        # gloo's all_reduce of a few thousand numbers takes 1-2 ms on a small CPU machine,
        # its all_gather a third of that
        local = torch.cat([flat.double(), torch.tensor(numbers, dtype=torch.float64)])
        parts = [torch.empty_like(local) for _ in range(world_size())]
        dist.all_gather(parts, local)
        table = torch.stack(parts)
        total = table[:, : flat.numel()].sum(0).to(flat.dtype)
        reduced = _combine(table[:, flat.numel() :], len(sums), len(maxima))
    else:
        total = flat.detach().clone().to(_device())
        dist.all_reduce(total)
        total = total.to(values.device)
        reduced = _combine(gather_table(numbers), len(sums), len(maxima))
    return total.view_as(values), reduced


def sum_gradients(
    parameters: Iterable[torch.nn.Parameter],
    sums: Sequence[float] = (),
    maxima: Sequence[float] = (),
    logsumexps: Sequence[float] = (),
) -> Numbers:
    """Replace each parameter's gradient by its sum over ranks, and reduce the numbers given
    as `reduce` does: one collective where the gradient is small (gloo gathers it with the
    numbers), else an all-reduce of the gradient and one of the numbers. A parameter without
    a gradient counts as zero."""
    if not active():
        return list(sums), list(maxima), list(logsumexps)
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat, reduced = sum_tensor(flat, sums, maxima, logsumexps)
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at : at + n].view_as(p).clone()
        at += n
    return reduced


@torch.no_grad()
def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if not active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's value of a picklable object, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


_SUM = dist.ReduceOp.SUM if dist.is_available() else None
_MAX = dist.ReduceOp.MAX if dist.is_available() else None


def _device() -> torch.device:
    """Where NCCL wants its tensors (the rank's GPU); the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
