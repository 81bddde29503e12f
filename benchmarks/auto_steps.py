"""What an adaptive tree policy does step by step on a prompt file, against plain decoding in the
same process: per prompt the speedup and a line of steps ('.' plain, 's' shadow: drafted but only
the root verified, a digit: a verified tree, tokens accepted), with the drafting and verify times
of the drafted steps.

    python benchmarks/auto_steps.py recipes/eagle-k1-auto.toml PROMPTS.jsonl [--category translation]
"""

import argparse

from koala_core.bench import load_prompts
from koala_core.compose import build_method
from koala_core.engine import GenerationConfig
from koala_core.model import load_target
from koala_core.prompts import encode_prompt

SHADOW_S = 5e-4  # a step that spent longer drafting drafted something


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("method")
    ap.add_argument("prompts", nargs="+")
    ap.add_argument("--category", default="")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    target = load_target("default")
    method, plain = build_method(args.method, target), build_method("vanilla", target)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    totals = [0.0, 0.0]
    for spec in args.prompts:
        for p in load_prompts(spec):
            if args.category and p.get("category") != args.category:
                continue
            ids = encode_prompt(target.tokenizer, p["prompt"])
            r, b = method.engine.generate(ids, config), plain.engine.generate(ids, config)
            per_r, per_b = r.decode_s / r.decode_tokens, b.decode_s / b.decode_tokens
            totals[0] += per_b
            totals[1] += per_r
            steps = [s for s in r.steps if not s.prefill]
            line = "".join(str(min(9, s.accepted)) if s.drafted else "s" if s.draft_s > SHADOW_S
                           else "." for s in steps)
            drafted = [s for s in steps if s.drafted]
            print(f"{per_b / per_r:.2f}x {line}")
            print("   drafted steps: draft ms", [round(s.draft_s * 1e3) for s in drafted],
                  "verify ms", [round(s.verify_s * 1e3) for s in drafted],
                  "| shadow draft ms", [round(s.draft_s * 1e3) for s in steps
                                        if not s.drafted and s.draft_s > SHADOW_S][:8],
                  "| plain verify ms", [round(s.verify_s * 1e3) for s in steps if not s.drafted][:6])
    print(f"overall {totals[0] / totals[1]:.3f}x")
    summary = getattr(method.engine.tree_policy, "summary", None)
    if summary:
        print(summary())


if __name__ == "__main__":
    main()
