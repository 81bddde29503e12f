"""Supervised losses over one draft depth (a :class:`~koala_core.interfaces.DepthOutput`).

Each is a weighted mean over the positions with weight 1. Labels outside the draft vocabulary
(index -1) cannot be predicted and are left out of token losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from koala_core.errors import ConfigError
from koala_core.interfaces import DepthOutput, Loss
from koala_core.tensors import weighted_mean


def token_ce(out: DepthOutput) -> torch.Tensor:
    ok = out.labels >= 0
    ce = F.cross_entropy(out.logits.float(), out.labels.clamp_min(0), reduction="none")
    return weighted_mean(ce, out.weight * ok)


class CrossEntropyLoss(Loss):
    """Cross-entropy to the target's own next token (its argmax: hard self-distillation labels)."""

    def forward(self, out: DepthOutput) -> torch.Tensor:
        return token_ce(out)


class KDLoss(Loss):
    """KL(target || draft) over the target's cached top-k distribution (soft labels)."""

    @dataclass(frozen=True)
    class Config:
        temperature: float = field(default=1.0, metadata={"help": "softening of both sides"})
        ce_weight: float = field(default=0.0, metadata={"help": "extra weight of hard-label CE"})

        def __post_init__(self):
            if self.temperature <= 0:
                raise ConfigError("kd: temperature must be > 0")

    def forward(self, out: DepthOutput) -> torch.Tensor:
        loss = topk_kl(out, self.config.temperature)
        if self.config.ce_weight:
            loss = loss + self.config.ce_weight * token_ce(out)
        return loss


def topk_kl(out: DepthOutput, temperature: float = 1.0) -> torch.Tensor:
    """KL(target || draft) on the target's cached top-k tokens: the target's top-k probabilities
    renormalised (cells outside the draft vocabulary dropped) against the draft's log-probs over
    its whole vocabulary (so it is the soft cross-entropy, shifted by the target's entropy)."""
    if out.topk_ids is None:
        raise ConfigError("soft labels need the target's top-k log-probs: prepare with --topk 8")
    valid = out.topk_ids >= 0  # (N, k)
    p = torch.softmax(out.topk_logp.float() / temperature, -1) * valid
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-8)
    logits = out.logits.float()
    if temperature != 1.0:  # the divide (and its backward) costs as much as the log-softmax
        logits = logits / temperature
    logq = torch.log_softmax(logits, -1).gather(-1, out.topk_ids.clamp_min(0))
    kl = (p * (torch.log(p.clamp_min(1e-8)) - logq)).sum(-1)
    return weighted_mean(kl, out.weight * valid.any(-1))


class FeatureLoss(Loss):
    """SmoothL1 between predicted and target features plus ``ce_weight`` x a token term (EAGLE's
    recipe): CE to the target's argmax, or with ``soft`` its cached top-k distribution."""

    @dataclass(frozen=True)
    class Config:
        ce_weight: float = field(default=0.1, metadata={"help": "weight of the token term"})
        soft: bool = field(default=False, metadata={
            "help": "token term = KL to the target's top-k distribution instead of CE to its argmax"})

    def forward(self, out: DepthOutput) -> torch.Tensor:
        if out.features is None or out.target_features is None:
            raise ConfigError("the feature loss needs a head that exposes its features")
        reg = F.smooth_l1_loss(out.features.float(), out.target_features.float(),
                               reduction="none").mean(-1)
        tokens = topk_kl(out) if self.config.soft else token_ce(out)
        return weighted_mean(reg, out.weight) + self.config.ce_weight * tokens
