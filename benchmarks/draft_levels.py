"""Where a draft step's time goes, level by level, for a shipped head on the real model: the head's
``begin`` and each ``expand`` call of one tree (median over repeats, each draft step after an
untimed target forward, as in the engine), so a deep tree's cost per level can be read off.

    python benchmarks/draft_levels.py --checkpoint checkpoints/eagle-k1 \
        --tree dynamic --tree-option depth=6 --tree-option top_k=4 --tree-option nodes=14 --tree-option copy=3

``--warm`` leaves the target's forward out: the same step with the head's weights in cache, so
the difference is what a cold cache costs.
"""

import argparse
import statistics
import time

import torch

from draft_step import second_draft_step
from koala_core.checkpoint import load_head
from koala_core.model import load_target
from koala_core.registry import default_registry

PROMPT = "Explain how a bicycle stays upright, in detail, for a child."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="checkpoints/eagle-k1")
    ap.add_argument("--tree", default="dynamic")
    ap.add_argument("--tree-option", action="append", default=[])
    ap.add_argument("--draft-dtype", default="auto")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warm", action="store_true",
                    help="no target forward between timed steps: the head's weights stay in cache")
    args = ap.parse_args()
    reg = default_registry()
    target = load_target("default")
    head = load_head(args.checkpoint, target, reg, draft_dtype=args.draft_dtype)
    options = dict(kv.split("=", 1) for kv in args.tree_option)  # typed by the policy's config
    policy = reg.create("tree_policies", args.tree, options)
    calls: dict[str, list[float]] = {}

    def timed(name):
        inner = getattr(head, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            out = inner(*a, **k)
            calls.setdefault(name, []).append(time.perf_counter() - t)
            return out
        setattr(head, name, wrapper)

    ctx, target_step = second_draft_step(target, head, policy, PROMPT)
    steps, per_call = [], {}
    for name in ("begin", "expand"):
        timed(name)
    with torch.inference_mode():
        for _ in range(args.repeats):
            if not args.warm:
                target_step()  # untimed, as in decoding
            calls.clear()
            t = time.perf_counter()
            head.begin(ctx)
            tree = policy.build(head, ctx)
            steps.append(time.perf_counter() - t)
            for name, times in calls.items():
                for i, x in enumerate(times):
                    per_call.setdefault((name, i), []).append(x)
    print(f"{args.checkpoint}, tree {args.tree} {args.tree_option}: {len(tree) - 1} nodes, "
          f"draft step {1e3 * statistics.median(steps):.2f} ms (median of {args.repeats})")
    for (name, i), times in sorted(per_call.items()):
        print(f"  {name} #{i + 1}: {1e3 * statistics.median(times):.2f} ms")


if __name__ == "__main__":
    main()
