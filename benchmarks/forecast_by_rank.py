"""How `auto`'s forecast fares by a node's rank in its tree (0: the best candidate), by tree size
and by the generation's scale: what each verified node was forecast (its path probability, and
times its rank's factor) against how often it was accepted, from the policy's own records (methods run one after another
per prompt: a look inside, not a speed figure).

    python benchmarks/forecast_by_rank.py --prompts mtbench --offset 16 --limit 24 \
        --methods benchmarks/recipes/eagle-k1-auto-no-rank-factors.toml,benchmarks/recipes/eagle-k1-auto-copy3.toml
"""

import argparse
import collections

from koala_core.bench import select_prompts
from koala_core.compose import build_method
from koala_core.engine import GenerationConfig
from koala_core.model import load_target
from koala_core.prompts import encode_prompt

TOP_RANK = 12  # ranks from here on share a row
TOP_SIZE = 13  # tree sizes (root included) from here on share a row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--methods", required=True, help="comma-separated methods drafting with auto")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    target = load_target("default")
    prompts = select_prompts(args.prompts, args.offset, args.limit, None)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    for name in args.methods.split(","):
        method = build_method(name, target)
        policy = method.engine.tree_policy
        if not hasattr(policy, "rank_factor"):
            raise SystemExit(f"{name}: its tree policy is not auto")
        ranks = collections.defaultdict(lambda: [0, 0.0, 0.0, 0])  # nodes, raw, factored, hits
        sizes = collections.defaultdict(lambda: [0, 0.0, 0])  # trees, forecast, tokens past the root
        scales = collections.defaultdict(lambda: [0, 0.0, 0])  # the same by scale (to 0.25)
        observe = policy.observe

        def logged(tree, path, draft_s, verify_s, *a, _policy=policy, _observe=observe, **k):
            kept = list(_policy.kept)  # consumed by observe
            if kept and len(tree) > 1 and not _policy.copy_only:
                accepted = set(path)
                for i, (rank, p) in enumerate(kept, 1):
                    row = ranks[min(rank, TOP_RANK)]
                    row[0] += 1
                    row[1] += p
                    row[2] += p * _policy.rank_factor(rank)
                    row[3] += i in accepted
                for row in (sizes[min(len(tree), TOP_SIZE)], scales[round(_policy.scale() * 4) / 4]):
                    row[0] += 1
                    row[1] += _policy.forecast - 1
                    row[2] += len(path) - 1
            return _observe(tree, path, draft_s, verify_s, *a, **k)

        policy.observe = logged
        for p in prompts:
            method.engine.generate(encode_prompt(target.tokenizer, p["prompt"]), config)
        print(f"{name} ({len(prompts)} prompts)")
        print("  rank   nodes  forecast  x factor  accepted")
        for rank, (n, raw, factored, hits) in sorted(ranks.items()):
            label = f"{rank}+" if rank == TOP_RANK else str(rank)
            print(f"  {label:>4} {n:>7} {raw / n:>9.3f} {factored / n:>9.3f} {hits / n:>9.3f}")
        print("  rows   trees  forecast  tokens past the root")
        for size, (n, forecast, got) in sorted(sizes.items()):
            label = f"{size}+" if size == TOP_SIZE else str(size)
            print(f"  {label:>4} {n:>7} {forecast / n:>9.2f} {got / n:>9.2f}")
        print("  scale  trees  forecast  tokens past the root")
        for scale, (n, forecast, got) in sorted(scales.items()):
            print(f"  {scale:>5.2f} {n:>6} {forecast / n:>9.2f} {got / n:>9.2f}")


if __name__ == "__main__":
    main()
