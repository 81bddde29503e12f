"""Would another tree have taken more tokens on the same contexts? At every step where an adaptive
policy drafted with the head, the head drafts a second tree with another policy (``--other``, the
hand-picked one) on the same context, and both trees are graded against the greedy continuation
(known once the generation ends, since speculative greedy output is plain greedy output). Tau is
graded, not timed: the comparison is free of the machine's noise, and grouped by the size the
adaptive policy chose, so a shape that loses at equal rows shows.

    python benchmarks/tree_counterfactual.py --prompts benchmarks/prompts/mixed-heldout-27.jsonl \
        --categories extraction --method benchmarks/recipes/eagle-k1-auto-copy3.toml \
        --other static --other-option preset=tiny --other-option copy=3
"""

import argparse
import collections
import statistics

from koala_core.bench import select_prompts
from koala_core.compose import build_method
from koala_core.engine import GenerationConfig
from koala_core.model import load_target
from koala_core.prompts import encode_prompt
from koala_core.registry import default_registry


def accepted(tree, truth: list[int]) -> int:
    """Tokens a greedy verify emits for ``tree`` when the target's continuation is ``truth``."""
    node, n = 0, 0
    children = tree.shape().children  # cached per shape, as verify uses it
    while n < len(truth):
        nxt = next((c for c in children[node] if tree.tokens[c] == truth[n]), None)
        if nxt is None:
            break
        node, n = nxt, n + 1
    return n + 1  # the accepted drafts and the target's own next token


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", action="append", required=True)
    ap.add_argument("--categories", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--method", default="benchmarks/recipes/eagle-k1-auto-copy3.toml")
    ap.add_argument("--other", default="static")
    ap.add_argument("--other-option", action="append", default=None,
                    help="KEY=VALUE of the other policy (default: preset=tiny, copy=3)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    if args.other_option is None:  # (an appending option's default would be kept and added to)
        args.other_option = ["preset=tiny", "copy=3"]
    target = load_target("default")
    method = build_method(args.method, target)
    policy = method.engine.tree_policy
    other = default_registry().create("tree_policies", args.other,
                                      dict(kv.split("=", 1) for kv in args.other_option))
    steps = []  # (context length, chosen tree, other tree)
    build = policy.build

    def both(head, ctx):
        chosen = build(head, ctx)
        if policy.drafts_with_head():  # (a copy step runs no head: nothing to compare)
            head.begin(ctx)  # the same context again: the head's rows are rebuilt, not added
            steps.append((len(ctx.tokens), chosen, other.build(head, ctx)))
        return chosen

    policy.build = both
    rows = collections.defaultdict(list)
    for spec in args.prompts:
        for p in select_prompts(spec, 0, args.limit, args.categories):
            ids = encode_prompt(target.tokenizer, p["prompt"])
            steps.clear()
            result = method.engine.generate(ids, GenerationConfig(max_new_tokens=args.max_new_tokens))
            full = list(ids) + result.token_ids
            for length, chosen, alt in steps:
                truth = full[length:]
                rows[len(chosen)].append((accepted(chosen, truth), accepted(alt, truth), len(alt)))
    print(f"{args.method} against {args.other} {args.other_option}, graded on the same contexts")
    every = [r for rs in rows.values() for r in rs]
    print(f"all: {len(every)} steps, tau {statistics.mean(r[0] for r in every):.2f} against "
          f"{statistics.mean(r[1] for r in every):.2f} (rows {statistics.mean(len_ for *_, len_ in every):.1f})")
    for size, rs in sorted(rows.items()):
        print(f"  chosen tree of {size:>2}: {len(rs):>4} steps, tau {statistics.mean(r[0] for r in rs):.2f} "
              f"against {statistics.mean(r[1] for r in rs):.2f} (the other's rows "
              f"{statistics.mean(r[2] for r in rs):.1f})")


if __name__ == "__main__":
    main()
