"""Hydra (Ankner et al. 2024), KOALA-style: head k predicts token t+k+1 from the target's h_t and
the embeddings of the k tokens drafted before it on the same path (t+1 .. t+k), through an input
projection and K residual SiLU blocks of its own, then the frozen draft-vocabulary LM head.

With ``prefix`` (Hydra++'s prefix layer) the heads read, instead of h_t, the output at t of one
causal decoder layer run over the target's hidden states h_1..h_t: context beyond the last state.
It starts as the identity (zeroed output projections), so training begins from plain Hydra; at
inference it keeps its own KV cache of the committed rows, which only grows (no tree rows enter it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from koala_core.errors import ConfigError
from koala_core.heads import DepthOutput, NeuralHead, TrainBatch, apply_blocks, residual_blocks, shifted
from koala_core.interfaces import Candidates, DraftContext
from koala_core.layers import DecoderLayer, KVCache, LayerShape
from koala_core.tensors import additive_mask
from koala_core.tree import Tree


class HydraHead(NeuralHead):
    """Hydra heads: head k reads h_t and the k path tokens before its target, K blocks each."""

    default_tree = ("static", {"preset": "small"})

    @dataclass(frozen=True)
    class Config:
        heads: int = field(default=4, metadata={"help": "draft depth: one head per future token"})
        layers: int = field(default=1, metadata={"help": "K residual blocks per head (KOALA)"})
        draft_vocab: int = field(default=8192, metadata={"help": "0 = full target vocabulary"})
        prefix: bool = field(default=False, metadata={
            "help": "Hydra++: heads read a causal decoder layer over the target's hidden states"})
        max_length: int = field(default=1024, metadata={
            "help": "initial capacity of the prefix layer's KV cache (grows)"})

        def __post_init__(self):
            if self.heads < 1 or self.layers < 1:
                raise ConfigError("hydra: heads and layers must be >= 1")

    def __init__(self, config=None, target=None) -> None:
        super().__init__(config, target)
        D = self.hidden_size
        self.inputs = nn.ModuleList()
        for k in range(1, self.config.heads + 1):
            lin = nn.Linear((k + 1) * D, D)
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
            self.inputs.append(lin)
        self.blocks = nn.ModuleList(residual_blocks(D, self.config.layers)
                                    for _ in range(self.config.heads))
        self.prefix = None
        if self.config.prefix:
            self.shape = LayerShape.of(target.config)
            self.prefix = DecoderLayer(self.shape)
            with torch.no_grad():  # the identity at first: training starts from plain Hydra
                self.prefix.self_attn.o_proj.weight.zero_()
                self.prefix.mlp.down_proj.weight.zero_()
            self.cache: KVCache | None = None

    def context(self, hidden: torch.Tensor, positions: torch.Tensor, mask=None, cache=None):
        """What the heads read at each position: h_t, or the prefix layer's output over h_1..h_t."""
        if self.prefix is None:
            return hidden
        out = self.prefix(hidden, positions, mask, cache)
        if cache is not None:
            cache.commit()
        return out

    def head(self, k: int, h: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
        """Head k (1-based): h (..., D), path (..., k) target ids -> (..., D) feature."""
        e = self.embed(path).to(h.dtype).flatten(-2)  # (..., k*D)
        x = h + self.inputs[k - 1](torch.cat([h, e], -1))
        return apply_blocks(self.blocks[k - 1], x)

    def begin(self, ctx: DraftContext) -> None:
        super().begin(ctx)
        dev, dtype = self.lm_rows.device, self.lm_rows.dtype
        if self.prefix is None:
            self.h = ctx.hidden[-1].to(dev, dtype)  # (D,)
            return
        a = ctx.hidden.shape[0]  # rows that entered the target's cache since the last step
        committed = len(ctx.tokens) - 1 - a
        if ctx.step == 0 or self.cache is None:
            s = self.shape
            self.cache = KVCache(1, s.kv_heads, s.head_dim, self.config.max_length, dtype, dev)
            committed = 0
        self.cache.length = committed
        pos = torch.arange(committed, committed + a, device=dev)[None]
        mask = None
        if committed:  # new rows see every committed row, and causally each other
            allow = torch.cat([torch.ones(a, committed, dtype=torch.bool, device=dev),
                               torch.ones(a, a, dtype=torch.bool, device=dev).tril()], 1)
            mask = additive_mask(allow, dtype)
        self.h = self.context(ctx.hidden.to(dev, dtype)[None], pos, mask, self.cache)[0, -1]

    def expand(self, tree: Tree, nodes: list[int], k: int) -> Candidates:
        out = self.empty(len(nodes), k)
        by_depth: dict[int, list[int]] = {}
        for row, node in enumerate(nodes):
            if tree.depths[node] < self.config.heads:
                by_depth.setdefault(tree.depths[node], []).append(row)
        for d, rows in by_depth.items():
            # a node at depth d has path t+1..t+d+1 (root included): head d+1 predicts its children
            paths = torch.tensor([tree.path_tokens(nodes[r]) for r in rows], device=self.h.device)
            feats = self.head(d + 1, self.h.expand(len(rows), -1), paths)
            cand = self.top(self.project(feats), k)
            kk = cand.tokens.shape[1]
            out.tokens[rows, :kk] = cand.tokens
            out.logprobs[rows, :kk] = cand.logprobs
        return out

    def train_outputs(self, batch: TrainBatch) -> list[DepthOutput]:
        B, L, _ = batch.hidden.shape
        h = self.context(batch.hidden, torch.arange(L, device=batch.hidden.device).expand(B, L))
        outs = []
        for k in range(1, self.config.heads + 1):
            # head k at t reads the text tokens t+1..t+k and predicts the target's label at t+k
            path = torch.stack([shifted(batch.input_ids, j) for j in range(1, k + 1)], -1)  # (B, L, k)
            outs.append(self.depth_output(batch, k, self.head(k, h, path)))
        return outs
