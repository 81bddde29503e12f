"""Built-in supervised losses: ``ce`` (hard labels), ``kd`` (KL to the target), ``feature`` (EAGLE)."""

from koala_core.hookspecs import hookimpl


@hookimpl
def register_losses(register):
    from .losses import CrossEntropyLoss, FeatureLoss, KDLoss

    register("ce", CrossEntropyLoss)
    register("kd", KDLoss)
    register("feature", FeatureLoss)
