"""EAGLE (Li et al. 2024), KOALA-style: row t reads FC([emb(x_{t+1}); f_t]) and K decoder layers
predict the next feature f_{t+1}; the frozen draft-vocabulary LM head turns features into tokens.

With ``aux_layers`` the head takes EAGLE-3's shape (Li et al. 2025): g_t = FC(inputs of an early, a
middle and a late target layer), the first layer attends over [norm(emb(x_{t+1})); norm(g_t)] with
g_t alone on the residual stream, and a trained RMSNorm precedes the frozen LM-head rows. Its
output is no target feature: deeper steps read the head's own output, so it is trained with
training-time test (``ttt_steps``): unrolled on its own outputs, as it drafts.

At inference the head keeps its own position-addressed KV cache, one row per token in the target's
cache (rebuilt from the target's true features each step); tree nodes add rows that attend to the
committed rows, their ancestors and themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from koala_core.errors import ConfigError
from koala_core.heads import DepthOutput, NeuralHead, TrainBatch, shifted
from koala_core.interfaces import Candidates, DraftContext
from koala_core.layers import (DecoderLayer, FusedInputLayer, GrowingKV, KVCache, LayerShape,
                               RMSNorm)
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
        aux_layers: str = field(default="", metadata={
            "help": "EAGLE-3 feature fusion: target layers whose inputs the head reads, e.g. "
                    "'2,15,27' or 'eagle3' (2, L/2, L-3); empty = the final feature (EAGLE-1/2)"})
        ttt_steps: int = field(default=1, metadata={
            "help": "training-time test: steps unrolled on the head's own outputs in training "
                    "(trains depths 1..n; EAGLE-3 heads need >= 2 to draft past depth 1)"})
        feature_noise: float = field(default=0.0, metadata={
            "help": "training only: uniform noise U(-a, a) times each feature's RMS added to the "
                    "features the first step reads (EAGLE-1's augmentation: deeper draft steps read "
                    "the head's own, imperfect features); 0 = none"})
        extra_intermediate: int = field(default=0, metadata={
            "help": "MLP width of decoder layers 2..K (0 = the target's): a cheaper K-layer head "
                    "(the MLP holds three quarters of a layer's weights; on a 2-core CPU a 384-wide "
                    "second layer drafted in ~70 % of a full one's time)"})

        def __post_init__(self):
            if self.layers < 1 or self.ttt_steps < 1:
                raise ConfigError("eagle: layers and ttt_steps must be >= 1")
            if self.feature_noise < 0:
                raise ConfigError("eagle: feature_noise must be >= 0 (0 = none)")
            if self.extra_intermediate < 0:
                raise ConfigError("eagle: extra_intermediate must be >= 0 (0 = the target's width)")

    def __init__(self, config=None, target=None) -> None:
        super().__init__(config, target)
        shape = LayerShape.of(target.config)
        D = shape.hidden
        self.shape = shape
        width = self.config.extra_intermediate
        extra = dataclasses.replace(shape, intermediate=width) if width else shape  # layers 2..K
        self.fused = target.check_aux_layers(self.config.aux_layers)
        if self.fused:  # EAGLE-3
            self.fc = nn.Linear(len(self.fused) * D, D, bias=False)
            self.layers = nn.ModuleList([FusedInputLayer(shape)] + [
                DecoderLayer(extra) for _ in range(self.config.layers - 1)])
            self.norm = RMSNorm(D, shape.eps)
            final = getattr(target.decoder, "norm", None)
            if final is not None and getattr(final, "weight", None) is not None:
                self.norm.weight.data.copy_(final.weight.detach())
            self.default_loss = "ce"  # its output is no target feature: no feature regression
        else:
            self.fc = nn.Linear(2 * D, D, bias=True)
            with torch.no_grad():  # start as "pass the feature through"
                self.fc.weight.zero_()
                self.fc.weight[:, D:] = torch.eye(D)
                self.fc.bias.zero_()
            self.layers = nn.ModuleList([DecoderLayer(shape)] + [
                DecoderLayer(extra) for _ in range(self.config.layers - 1)])
        if self.config.init_from_target:
            self._copy_target_layers()
        self.cache: KVCache | None = None

    def start_added_layers(self, first: int) -> None:
        for layer in self.layers[first:]:
            layer.as_identity()

    @property
    def aux_layers(self) -> tuple[int, ...]:
        return self.fused

    def _copy_target_layers(self) -> None:
        src = list(self.target.decoder.layers)[-self.config.layers:]
        for mine, theirs in zip(self.layers, src):
            own = mine.state_dict()
            state = {k: v for k, v in theirs.state_dict().items()
                     if "rotary" not in k and k in own and own[k].shape == v.shape}
            mine.load_state_dict(state, strict=False)

    # -- the network ---------------------------------------------------------------------------
    def features_in(self, hidden: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        """What a row built from the target's own states reads: its final feature (EAGLE), or the
        fused inputs of the aux layers (EAGLE-3)."""
        if not self.fused:
            return hidden
        if aux is None:
            raise ConfigError("this EAGLE-3 head needs the target's aux-layer states")
        return self.fc(aux.to(self.lm_rows.dtype))

    def run(self, feats, next_ids, positions, mask=None, cache=None) -> torch.Tensor:
        """feats (B, T, D), next_ids (B, T), positions (B, T) -> the head's outputs (B, T, D): the
        predicted next features (EAGLE), or the pre-norm states the next step reads (EAGLE-3)."""
        x = torch.cat([self.embed(next_ids).to(feats.dtype), feats], -1)
        if not self.fused:
            x = self.fc(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, mask, cache, i)
        if cache is not None:
            cache.commit()
        return x

    def readout(self, out: torch.Tensor) -> torch.Tensor:
        """The head's output as the feature its LM-head rows read."""
        return self.norm(out) if self.fused else out

    # -- inference -----------------------------------------------------------------------------
    def begin(self, ctx: DraftContext) -> None:
        super().begin(ctx)
        dev, dtype = self.lm_rows.device, self.lm_rows.dtype
        a = ctx.hidden.shape[0]
        committed = len(ctx.tokens) - 1 - a  # rows already built from true features
        if ctx.step == 0 or self.cache is None:
            s = self.shape
            self.cache = KVCache(len(self.layers), s.kv_heads, s.head_dim,
                                 self.config.max_length, dtype, dev)
            committed = 0
        self.cache.length = committed
        feats = self.features_in(ctx.hidden.to(dev, dtype),
                                 None if ctx.aux is None else ctx.aux.to(dev, dtype))[None]  # (1, a, D)
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
        return additive_mask(torch.cat([old, new], 1), self.lm_rows.dtype)

    def expand(self, tree: Tree, nodes: list[int], k: int) -> Candidates:
        need = [n for n in nodes if n not in self.pred]
        if need:
            self._rows(tree, need)
        feats = torch.stack([self.pred[n] for n in nodes])  # (m, D)
        return self.top(self.project(self.readout(feats)), k)

    def _rows(self, tree: Tree, nodes: list[int]) -> None:
        """Build draft rows for tree nodes whose parents already have predicted features."""
        dev = self.lm_rows.device
        used = self.cache.length
        m = len(nodes)
        old = torch.zeros(m, used, dtype=torch.bool, device=dev)
        old[:, : self.committed] = True
        rows, slots = [], []  # ancestor rows (the root has none: its prediction came from begin)
        for r, n in enumerate(nodes):
            p = tree.parents[n]
            while p > 0:
                rows.append(r)
                slots.append(self.slot[p])
                p = tree.parents[p]
        if rows:  # one indexed write instead of one per ancestor
            old[torch.tensor(rows, device=dev), torch.tensor(slots, device=dev)] = True
        feats = torch.stack([self.pred[tree.parents[n]] for n in nodes])[None]
        ids = torch.tensor([tree.tokens[n] for n in nodes], device=dev)[None]
        pos = torch.tensor([self.root_pos + tree.depths[n] - 1 for n in nodes], device=dev)[None]
        mask = self._mask(old, torch.eye(m, dtype=torch.bool, device=dev))
        out = self.run(feats, ids, pos, mask, self.cache)[0]
        for r, n in enumerate(nodes):
            self.pred[n] = out[r]
            self.slot[n] = used + r

    # -- training ------------------------------------------------------------------------------
    def noisy(self, feats: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
        """``feats`` plus ``feature_noise`` uniform noise scaled by each row's RMS, in training only
        (the regression targets stay the true features)."""
        a = self.config.feature_noise
        if not a or not self.training:
            return feats
        u = torch.rand(feats.shape, generator=rng).to(feats.device, feats.dtype)
        rms = feats.detach().pow(2).mean(-1, keepdim=True).sqrt()
        return feats + a * (2 * u - 1) * rms

    def train_outputs(self, batch: TrainBatch) -> list[DepthOutput]:
        """Depth 1 teacher-forced: row t reads [emb(x_{t+1}); f_t] and predicts f_{t+1} (its token
        label: the target's label at t+1). With ``ttt_steps`` n > 1, step s (depth s + 1) reads
        x_{t+1+s} and the row's own output of step s - 1, attending to the step-0 rows up to t and
        to its own rows of the steps before: what a draft chain sees at inference."""
        h = batch.hidden  # (B, L, D): f_t
        B, L, _ = h.shape
        pos = torch.arange(L, device=h.device).expand(B, L)
        feats = self.noisy(self.features_in(h, batch.aux), batch.rng)
        steps = self.config.ttt_steps
        cache = GrowingKV() if steps > 1 else None
        outs = []
        for s in range(steps):
            mask = None  # step 0: causal
            if s:
                allow = torch.cat([torch.ones(L, L, dtype=torch.bool, device=h.device).tril()]
                                  + [torch.eye(L, dtype=torch.bool, device=h.device)] * s, 1)
                mask = additive_mask(allow, feats.dtype)
            out = self.run(feats, shifted(batch.input_ids, 1 + s), pos + s, mask, cache)
            outs.append(self.depth_output(batch, 1 + s, self.readout(out),
                                          target_features=shifted(h, 1 + s).flatten(0, 1)))
            feats = out
        return outs
