"""Medusa (Cai et al. 2024), KOALA-style: head k (k = 1..n) maps the target's last hidden state h_t
through K residual SiLU blocks of its own, then the frozen draft-vocabulary LM head, to token t+k+1.
Heads do not depend on each other, so a whole tree is drafted from one evaluation per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from koala_core.errors import ConfigError
from koala_core.heads import DepthOutput, NeuralHead, TrainBatch, apply_blocks, residual_blocks
from koala_core.interfaces import Candidates, DraftContext
from koala_core.tree import Tree


class MedusaHead(NeuralHead):
    """Medusa heads: K residual blocks per head over h_t, each head one token further ahead."""

    default_tree = ("static", {"preset": "small"})

    @dataclass(frozen=True)
    class Config:
        heads: int = field(default=4, metadata={"help": "draft depth: one head per future token"})
        layers: int = field(default=1, metadata={"help": "K residual blocks per head (KOALA)"})
        draft_vocab: int = field(default=8192, metadata={"help": "0 = full target vocabulary"})
        max_k: int = field(default=8, metadata={"help": "candidates kept per head at inference"})

        def __post_init__(self):
            if self.heads < 1 or self.layers < 1 or self.max_k < 1:
                raise ConfigError("medusa: heads, layers and max_k must be >= 1")

    def __init__(self, config=None, target=None) -> None:
        super().__init__(config, target)
        D = self.hidden_size
        self.blocks = nn.ModuleList(residual_blocks(D, self.config.layers)
                                    for _ in range(self.config.heads))

    def features(self, h: torch.Tensor) -> list[torch.Tensor]:
        """(..., D) -> one (..., D) feature per head."""
        return [apply_blocks(blocks, h) for blocks in self.blocks]

    def begin(self, ctx: DraftContext) -> None:
        super().begin(ctx)
        h = ctx.hidden[-1:].to(self.lm_rows.dtype)  # (1, D): the state that predicted the root
        # one pass over the LM-head rows for every head: on a CPU a pass costs what reading the
        # rows costs, whatever the number of rows
        logits = self.project(torch.cat(self.features(h)))  # (heads, Vd)
        self._top = self.top(logits, self.config.max_k)

    def expand(self, tree: Tree, nodes: list[int], k: int) -> Candidates:
        # children of a node at depth d are token t+d+2: head d (0-based)
        out = self.empty(len(nodes), k)
        for row, node in enumerate(nodes):
            d = tree.depths[node]
            if d < self.config.heads:
                kk = min(k, self._top.tokens.shape[1])
                out.tokens[row, :kk] = self._top.tokens[d, :kk]
                out.logprobs[row, :kk] = self._top.logprobs[d, :kk]
        return out

    def train_outputs(self, batch: TrainBatch) -> list[DepthOutput]:
        # head k at position t predicts token t+k+1, i.e. the target's label at t+k
        return [self.depth_output(batch, k, feat)
                for k, feat in enumerate(self.features(batch.hidden), start=1)]
