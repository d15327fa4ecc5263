"""Amortised VANs: one conditional network q(n | c, t) over a box of rate constants and
initial counts, carried through time once for every point of the box at the same time.

The context c names what varies: some reactions' rate constants (log-uniform over a range
where it is positive, uniform otherwise) and some species' initial counts (uniform integers).
`ContextSpace` draws contexts (a scrambled Sobol sequence, so every batch covers the box
evenly), encodes them for the model (each coordinate mapped to [-1, 1], rates on a log
scale), and turns them into per-sample rate constants, initial counts and conserved totals.

Training needs no run per parameter point (as MET's distillation does). Every fit draws C
contexts and S states for each, and moves q(. | c) towards T_c q_old(. | c), where T_c is the
step map of the network with c's rates, for all of them at once: the score-function gradient
sum (f - b_c) grad log q, f = log q - log T_c q_old, with each context's own mean b_c as its
baseline (the divergences of different contexts differ, and a shared baseline would add their
spread to the noise). The draws are those of q(. | c) with a share `mixture` replaced by
uniform states of the box, each with the same weight (the log-variance divergence, which pulls
down mass that q leaks where none of its own samples go); each deviation f - b_c is clipped
at +-`clip` nats, so the states in the far tails that the uniform draws reach, where q and its
target can differ by tens of nats at probabilities of 1e-10, steer the fit without swamping
the bulk (a Huber-type divergence: the same fixed point q = T_c q_old), and states where both
are below `tail_floor` are left out. Exploration one reaction ahead of the samples, with each
context's rates, pulls up where T_c q_old's new mass goes (`nncme.optim.updates.KLUpdate`).
The first step leaves the initial point masses, where the distribution moves fastest; as in a
single run (`nncme.steppers.StartFit`) it is solved exactly, exp(dt W_c) delta_n0(c) for each
of `exact_contexts` contexts (`exact_steps`), and the model fitted to those by cross-entropy.
Every later step is Heun's (two fits per step, both probability maps in the saturated form of
`nncme.optim.target`), cut into sub-steps that keep the distribution's relative motion below
`max_motion` in the context that moves fastest, as the single-network runs do. A varying
initial count is also an `Anchor` of the model: its species' logits get a learned term in
the offset from that count, so a point mass at every start, and a short lag's spread around
it (the transition kernel), is one table, not a peak the hidden layers must place for each
context. Time enters as the checkpoint saved at each save time; q(. | c, t) between save times
is not interpolated.

Over many processes (`torchrun ... nncme amortise`, or a process group the caller set up) every
rank draws the same contexts and takes its share of them (`nncme.parallel.batch_shares`), with
a random stream of its own for the states; the gradient, each fit's loss and residuals, the
motion that cuts a step and the exact first step's KL are summed over ranks, so every rank
makes the same optimiser step: the run of one process over the same contexts, with other
random numbers. Rank 0 writes; `state.pt` holds every rank's stream, and a resume needs the
same number of processes.

`AmortisedSolution` loads a run's directory and answers for any context in (or near) the box:
marginals and means (`sweep` over a grid, with `marginal_statistic`), log-likelihoods of
snapshot data, sensitivities in the log rates by autograd, and maximum-likelihood rates with
their observed information (`fit_rates`). A run that varies the initial count of every species
that changes holds the network's transition kernel q(n' | n, c, t): `paths` chains it into
trajectory ensembles (`PathEnsemble`: one- and two-time statistics) at any lag of the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import ops, parallel
from .io import network_from_dict, network_to_dict
from .models import Delta, build_model
from .models.base import Anchor, AutoregressiveModel, frozen_copy
from .network import NetworkError, ReactionNetwork
from .observers import box_states
from .optim.implicit import implicit_support
from .optim.target import (
    NonFiniteError,
    Term,
    jump,
    log_outflow_ratio,
    log_stay,
)
from .optim.updates import lr_schedule
from .paths import atomic_write
from .steppers import bulk_states, motion_pieces

__all__ = [
    "AmortiseConfig",
    "AmortisedSolution",
    "AmortisedTrainer",
    "ContextSpace",
    "PathEnsemble",
    "Vary",
    "amortise",
]

SCALES = ("auto", "log", "linear")
# Boxes up to this many states are summed exactly (marginals, sensitivities); larger ones sampled.
EXACT_STATES = 200_000


# --------------------------------------------------------------------------------- contexts
@dataclass(frozen=True)
class Vary:
    """One quantity that varies over the box.

    Attributes:
        name: a reaction's name (its rate constant, 1/time) or a species' name (its initial
            count).
        lo, hi: the range (inclusive).
        scale: "log" (log-uniform; rates with lo > 0), "linear", or "auto" (log for a rate
            with lo > 0, linear otherwise).
    """

    name: str
    lo: float
    hi: float
    scale: str = "auto"

    @classmethod
    def parse(cls, text: str) -> Vary:
        """Parse NAME=LO:HI or NAME=LO:HI:log|linear (the command line's --vary)."""
        name, sep, rest = text.partition("=")
        parts = rest.split(":")
        if not sep or not name.strip() or len(parts) not in (2, 3):
            raise ValueError(f"--vary takes NAME=LO:HI[:log|linear], got {text!r}")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"--vary {text!r}: LO and HI must be numbers") from None
        return cls(name.strip(), lo, hi, parts[2] if len(parts) == 3 else "auto")


class ContextSpace:
    """The box of contexts of an amortised network, and what a context means for the network.

    Args:
        network: the base network (what does not vary keeps its values).
        varies: the varying quantities, in the order of the context's columns.

    Raises:
        NetworkError: a name that is neither a reaction nor a species (or is both), a rate that
            depends on time or a custom propensity, a range that is empty or out of bounds.
    """

    def __init__(self, network: ReactionNetwork, varies: Sequence[Vary]) -> None:
        if not varies:
            raise NetworkError("amortise: name at least one rate or initial count to vary")
        self.network = network
        self.varies = list(varies)
        names = [v.name for v in self.varies]
        if len(set(names)) != len(names):
            raise NetworkError(f"amortise: a quantity is named twice in {names}")
        reactions = {r.name: k for k, r in enumerate(network.reactions)}
        self.kinds: list[str] = []
        self.index: list[int] = []
        self.log_scale: list[bool] = []
        for v in self.varies:
            kind, index = self._resolve(v, reactions)
            self.kinds.append(kind)
            self.index.append(index)
            self.log_scale.append(self._check_range(v, kind, index))
        self._check_conserved_initials()

    def _resolve(self, v: Vary, reactions: dict[str, int]) -> tuple[str, int]:
        net = self.network
        is_rate, is_species = v.name in reactions, v.name in net.species_names
        if is_rate == is_species:
            what = "both a reaction and a species" if is_rate else "no reaction or species"
            raise NetworkError(
                f"amortise: {v.name!r} names {what} of {net.name} (reactions: "
                f"{sorted(reactions)}; species: {net.species_names})"
            )
        if is_species:
            return "initial", net.index(v.name)
        k = reactions[v.name]
        r = net.reactions[k]
        if r.propensity is not None or r.has_time_dependent_rate:
            raise NetworkError(
                f"amortise: reaction {v.name!r} has a custom propensity or a time-dependent "
                "rate; only constant rate constants can vary"
            )
        return "rate", k

    def _check_range(self, v: Vary, kind: str, index: int) -> bool:
        if v.scale not in SCALES:
            raise NetworkError(f"amortise: {v.name}: scale must be one of {SCALES}")
        if not (math.isfinite(v.lo) and math.isfinite(v.hi) and 0 <= v.lo <= v.hi):
            raise NetworkError(
                f"amortise: {v.name}: the range must satisfy 0 <= LO <= HI, got {v.lo}:{v.hi}"
            )
        if kind == "initial":
            top = int(self.network.limits[index]) - 1
            if v.lo != int(v.lo) or v.hi != int(v.hi) or v.hi > top:
                raise NetworkError(
                    f"amortise: initial {v.name}: the range must be whole counts in 0..{top} "
                    f"(the count limit), got {v.lo:g}:{v.hi:g}"
                )
            if v.scale == "log":
                raise NetworkError(f"amortise: initial {v.name}: counts vary on a linear scale")
            return False
        if v.scale == "log" and v.lo <= 0:
            raise NetworkError(f"amortise: rate {v.name}: a log scale needs LO > 0")
        return v.scale == "log" or (v.scale == "auto" and v.lo > 0)

    def _check_conserved_initials(self) -> None:
        """A varying initial count of a species in a conservation law is allowed only where
        the law's total then varies too (the model masks with per-sample totals)."""
        for law in self.network.conservation_laws:
            for kind, i, v in zip(self.kinds, self.index, self.varies):
                if kind == "initial" and law.weights[i] and v.hi > v.lo:
                    top = law.weights.clip(min=0) @ (self.network.limits - 1)
                    if v.hi * abs(int(law.weights[i])) > top:
                        raise NetworkError(f"amortise: {v.name}: {law.name} leaves the box")

    # ------------------------------------------------------------------------- geometry
    @property
    def dim(self) -> int:
        return len(self.varies)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.varies]

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([v.lo for v in self.varies], dtype=np.float64)
        hi = np.array([v.hi for v in self.varies], dtype=np.float64)
        log = np.array(self.log_scale)
        return np.where(log, np.log(np.where(log, lo, 1.0)), lo), np.where(
            log, np.log(np.where(log, hi, 1.0)), hi
        )

    def middle(self) -> np.ndarray:
        """(D,) the box's middle (the geometric middle on a log scale)."""
        return self.from_unit(np.full((1, self.dim), 0.5))[0]

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """(N, D) points of the unit cube -> (N, D) contexts (initial counts as whole numbers,
        each count of the range equally likely)."""
        u = np.asarray(u, dtype=np.float64)
        lo, hi = self._bounds()
        values = lo + u * (hi - lo)
        for j, v in enumerate(self.varies):
            if self.log_scale[j]:
                values[:, j] = np.exp(values[:, j])
            elif self.kinds[j] == "initial":
                values[:, j] = np.minimum(np.floor(v.lo + u[:, j] * (v.hi - v.lo + 1)), v.hi)
        return values

    def encode(self, values: np.ndarray) -> np.ndarray:
        """(N, D) contexts -> (N, D) model inputs: each coordinate mapped to [-1, 1] over its
        range (log rates on the log scale; 0 for a range of one value)."""
        values = torch.as_tensor(np.asarray(values, dtype=np.float64))
        return self.encode_tensor(values).numpy()

    def encode_tensor(self, values: torch.Tensor) -> torch.Tensor:
        """`encode` in torch, differentiable in the values (sensitivities, MAP estimates)."""
        lo, hi = (torch.as_tensor(b, dtype=values.dtype) for b in self._bounds())
        log = torch.as_tensor(self.log_scale)
        x = torch.where(log, torch.log(values.clamp(min=1e-300)), values)
        spread = hi > lo
        width = torch.where(spread, hi - lo, torch.ones_like(hi))
        return torch.where(spread, 2 * (x - lo) / width - 1, torch.zeros_like(x))

    def check(self, values: np.ndarray) -> np.ndarray:
        """(N, D) or (D,) contexts as a checked (N, D) array (finite, rates >= 0, whole
        counts inside the count limits)."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        if values.shape[1] != self.dim:
            raise ValueError(f"a context has {self.dim} values ({self.names}), got {values.shape}")
        if not np.isfinite(values).all() or (values < 0).any():
            raise ValueError("contexts must be finite and >= 0")
        for j, kind in enumerate(self.kinds):
            if kind == "initial":
                top = self.network.limits[self.index[j]] - 1
                col = values[:, j]
                if (col != np.round(col)).any() or (col > top).any():
                    raise ValueError(f"initial {self.names[j]}: whole counts in 0..{top}")
        return values

    def anchors(self) -> list[Anchor]:
        """The columns that hold a species' initial count over more than one value (the
        model's `Anchor`s: its logits get a term in the offset from that count)."""
        return [
            Anchor(i, j, v.lo, v.hi)
            for j, (kind, i, v) in enumerate(zip(self.kinds, self.index, self.varies))
            if kind == "initial" and v.hi > v.lo
        ]

    def tangent_columns(self) -> list[int]:
        """The columns of the rates that vary (a range of more than one value): those whose
        derivatives tangent fits match (`AmortiseConfig.tangent`)."""
        return [
            j
            for j, (kind, v) in enumerate(zip(self.kinds, self.varies))
            if kind == "rate" and v.hi > v.lo
        ]

    def shift(
        self, values: np.ndarray, column: int, step: float
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """(N, D) contexts -> the same with rate `column` times exp(+step) and exp(-step) (a
        rate at 0 stays there), and the distance between the two in the rate's unit of log c
        (`tangent_scale`): a tangent fit's central difference."""
        up, down = np.array(values, dtype=np.float64), np.array(values, dtype=np.float64)
        up[:, column] *= math.exp(step)
        down[:, column] *= math.exp(-step)
        return up, down, 2 * step / self.tangent_scale(column)

    def tangent_scale(self, column: int) -> float:
        """The unit of log c in which tangent fits measure rate `column`'s derivatives: half
        its range's log width on a log scale (so the unit is the model's input coordinate),
        1 on a linear one (a range from 0 has no log width, and d / d log c, which
        sensitivities and the likelihood's information are in, vanishes at c = 0 where the
        input coordinate's derivative is largest: fitted in the input coordinate, the exact
        first step of MET's box spent itself near 0 and fitted d / d log c no better)."""
        v = self.varies[column]
        return 0.5 * math.log(v.hi / v.lo) if self.log_scale[column] else 1.0

    def outside(self, values: np.ndarray) -> np.ndarray:
        """(N,) bool: contexts outside the training box (answers there are extrapolations)."""
        values = np.atleast_2d(values)
        lo = np.array([v.lo for v in self.varies])
        hi = np.array([v.hi for v in self.varies])
        return ((values < lo * (1 - 1e-12)) | (values > hi * (1 + 1e-12))).any(axis=1)

    # ------------------------------------------------------------------------- meaning
    def rates(self, values: torch.Tensor, t: float, net: Any) -> torch.Tensor:
        """(N, D) contexts -> (N, K) rate constants at t (custom propensities: 1, their
        values come whole from the operator)."""
        base = net.rates(t).to(values.dtype).clone()
        values = values.to(base.device)
        for k in net.custom:
            base[k] = 1.0
        r = base.unsqueeze(0).repeat(values.shape[0], 1)
        for j, kind in enumerate(self.kinds):
            if kind == "rate":
                r[:, self.index[j]] = values[:, j]
        return r

    def initial(self, values: np.ndarray) -> np.ndarray:
        """(N, D) contexts -> (N, L) int64 initial counts."""
        n0 = np.repeat(self.network.initial_state[None, :], len(values), axis=0)
        for j, kind in enumerate(self.kinds):
            if kind == "initial":
                n0[:, self.index[j]] = np.round(values[:, j]).astype(np.int64)
        return n0

    def totals(self, values: np.ndarray) -> np.ndarray | None:
        """(N, C) conserved totals of each context's initial state (None without laws)."""
        laws = self.network.conservation_laws
        if not laws:
            return None
        w = np.stack([law.weights for law in laws])  # (C, L)
        return self.initial(values) @ w.T

    def network_at(self, values: Sequence[float]) -> ReactionNetwork:
        """The plain network of one context (for FSP, SSA or `nncme run`)."""
        values = self.check(values)[0]
        net = self.network
        reactions = list(net.reactions)
        initial = {s: int(n) for s, n in zip(net.species_names, net.initial_state)}
        for j, kind in enumerate(self.kinds):
            if kind == "rate":
                reactions[self.index[j]] = dataclasses.replace(
                    reactions[self.index[j]], rate=float(values[j])
                )
            else:
                initial[self.names[j]] = int(values[j])
        return net.rebuilt(reactions=reactions, initial=initial)

    def to_dict(self) -> dict[str, Any]:
        return {"varies": [dataclasses.asdict(v) for v in self.varies]}

    @classmethod
    def from_dict(cls, network: ReactionNetwork, d: dict[str, Any]) -> ContextSpace:
        return cls(network, [Vary(**v) for v in d["varies"]])


class ContextSampler:
    """Contexts for training: a scrambled Sobol sequence over the unit cube, mapped to the
    box (its state is the number drawn, so a resumed run continues the sequence)."""

    def __init__(self, space: ContextSpace, seed: int) -> None:
        self.space, self.seed, self.drawn = space, int(seed), 0
        self._engine = torch.quasirandom.SobolEngine(space.dim, scramble=True, seed=self.seed)

    def draw(self, n: int) -> np.ndarray:
        u = self._engine.draw(n, dtype=torch.float64).numpy()
        self.drawn += n
        return self.space.from_unit(u)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._engine = torch.quasirandom.SobolEngine(self.space.dim, scramble=True, seed=self.seed)
        self._engine.fast_forward(int(state["drawn"]))
        self.drawn = int(state["drawn"])


# --------------------------------------------------------------------------------- batches
@dataclass
class ContextBatch:
    """C contexts, each repeated for its S rows of a batch of B = C * S states.

    Attributes:
        values: (C, D) contexts.  code: (C, D) the model's inputs.  rows: (B,) context of each
            row.  totals: (C, laws) conserved totals of each context, or None.
    """

    values: np.ndarray
    code: torch.Tensor
    rows: torch.Tensor
    totals: torch.Tensor | None

    @classmethod
    def make(
        cls, space: ContextSpace, values: np.ndarray, per: int, device: Any, dtype: Any
    ) -> ContextBatch:
        C = len(values)
        rows = torch.arange(C, device=device).repeat_interleave(per)
        code = torch.as_tensor(space.encode(values), dtype=dtype, device=device)
        totals = space.totals(values)
        if totals is not None:
            totals = torch.as_tensor(totals, dtype=torch.int64, device=device)
        return cls(values, code, rows, totals)

    def with_rows(self, rows: torch.Tensor) -> ContextBatch:
        """The same contexts for other rows (B',) (each row's context index)."""
        return ContextBatch(self.values, self.code, rows, self.totals)

    def select(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's context and totals of every row, or of the given rows (indices or a
        mask)."""
        idx = self.rows if rows is None else self.rows[rows]
        return self.code[idx], None if self.totals is None else self.totals[idx]


def conditional_log_prob(
    model: Any, states: torch.Tensor, code: torch.Tensor, totals: torch.Tensor | None, rows: int
) -> torch.Tensor:
    """log q(n | c) of (N, L) states with (N, D) contexts, in chunks, without gradient."""
    out = []
    with torch.no_grad():
        for i in range(0, states.shape[0], rows):
            sl = slice(i, i + rows)
            out.append(
                model.log_prob(
                    states[sl], context=code[sl], totals=None if totals is None else totals[sl]
                )
            )
    return torch.cat(out) if out else states.new_empty((0,), dtype=model.dtype)


class ConditionalStage:
    """log sum_j [alpha_j u_j(n | c) + beta_j dt (W_c(t_j) u_j)(n | c)] at (state, context)
    rows, with each term in the saturated explicit form of `nncme.optim.target` (the same map
    as `StageTarget`, with per-row rate constants).

    Args:
        terms: the stage's terms.  space: the contexts' meaning.  net: the compiled network.
        dt: the (sub-)step.  rows: states per log_prob call.
    """

    def __init__(
        self, terms: list[Term], space: ContextSpace, net: Any, dt: float, rows: int = 16384
    ) -> None:
        self.terms, self.space, self.net, self.dt, self.rows = terms, space, net, dt, rows
        self.ones = torch.ones(net.num_reactions, dtype=net.dtype, device=net.device)

    @torch.no_grad()
    def __call__(
        self, states: torch.Tensor, batch: ContextBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) states of the batch's rows -> log target (B,) and the motion dt (W u)/u of
        the last moving term (B,)."""
        parts, flow = [], torch.zeros(states.shape[0], dtype=self.net.dtype, device=states.device)
        for term in self.terms:
            h = self.dt * term.beta / term.alpha
            log_u, flow_j = self._map(term, states, batch, h)
            if term.beta:
                flow = flow_j * self.dt
            parts.append(log_u + math.log(term.alpha))
        return torch.logsumexp(torch.stack(parts), dim=0), flow

    def _map(self, term: Term, states: torch.Tensor, batch: ContextBatch, h: float):
        """log (T_h u)(n | c) and (W u)/u at n, T_h the saturated explicit map of step h."""
        net = self.net
        B, K = states.shape[0], net.num_reactions
        code, totals = batch.select()
        if h == 0:
            return conditional_log_prob(term.value, states, code, totals, self.rows), None
        nbr, valid = ops.neighbors(states, net)  # (B, K, L), (B, K)
        rows = torch.cat([states, nbr[valid]])
        idx = torch.cat([torch.arange(B, device=states.device), valid.nonzero()[:, 0]])
        log_p = conditional_log_prob(
            term.value, rows, code[idx], None if totals is None else totals[idx], self.rows
        )
        rates = self.space.rates(torch.as_tensor(batch.values, dtype=net.dtype), term.t, net)
        rates = rates.to(states.device)[batch.rows]  # (B, K)
        # each reaction's state factor at n and at every in-box neighbour, scaled per row
        g = ops.propensities(rows, net, term.t, rates=self.ones)  # (U, K)
        a_rows = g * rates[idx]
        a_own = a_rows[:B]  # (B, K)
        a_nbr = torch.zeros(B, K, K, dtype=g.dtype, device=g.device)
        a_nbr[valid] = a_rows[B:]
        a_in = torch.diagonal(a_nbr, dim1=1, dim2=2)  # (B, K): reaction k at n - s_k
        log_nbr = torch.full((B, K), -math.inf, dtype=log_p.dtype, device=log_p.device)
        log_nbr[valid] = log_p[B:]
        x_own = h * a_own.sum(dim=1)
        x_nbr = h * a_nbr.sum(dim=2)
        live = (a_in > 0) & valid
        inflow = torch.where(
            live,
            math.log(h) + torch.log(a_in.clamp(min=1e-300)) + log_nbr + log_outflow_ratio(x_nbr),
            -math.inf,
        )
        stay = log_p[:B] + log_stay(x_own)
        log_tu = torch.logsumexp(torch.cat([stay.unsqueeze(1), inflow], dim=1), dim=1)
        ratio = torch.where(live, a_in * torch.exp(log_nbr - log_p[:B].unsqueeze(1)), 0.0)
        return log_tu, ratio.sum(dim=1) - a_own.sum(dim=1)


def exact_steps(
    space: ContextSpace,
    values: np.ndarray,
    h: float,
    device: torch.device,
    dtype: torch.dtype,
    max_states: int = 1_000_000,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """exp(h W_c) delta_n0(c) for each of the (N, D) contexts, on its most probable states
    that hold all but 1e-9 of it (`bulk_states`): states (S, L), log p (S,) and the context
    row of each (S,), or None where the states of all contexts together are more than
    max_states."""
    states, log_p, owner = [], [], []
    total = 0
    for row, v in enumerate(values):
        net = space.network_at(v)
        start = Delta(space.initial(v[None])[0], net.limits, device=device)
        found = implicit_support(
            start, net.compile(device, dtype), 0.0, h, max_states=max_states, exact=True
        )
        if found is None:
            return None
        found = bulk_states(*found)
        total += found[0].shape[0]
        if total > max_states:
            return None
        states.append(found[0])
        log_p_c = found[1].to(dtype)
        log_p.append(log_p_c - torch.logsumexp(log_p_c, 0))
        owner.append(torch.full((found[0].shape[0],), row, dtype=torch.int64))
    return torch.cat(states), torch.cat(log_p).to(device), torch.cat(owner).to(device)


@dataclasses.dataclass
class Slope:
    """One varied rate's moved contexts for the exact first step's tangent fit: `moved` the
    N contexts moved up and down, span their distance in the rate's unit of log c
    (`ContextSpace.tangent_scale`), and exact (S,) the exact step's d log p / d (that unit)
    at the listed states (NaN where not known)."""

    moved: tuple[ContextBatch, ContextBatch]
    span: float
    exact: torch.Tensor


def _look_up(
    states: torch.Tensor,
    owner: torch.Tensor,
    found_states: torch.Tensor,
    found_log_p: torch.Tensor,
    found_owner: torch.Tensor,
) -> torch.Tensor:
    """log p (S,) of the found (state, context) pairs at the listed ones (NaN where absent)."""
    listed = torch.cat([owner.unsqueeze(1), states], dim=1)
    found = torch.cat([found_owner.unsqueeze(1).to(states.device), found_states], dim=1)
    _, inverse = torch.unique(torch.cat([listed, found]), dim=0, return_inverse=True)
    table = found_log_p.new_full((int(inverse.max()) + 1,), math.nan)
    table[inverse[len(listed) :]] = found_log_p
    return table[inverse[: len(listed)]]


# --------------------------------------------------------------------------------- training
# What a run written before a setting existed ran with: no anchors, no exact first steps, no
# tangent fits (its amortise.json does not name them).
BEFORE_SETTINGS = {"anchors": False, "exact_contexts": 0, "tangent": False}


@dataclass
class AmortiseConfig:
    """Settings of an amortised run (every one has a default that needs no tuning).

    Attributes:
        model: "nade" (the context shifts its first hidden state, which the fused kernels
            take per sample) or "transformer" (the context is added to its first token).
        hidden: the model's width (wider than a single run's: one model for the whole box).
        anchors: give each varying initial count's species a logit term in its offset from
            that count (`ContextSpace.anchors`): the kernel q(n' | n) of short lags is
            mostly a function of n' - n, which a table holds for every start at once.
        contexts: contexts per iteration (C).  per_context: states per context (S).
        lr: Adam's learning rate.  lr_decay: its fraction at a fit's last allowed iteration
            (constant for the first half, then a cosine).
        explore: share of each context's samples moved one reaction ahead.
        mixture: share of uniform draws over the box.  clip: the largest |f - b_c| (nats)
            a draw acts with.  tail_floor: draws where q and the target are both below it
            are left out.  (Module docstring; bench_amortise.py measured these choices.)
        iterations: cap per fit.  min_iterations: before the rule.
        relative_tolerance: a fit stops once its mean residual over the last `window`
            iterations is this fraction of its first one.
        first_iterations, first_lr, first_tolerance: the first fit, to the initial point masses
            (stops once the mean -log q(n0 | c) is below first_tolerance), and the fit of the
            exact first step (`AmortisedTrainer.exact_step`: below first_tolerance nats of KL).
        exact_contexts: contexts whose first step is solved exactly (0: none; the first step
            is then stepped like every other, out of the point masses).
        max_motion: the largest relative motion of a sub-step in the fastest context.
        dt: the time step (default: the network's).  t_end: the horizon (default: the
            network's).  saves: save times after 0 (evenly spaced).
        seed: parameters, contexts and samples.  dtype: "float64" or "float32".
        tangent: also fit each context's derivatives in the rates that vary: the drawn fits
            add 1/2 sum_d Var_q(g_d) to their objective, g_d = s_d d (log q - log target) /
            d log c_d by central differences, s_d half the range's log width on a log scale
            (the model's input coordinate), 1 on a linear one (`ContextSpace.tangent_scale`,
            `AmortisedTrainer._tangent`); the exact first step fits them to its exact ones
            (`AmortisedTrainer._exact_slopes`). A model fitted to values alone has
            derivatives in c only as good as the smoothness of its error in c
            (`AmortisedSolution.sensitivities`); 2 D more target evaluations an iteration.
    """

    model: str = "nade"
    hidden: int = 32
    anchors: bool = True
    contexts: int = 64
    per_context: int = 32
    lr: float = 0.01
    lr_decay: float = 0.1
    explore: float = 0.2
    mixture: float = 0.02
    clip: float = 1.0
    tail_floor: float = 1e-12
    tangent: bool = False
    iterations: int = 100
    min_iterations: int = 5
    window: int = 5
    relative_tolerance: float = 0.02
    first_iterations: int = 3000
    first_lr: float = 0.05
    first_tolerance: float = 1e-5
    exact_contexts: int = 1024
    max_motion: float = 0.05
    dt: float | None = None
    t_end: float | None = None
    saves: int = 10
    seed: int = 0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if int(self.exact_contexts) < 0:
            raise ValueError(f"exact_contexts must be >= 0, got {self.exact_contexts}")
        for name in ("hidden", "contexts", "per_context", "iterations", "saves"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "first_lr", "max_motion", "relative_tolerance"):
            if not (getattr(self, name) > 0):
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.model not in ("nade", "transformer"):
            raise ValueError(f"model must be nade or transformer, got {self.model!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be float64 or float32, got {self.dtype!r}")


def build_conditional(
    network: ReactionNetwork, space: ContextSpace, config: AmortiseConfig, device: torch.device
) -> AutoregressiveModel:
    """The conditional VAN of a run: `config.model` with the box's context width."""
    return build_model(
        config.model,
        network,
        dtype=getattr(torch, config.dtype),
        device=device,
        seed=config.seed,
        hidden=config.hidden,
        context_dim=space.dim,
        anchors=space.anchors() if config.anchors else (),
    )


@dataclass
class FitReport:
    loss: float
    residual: float
    iterations: int
    capped: bool


class AmortisedTrainer:
    """Carries a conditional VAN through time for every context of a box at once.

    Args:
        network: the base network.  space: what varies.  config: `AmortiseConfig`.
        device: where it runs.
    """

    def __init__(
        self,
        network: ReactionNetwork,
        space: ContextSpace,
        config: AmortiseConfig | None = None,
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        self.network, self.space = network, space
        self.config = config = config or AmortiseConfig()
        size = parallel.world_size()  # every rank needs contexts of its own
        for name in ("contexts", "exact_contexts"):
            if 0 < getattr(config, name) < size:
                raise ValueError(
                    f"{name} ({getattr(config, name)}) is smaller than the number of "
                    f"processes ({size}): every process needs contexts of its own"
                )
        self.device = torch.device(device)
        self.dtype = getattr(torch, config.dtype)
        self.net = network.compile(self.device, self.dtype)
        self.model = build_conditional(network, space, config, self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.sampler = ContextSampler(space, config.seed)
        seed = parallel.rank_seed(config.seed + 1)  # a stream of its own on every rank
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.t = 0.0
        self.steps = 0
        self.started = False

    # ------------------------------------------------------------------------- one fit
    def _batch(self) -> ContextBatch:
        c = self.config
        values, _ = _share(self.sampler.draw(c.contexts))
        return ContextBatch.make(self.space, values, c.per_context, self.device, self.dtype)

    def _sample(self, batch: ContextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        code, totals = batch.select()
        return self.model.sample(batch.rows.shape[0], self.generator, context=code, totals=totals)

    def _draw(self, batch: ContextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """States and log q(n | c) of the batch's rows: from q(. | c), each replaced with
        probability `mixture` by a state drawn uniformly over the box (so that the fit sees
        where q leaks mass that no sample of q would reach; log q = -inf off a law)."""
        states, log_q = self._sample(batch)
        eps = self.config.mixture
        if eps == 0:
            return states, log_q
        u = torch.rand(
            states.shape[0], generator=self.generator, dtype=self.dtype, device=self.device
        )
        mixed = u < eps
        if mixed.any():
            limits = self.net.limits
            r = torch.rand(
                int(mixed.sum()), len(limits), generator=self.generator, device=self.device
            )
            states[mixed] = torch.minimum((r * limits).long(), limits - 1)
            code, totals = batch.select(mixed)
            log_q[mixed] = conditional_log_prob(self.model, states[mixed], code, totals, 1 << 15)
        return states, log_q

    def _explore(
        self, states: torch.Tensor, batch: ContextBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reaction from the first `explore` share of each context's samples, chosen with
        probability a_k(n | c) / a_0(n | c): where T_c q_old's new mass goes (as
        `nncme.optim.target.explore_ahead`). Returns the moved states (C m, L) and the
        context of each (C m,)."""
        C, S = len(batch.values), self.config.per_context
        m = round(self.config.explore * S)
        if not m:
            return states[:0], batch.rows[:0]
        take = states.view(C, S, -1)[:, :m].reshape(C * m, -1)
        rows = torch.arange(C, device=self.device).repeat_interleave(m)
        rates = self.space.rates(torch.as_tensor(batch.values, dtype=self.dtype), self.t, self.net)
        moved = jump(take, self.net, self.t, self.generator, rates=rates.to(self.device)[rows])
        return moved, rows

    def fit(self, stage: ConditionalStage) -> FitReport:
        """Minimise the mean over contexts of D(q(. | c) || stage(. | c)) (module docstring),
        with explored states one reaction ahead of the samples pulled up towards the target
        (their coefficient is (f - b) / S against their context's baseline b, as in
        `nncme.optim.updates.KLUpdate`)."""
        c = self.config
        residuals: list[float] = []
        loss = math.nan
        try:
            for it in range(c.iterations):
                for group in self.optimizer.param_groups:
                    group["lr"] = c.lr * lr_schedule(it, c.iterations, c.lr_decay)
                batch = self._batch()
                states, log_q = self._draw(batch)
                moved, moved_rows = self._explore(states, batch)
                B = states.shape[0]
                all_states = torch.cat([states, moved])
                all_rows = torch.cat([batch.rows, moved_rows])
                ext = batch.with_rows(all_rows)
                code, totals = ext.select()
                log_target, _ = stage(all_states, ext)
                with torch.no_grad():
                    log_q_moved = conditional_log_prob(
                        self.model, moved, code[B:], None if totals is None else totals[B:], 1 << 15
                    )
                f = torch.cat([log_q, log_q_moved]) - log_target
                held = torch.isfinite(log_q)  # uniform draws off a conservation law: q = 0
                bad = int((~torch.isfinite(f[:B][held])).sum())  # raised once summed
                live = torch.cat([held, torch.isfinite(f[B:])])
                # states where both q and its target are below the floor: nothing to fit
                log_both = torch.maximum(torch.cat([log_q, log_q_moved]), log_target)
                live &= log_both > math.log(c.tail_floor)
                f = torch.where(live, f, torch.zeros_like(f))
                zeros = f.new_zeros(len(batch.values))  # this rank's contexts
                count = zeros.index_add(0, batch.rows, held.to(f.dtype))
                b = zeros.index_add(0, batch.rows, f[:B]) / count.clamp(min=1)
                dev = torch.where(live, f - b[all_rows], torch.zeros_like(f))
                if c.clip > 0:
                    dev = dev.clamp(-c.clip, c.clip)
                coef = dev / count.clamp(min=1)[all_rows] / c.contexts  # all ranks' contexts
                self.optimizer.zero_grad(set_to_none=True)
                log_q_g = self.model.log_prob(
                    all_states[live],
                    context=code[live],
                    totals=None if totals is None else totals[live],
                )
                objective = (coef[live] * log_q_g).sum()
                if c.tangent:
                    objective = objective + self._tangent(stage, states, batch, held, count)
                objective.backward()
                sums = [bad, float(b.sum()), float(dev[:B].square().sum()), float(held.sum())]
                (bad, b_sum, square, drawn), _, _ = parallel.sum_gradients(
                    self.model.parameters(), sums
                )
                if bad:
                    raise NonFiniteError(
                        f"t = {self.t:g}: the target is -inf or NaN at a sampled state "
                        "(a state the previous model holds no mass at)"
                    )
                self.optimizer.step()
                loss = b_sum / c.contexts
                residuals.append(0.5 * square / max(drawn, 1.0))
                if not math.isfinite(residuals[-1]):
                    raise NonFiniteError(f"t = {self.t:g}: the fit's residual is not finite")
                if it + 1 >= max(c.min_iterations, 2 * c.window):
                    recent = float(np.mean(residuals[-c.window :]))
                    first = float(np.mean(residuals[: c.window]))
                    if recent <= c.relative_tolerance * first or recent < 1e-7:
                        return FitReport(loss, recent, it + 1, False)
        finally:
            for group in self.optimizer.param_groups:
                group["lr"] = c.lr
        return FitReport(loss, float(np.mean(residuals[-c.window :])), c.iterations, True)

    def _tangent(
        self,
        stage: ConditionalStage,
        states: torch.Tensor,
        batch: ContextBatch,
        held: torch.Tensor,
        count: torch.Tensor,
        step: float = 0.01,
    ) -> torch.Tensor:
        """A surrogate whose parameter gradient is that of 1/2 sum_d Var_q(g_d) averaged
        over the contexts (`AmortiseConfig.tangent`): g_d = s_d d (log q - log target) /
        d log c_d by central differences of log c_d +- `step`, for each rate that varies, s_d
        its unit (`ContextSpace.tangent_scale`: half the range's log width on a log scale, so
        g_d is the derivative in the model's input coordinate; 1 on a linear one). Zero where
        q(. | c) follows its target in c too, which then holds its derivatives in c to the
        target's: the target's own are exact for the model of the step before. Each deviation is
        clipped as the fit's are; the drawn states of a context count alike (they are draws
        of q)."""
        c, space, rows = self.config, self.space, batch.rows
        per_context = count.clamp(min=1)  # drawn states of each context
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        for d in space.tangent_columns():
            up, down, span = space.shift(batch.values, d, step)
            (q_up, t_up), (q_down, t_down) = (
                self._shifted(stage, states, batch, moved) for moved in (up, down)
            )
            with torch.no_grad():
                g = ((q_up - t_up) - (q_down - t_down)) / span  # (B,) nats per unit
                ok = held & torch.isfinite(g)
                g = torch.where(ok, g, torch.zeros_like(g))
                mean = g.new_zeros(len(batch.values)).index_add(0, rows, g) / per_context
                dev = torch.where(ok, g - mean[rows], torch.zeros_like(g))
                if c.clip > 0:
                    dev = dev.clamp(-c.clip, c.clip)
                coef = dev / per_context[rows] / c.contexts / span
            total = total + (coef[ok] * (q_up[ok] - q_down[ok])).sum()
        return total

    def _shifted(
        self, stage: ConditionalStage, states: torch.Tensor, batch: ContextBatch, values: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log q, log target) at the states under the contexts `values` (the batch's with
        one rate moved; the totals are the batch's): log q with its graph, the target
        without."""
        moved = ContextBatch.make(self.space, values, 1, self.device, self.dtype)
        moved = moved.with_rows(batch.rows)
        code, totals = moved.select()
        log_q = self.model.log_prob(states, context=code, totals=totals)
        with torch.no_grad():
            log_t, _ = stage(states, moved)
        return log_q, log_t

    def fit_start(self) -> FitReport:
        """The first fit: q(. | c) to the point mass at each context's initial counts."""
        c = self.config
        opt = torch.optim.Adam(self.model.parameters(), lr=c.first_lr)
        nll = math.inf
        for it in range(c.first_iterations):
            values, _ = _share(self.sampler.draw(c.contexts * 4))
            batch = ContextBatch.make(self.space, values, 1, self.device, self.dtype)
            n0 = torch.as_tensor(self.space.initial(values), device=self.device)
            opt.zero_grad(set_to_none=True)
            code, totals = batch.select()
            loss = -self.model.log_prob(n0, context=code, totals=totals).sum() / (c.contexts * 4)
            loss.backward()
            (nll,), _, _ = parallel.sum_gradients(self.model.parameters(), [float(loss.detach())])
            opt.step()
            if nll < c.first_tolerance:
                return FitReport(nll, nll, it + 1, False)
        return FitReport(nll, nll, c.first_iterations, True)

    def exact_step(self, dt: float, progress: bool = False) -> dict[str, Any] | None:
        """The first step, 0 -> h, solved exactly and fitted: h = dt, or dt / 4^j where the
        states of some context's step are too many to list.

        Out of a point mass the distribution moves faster than anywhere later (every state
        it reaches is new), which the stepped fits follow worst; a single run takes this step
        exactly (`nncme.steppers.StartFit`). Here `exact_contexts` contexts (the next of the
        Sobol sequence) each get exp(h W_c) delta_n0(c) on the states holding all but 1e-9 of
        it (`exact_steps`), and the model is fitted to all of them at once by exact
        cross-entropy, `contexts` of them per iteration (the mean KL(p_c || q(. | c)) over the
        batch, in nats, below `first_tolerance` stops it). With tangent fits, the model's
        derivatives in the varied rates are fitted to the exact step's too (`_exact_slopes`,
        `_fit_listed`). Returns the step's log record, or None where even dt / 4^6 reaches
        too many states (the run then steps from t = 0)."""
        c = self.config
        if not c.exact_contexts:
            return None
        start = time.perf_counter()
        values, offset = _share(self.sampler.draw(c.exact_contexts))
        h = dt
        for _ in range(7):
            listed = exact_steps(self.space, values, h, self.device, self.dtype)
            if not parallel.any_true(listed is None):  # every rank's contexts listed
                break
            h /= 4
        else:
            return None
        slopes = self._exact_slopes(values, listed, h) if c.tangent else []
        report = self._fit_listed(values, *listed, offset=offset, progress=progress, slopes=slopes)
        self.t = h
        (states,), _, _ = parallel.reduce([listed[0].shape[0]])
        return {
            "t": h,
            "exact": dataclasses.asdict(report),
            "states": int(states),
            "seconds": time.perf_counter() - start,
        }

    def _exact_slopes(
        self, values: np.ndarray, listed: tuple[torch.Tensor, ...], h: float, step: float = 0.01
    ) -> list[Slope]:
        """For each rate that varies (`ContextSpace.tangent_columns`): the contexts moved up
        and down as `_tangent` moves them, and the exact step's s_d d log p / d log c_d on
        the listed states by the same difference (NaN where a moved solution leaves a state
        out: its mass is below 1e-9 there)."""
        states, _, owner = listed
        slopes = []
        for d in self.space.tangent_columns():
            up, down, span = self.space.shift(values, d, step)
            found = [exact_steps(self.space, m, h, self.device, self.dtype) for m in (up, down)]
            if parallel.any_true(found[0] is None or found[1] is None):  # too many states:
                continue  # this rate's slopes not fitted, on every rank alike
            up_p, down_p = (_look_up(states, owner, *f) for f in found)
            moved = tuple(
                ContextBatch.make(self.space, m, 1, self.device, self.dtype) for m in (up, down)
            )
            slopes.append(Slope(moved, span, (up_p - down_p) / span))
        return slopes

    def _fit_listed(
        self,
        values: np.ndarray,
        states: torch.Tensor,
        log_p: torch.Tensor,
        owner: torch.Tensor,
        offset: int = 0,
        progress: bool = False,
        slopes: Sequence[Slope] = (),
    ) -> FitReport:
        """Minimise the mean over contexts of KL(p_c || q(. | c)), p given on listed states
        (rows of `owner`'s context), `contexts` contexts per iteration, chosen among all
        ranks' contexts alike on every rank (this rank's are `offset`.. of them). With
        `slopes` (tangent fits), plus 1/2 Var_p(g_d) per context and rate, g_d = the
        difference quotient of log q - log p in log c_d / s_d (as `_tangent`'s, weighted by
        the exact p instead of q's draws); it stops once both the KL and that term are below
        `first_tolerance`."""
        from tqdm import tqdm

        c = self.config
        p = torch.exp(log_p)
        entropy = p.new_zeros(len(values)).index_add(0, owner, -p * log_p)
        batch = ContextBatch.make(self.space, values, 1, self.device, self.dtype)
        code, totals = batch.select()
        opt = torch.optim.Adam(self.model.parameters(), lr=c.first_lr)
        g = torch.Generator().manual_seed(c.seed + 2)  # the same choices on every rank
        everyone = c.exact_contexts  # all ranks' contexts (`values`: this rank's share)
        kl = math.inf
        bar = tqdm(range(c.first_iterations), desc="exact first step", disable=not progress)
        for it in bar:
            for group in opt.param_groups:
                group["lr"] = c.first_lr * lr_schedule(it, c.first_iterations, c.lr_decay)
            chosen = torch.randperm(everyone, generator=g)[: c.contexts]
            mine = chosen[(chosen >= offset) & (chosen < offset + len(values))] - offset
            mine = mine.to(self.device)
            rows = torch.isin(owner, mine)
            ctx = owner[rows]
            opt.zero_grad(set_to_none=True)
            cross = misfit = 0.0  # (a rank none of whose contexts was chosen adds nothing)
            if bool(rows.any()):
                ctx_totals = None if totals is None else totals[ctx]
                log_q = self.model.log_prob(states[rows], context=code[ctx], totals=ctx_totals)
                term = -(p[rows] * log_q).sum() / len(chosen)
                cross = float(term.detach())
                if slopes:
                    tangent = self._listed_tangent(slopes, rows, states, p, owner, len(values))
                    term = term + tangent / len(chosen)
                    misfit = float(tangent.detach())
                term.backward()
            (cross_all, entropy_all, misfit_all), _, _ = parallel.sum_gradients(
                self.model.parameters(), [cross, float(entropy[mine].sum()), misfit]
            )
            opt.step()
            kl = cross_all - entropy_all / len(chosen)
            if kl < c.first_tolerance and misfit_all / len(chosen) < c.first_tolerance:
                bar.close()
                return FitReport(kl, kl, it + 1, False)
        bar.close()
        return FitReport(kl, kl, c.first_iterations, True)

    def _listed_tangent(
        self,
        slopes: Sequence[Slope],
        rows: torch.Tensor,
        states: torch.Tensor,
        p: torch.Tensor,
        owner: torch.Tensor,
        contexts: int,
    ) -> torch.Tensor:
        """sum over the chosen contexts and the rates of 1/2 Var_p(g_d), with its graph: g_d
        the difference quotient in log c_d / s_d of log q - log p at the listed states (S, L) of
        probabilities p (S,), each of context `owner` (S,) among `contexts`, where `rows`
        (S,) bool (the chosen contexts' states)."""
        states, p, ctx = states[rows], p[rows], owner[rows]
        total = p.new_zeros(())
        for slope in slopes:
            ends = []
            for moved in slope.moved:
                code, totals = moved.select(ctx)
                ends.append(self.model.log_prob(states, context=code, totals=totals))
            r = (ends[0] - ends[1]) / slope.span - slope.exact[rows]
            ok = torch.isfinite(r)
            w = torch.where(ok, p, torch.zeros_like(p))
            r = torch.where(ok, r, torch.zeros_like(r))
            mass = w.new_zeros(contexts).index_add(0, ctx, w).clamp(min=1e-300)
            mean = w.new_zeros(contexts).index_add(0, ctx, w * r) / mass
            total = total + 0.5 * (w * (r - mean[ctx]) ** 2).sum()
        return total

    # ------------------------------------------------------------------------- one step
    def _frozen(self) -> AutoregressiveModel:
        return frozen_copy(self.model)

    def motion(self, dt: float) -> float:
        """The largest over contexts of dt RMS_q[(W_c q)/q]: how far one Euler step of dt
        moves the fastest context's distribution, relative."""
        batch = self._batch()
        states, _ = self._sample(batch)
        _, flow = ConditionalStage(
            [Term(self._frozen(), self.t, 1.0, 1.0)], self.space, self.net, dt
        )(states, batch)
        per = flow.view(len(batch.values), -1).square().mean(dim=1).sqrt()
        _, (fastest,), _ = parallel.reduce(maxima=[float(per.max())])  # over all contexts
        return fastest

    def step(self, dt: float) -> dict[str, Any]:
        """t -> t + dt in Heun sub-steps (as few as keep the motion below max_motion)."""
        start = time.perf_counter()
        pieces = motion_pieces(self.motion(dt), self.config.max_motion)
        h = dt / pieces
        t_end = self.t + dt
        reports = []
        for _ in range(pieces):
            old = self._frozen()
            reports.append(
                self.fit(ConditionalStage([Term(old, self.t, 1, 1)], self.space, self.net, h))
            )
            mid = self._frozen()
            reports.append(
                self.fit(
                    ConditionalStage(
                        [Term(old, self.t, 0.5, 0.0), Term(mid, self.t + h, 0.5, 0.5)],
                        self.space,
                        self.net,
                        h,
                    )
                )
            )
            self.t += h
        self.t = t_end  # the sub-steps' sum, without their rounding
        parallel.broadcast_parameters(self.model)  # ranks stay bit-identical
        return {
            "t": self.t,
            "pieces": pieces,
            "iterations": sum(r.iterations for r in reports),
            "residual": max(r.residual for r in reports),
            "loss": reports[-1].loss,
            "capped": sum(r.capped for r in reports),
            "seconds": time.perf_counter() - start,
        }

    # ------------------------------------------------------------------------- the run
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "generator": self.generator.get_state(),
            "generators": parallel.gather_objects(self.generator.get_state()),  # every rank's
            "t": self.t,
            "steps": self.steps,
            "started": self.started,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        streams = state.get("generators", [state["generator"]])
        if len(streams) != parallel.world_size():
            raise ValueError(
                f"--resume: the run was made over {len(streams)} process(es), this one has "
                f"{parallel.world_size()}: resume with --nproc-per-node {len(streams)}"
            )
        self.generator.set_state(streams[parallel.rank()])
        self.t = float(state["t"])
        self.steps = int(state["steps"])
        self.started = bool(state["started"])

    def times(self) -> tuple[float, float, np.ndarray]:
        """dt, t_end and the save times (0 included)."""
        c = self.config
        t_end = float(c.t_end if c.t_end is not None else self.network.t_end)
        dt = float(c.dt if c.dt is not None else self.network.dt)
        saves = np.linspace(0.0, t_end, c.saves + 1)
        return dt, t_end, saves


def _share(values: np.ndarray) -> tuple[np.ndarray, int]:
    """This rank's rows of contexts every rank drew alike, and the index of its first."""
    shares = parallel.batch_shares(len(values))
    offset = sum(shares[: parallel.rank()])
    return values[offset : offset + shares[parallel.rank()]], offset


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _step_path(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:05d}.pt"


def _check_same_run(out: Path, meta: dict[str, Any]) -> None:
    """--resume continues the same run: the same network, box and settings."""
    old = json.loads((out / "amortise.json").read_text())
    old["config"] = {**BEFORE_SETTINGS, **old["config"]}
    meta = json.loads(json.dumps(meta))  # tuples as lists, as the file has them
    for key in ("network", "space", "config"):
        if old[key] != meta[key]:
            if key == "config":
                diff = sorted(k for k in meta[key] if old[key].get(k) != meta[key][k])
                key = f"settings ({', '.join(diff)})"
            raise ValueError(f"--resume: the run in {out} has another {key}; start a new --out")


def amortise(
    network: ReactionNetwork,
    varies: Sequence[Vary],
    out: str | Path,
    config: AmortiseConfig | None = None,
    *,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Train an amortised network over `varies` and write it to `out`.

    `out` holds `amortise.json` (the network, the box and the settings), `checkpoints/` (the
    model at the end of every step, `step_XXXXX.pt`: `AmortisedSolution` interpolates between
    them), `state.pt` (the run's state at its last save time: `resume=True` continues from
    it, redoing the steps after it) and `log.jsonl` (one line per step). Returns `out`.
    """
    from tqdm import tqdm

    out = Path(out)
    device = parallel.setup(device)  # joins torchrun's process group, if there is one
    main = parallel.is_main()  # rank 0 alone writes
    progress = progress and main
    space = ContextSpace(network, varies)
    config = config or AmortiseConfig()
    trainer = AmortisedTrainer(network, space, config, device=device)
    meta = {
        "network": network_to_dict(network),
        "space": space.to_dict(),
        "config": dataclasses.asdict(config),
        "processes": parallel.world_size(),
        "status": "running",
    }
    state_path = out / "state.pt"
    if resume and state_path.exists():
        _check_same_run(out, meta)
        trainer.load_state_dict(torch.load(state_path, weights_only=False))
        if main:
            _drop_log_after(out / "log.jsonl", trainer.t)
    elif resume:
        raise FileNotFoundError(f"--resume: {state_path} does not exist")
    elif main:  # a fresh run: nothing of an earlier one may be read back as this one's
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        for stale in [state_path, out / "log.jsonl", *(out / "checkpoints").glob("*.pt")]:
            stale.unlink(missing_ok=True)
    writer = _RunWriter(out, meta) if main else None

    def saved(step: int | None = None, record: dict[str, Any] | None = None) -> None:
        """The model at a step's end, its log line, or (no step) the run's state; every rank
        calls it (the state gathers the ranks' streams)."""
        state = trainer.state_dict() if step is None else None
        if writer is not None:
            writer.save(trainer, step, state, record)

    dt, t_end, saves = trainer.times()
    saved_t = trainer.t  # the state file holds the run at this time
    if not trainer.started:
        report = trainer.fit_start()
        saved(0, {"t": 0.0, "first": dataclasses.asdict(report)})
        record = trainer.exact_step(min(dt, saves[1]), progress=progress)
        if record is not None:
            trainer.steps += 1
            saved(trainer.steps, record)
        trainer.started = True
        saved()
        saved_t = trainer.t
    bar = tqdm(total=round(t_end / dt), disable=not progress, desc="amortise", unit="step")
    bar.update(round(trainer.t / dt))
    try:
        for ts in saves[1:]:
            while trainer.t < ts - 1e-9 * max(1.0, ts):
                # to the next multiple of dt (an exact first step may be shorter than dt)
                grid = (math.floor(trainer.t / dt + 1e-9) + 1) * dt
                record = trainer.step(min(grid, ts) - trainer.t)
                trainer.steps += 1
                saved(trainer.steps, record)
                bar.update(1)
                bar.set_postfix(t=f"{trainer.t:.3g}", pieces=record["pieces"])
            if trainer.t > saved_t:
                saved()
                saved_t = trainer.t
    except NonFiniteError as err:
        if writer is not None:
            writer.finish("failed", str(err))
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if writer is not None:
        writer.finish("completed")
    return out


def _drop_log_after(path: Path, t: float) -> None:
    """Keep the log's lines up to time t: a resumed run redoes (and logs again) the steps
    after the state it resumes from, which an interrupted run may have logged already."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["t"] <= t + 1e-9 * max(1.0, t)]
    if len(kept) < len(lines):
        with atomic_write(path) as fh:  # a kill here leaves the log whole
            fh.write("".join(line + "\n" for line in kept))


class _RunWriter:
    """What an amortised run writes (rank 0's): amortise.json, the checkpoints, state.pt and
    log.jsonl."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out, self.meta = out, meta
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._write_meta()
        self.log = (out / "log.jsonl").open("a")

    def _write_meta(self) -> None:
        # whole or not at all: the other ranks of a resumed run read it as it is rewritten
        tmp = self.out / "amortise.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1))
        tmp.replace(self.out / "amortise.json")

    def save(
        self,
        trainer: AmortisedTrainer,
        step: int | None,
        state: dict[str, Any] | None,
        record: dict[str, Any] | None,
    ) -> None:
        if step is not None:
            _save(_step_path(self.out, step), {"t": trainer.t, "model": trainer.model.state_dict()})
        if state is not None:
            _save(self.out / "state.pt", state)
        if record is not None:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()

    def finish(self, status: str, error: str | None = None) -> None:
        self.meta["status"] = status
        if error is not None:
            self.meta["error"] = error
        self._write_meta()

    def close(self) -> None:
        self.log.close()


# --------------------------------------------------------------------------------- answers
class Interpolated:
    """(1 - w) q_a + w q_b: the law between two steps' ends, linear in probability.

    A probability distribution for every w in [0, 1], exact in log-probability (a
    log-sum-exp) and sampled exactly (each draw from q_b with probability w). Its error is at
    most dt^2 / 8 times the largest |d^2 P / dt^2|, second order in the step like Heun's.
    """

    def __init__(self, a: AutoregressiveModel, b: AutoregressiveModel, w: float) -> None:
        self.a, self.b, self.w = a, b, w
        self.num_species, self.max_count, self.dtype = a.num_species, a.max_count, a.dtype

    def log_prob(self, states: torch.Tensor, **kw: Any) -> torch.Tensor:
        return torch.logaddexp(
            self.a.log_prob(states, **kw) + math.log1p(-self.w),
            self.b.log_prob(states, **kw) + math.log(self.w),
        )

    @torch.no_grad()
    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, **kw: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sa, _ = self.a.sample(batch_size, generator, **kw)
        sb, _ = self.b.sample(batch_size, generator, **kw)
        u = torch.rand(batch_size, 1, generator=generator, device=sa.device)
        states = torch.where(u < self.w, sb, sa)
        return states, self.log_prob(states, **kw)


def kernel_columns(space: ContextSpace) -> dict[int, int]:
    """{species index: context column} of the initial counts a transition kernel conditions on.

    q(n' | c with initial counts n, t = lag) is the law of the counts a lag after n, so chaining
    it samples paths only if every count that a reaction changes is part of the context and
    the rates do not depend on time.

    Raises:
        ValueError: a species that some reaction changes is not varied as an initial count,
            or the network has a time-dependent rate (the kernel then depends on the start).
    """
    net = space.network
    if net.is_time_dependent:
        raise ValueError(
            f"paths: {net.name} has a time-dependent rate, so its transition kernel depends "
            "on when a step starts; a run's q(. | c, t) holds only the kernel from t = 0"
        )
    cols = {space.index[j]: j for j, kind in enumerate(space.kinds) if kind == "initial"}
    moving = np.nonzero(np.abs(net.change_matrix).sum(axis=0))[0]
    missing = [net.species_names[i] for i in moving if int(i) not in cols]
    if missing:
        raise ValueError(
            f"paths: the run must vary the initial count of every species the reactions "
            f"change; missing {missing} (amortise with --vary NAME=0:HI for each, over the "
            "counts the paths visit)"
        )
    return cols


@dataclass
class PathEnsemble:
    """Paths sampled from an amortised run's transition kernel (`AmortisedSolution.paths`).

    Attributes:
        times: (K + 1,) 0, lag, ..., K * lag.
        states: (N, K + 1, L) int64 counts of N paths at those times.
        outside: (N, K) bool, True where a step started from counts outside the trained box
            (its kernel was extrapolated).
        species: the L species names.
    """

    times: np.ndarray
    states: np.ndarray
    outside: np.ndarray
    species: list[str]

    def _column(self, species: str | int) -> np.ndarray:
        """(N, K + 1) counts of one species."""
        i = self.species.index(species) if isinstance(species, str) else int(species)
        return self.states[:, :, i]

    def marginal(self, species: str | int, k: int, size: int) -> np.ndarray:
        """(size,) histogram of one species at times[k], normalised."""
        x = self._column(species)[:, k]
        return np.bincount(x, minlength=size)[:size] / len(x)

    def autocovariance(self, species: str | int, lag_steps: int) -> np.ndarray:
        """(K + 1 - lag_steps,) Cov(X(t_k), X(t_k + lag_steps * lag)) over the paths."""
        x = self._column(species).astype(np.float64)
        a, b = x[:, : x.shape[1] - lag_steps], x[:, lag_steps:]
        return ((a - a.mean(0)) * (b - b.mean(0))).sum(0) / (len(x) - 1)

    def autocorrelation(self, species: str | int, lag_steps: int) -> np.ndarray:
        """(K + 1 - lag_steps,) the correlation of X(t_k) with X(t_k + lag_steps * lag); nan
        where either count does not vary (a point-mass start)."""
        x = self._column(species).astype(np.float64)
        sd = x.std(axis=0, ddof=1)
        spread = sd[: x.shape[1] - lag_steps] * sd[lag_steps:]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(spread > 0, self.autocovariance(species, lag_steps) / spread, np.nan)


class AmortisedSolution:
    """A trained amortised run: the conditional model at each save time.

    Args:
        out: the run's directory (as written by `amortise`).
        device: where the models are evaluated.
    """

    def __init__(self, out: str | Path, device: str = "cpu") -> None:
        self.out = Path(out)
        meta = json.loads((self.out / "amortise.json").read_text())
        self.network = network_from_dict(meta["network"])
        self.space = ContextSpace.from_dict(self.network, meta["space"])
        self.config = AmortiseConfig(**{**BEFORE_SETTINGS, **meta["config"]})
        self.status = meta.get("status", "unknown")
        self.device = torch.device(device)
        self.dtype = getattr(torch, self.config.dtype)
        paths = sorted((self.out / "checkpoints").glob("step_*.pt"))
        if not paths:
            raise FileNotFoundError(f"{self.out}: no checkpoints")
        self._states = [torch.load(p, weights_only=False) for p in paths]
        self.times = np.array([s["t"] for s in self._states])
        self.save_times = np.linspace(0.0, self.times[-1], self.config.saves + 1)
        self._models = [self._new_model(), self._new_model()]
        self._loaded: list[int | None] = [None, None]

    def _new_model(self) -> AutoregressiveModel:
        return build_conditional(
            self.network, self.space, self.config, self.device
        )  # trainable: sensitivities differentiate through the unfused pass

    def _model(self, slot: int, step: int) -> AutoregressiveModel:
        if self._loaded[slot] != step:
            self._models[slot].load_state_dict(self._states[step]["model"])
            self._loaded[slot] = step
        return self._models[slot]

    def at(self, t: float) -> AutoregressiveModel | Interpolated:
        """q(. | c, t) at any t in [0, last step's time]: the model of a step's end, or between
        two, their mixture (`Interpolated`)."""
        last = float(self.times[-1])
        if not (-1e-9 <= t <= last * (1 + 1e-9)):
            raise ValueError(f"t = {t:g} is outside this run's span [0, {last:g}]")
        k = int(np.searchsorted(self.times, t))
        tol = 1e-9 * max(1.0, abs(t))
        if k < len(self.times) and abs(self.times[k] - t) <= tol:
            return self._model(0, k)
        if k > 0 and abs(self.times[k - 1] - t) <= tol:
            return self._model(0, k - 1)
        w = (t - self.times[k - 1]) / (self.times[k] - self.times[k - 1])
        return Interpolated(self._model(0, k - 1), self._model(1, k), float(w))

    def _inputs(self, values: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's context and totals for n rows of each of the (N, D) contexts."""
        return ContextBatch.make(self.space, values, n, self.device, self.dtype).select()

    def log_prob(self, states: np.ndarray, values: np.ndarray, t: float) -> np.ndarray:
        """log q(n | c, t) of (N, L) states at (N, D) contexts (or one (D,) context)."""
        states = torch.as_tensor(np.atleast_2d(states), dtype=torch.int64, device=self.device)
        values = self.space.check(values)
        if len(values) == 1:
            values = np.repeat(values, len(states), axis=0)
        code, totals = self._inputs(values, 1)
        model = self.at(t)
        return conditional_log_prob(model, states, code, totals, 1 << 15).cpu().numpy()

    def marginals(
        self, values: np.ndarray, t: float, *, samples: int = 20000, seed: int = 0
    ) -> list[np.ndarray]:
        """Per species i, (N, M_i) marginals of q(. | c, t) at N contexts: exact sums over the
        box where it has at most EXACT_STATES states, else histograms of `samples` draws."""
        values = self.space.check(values)
        model = self.at(t)
        limits = self.network.limits
        out = [np.zeros((len(values), int(m))) for m in limits]
        if int(np.prod(limits)) <= EXACT_STATES:
            grid = self.box_states()
            for j in range(len(values)):
                code, totals = self._inputs(values[j : j + 1], grid.shape[0])
                p = conditional_log_prob(model, grid, code, totals, 1 << 15).exp().cpu().numpy()
                g = grid.cpu().numpy()
                for i in range(len(limits)):
                    out[i][j] = np.bincount(g[:, i], weights=p, minlength=int(limits[i]))
            return out
        gen = torch.Generator(device=self.device).manual_seed(seed)
        for j in range(len(values)):
            code, totals = self._inputs(values[j : j + 1], samples)
            with torch.no_grad():
                s, _ = model.sample(samples, gen, context=code, totals=totals)
            s = s.cpu().numpy()
            for i in range(len(limits)):
                out[i][j] = np.bincount(s[:, i], minlength=int(limits[i])) / samples
        return out

    def box_states(self) -> torch.Tensor:
        """Every state of the box (S, L) (the sums that give exact marginals)."""
        limits = self.network.limits
        if int(np.prod(limits)) > EXACT_STATES:
            raise ValueError(
                f"exact sums over the box: at most {EXACT_STATES:,} states, this one "
                f"has {int(np.prod(limits)):,}"
            )
        return box_states(limits, self.device)

    def rate_columns(self) -> list[int]:
        """The context's columns that are rate constants (a ValueError if none)."""
        cols = [j for j, kind in enumerate(self.space.kinds) if kind == "rate"]
        if not cols:
            raise ValueError("this run varies no rate constant")
        return cols

    def log_rate_bounds(self, cols: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(R,) lower and upper log rate constants of the box at those columns."""
        lo = np.log([max(self.space.varies[j].lo, 1e-12) for j in cols])
        return lo, np.log([self.space.varies[j].hi for j in cols])

    def box_probabilities(self, grid: torch.Tensor, values: torch.Tensor, t: float) -> torch.Tensor:
        """(S,) q(n | c, t) of the (S, L) states at one context (D,), differentiable in it."""
        code = self.space.encode_tensor(values.unsqueeze(0)).to(self.device, self.dtype)
        totals = self.space.totals(values.detach().cpu().numpy()[None])
        if totals is not None:
            totals = torch.as_tensor(totals, device=self.device).expand(grid.shape[0], -1)
        return (
            self.at(t).log_prob(grid, context=code.expand(grid.shape[0], -1), totals=totals).exp()
        )

    def _marginals_at(self, grid: torch.Tensor, values: torch.Tensor, t: float) -> torch.Tensor:
        """(L, Mmax) marginals of q(. | c, t) at one context (D,) as a differentiable tensor."""
        p = self.box_probabilities(grid, values, t)
        M = int(self.network.limits.max())
        out = p.new_zeros(grid.shape[1], M)
        for i in range(grid.shape[1]):
            out[i] = p.new_zeros(M).index_add(0, grid[:, i], p)
        return out

    def sensitivities(self, values: Sequence[float], t: float) -> dict[str, Any]:
        """Derivatives in the log rate constants that vary, by autograd through the model.

        They are as accurate as the model's derivatives in c: fitted where the run was trained
        with tangent fits (`AmortiseConfig.tangent`), and only as good as the smoothness of
        its error in c where not (a warning says so).

        Args:
            values: (D,) one context.  t: a save time.

        Returns:
            {"rates": names (R,), "marginals" (L, Mmax), "d_marginals" (L, Mmax, R): the
            derivative of each P(n_i = m) in log c_r, "means" (L,), "d_means" (L, R)}.
        """
        if not self.config.tangent:
            warnings.warn(
                f"{self.out}: amortised without tangent fits, so its derivatives in the rates "
                "were never fitted and may be off by far more than its values; amortise with "
                "--tangent (AmortiseConfig(tangent=True)) for sensitivities",
                stacklevel=2,
            )
        values = self.space.check(values)[0]
        cols = self.rate_columns()
        grid = self.box_states()
        base = torch.as_tensor(values, dtype=torch.float64)

        def marginals(log_rates: torch.Tensor) -> torch.Tensor:
            v = base.clone()
            v[cols] = torch.exp(log_rates)
            return self._marginals_at(grid, v, t)

        log_rates = torch.log(base[cols])
        p = marginals(log_rates).detach()
        jac = torch.autograd.functional.jacobian(marginals, log_rates)  # (L, M, R)
        x = torch.arange(p.shape[1], dtype=p.dtype, device=p.device)
        return {
            "rates": [self.space.names[j] for j in cols],
            "marginals": p.cpu().numpy(),
            "d_marginals": jac.cpu().numpy(),
            "means": (p @ x).cpu().numpy(),
            "d_means": torch.einsum("lmr,m->lr", jac, x).cpu().numpy(),
        }

    def fit_rates(
        self,
        data: np.ndarray,
        t: float,
        *,
        start: Sequence[float] | None = None,
        iterations: int = 200,
    ) -> dict[str, Any]:
        """Maximum-likelihood rate constants for snapshot data at save time t, by L-BFGS in
        log c over the box (the other quantities at `start`, default mid-box).

        Returns:
            {"values" (D,): the estimate, "log_likelihood", "fisher" (R, R): the observed
            information in log c (its inverse approximates the estimate's covariance),
            "at_box_edge": whether a rate ended on its range's edge}.
        """
        data = torch.as_tensor(
            np.atleast_2d(np.asarray(data)), dtype=torch.int64, device=self.device
        )
        middle = self.space.middle()
        base = torch.as_tensor(self.space.check(middle if start is None else start)[0])
        cols = self.rate_columns()
        lo, hi = (torch.as_tensor(b) for b in self.log_rate_bounds(cols))
        model = self.at(t)
        totals = self.space.totals(base.numpy()[None])
        if totals is not None:
            totals = torch.as_tensor(totals, device=self.device).expand(data.shape[0], -1)

        def nll(log_rates: torch.Tensor) -> torch.Tensor:
            v = base.clone()
            v[cols] = torch.exp(torch.maximum(torch.minimum(log_rates, hi), lo))
            code = self.space.encode_tensor(v.unsqueeze(0)).to(self.device, self.dtype)
            lp = model.log_prob(data, context=code.expand(data.shape[0], -1), totals=totals)
            return -lp.sum()

        theta = torch.log(base[cols]).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([theta], max_iter=iterations, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nll(theta)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            theta.copy_(torch.maximum(torch.minimum(theta, hi), lo))
        fisher = torch.autograd.functional.hessian(nll, theta.detach())
        v = base.clone()
        v[cols] = torch.exp(theta.detach())
        edge = bool(((theta - lo).abs() < 1e-6).any() or ((hi - theta).abs() < 1e-6).any())
        return {
            "values": v.numpy(),
            "log_likelihood": -float(nll(theta.detach()).detach()),
            "fisher": fisher.cpu().numpy(),
            "at_box_edge": edge,
        }

    def posterior(
        self,
        data: np.ndarray,
        t: float,
        *,
        start: Sequence[float] | None = None,
        walkers: int = 16,
        steps: int = 800,
        burn: int = 300,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Posterior samples of the varied rate constants given snapshot data at time t, by
        emcee's affine-invariant ensemble sampler (`pip install emcee`).

        The likelihood is the model's exact log q(n_cell | c, t) summed over cells; the prior
        is the training box (uniform in log c on a log scale, in c on a linear one); the other
        quantities sit at `start` (default mid-box). Walkers start around the maximum
        likelihood (`fit_rates`).

        Returns:
            {"rates": names (R,), "samples": (walkers * (steps - burn), R) rate constants,
             "acceptance": the mean acceptance fraction}.
        """
        try:
            import emcee
        except ImportError:  # pragma: no cover - the message is the point
            raise ImportError("posterior sampling needs emcee: pip install emcee") from None
        cols = self.rate_columns()
        fit = self.fit_rates(data, t, start=start)
        base = torch.as_tensor(fit["values"])
        log = [self.space.log_scale[j] for j in cols]
        lo = np.array([self.space.varies[j].lo for j in cols], dtype=np.float64)
        hi = np.array([self.space.varies[j].hi for j in cols], dtype=np.float64)
        to_x = lambda c: np.where(log, np.log(np.clip(c, 1e-300, None)), c)  # noqa: E731
        x_lo, x_hi = to_x(lo), to_x(hi)
        cells = torch.as_tensor(np.atleast_2d(data), dtype=torch.int64, device=self.device)
        N, model = cells.shape[0], self.at(t)
        totals = self.space.totals(base.numpy()[None])

        @torch.no_grad()
        def log_post(x: np.ndarray) -> np.ndarray:  # (W, R) -> (W,)
            inside = ((x >= x_lo) & (x <= x_hi)).all(axis=1)
            out = np.full(len(x), -np.inf)
            if not inside.any():
                return out
            v = base.repeat(int(inside.sum()), 1)
            v[:, cols] = torch.as_tensor(np.where(log, np.exp(x[inside]), x[inside]))
            code = self.space.encode_tensor(v).to(self.device, self.dtype)
            tot = None
            if totals is not None:
                tot = torch.as_tensor(totals, device=self.device).expand(len(v) * N, -1)
            lp = model.log_prob(
                cells.repeat(len(v), 1), context=code.repeat_interleave(N, 0), totals=tot
            )
            out[inside] = lp.view(len(v), N).sum(dim=1).cpu().numpy()
            return out

        rng = np.random.default_rng(seed)
        x0 = to_x(fit["values"][cols])
        spread = np.sqrt(np.clip(np.diag(np.linalg.pinv(fit["fisher"])), 1e-8, None))
        if not np.all(log):  # the information is in log c; a linear coordinate scales by c
            spread = np.where(log, spread, spread * fit["values"][cols])
        p0 = np.clip(x0 + 0.5 * spread * rng.standard_normal((walkers, len(cols))), x_lo, x_hi)
        sampler = emcee.EnsembleSampler(walkers, len(cols), log_post, vectorize=True)
        sampler.random_state = np.random.RandomState(seed).get_state()
        sampler.run_mcmc(p0, steps, progress=False)
        x = sampler.get_chain(discard=burn, flat=True)
        return {
            "rates": [self.space.names[j] for j in cols],
            "samples": np.where(log, np.exp(x), x),
            "acceptance": float(np.mean(sampler.acceptance_fraction)),
        }

    def paths(
        self,
        values: Sequence[float],
        lag: float,
        steps: int,
        *,
        count: int = 10_000,
        seed: int = 0,
        progress: bool = False,
    ) -> PathEnsemble:
        """Paths n(0), n(lag), ..., n(steps * lag) of the network at one context, by chaining
        the run's transition kernel q(n' | c with initial counts n, lag).

        The CME is Markov, so a path sampled step by step from the exact kernel has the exact
        joint law at those times; here each step's error is the model's at t = lag (the run
        must vary the initial count of every species that changes, over the counts the paths
        visit: `kernel_columns`). Each of the `count` paths conditions on its own counts, so
        one step is one batched draw of the model.

        Args:
            values: (D,) the context: its rates hold along the paths; its initial counts are
                the start n(0).
            lag: the time between two points of a path (within the run's span; between two
                steps' ends the kernel is their mixture, `Interpolated`).
            steps: the number of lags.
            count: the number of paths.
            seed: the seed of the draws.
            progress: a progress bar over the steps.

        Returns:
            A `PathEnsemble`; `outside` marks the steps whose start lay outside the box.
        """
        from tqdm import tqdm

        cols = kernel_columns(self.space)
        if not (lag > 0 and steps >= 1 and count >= 1):
            raise ValueError(
                f"paths: need lag > 0, steps >= 1, count >= 1; got {lag}, {steps}, {count}"
            )
        context = np.repeat(self.space.check(values)[:1], count, axis=0)
        model = self.at(lag)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        states = [self.space.initial(context)]
        outside = []
        for _ in tqdm(range(steps), disable=not progress, desc="paths", unit="lag"):
            for i, j in cols.items():
                context[:, j] = states[-1][:, i]
            outside.append(self.space.outside(context))
            code, totals = self._inputs(context, 1)
            with torch.no_grad():
                s, _ = model.sample(count, gen, context=code, totals=totals)
            states.append(s.cpu().numpy().astype(np.int64))
        return PathEnsemble(
            times=lag * np.arange(steps + 1),
            states=np.stack(states, axis=1),
            outside=np.stack(outside, axis=1),
            species=list(self.network.species_names),
        )

    def means(self, values: np.ndarray, t: float, **kw: Any) -> np.ndarray:
        """(N, L) means of each species at N contexts."""
        return np.stack([m @ np.arange(m.shape[1]) for m in self.marginals(values, t, **kw)], 1)


def grid_values(space: ContextSpace, axes: dict[str, Iterable[float]]) -> np.ndarray:
    """The contexts of a grid: every combination of the given values of the named quantities,
    the others at the middle of their range (the geometric middle on a log scale)."""
    unknown = set(axes) - set(space.names)
    if unknown:
        raise ValueError(f"not varied by this run: {sorted(unknown)}; it varies {space.names}")
    middle = space.middle()
    lists = [list(axes.get(name, [middle[j]])) for j, name in enumerate(space.names)]
    mesh = np.meshgrid(*lists, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


STATISTICS = ("mean", "std", "fano", "bimodality")


def marginal_statistic(marginal: np.ndarray, name: str) -> np.ndarray:
    """(N, M) marginals -> (N,) statistic: "mean", "std", "fano" (variance / mean) or
    "bimodality" (Sarle's coefficient (skewness^2 + 1) / kurtosis: 1/3 for a uniform law,
    above 5/9 suggests two modes)."""
    if name not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {name!r}")
    x = np.arange(marginal.shape[1], dtype=np.float64)
    p = marginal / marginal.sum(axis=1, keepdims=True)
    mean = p @ x
    d = x[None, :] - mean[:, None]
    var = (p * d**2).sum(axis=1)
    if name == "mean":
        return mean
    if name == "std":
        return np.sqrt(var)
    if name == "fano":
        return np.where(mean > 0, var / np.where(mean > 0, mean, 1.0), np.nan)
    safe = np.where(var > 0, var, np.nan)
    skew = (p * d**3).sum(axis=1) / safe**1.5
    kurt = (p * d**4).sum(axis=1) / safe**2
    return (skew**2 + 1) / kurt


def sweep(
    solution: AmortisedSolution,
    axes: dict[str, Iterable[float]],
    t: float,
    statistics: Sequence[str] = STATISTICS,
) -> dict[str, Any]:
    """Statistics of every species over a grid of contexts at save time t.

    Returns:
        {"names", "values" (N, D), "t", "outside" (N,) bool, "species",
         "stats": {statistic: (N, L)}}: the grid's contexts in `grid_values` order.
    """
    values = grid_values(solution.space, axes)
    marginals = solution.marginals(values, t)
    stats = {s: np.stack([marginal_statistic(m, s) for m in marginals], axis=1) for s in statistics}
    return {
        "names": solution.space.names,
        "values": values,
        "t": float(t),
        "outside": solution.space.outside(values),
        "species": solution.network.species_names,
        "stats": stats,
    }
