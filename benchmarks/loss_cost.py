"""Microbenchmark of the token losses' forward + backward over one draft depth of a training step
(2048 positions x the 8192-row draft vocabulary, top-8 soft labels): `ce` (hard labels) against
`kd` at temperature 1 and at 2, the cost behind a training step's time (README, "Soft targets for
Hydra and Medusa").

    python benchmarks/loss_cost.py
"""

import timing  # benchmarks/timing.py (this folder is on sys.path when run as a script)
import torch

from koala_core.interfaces import DepthOutput
from koala_core.registry import default_registry


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    n, vocab, k = 2048, 8192, 8
    logits = torch.randn(n, vocab)
    topk_ids = torch.randint(0, vocab, (n, k))
    batch = dict(labels=topk_ids[:, 0], weight=torch.ones(n), context=torch.zeros(n, 1),
                 topk_ids=topk_ids, topk_logp=torch.log_softmax(torch.randn(n, k), -1))
    reg = default_registry()
    losses = {"ce": reg.create("losses", "ce"), "kd": reg.create("losses", "kd"),
              "kd T=2": reg.create("losses", "kd", {"temperature": 2.0})}

    def step(loss):
        x = logits.clone().requires_grad_(True)
        loss(DepthOutput(logits=x, **batch)).backward()

    print(f"forward + backward, {n} positions x {vocab} draft logits (ms)")
    for name, loss in losses.items():
        print(f"{name:>8} {timing.timed(lambda: step(loss), reps=10, warmup=2):8.1f}")


if __name__ == "__main__":
    main()
