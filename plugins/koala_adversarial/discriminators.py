"""Discriminators: small MLPs scoring (context, sample) pairs, real = the target's, fake = the head's.

``feature-mlp`` sees the context hidden state h_t and a next-position feature (the target's f_{t+k}
or the head's prediction of it). ``logit-mlp`` sees h_t and a distribution over the draft vocabulary
coarsened to k+1 cells: the probabilities of the target's top-k tokens at that position, in the
target's rank order, plus the remaining mass. The target's cached top-k is all that is known of its
distribution, and putting both sides on the same cells keeps the discriminator from winning on a
difference of format (a dense softmax against a truncated one) instead of content.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from koala_core.errors import ConfigError
from koala_core.interfaces import DepthOutput, Discriminator


@dataclass(frozen=True)
class MLPConfig:
    hidden: int = field(default=256, metadata={"help": "width of the hidden layers"})
    layers: int = field(default=2, metadata={"help": "hidden layers (>= 1)"})
    spectral_norm: bool = field(default=True, metadata={"help": "spectral normalisation on every layer"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on hidden layers"})

    def __post_init__(self):
        if self.hidden < 1 or self.layers < 1 or not 0 <= self.dropout < 1:
            raise ConfigError("discriminator: need hidden >= 1, layers >= 1, 0 <= dropout < 1")


def mlp(dims: list[int], config: MLPConfig) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        lin = nn.Linear(a, b)
        mods.append(spectral_norm(lin) if config.spectral_norm else lin)
        if i < len(dims) - 2:
            mods.append(nn.LeakyReLU(0.2))
            if config.dropout:
                mods.append(nn.Dropout(config.dropout))
    return nn.Sequential(*mods)


class _MLPDiscriminator(Discriminator):
    Config = MLPConfig

    def __init__(self, config=None, context_dim: int = 0, topk: int = 0) -> None:
        super().__init__(config, context_dim, topk)
        if context_dim < 1:
            raise ConfigError(f"{type(self).__name__} needs context_dim >= 1")
        self.sample_dim = self.sample_size(context_dim, topk)
        c = self.config
        self.net = mlp([context_dim + self.sample_dim] + [c.hidden] * c.layers + [1], c)

    def sample_size(self, context_dim: int, topk: int) -> int:
        raise NotImplementedError

    def forward(self, context: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        x = torch.cat([context.float(), sample.float()], -1)
        return self.net(x).squeeze(-1)


class FeatureMLP(_MLPDiscriminator):
    """Real: (h_t, the target's feature f_{t+k}); fake: (h_t, the head's predicted feature)."""

    def sample_size(self, context_dim: int, topk: int) -> int:
        return context_dim

    def samples(self, out: DepthOutput) -> tuple[torch.Tensor, torch.Tensor]:
        if out.features is None or out.target_features is None:
            raise ConfigError("feature-mlp needs a head that exposes its features")
        return out.target_features.float(), out.features.float()


class LogitMLP(_MLPDiscriminator):
    """Real: the target's distribution on its top-k cells; fake: the head's on the same cells."""

    def sample_size(self, context_dim: int, topk: int) -> int:
        if topk < 1:
            raise ConfigError("logit-mlp needs the target's top-k log-probs: prepare with --topk 8")
        return topk + 1

    def samples(self, out: DepthOutput) -> tuple[torch.Tensor, torch.Tensor]:
        if out.topk_ids is None or out.topk_logp is None:
            raise ConfigError("logit-mlp needs the target's top-k log-probs: prepare with --topk 8")
        valid = out.topk_ids >= 0  # outside the draft vocabulary: an empty cell on both sides
        real = out.topk_logp.float().exp() * valid
        fake = torch.softmax(out.logits.float(), -1).gather(-1, out.topk_ids.clamp_min(0)) * valid
        return cells(real), cells(fake)


def cells(p: torch.Tensor) -> torch.Tensor:
    """(N, k) probabilities -> (N, k+1) log-probabilities with the remaining mass as the last cell."""
    rest = (1 - p.sum(-1, keepdim=True)).clamp_min(1e-6)
    return torch.log(torch.cat([p, rest], -1).clamp_min(1e-6))
