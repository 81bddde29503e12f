"""Hydra (Ankner et al. 2024), KOALA-style: head k predicts token t+k+1 from the target's h_t and
the embeddings of the k tokens drafted before it on the same path (t+1 .. t+k), through an input
projection and K residual SiLU blocks of its own, then the frozen draft-vocabulary LM head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from koala_core.errors import ConfigError
from koala_core.heads import DepthOutput, NeuralHead, TrainBatch, apply_blocks, residual_blocks, shifted
from koala_core.interfaces import Candidates, DraftContext
from koala_core.tree import Tree


class HydraHead(NeuralHead):
    """Hydra heads: head k reads h_t and the k path tokens before its target, K blocks each."""

    default_tree = ("static", {"preset": "small"})

    @dataclass(frozen=True)
    class Config:
        heads: int = field(default=4, metadata={"help": "draft depth: one head per future token"})
        layers: int = field(default=1, metadata={"help": "K residual blocks per head (KOALA)"})
        draft_vocab: int = field(default=8192, metadata={"help": "0 = full target vocabulary"})

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

    def head(self, k: int, h: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
        """Head k (1-based): h (..., D), path (..., k) target ids -> (..., D) feature."""
        e = self.embed(path).to(h.dtype).flatten(-2)  # (..., k*D)
        x = h + self.inputs[k - 1](torch.cat([h, e], -1))
        return apply_blocks(self.blocks[k - 1], x)

    def begin(self, ctx: DraftContext) -> None:
        super().begin(ctx)
        self.h = ctx.hidden[-1].to(self.lm_rows.dtype)  # (D,)

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
        outs = []
        for k in range(1, self.config.heads + 1):
            # head k at t reads the text tokens t+1..t+k and predicts the target's label at t+k
            path = torch.stack([shifted(batch.input_ids, j) for j in range(1, k + 1)], -1)  # (B, L, k)
            outs.append(self.depth_output(batch, k, self.head(k, batch.hidden, path)))
        return outs
