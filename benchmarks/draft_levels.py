"""Where a draft step's time goes, level by level, for a shipped head on the real model: the head's
``begin`` and each ``expand`` call of one tree (median over repeats, each draft step after an
untimed target forward, as in the engine), so a deep tree's cost per level can be read off.

    python benchmarks/draft_levels.py --checkpoint checkpoints/eagle-k1 \
        --tree dynamic --tree-option depth=6 --tree-option top_k=4 --tree-option nodes=14 --tree-option copy=3

``--warm`` leaves the target's forward out: the same step with the head's weights in cache, so
the difference is what a cold cache costs. ``--parts`` also times the pieces of every step (each
piece's own timer: nested pieces are inside their parents, e.g. attention inside a layer; the
timers add a few microseconds a call): decoder layers, attention, MLP, norms, rotary tables,
cache writes, the packed kernels' calls (`apply`, the quantised or oneDNN matmul with its input
scaling), the draft LM head (`project`) and top-k (`top`); what is left of a level beside them is
Python and the small ops between.
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
    ap.add_argument("--parts", action="store_true", help="also time the pieces of a step")
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
    steps, per_call, per_step = [], {}, {}
    for name in ("begin", "expand"):
        timed(name)
    parts = time_parts(type(head)) if args.parts else {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            if not args.warm:
                target_step()  # untimed, as in decoding (its oneDNN calls fall outside each step's count)
            calls.clear()
            start = {name: list(total) for name, total in parts.items()}
            t = time.perf_counter()
            head.begin(ctx)
            tree = policy.build(head, ctx)
            steps.append(time.perf_counter() - t)
            for name, (n, seconds) in parts.items():
                per_step.setdefault(name, []).append((n - start[name][0], seconds - start[name][1]))
            for name, times in calls.items():
                for i, x in enumerate(times):
                    per_call.setdefault((name, i), []).append(x)
    print(f"{args.checkpoint}, tree {args.tree} {args.tree_option}: {len(tree) - 1} nodes, "
          f"draft step {1e3 * statistics.median(steps):.2f} ms (median of {args.repeats})")
    for (name, i), times in sorted(per_call.items()):
        print(f"  {name} #{i + 1}: {1e3 * statistics.median(times):.2f} ms")
    if per_step:
        print("pieces, median per step (nested: see --help):")
        rows = [(name, statistics.median(s for _, s in v), statistics.median(n for n, _ in v))
                for name, v in per_step.items() if any(n for n, _ in v)]
        for name, seconds, n in sorted(rows, key=lambda r: -r[1]):
            print(f"  {name:<22} {1e3 * seconds:6.3f} ms  {n:4.0f} calls  {1e6 * seconds / n:6.1f} us/call")


def time_parts(head_cls: type) -> dict[str, list]:
    """Wrap the pieces of a draft step (class methods, so every instance counts) with timers;
    returns {piece: [calls, seconds]}, running totals."""
    from koala_core import kernels, layers

    pieces = {"decoder layer": (layers.DecoderLayer, "forward"),
              "eagle-3 first layer": (layers.FusedInputLayer, "forward"),
              "attention": (layers.Attention, "forward"), "mlp": (layers.MLP, "forward"),
              "rmsnorm": (layers.RMSNorm, "forward"), "rotary tables": (layers, "rope_tables"),
              "rotary": (layers, "rope"), "draft kv write": (layers.KVCache, "append"),
              "kernel: oneDNN": (kernels.PackedWeight, "apply"),
              "kernel: int8": (kernels.Int8Weight, "apply"),
              "kernel: int8-dynamic": (kernels.DynamicInt8Weight, "apply"),
              "draft LM head": (head_cls, "project"), "top-k": (head_cls, "top")}
    totals: dict[str, list] = {}
    for name, (owner, attr) in pieces.items():
        # a class's own method only (an inherited one is timed where it is defined), but the
        # head's project / top wherever its family inherits them from
        inner = getattr(owner, attr) if owner is head_cls else owner.__dict__.get(attr)
        if inner is None:
            continue
        totals[name] = [0, 0.0]

        def wrapper(*a, _inner=inner, _total=totals[name], **k):
            t = time.perf_counter()
            out = _inner(*a, **k)
            _total[0] += 1
            _total[1] += time.perf_counter() - t
            return out
        setattr(owner, attr, wrapper)
    return totals


if __name__ == "__main__":
    main()
