"""Shared machinery of trainable draft heads: the draft vocabulary and the frozen LM-head rows.

A trainable head reads the target's hidden states, and turns its own features into token scores
through the target's frozen LM head restricted to a draft vocabulary (the N most frequent target
tokens in the training data; all tokens when ``draft_vocab`` is 0). Those rows are derived from the
target, never stored in a checkpoint.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError
from .interfaces import Candidates, DepthOutput, DraftHead


@dataclass
class TrainBatch:
    """Windows cut from prepared conversations; all tensors (B, L[, ...]).

    input_ids: the text tokens; hidden: the target's final hidden states (float);
    labels: the target's argmax after each position (label[t] predicts token t+1);
    loss_mask: 1 where label[t] is a training target (assistant turns, real tokens);
    topk_ids / topk_logp: the target's top-k log-probs after each position (optional).
    aux: the inputs of the decoder layers listed by the head's ``aux_layers`` (EAGLE-3).
    counted_only: depth outputs keep only the rows whose loss weight is > 0 (what training and
    validation read: same losses, less LM-head work); off, they keep every (b, t) row in order.
    rng: this micro-batch's own random stream in training (keyed by seed, step and micro-batch:
    the same draws on any number of workers and after a resume), for heads that augment their
    inputs; None: torch's global generator.
    """

    input_ids: torch.Tensor
    hidden: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    topk_ids: torch.Tensor | None = None
    topk_logp: torch.Tensor | None = None
    aux: torch.Tensor | None = None  # inputs of the head's aux layers, (B, L, n * D), if it has any
    counted_only: bool = False
    rng: torch.Generator | None = None


class NeuralHead(DraftHead):
    """Base of trainable heads: ``draft_vocab`` handling and a frozen, restricted LM head."""

    default_loss = "ce"

    def __init__(self, config=None, target=None) -> None:
        super().__init__(config, target)
        if target is None:
            raise ConfigError(f"{type(self).__name__} needs the target model")
        vocab = target.vocab_size
        n = getattr(self.config, "draft_vocab", 0) or vocab
        if not 1 <= n <= vocab:
            raise ConfigError(f"draft_vocab must be 0 (full) or 1..{vocab}, got {n}")
        # until set_draft_vocab is called (training data or checkpoint), the first n ids
        self.register_buffer("vocab_ids", torch.arange(n, dtype=torch.long))
        self.register_buffer("lm_rows", target.lm_head.weight.detach()[:n].clone(), persistent=False)
        self.register_buffer("vocab_index", torch.full((vocab,), -1, dtype=torch.long),
                             persistent=False)
        self._packed_rows = None  # a PackedWeight of lm_rows once use_kernels("onednn") is called
        self._index_vocab()

    @property
    def hidden_size(self) -> int:
        return self.target.hidden_size

    def set_draft_vocab(self, ids: torch.Tensor) -> None:
        """Use the target tokens ``ids`` (N,) as the draft vocabulary."""
        ids = ids.to(self.vocab_ids.device, torch.long)
        assert ids.shape == self.vocab_ids.shape, "draft vocabulary size is fixed by the config"
        self.vocab_ids.copy_(ids)
        self._index_vocab()

    def _index_vocab(self) -> None:
        w = self.target.lm_head.weight.detach()
        self.lm_rows = w[self.vocab_ids.to(w.device)].to(self.vocab_ids.device).clone()
        self.vocab_index.fill_(-1)
        self.vocab_index[self.vocab_ids] = torch.arange(len(self.vocab_ids),
                                                        device=self.vocab_ids.device)

    def use_kernels(self, kernels: str) -> NeuralHead:
        """Draft with the target's kernels: with ``onednn`` (fp32 CPU), every Linear layer and the
        LM-head rows run through oneDNN like the target's. The weights and the state dict are
        unchanged; reloading, moving or training the head afterwards stays correct (the packed
        copies repack on change and step aside when gradients or another device are involved)."""
        if kernels == "onednn" and self.lm_rows.dtype == torch.float32 and self.lm_rows.device.type == "cpu":
            from .kernels import PackedWeight, use_onednn_linears

            use_onednn_linears(self)
            self._packed_rows = PackedWeight(lambda: self.lm_rows)
        return self

    def prepare_drafting(self, dtype: torch.dtype) -> NeuralHead:
        """Ready for inference in ``dtype`` (see :func:`koala_core.kernels.draft_dtype`): cast to it;
        in the target's own fp32 on a CPU, draft through the target's kernels; ``torch.int8``:
        bf16 with every Linear layer and the LM-head rows in weight-only int8 (weights and state
        dict unchanged, as with the oneDNN kernels); ``torch.qint8``: fp32 with every Linear layer
        and the LM-head rows in int8, activations quantised per call (fbgemm), smoothed by the
        input ranges of a calibration text (:mod:`koala_core.calibration`)."""
        self.eval()
        from .kernels import draft_dtype_name, pack_now

        self.drafts_in = draft_dtype_name(dtype)  # reported by `koala generate --verbose`
        if dtype == torch.int8:
            from .kernels import Int8Weight, use_int8_linears

            self.to(torch.bfloat16)
            use_int8_linears(self)
            self._packed_rows = Int8Weight(lambda: self.lm_rows)
        elif dtype == torch.qint8:
            from .calibration import calibration_batch, input_ranges
            from .kernels import DynamicInt8Weight, use_dynamic_int8_linears

            self.to(torch.float32)
            ranges, rows = input_ranges(self, calibration_batch(self.target, self.aux_layers))
            use_dynamic_int8_linears(self, ranges)
            self._packed_rows = DynamicInt8Weight(lambda: self.lm_rows, input_range=rows)
        elif any(t.dtype != dtype for t in [self.lm_rows, *self.parameters()]):
            return self.to(dtype)
        else:
            self.use_kernels(getattr(self.target, "kernels", "torch"))
        # packed now, not by the first draft step of the first generation
        pack_now(self, *([self._packed_rows] if self._packed_rows is not None else []))
        return self

    def start_added_layers(self, first: int) -> None:
        """After a warm start from a head with ``first`` layers (``koala train --init`` growing K):
        make layers ``first``.. start as the identity, so that the grown head begins by computing
        what the trained one did. Residual SiLU blocks (Medusa, Hydra) start so already."""

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state, strict=strict, assign=assign)
        self._index_vocab()
        return out

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(..., D) features -> (..., Vd) logits through the frozen LM-head rows."""
        if self._packed_rows is not None and self._packed_rows.usable(features):
            return self._packed_rows(features)
        return features @ self.lm_rows.to(features.dtype).T

    def to_draft(self, labels: torch.Tensor) -> torch.Tensor:
        """Target ids -> draft-vocabulary indices (-1 where outside the draft vocabulary)."""
        return self.vocab_index[labels]

    def top(self, logits: torch.Tensor, k: int) -> Candidates:
        """(m, Vd) logits -> Candidates of target ids and log-probs."""
        k = min(k, logits.shape[-1])
        top = torch.log_softmax(logits.float(), -1).topk(k, -1)
        return Candidates(self.vocab_ids[top.indices].cpu(), top.values.cpu())

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The target's (frozen) input embeddings of target ids."""
        return self.target.embed_tokens(ids).detach()

    def forward(self, batch: TrainBatch) -> list[DepthOutput]:
        """Training forward (what DDP calls): :meth:`train_outputs`."""
        return self.train_outputs(batch)

    @abc.abstractmethod
    def train_outputs(self, batch: TrainBatch) -> list[DepthOutput]:
        """Predictions for every draft depth over a training batch (teacher forcing); labels and
        top-k ids may still be target-vocabulary ids: :meth:`to_draft_space` maps them."""

    def depth_output(self, batch: TrainBatch, k: int, feat: torch.Tensor,
                     target_features: torch.Tensor | None = None) -> DepthOutput:
        """The prediction ``feat`` (B, L, D) made at position t for the target's label at t+k.

        Its real counterpart is the target's own feature f_{t+k} (whose LM-head row scores give
        that label): ``target_features``, by default the cached hidden states shifted by k.
        """
        weight = shifted(batch.loss_mask, k).flatten().float()  # the padding shifted in is 0
        # every loss is a weighted mean, so rows of weight 0 (prompts, padding: ~30 % of a
        # ShareGPT batch) would only cost LM-head and loss arithmetic
        rows = torch.nonzero(weight > 0).flatten() if batch.counted_only else slice(None)

        def ahead(t):
            return None if t is None else shifted(t, k).flatten(0, 1)[rows]

        if target_features is None:
            target_features = shifted(batch.hidden, k).flatten(0, 1)
        features = feat.flatten(0, 1)[rows]
        return DepthOutput(
            logits=self.project(features),
            labels=shifted(batch.labels, k).flatten()[rows],
            weight=weight[rows],
            context=batch.hidden.flatten(0, 1)[rows],
            features=features,
            target_features=target_features[rows],
            topk_ids=ahead(batch.topk_ids), topk_logp=ahead(batch.topk_logp))

    def to_draft_space(self, out: DepthOutput) -> DepthOutput:
        out.labels = self.to_draft(out.labels.long())
        if out.topk_ids is not None:
            out.topk_ids = self.to_draft(out.topk_ids.long())
        return out

    @staticmethod
    def empty(m: int, k: int) -> Candidates:
        return Candidates(torch.full((m, k), -1, dtype=torch.long), torch.full((m, k), float("-inf")))


__all__ = ["TrainBatch", "DepthOutput", "NeuralHead", "residual_blocks", "apply_blocks", "shifted"]


def residual_blocks(dim: int, layers: int) -> nn.ModuleList:
    """K residual SiLU blocks ``x + SiLU(W x + b)``, W zero-initialised, each with its own weights."""
    blocks = nn.ModuleList()
    for _ in range(layers):
        lin = nn.Linear(dim, dim)
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
        blocks.append(lin)
    return blocks


def apply_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for lin in blocks:
        x = x + torch.nn.functional.silu(lin(x))
    return x


def shifted(t: torch.Tensor, k: int) -> torch.Tensor:
    """t[:, k:] padded at the end to keep length L (B, L, ...) -> (B, L, ...)."""
    if k == 0:
        return t
    pad = torch.zeros_like(t[:, :k])
    return torch.cat([t[:, k:], pad], 1)

