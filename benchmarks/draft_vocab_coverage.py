"""Draft-vocabulary coverage per prompt category: the share of the target's own greedy tokens that
each shipped head's draft vocabulary contains (a token outside it can never be proposed).

    python benchmarks/draft_vocab_coverage.py [--heads eagle-k1,hydra-k1] [--max-new-tokens 64]
"""

import argparse
import collections

from koala_core.bench import load_prompts
from koala_core.checkpoint import Checkpoint
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.model import load_target
from koala_core.prompts import encode_prompt
from koala_core.shipped import shipped_checkpoints

DEV_PROMPTS = ["benchmarks/prompts/mixed-heldout.jsonl", "benchmarks/prompts/mixed-heldout-2.jsonl"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", default="eagle-k1,hydra-k1")
    ap.add_argument("--mtbench", type=int, default=24, help="MT-bench questions added (0..N-1)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    target = load_target("default")
    vocabs = {h: set(Checkpoint.open(shipped_checkpoints()[h]).state["vocab_ids"].tolist())
              for h in args.heads.split(",")}
    prompts = [p for f in DEV_PROMPTS for p in load_prompts(f)] + load_prompts("mtbench")[:args.mtbench]
    engine = SpeculativeEngine(target)
    inside = collections.defaultdict(collections.Counter)
    for p in prompts:
        ids = encode_prompt(target.tokenizer, p["prompt"])
        out = engine.generate(ids, GenerationConfig(max_new_tokens=args.max_new_tokens)).token_ids
        counts = inside[p["category"]]
        counts["tokens"] += len(out)
        for head, vocab in vocabs.items():
            counts[head] += sum(t in vocab for t in out)
    for category, counts in sorted(inside.items()):
        shares = "  ".join(f"{h} {counts[h] / counts['tokens']:.3f}" for h in vocabs)
        print(f"{category:14s} {shares}  ({counts['tokens']} tokens)")


if __name__ == "__main__":
    main()
