"""Verification latency versus tree size on a 256-token cache: this machine's cost curve."""

import pytest
import torch

CONTEXT = 256


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_verify_latency(benchmark, bench_target, n):
    target = bench_target
    gen = torch.Generator().manual_seed(0)
    cache = target.new_cache()
    target.forward(torch.randint(0, target.vocab_size, (CONTEXT,), generator=gen), cache)
    ids = torch.randint(0, target.vocab_size, (n,), generator=gen)

    def verify():
        target.logits(target.forward(ids, cache))
        target.keep(cache, CONTEXT, [])

    benchmark.extra_info["tokens"] = n
    benchmark.pedantic(verify, rounds=7, warmup_rounds=2)
