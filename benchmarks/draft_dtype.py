"""Draft precision, side by side in one process: each shipped head drafting in fp32, bf16,
weight-only int8 and int8-dynamic (int8 activations too; the target verifies in fp32 either way),
interleaved with plain decoding on the same prompts.

    python benchmarks/draft_dtype.py [--offset 16 --limit 8 --max-new-tokens 64 --dtypes float32,bfloat16,int8,int8-dynamic --out bench-dd]
"""

import argparse

from koala_core.bench import run_bench, select_prompts, write_report
from koala_core.compose import build_method
from koala_core.engine import GenerationConfig
from koala_core.model import load_target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="mtbench")
    ap.add_argument("--offset", type=int, default=16)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--heads", default="hydra-k1,eagle-k1")
    ap.add_argument("--dtypes", default="float32,bfloat16,int8,int8-dynamic")
    ap.add_argument("--out", default="bench-dd")
    args = ap.parse_args()
    target = load_target("default")
    methods = [build_method("vanilla", target)]
    for head in args.heads.split(","):
        for dtype in args.dtypes.split(","):
            method = build_method(head, target, draft_dtype=dtype)
            method.name = f"{head}-draft-{dtype}"
            methods.append(method)
    prompts = select_prompts(args.prompts, args.offset, args.limit)
    results = run_bench(methods, target, prompts, GenerationConfig(max_new_tokens=args.max_new_tokens))
    results["meta"] = {"prompts": args.prompts, "n_prompts": len(prompts), "offset": args.offset,
                       "max_new_tokens": args.max_new_tokens, "dtype": "float32", "device": "cpu",
                       "kernels": target.kernels}
    write_report(results, args.out)
    print(open(f"{args.out}/results.md").read())


if __name__ == "__main__":
    main()
