"""A causal Transformer VAN over species tokens, with a KV cache for sampling.

Position i reads the count of species i-1 (a learned start token, plus the context, at position
0) and predicts species i. Tokens embed (species, count) pairs, one table per species; learned
position embeddings; pre-LayerNorm blocks of causal multi-head attention and an MLP.

Output heads are per species (head_w (L, M, D), head_b (L, M)), as in NADE, rather than one
shared head with per-species masks: species differ in count range and meaning (a gene 0/1 beside
a protein 0..79), and a shared head would have to recover the species from the position
embedding and spend capacity on it; a per-species head costs L*M*D parameters, the same as the
token tables, and makes the head of species i exactly a linear read-out of its own position.

Sampling keeps the keys and values of earlier positions (a KV cache), so species i costs one
position of attention, O(i) work, not the O(i^2) of recomputing the prefix. On CUDA the whole
sampling loop is captured once per batch size in a CUDA graph (`cuda_graphs=True`): at the small
batch sizes of training, sampling is launch-bound (about 10 kernels per layer per species), and
replaying a graph removes that overhead. The uniforms are drawn outside the graph from the
caller's generator and copied into its static input, so a seed reproduces a draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Anchor, AutoregressiveModel, ConditionalTransform

__all__ = ["Transformer"]


class _Block(nn.Module):
    """Pre-LayerNorm block: causal multi-head self-attention, then a GELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k, v each (B, heads, T, D/heads)."""
        B, T, D = x.shape
        qkv = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def _merge(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = att.shape
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, -1))
        return x + self.mlp(self.ln2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D), causal over positions."""
        return self.forward_keys(x)[0]

    def forward_keys(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal over positions, after `past` keys and values of P earlier positions.

        Args:
            x: (B, T, D) the inputs of positions P..P+T-1.
            past: keys and values (B, heads, P, D/heads) of positions 0..P-1, or None (P = 0).

        Returns:
            the outputs (B, T, D) and this block's keys and values of x's positions.
        """
        q, k, v = self._split(x)
        if past is None:
            return self._merge(x, F.scaled_dot_product_attention(q, k, v, is_causal=True)), k, v
        P, T = past[0].shape[2], x.shape[1]
        keys, values = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)
        att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self._merge(x, att), k, v

    def step(self, x: torch.Tensor, cache: torch.Tensor, i: int) -> torch.Tensor:
        """One position with a KV cache.

        Args:
            x: (B, 1, D) the input at position i.
            cache: (2, B, heads, L, D/heads) keys and values; position i is written here.
        """
        q, k, v = self._split(x)
        cache[0, :, :, i : i + 1] = k
        cache[1, :, :, i : i + 1] = v
        att = F.scaled_dot_product_attention(q, cache[0, :, :, : i + 1], cache[1, :, :, : i + 1])
        return self._merge(x, att)


class Transformer(AutoregressiveModel):
    """Causal Transformer over species counts.

    Args:
        limits: (L,) count limits M_i.
        hidden: model width D (divisible by `heads`).
        layers: number of blocks.
        heads: attention heads.
        conservation: `network.feasibility`, or None.
        context_dim: width of an optional context; it is added (through a linear map) to the
            start token, so every position can attend to it.
        anchors: context columns holding species' counts (`AutoregressiveModel`).
        dtype, device, seed: as in `NADE`.
        cuda_graphs: capture the sampling loop in a CUDA graph on CUDA devices.
    """

    def __init__(
        self,
        limits: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        hidden: int = 32,
        layers: int = 2,
        heads: int = 4,
        conservation: Any | None = None,
        context_dim: int = 0,
        anchors: Sequence[Anchor] = (),
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        seed: int = 0,
        cuda_graphs: bool = True,
    ) -> None:
        super().__init__(
            limits, conservation=conservation, context_dim=context_dim, anchors=anchors
        )
        if hidden < 1 or heads < 1 or hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a positive multiple of heads ({heads})")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.hidden, self.layers, self.heads = int(hidden), int(layers), int(heads)
        self.cuda_graphs = bool(cuda_graphs)
        L, M, D = self.num_species, self.max_count, self.hidden
        self.start = nn.Parameter(torch.zeros(D))
        self.token = nn.Parameter(torch.zeros(L, M, D))
        self.pos = nn.Parameter(torch.zeros(L, D))
        if context_dim:
            self.context_w = nn.Parameter(torch.zeros(D, context_dim))
        self.blocks = nn.ModuleList(_Block(D, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(D)
        self.head_w = nn.Parameter(torch.zeros(L, M, D))
        self.head_b = nn.Parameter(torch.zeros(L, M))
        self._init_parameters(int(seed))
        self.to(device=device, dtype=dtype)
        self._graphs: dict[tuple, Any] = {}

    def _init_parameters(self, seed: int) -> None:
        """GPT-style initialisation from a private generator (the global RNG is left alone)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("anchor_"):
                    continue  # the base class's: the model starts as the one without anchors
                if name.endswith("bias") or name == "head_b":
                    p.zero_()
                elif "ln" in name or name.startswith("norm"):
                    p.fill_(1.0)
                else:
                    std = 0.002 if name == "head_w" else 0.02
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    def _first(self, batch_size: int, context: torch.Tensor | None) -> torch.Tensor:
        """(B, D) input of position 0: the start token, plus the mapped context."""
        x = self.start.unsqueeze(0).expand(batch_size, -1)
        if context is not None:
            x = x + context @ self.context_w.T
        return x

    # ------------------------------------------------------------------ teacher forcing
    def _logits(self, states: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = self._embed(states, context)
        for block in self.blocks:
            x = block(x)
        return self._head(x, 0)

    def _embed(self, states: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """(B, L, D) the inputs of every position: the start token, then species i-1's count."""
        B, L = states.shape
        species = torch.arange(L - 1, device=states.device).unsqueeze(0)
        prev = self.token[species, states[:, :-1]]  # (B, L-1, D)
        return torch.cat([self._first(B, context).unsqueeze(1), prev], dim=1) + self.pos

    def _head(self, x: torch.Tensor, first: int) -> torch.Tensor:
        """(B, T, D) outputs of positions first.. -> (B, T, M) logits of those species."""
        y = self.norm(x).transpose(0, 1)  # (T, B, D)
        w, bias = self.head_w[first : first + y.shape[0]], self.head_b[first : first + y.shape[0]]
        return torch.baddbmm(bias.unsqueeze(1), y, w.transpose(1, 2)).transpose(0, 1)

    # ------------------------------------------------------------------ neighbours
    @torch.no_grad()
    def score_neighbours(
        self,
        states: torch.Tensor,
        sites: torch.Tensor,
        steps: torch.Tensor,
        valid: torch.Tensor,
        *,
        elements: int = 1 << 23,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`NADE.score_neighbours` (the same arguments and values) for the Transformer.

        With j the first species where n' differs from n, positions 0..j read the same
        counts in n' as in n (position p reads species p - 1), so in every layer their keys
        and values are n's: they are kept from n's own pass (the KV cache of sampling, for
        the whole state at once), species <= j's conditionals are n's (species j's read at
        n'_j), and only positions j+1.. are run anew, attending to that cached prefix:
        about half the work of scoring n' alone for changes spread over the species.
        """
        if self.context_dim or self.num_anchors or self.num_laws:
            return None
        states = self._check_states(states)
        L = states.shape[1]
        x, kept = self._embed(states, None), []
        for block in self.blocks:
            x, k, v = block.forward_keys(x)
            kept.append((k, v))
        table = torch.log_softmax(self._within_limits(self._head(x, 0)), dim=-1)  # (B, L, M)
        width = self.hidden + L * self.heads  # per row and position: activations, attention
        return self._neighbour_scores(
            states, table, sites, steps, valid,
            lambda j: max(1, elements // max(1, (L - j) * width)),
            lambda b, tail, j: self._rest(kept, b, tail, j),
        )  # fmt: skip

    def _rest(self, kept, b: torch.Tensor, tail: torch.Tensor, j: int) -> torch.Tensor:
        """log q of species j+1.. of neighbours (rows b, counts from species j on: tail):
        positions j+1.. run after the state's cached keys and values of positions 0..j."""
        L = self.num_species
        species = torch.arange(j, L - 1, device=tail.device)
        x = self.token[species, tail[:, :-1]] + self.pos[j + 1 :]  # (R, L-1-j, D)
        for block, (k, v) in zip(self.blocks, kept):
            x, _, _ = block.forward_keys(x, (k[b, :, : j + 1], v[b, :, : j + 1]))
        logits = self._within_limits(self._head(x, j + 1), j + 1)
        rest = torch.log_softmax(logits, dim=-1).gather(2, tail[:, 1:].unsqueeze(-1))
        return rest.squeeze(-1).sum(dim=1)

    # ------------------------------------------------------------------ sampling (KV cache)
    def _start(self, batch_size: int, context: torch.Tensor | None) -> dict:
        L, D = self.num_species, self.hidden
        cache = torch.zeros(
            self.layers, 2, batch_size, self.heads, L, D // self.heads,
            dtype=self.dtype, device=self.device,
        )  # fmt: skip
        x = (self._first(batch_size, context) + self.pos[0]).unsqueeze(1)
        return {"cache": cache, "x": x}

    def _step_logits(self, state: dict, i: int) -> torch.Tensor:
        x = state["x"]
        for layer, block in enumerate(self.blocks):
            x = block.step(x, state["cache"][layer], i)
        y = self.norm(x[:, 0])
        return torch.addmm(self.head_b[i], y, self.head_w[i].T)

    def _advance(self, state: dict, i: int, counts: torch.Tensor) -> dict:
        if i + 1 < self.num_species:
            state["x"] = (self.token[i][counts] + self.pos[i + 1]).unsqueeze(1)
        return state

    def _sample_loop(
        self,
        uniforms: torch.Tensor,
        transform: ConditionalTransform | None,
        context: torch.Tensor | None,
        totals: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        use_graph = (
            self.cuda_graphs
            and uniforms.is_cuda
            and transform is None
            and not self.num_anchors
            and not torch.is_grad_enabled()
            and not torch.cuda.is_current_stream_capturing()
        )
        if not use_graph:
            return super()._sample_loop(uniforms, transform, context, totals)
        return self._graph_sample(uniforms, context, totals)

    def _graph_sample(
        self, uniforms: torch.Tensor, context: torch.Tensor | None, totals: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Replay (capturing on first use) the sampling loop for this batch size."""
        B = uniforms.shape[0]
        ctx = self._context(context, B)
        tot = self._totals(totals, B)
        key = (B, self.dtype, self.device, self.head_w.data_ptr())
        entry = self._graphs.get(key)
        if entry is None:
            static = {
                "u": uniforms.clone(),
                "ctx": None if ctx is None else ctx.clone(),
                "tot": None if tot is None else tot.clone(),
            }

            def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                return AutoregressiveModel._sample_loop(
                    self, static["u"], None, static["ctx"], static["tot"]
                )

            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up outside the capture, as CUDA graphs require
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = run()
            entry = self._graphs[key] = (graph, static, out)
        graph, static, out = entry
        static["u"].copy_(uniforms)
        if ctx is not None:
            static["ctx"].copy_(ctx)
        if tot is not None:
            static["tot"].copy_(tot)
        graph.replay()
        return tuple(o.clone() for o in out)

    def _apply(self, fn, recurse=True):  # .to()/.cuda() replace parameter storage
        self._graphs = {}
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden={self.hidden}, layers={self.layers}, "
            f"heads={self.heads}"
        )
