"""Draft-vocabulary coverage per prompt category: the share of the target's own greedy tokens that
the shipped heads' 8k draft vocabularies contain (a drafted token outside it can never be proposed).

    python benchmarks/draft_vocab_coverage.py
"""
import collections
from koala_core.model import load_target
from koala_core.checkpoint import Checkpoint
from koala_core.engine import SpeculativeEngine, GenerationConfig
from koala_core.prompts import encode_prompt
from koala_core.bench import load_prompts
t = load_target("default")
vocab = set(Checkpoint.open("checkpoints/eagle-k1").state["vocab_ids"].tolist())
hv = set(Checkpoint.open("checkpoints/hydra-k1").state["vocab_ids"].tolist())
prompts = load_prompts("benchmarks/prompts/mixed-heldout.jsonl") + load_prompts("benchmarks/prompts/mixed-heldout-2.jsonl") + load_prompts("mtbench")[:24]
eng = SpeculativeEngine(t)
cov = collections.defaultdict(lambda: [0, 0, 0])
for p in prompts:
    out = eng.generate(encode_prompt(t.tokenizer, p["prompt"]), GenerationConfig(max_new_tokens=64)).token_ids
    c = cov[p["category"]]
    c[0] += sum(x in vocab for x in out); c[1] += sum(x in hv for x in out); c[2] += len(out)
for k, (a, b, n) in sorted(cov.items()):
    print(f"{k:14s} eagle-k1 vocab {a/n:.3f}  hydra-k1 vocab {b/n:.3f}  ({n} tokens)")
