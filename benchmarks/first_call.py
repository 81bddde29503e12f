"""What a freshly loaded target and head pay on their first call (a server's first request): the
load times, then the first three target forwards (five prompt tokens) and draft steps, each timed.

    python benchmarks/first_call.py --checkpoint checkpoints/hydra-k1
"""

import argparse
import time

import torch

from koala_core.checkpoint import load_head
from koala_core.interfaces import DraftContext, TreeBudget
from koala_core.model import load_target
from koala_core.prompts import encode_prompt
from koala_core.registry import default_registry
from koala_core.sampling import Sampling


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="checkpoints/hydra-k1")
    ap.add_argument("--draft-dtype", default="auto")
    args = ap.parse_args()
    reg = default_registry()
    t = time.perf_counter()
    target = load_target("default")
    print(f"load_target: {time.perf_counter() - t:.2f} s (kernels {target.kernels})")
    with torch.inference_mode():  # before the head loads: its calibration runs the target
        for i in range(3):
            t = time.perf_counter()
            target.logits(target.forward(torch.tensor([1, 2, 3, 4, 5]), target.new_cache())[-1:])
            print(f"target forward {i + 1}: {(time.perf_counter() - t) * 1e3:.1f} ms")
    t = time.perf_counter()
    head = load_head(args.checkpoint, target, reg, draft_dtype=args.draft_dtype)
    print(f"load_head: {time.perf_counter() - t:.2f} s (drafts in {head.drafts_in})")
    with torch.inference_mode():
        policy = reg.create("tree_policies", "dynamic", {"depth": 3, "top_k": 3, "nodes": 8})
        tokens = encode_prompt(target.tokenizer, "Explain how a bicycle stays upright.")
        hidden = target.forward(torch.tensor(tokens), target.new_cache())
        tokens = tokens + [int(target.logits(hidden[-1:]).argmax())]
        ctx = DraftContext(tokens, hidden, TreeBudget(max_nodes=64, max_depth=8), Sampling(), 0)
        for i in range(3):
            t = time.perf_counter()
            head.begin(ctx)
            policy.build(head, ctx)
            print(f"draft step {i + 1}: {(time.perf_counter() - t) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
