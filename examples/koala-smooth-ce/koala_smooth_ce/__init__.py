"""A third-party koala plugin: the ``smooth-ce`` loss, written only against koala_core's public API.

Install it with ``pip install -e examples/koala-smooth-ce``; ``koala plugins`` then lists it.
"""

from dataclasses import dataclass, field

import torch.nn.functional as F

from koala_core.hookspecs import hookimpl
from koala_core.interfaces import Loss


class SmoothCELoss(Loss):
    """Cross-entropy to the target's tokens with label smoothing (a softer hard-label loss)."""

    @dataclass(frozen=True)
    class Config:
        smoothing: float = field(default=0.1, metadata={"help": "label smoothing in [0, 1)"})

        def __post_init__(self):
            if not 0.0 <= self.smoothing < 1.0:
                raise ValueError("smoothing must be in [0, 1)")

    def forward(self, out):
        """out: a koala_core.interfaces.DepthOutput (labels are draft-vocabulary indices)."""
        ok = out.labels >= 0
        ce = F.cross_entropy(out.logits.float(), out.labels.clamp_min(0), reduction="none",
                             label_smoothing=self.config.smoothing)
        w = out.weight * ok
        return (ce * w).sum() / w.sum().clamp_min(1.0)


@hookimpl
def register_losses(register):
    register("smooth-ce", SmoothCELoss)
