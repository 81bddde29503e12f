"""How far bf16 speculative decoding is from plain bf16 decoding (the README's bf16 paragraph).

    python benchmarks/bf16_exactness.py [--prompts 10] [--offset 20] [--new 64]

For each MT-bench prompt: plain bf16 greedy vs lookup-drafted bf16 greedy (dynamic tree); at the
first divergence, the fp32 model's top-2 logit margin on the shared prefix.
"""

import argparse

import torch

from koala_core.bench import load_prompts
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.model import load_target
from koala_core.prompts import encode_prompt
from koala_core.registry import default_registry


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--offset", type=int, default=20)
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)
    reg = default_registry()
    bf, fp = load_target("default", dtype="bfloat16"), load_target("default")
    plain = SpeculativeEngine(bf)
    spec = SpeculativeEngine(bf, reg.create("heads", "lookup"), reg.create("tree_policies", "dynamic"))
    same = 0
    texts = [p["prompt"] for p in load_prompts("mtbench")[args.offset:args.offset + args.prompts]]
    for text in texts:
        ids = encode_prompt(bf.tokenizer, text)
        a = plain.generate(ids, GenerationConfig(args.new)).token_ids
        b = spec.generate(ids, GenerationConfig(args.new)).token_ids
        if a == b:
            same += 1
            continue
        i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        logits = fp.logits(fp.forward(torch.tensor(ids + a[:i]), fp.new_cache())[-1:])[0]
        top = logits.topk(2)
        agrees = "speculative" if int(top.indices[0]) == b[i] else (
            "plain" if int(top.indices[0]) == a[i] else "neither")
        print(f"diverges at token {i}: fp32 top-2 margin {float(top.values[0] - top.values[1]):.3f}, "
              f"fp32 argmax agrees with {agrees}")
    print(f"identical: {same}/{len(texts)}")


if __name__ == "__main__":
    main()
