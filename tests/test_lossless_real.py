"""Greedy speculative decoding on the real default model equals HF greedy generation, token for token."""

import pytest
import torch

from conftest import mtbench_prompts
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.prompts import encode_prompt

pytestmark = pytest.mark.slow

N_PROMPTS, NEW = 10, 64


@pytest.fixture(scope="module")
def cases(real_target):
    """(prompt ids, HF greedy continuation) for the first MT-bench questions."""
    out = []
    for text in mtbench_prompts(N_PROMPTS):
        ids = encode_prompt(real_target.tokenizer, text)
        ref = real_target.model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False)
        out.append((ids, ref[0, len(ids):].tolist()))
    return out


@pytest.mark.parametrize("policy,options", [("chain", {"depth": 5}), ("static", {"preset": "small"}),
                                            ("dynamic", {"depth": 4, "top_k": 3, "nodes": 8})])
def test_lookup_greedy_equals_hf_generate(real_target, cases, registry, policy, options):
    engine = SpeculativeEngine(real_target, registry.create("heads", "lookup"),
                               registry.create("tree_policies", policy, options),
                               registry.create("verifiers", "greedy"))
    forwards = tokens = 0
    for ids, ref in cases:
        result = engine.generate(ids, GenerationConfig(max_new_tokens=NEW))
        assert result.token_ids == ref
        forwards += result.target_forwards
        tokens += result.decode_tokens
    assert tokens / forwards > 1.0  # lookup drafts get accepted on real text


def test_repetitive_prompt_has_high_tau(real_target, registry):
    text = "Repeat this sentence exactly three times: the quick brown fox jumps over the lazy dog."
    ids = encode_prompt(real_target.tokenizer, text)
    engine = SpeculativeEngine(real_target, registry.create("heads", "lookup"))
    result = engine.generate(ids, GenerationConfig(max_new_tokens=48))
    ref = real_target.model.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False)
    assert result.token_ids == ref[0, len(ids):].tolist()
    assert result.tau > 1.5
