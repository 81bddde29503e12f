"""EAGLE (Li et al. 2024), KOALA-style: row t reads FC([emb(x_{t+1}); f_t]) and K decoder layers
predict the next feature f_{t+1}; the frozen draft-vocabulary LM head turns features into tokens.

At inference the head keeps its own position-addressed KV cache, one row per token in the target's
cache (rebuilt from the target's true features each step); tree nodes add rows that attend to the
committed rows, their ancestors and themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from koala_core.errors import ConfigError
from koala_core.heads import DepthOutput, NeuralHead, TrainBatch, shifted
from koala_core.interfaces import Candidates, DraftContext
from koala_core.layers import DecoderLayer, KVCache, LayerShape
from koala_core.tensors import additive_mask
from koala_core.tree import Tree


class EagleHead(NeuralHead):
    """EAGLE: FC over [token embedding; feature], then K decoder layers predicting the next feature."""

    default_tree = ("dynamic", {})
    default_loss = "feature"

    @dataclass(frozen=True)
    class Config:
        layers: int = field(default=1, metadata={"help": "K decoder layers (KOALA)"})
        draft_vocab: int = field(default=8192, metadata={"help": "0 = full target vocabulary"})
        init_from_target: bool = field(default=False, metadata={
            "help": "start the K layers as copies of the target's last K decoder layers"})
        max_length: int = field(default=1024, metadata={"help": "initial draft KV cache capacity (grows)"})

        def __post_init__(self):
            if self.layers < 1:
                raise ConfigError("eagle: layers must be >= 1")

    def __init__(self, config=None, target=None) -> None:
        super().__init__(config, target)
        shape = LayerShape.of(target.config)
        D = shape.hidden
        self.shape = shape
        self.fc = nn.Linear(2 * D, D, bias=True)
        with torch.no_grad():  # start as "pass the feature through"
            self.fc.weight.zero_()
            self.fc.weight[:, D:] = torch.eye(D)
            self.fc.bias.zero_()
        self.layers = nn.ModuleList(DecoderLayer(shape) for _ in range(self.config.layers))
        if self.config.init_from_target:
            self._copy_target_layers()
        self.cache: KVCache | None = None

    def _copy_target_layers(self) -> None:
        src = list(self.target.decoder.layers)[-self.config.layers:]
        for mine, theirs in zip(self.layers, src):
            state = {k: v for k, v in theirs.state_dict().items() if "rotary" not in k}
            mine.load_state_dict(state, strict=False)

    # -- the network ---------------------------------------------------------------------------
    def run(self, feats, next_ids, positions, mask=None, cache=None) -> torch.Tensor:
        """feats (B, T, D), next_ids (B, T), positions (B, T) -> predicted next features (B, T, D)."""
        x = self.fc(torch.cat([self.embed(next_ids).to(feats.dtype), feats], -1))
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, mask, cache, i)
        if cache is not None:
            cache.commit()
        return x

    # -- inference -----------------------------------------------------------------------------
    def begin(self, ctx: DraftContext) -> None:
        super().begin(ctx)
        dev, dtype = self.lm_rows.device, self.fc.weight.dtype
        a = ctx.hidden.shape[0]
        committed = len(ctx.tokens) - 1 - a  # rows already built from true features
        if ctx.step == 0 or self.cache is None:
            s = self.shape
            self.cache = KVCache(len(self.layers), s.kv_heads, s.head_dim,
                                 self.config.max_length, dtype, dev)
            committed = 0
        self.cache.length = committed
        feats = ctx.hidden.to(dev, dtype)[None]  # (1, a, D)
        next_ids = torch.tensor(ctx.tokens[-a:], device=dev)[None]
        pos = torch.arange(committed, committed + a, device=dev)[None]
        mask = None
        if committed:  # rows see every committed row, and causally each other
            mask = self._mask(torch.ones(a, committed, dtype=torch.bool, device=dev),
                              torch.ones(a, a, dtype=torch.bool, device=dev).tril())
        out = self.run(feats, next_ids, pos, mask, self.cache)
        self.committed = self.cache.length
        self.pred = {0: out[0, -1]}  # node -> predicted feature at that node's position
        self.slot: dict[int, int] = {}  # node -> draft-cache slot of its row
        self.root_pos = committed + a  # position of the root token

    def _mask(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Additive mask (1, 1, T, S) from a bool 'may attend' over [old slots | new rows]."""
        return additive_mask(torch.cat([old, new], 1), self.fc.weight.dtype)

    def expand(self, tree: Tree, nodes: list[int], k: int) -> Candidates:
        need = [n for n in nodes if n not in self.pred]
        if need:
            self._rows(tree, need)
        feats = torch.stack([self.pred[n] for n in nodes])  # (m, D)
        return self.top(self.project(feats), k)

    def _rows(self, tree: Tree, nodes: list[int]) -> None:
        """Build draft rows for tree nodes whose parents already have predicted features."""
        dev = self.lm_rows.device
        used = self.cache.length
        m = len(nodes)
        old = torch.zeros(m, used, dtype=torch.bool, device=dev)
        old[:, : self.committed] = True
        for r, n in enumerate(nodes):
            p = tree.parents[n]
            while p > 0:  # ancestor rows (the root has none: its prediction came from begin)
                old[r, self.slot[p]] = True
                p = tree.parents[p]
        feats = torch.stack([self.pred[tree.parents[n]] for n in nodes])[None]
        ids = torch.tensor([tree.tokens[n] for n in nodes], device=dev)[None]
        pos = torch.tensor([self.root_pos + tree.depths[n] - 1 for n in nodes], device=dev)[None]
        mask = self._mask(old, torch.eye(m, dtype=torch.bool, device=dev))
        out = self.run(feats, ids, pos, mask, self.cache)[0]
        for r, n in enumerate(nodes):
            self.pred[n] = out[r]
            self.slot[n] = used + r

    # -- training ------------------------------------------------------------------------------
    def train_outputs(self, batch: TrainBatch) -> list[DepthOutput]:
        h = batch.hidden  # (B, L, D): f_t
        B, L, _ = h.shape
        pos = torch.arange(L, device=h.device).expand(B, L)
        # row t: [emb(x_{t+1}); f_t] -> f_{t+1}; its token label is the target's label at t+1
        pred = self.run(h, shifted(batch.input_ids, 1), pos)
        return [self.depth_output(batch, 1, pred, target_features=shifted(h, 1).flatten(0, 1))]
