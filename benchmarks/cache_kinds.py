"""The target's KV cache, static (position-addressed) against HF's dynamic one, interleaved in one
process: ms per decoded token per method and cache kind.

    python benchmarks/cache_kinds.py [--methods vanilla,eagle-k1] [--rounds 3] [--long]

``--long`` decodes 48 tokens after an 1800-token prompt (40 MT-bench questions run together).
"""

import argparse
import statistics

from koala_core.bench import load_prompts
from koala_core.compose import build_method
from koala_core.engine import GenerationConfig
from koala_core.model import load_target
from koala_core.prompts import encode_prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="vanilla,eagle-k1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--long", action="store_true")
    args = ap.parse_args()
    target = load_target("default")
    questions = load_prompts("mtbench")
    if args.long:
        text = "Summarise these requests:\n" + " ".join(p["prompt"] for p in questions[:40])
        prompts, config = [encode_prompt(target.tokenizer, text)[:1800]], GenerationConfig(
            max_new_tokens=48, stop_at_eos=False)
    else:
        prompts = [encode_prompt(target.tokenizer, p["prompt"]) for p in questions[20:24]]
        config = GenerationConfig(max_new_tokens=96)
    ms: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for name in args.methods.split(","):
            engine = build_method(name, target).engine
            for kind in ("static", "dynamic") if r % 2 == 0 else ("dynamic", "static"):
                target.cache_kind = kind
                for ids in prompts:
                    out = engine.generate(ids, config)
                    ms.setdefault((name, kind), []).append(1e3 * out.decode_s / max(out.decode_tokens, 1))
    for (name, kind), values in ms.items():
        print(f"{name:10s} {kind:8s} ms/token median {statistics.median(values):.1f} "
              f"mean {statistics.fmean(values):.1f} ({len(values)} runs)")


if __name__ == "__main__":
    main()
