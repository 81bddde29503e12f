"""End-to-end decode speed per method on the same prompt (greedy, fp32): tokens/s and tau.

    python -m pytest benchmarks/test_end_to_end.py --benchmark-only
Compare rows of one run only; `koala bench` is the fuller, interleaved comparison.
"""

import pytest

from koala_core.compose import build_method
from koala_core.engine import GenerationConfig
from koala_core.prompts import encode_prompt

PROMPT = "Write a short guide to brewing green tea, with numbered steps."
METHODS = ["vanilla", "lookup", "hf-lookup", "medusa-k1", "hydra-k1", "eagle-k1"]


@pytest.mark.parametrize("method", METHODS)
def test_tokens_per_second(benchmark, bench_target, method):
    m = build_method(method, bench_target)
    ids = encode_prompt(bench_target.tokenizer, PROMPT)
    config = GenerationConfig(max_new_tokens=64)
    run = benchmark.pedantic(lambda: m.run(ids, config), rounds=3, warmup_rounds=1)
    benchmark.extra_info.update({
        "tokens_per_s": round(len(run.tokens) / run.seconds, 2),
        "tau": None if run.forwards is None else round(run.decode_tokens / max(run.forwards, 1), 3)})
