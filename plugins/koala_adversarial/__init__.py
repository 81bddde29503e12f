"""Built-in adversarial pieces (KOALA): discriminators ``feature-mlp`` and ``logit-mlp``, and the
games ``bce`` (non-saturating GAN), ``hinge`` and ``wgan-gp``."""

from koala_core.hookspecs import hookimpl


@hookimpl
def register_discriminators(register):
    from .discriminators import FeatureMLP, LogitMLP

    register("feature-mlp", FeatureMLP)
    register("logit-mlp", LogitMLP)


@hookimpl
def register_adversarial_losses(register):
    from .games import BCEGame, HingeGame, WGANGP

    register("bce", BCEGame)
    register("hinge", HingeGame)
    register("wgan-gp", WGANGP)
