"""Adversarial games between the draft head (generator) and a discriminator.

Each returns losses from (N,) scores and (N,) position weights: weighted means, so padding and
positions outside the loss mask do not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from koala_core.errors import ConfigError
from koala_core.interfaces import AdversarialLoss
from koala_core.tensors import weighted_mean


class BCEGame(AdversarialLoss):
    """Non-saturating GAN: D maximises log D(real) + log(1 - D(fake)); G maximises log D(fake).

    ``real_label`` < 1 is one-sided label smoothing (Salimans et al. 2016): the discriminator is
    asked for that probability on real samples instead of 1, so it cannot grow arbitrarily sure of
    itself and keeps a gradient for the head; fakes keep the label 0."""

    @dataclass(frozen=True)
    class Config:
        real_label: float = field(default=1.0, metadata={
            "help": "target probability for real samples (one-sided label smoothing below 1)"})

        def __post_init__(self):
            if not 0.5 < self.real_label <= 1:
                raise ConfigError(f"bce: real_label must be in (0.5, 1], got {self.real_label}")

    def discriminator_loss(self, real, fake, weight):
        a = self.config.real_label
        real_loss = F.softplus(-real) if a == 1 else a * F.softplus(-real) + (1 - a) * F.softplus(real)
        return weighted_mean(real_loss + F.softplus(fake), weight)

    def generator_loss(self, fake, weight):
        return weighted_mean(F.softplus(-fake), weight)


class HingeGame(AdversarialLoss):
    """Hinge loss (SAGAN / spectral-norm GAN): D: relu(1 - real) + relu(1 + fake); G: -fake."""

    def discriminator_loss(self, real, fake, weight):
        return weighted_mean(F.relu(1 - real) + F.relu(1 + fake), weight)

    def generator_loss(self, fake, weight):
        return weighted_mean(-fake, weight)


class WGANGP(AdversarialLoss):
    """Wasserstein critic with gradient penalty (Gulrajani et al. 2017)."""

    @dataclass(frozen=True)
    class Config:
        gp_weight: float = field(default=10.0, metadata={"help": "weight of the gradient penalty"})

        def __post_init__(self):
            if self.gp_weight < 0:
                raise ConfigError("wgan-gp: gp_weight must be >= 0")

    def discriminator_loss(self, real, fake, weight):
        return weighted_mean(fake - real, weight)

    def generator_loss(self, fake, weight):
        return weighted_mean(-fake, weight)

    def penalty(self, discriminator, context, real, fake, weight, generator=None):
        """gp_weight x (||grad_x D(x)|| - 1)^2 at random interpolates of real and fake samples."""
        if not self.config.gp_weight:
            return real.new_zeros(())
        eps = torch.rand(real.shape[0], 1, generator=generator).to(real.device)
        x = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
        with torch.enable_grad():
            score = discriminator(context.detach(), x)
            (grad,) = torch.autograd.grad(score.sum(), x, create_graph=True)
        return self.config.gp_weight * weighted_mean((grad.norm(dim=-1) - 1) ** 2, weight)
