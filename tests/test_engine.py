"""The engine loop on tiny random models: losslessness, KV-cache integrity, errors."""

import pytest
import torch

from conftest import tiny_target
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.errors import PromptError

PROMPT = [0, 5, 6, 7, 8, 5, 6, 7, 9, 10, 5, 6]


def hf_greedy(target, prompt, n):
    out = target.model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                                pad_token_id=1, eos_token_id=None)
    return out[0, len(prompt):].tolist()


POLICIES = [("chain", {"depth": 4}), ("static", {"preset": "medium"}),
            ("dynamic", {"depth": 4, "top_k": 3, "nodes": 10})]


@pytest.mark.parametrize("policy,options", POLICIES)
def test_greedy_lookup_is_lossless(arch, registry, policy, options):
    target = tiny_target(arch)
    engine = SpeculativeEngine(target, registry.create("heads", "lookup"),
                               registry.create("tree_policies", policy, options),
                               registry.create("verifiers", "greedy"))
    config = GenerationConfig(max_new_tokens=48, stop_at_eos=False)
    result = engine.generate(PROMPT, config)
    assert result.token_ids == hf_greedy(target, PROMPT, 48)
    assert result.new_tokens == 48
    assert result.tau > 1.0  # a random model repeats itself; lookup must catch some of it


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_vanilla_equals_hf_generate(target, cache):
    target.cache_kind = cache
    result = SpeculativeEngine(target).generate(PROMPT, GenerationConfig(30, stop_at_eos=False))
    assert result.token_ids == hf_greedy(target, PROMPT, 30)
    assert result.tau == 1.0 and result.drafted == 0


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_cache_equals_fresh_prefill_after_many_cycles(arch, registry, cache):
    """Both target caches (static position-addressed, HF's dynamic) hold exactly the accepted
    tokens' keys/values after many accept/reject cycles."""
    from koala_core.position_cache import PositionCache

    target = tiny_target(arch)
    target.cache_kind = cache
    engine = SpeculativeEngine(target, registry.create("heads", "lookup"),
                               registry.create("tree_policies", "static", {"preset": "wide"}))
    steps = list(engine.stream(PROMPT, GenerationConfig(60, stop_at_eos=False)))
    assert len(steps) > 10 and any(0 < s.accepted < s.drafted for s in steps)
    assert any(s.accepted > 0 for s in steps)
    assert isinstance(engine.cache, PositionCache) == (cache == "static")
    tokens = PROMPT + [t for s in steps for t in s.tokens]
    fresh = target.new_cache()
    target.forward(torch.tensor(tokens[:-1]), fresh)  # the last token is the pending root
    got, want = target.cache_tensors(engine.cache), target.cache_tensors(fresh)
    assert len(got) == len(want)
    for (k1, v1), (k2, v2) in zip(got, want):
        assert k1.shape == k2.shape
        torch.testing.assert_close(k1, k2, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(v1, v2, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cache", ["static", "dynamic"])
@pytest.mark.parametrize("sliding", ["mistral", "qwen2-sliding"])
@pytest.mark.parametrize("policy,options", POLICIES)
def test_sliding_window_models_are_lossless(registry, sliding, policy, options, cache):
    """A 6-token window, 12-token prompt, 48 new tokens: trees must respect the window, and the
    cache must survive rejected nodes (HF's sliding cache drops slots, so koala keeps them all)."""
    target = tiny_target(sliding)
    target.cache_kind = cache
    assert target.sliding_window == 6
    engine = SpeculativeEngine(target, registry.create("heads", "lookup"),
                               registry.create("tree_policies", policy, options),
                               registry.create("verifiers", "greedy"))
    steps = list(engine.stream(PROMPT, GenerationConfig(max_new_tokens=48, stop_at_eos=False)))
    tokens = [t for s in steps for t in s.tokens]
    assert tokens == hf_greedy(target, PROMPT, 48)
    assert any(s.accepted < s.drafted for s in steps)  # some drafts were rejected
    fresh = target.new_cache()
    target.forward(torch.tensor((PROMPT + tokens)[:-1]), fresh)
    for (k1, v1), (k2, v2) in zip(target.cache_tensors(engine.cache), target.cache_tensors(fresh)):
        torch.testing.assert_close(k1, k2, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(v1, v2, atol=1e-5, rtol=1e-4)


def test_stops_at_eos_and_max_tokens(target):
    eos = next(iter(target.eos_token_ids))
    result = SpeculativeEngine(target).generate(PROMPT, GenerationConfig(7, stop_at_eos=False))
    assert result.new_tokens == 7
    ids = result.token_ids
    target.model.generation_config.eos_token_id = ids[2]  # pretend the 3rd token is EOS
    target.config.eos_token_id = ids[2]
    try:
        stopped = SpeculativeEngine(target).generate(PROMPT, GenerationConfig(7)).token_ids
    finally:
        target.model.generation_config.eos_token_id = eos
        target.config.eos_token_id = eos
    assert stopped == ids[: ids.index(ids[2]) + 1]


def test_bad_prompts_are_clear_errors(target):
    engine = SpeculativeEngine(target)
    with pytest.raises(PromptError, match="empty"):
        list(engine.stream([], GenerationConfig(4)))
    with pytest.raises(PromptError, match="context"):
        list(engine.stream([3] * target.max_length, GenerationConfig(4)))


def test_never_runs_past_context(target):
    prompt = [3] * (target.max_length - 5)
    result = SpeculativeEngine(target).generate(prompt, GenerationConfig(50, stop_at_eos=False))
    assert result.new_tokens == 5


def test_cost_curve_times_tree_masked_forwards(target, monkeypatch):
    """`koala cost` must time what verify runs: a tree mask and per-node positions for n > 1."""
    from koala_core.costs import verify_cost_curve

    calls = []
    forward = target.forward

    def spy(ids, cache, positions=None, tree_mask=None):
        calls.append((ids.shape[0], tree_mask is not None))
        return forward(ids, cache, positions, tree_mask)

    monkeypatch.setattr(target, "forward", spy)
    rows = verify_cost_curve(target, [1, 4, 8], context=16, repeats=1, warmup=0)
    assert [r["n"] for r in rows] == [1, 4, 8] and rows[0]["ratio"] == 1.0
    timed = calls[1:]  # the first call fills the context
    assert (1, False) in timed and (4, True) in timed and (8, True) in timed
    calls.clear()
    verify_cost_curve(target, [4], context=16, repeats=1, warmup=0, shape="chain")
    assert (4, False) in calls[1:]


def test_steps_time_the_forward_inside_the_verify(target, registry):
    engine = SpeculativeEngine(target, registry.create("heads", "lookup"))
    steps = [s for s in engine.stream(PROMPT, GenerationConfig(20, stop_at_eos=False)) if not s.prefill]
    assert steps and all(0 < s.forward_s <= s.verify_s for s in steps)


def test_static_cache_is_allocated_once_and_grows_if_asked_for_more(target):
    """Its buffers keep their storage across steps and edits; a caller that under-announced its
    capacity gets a grown buffer, not an error."""
    from koala_core.tree import tree_shape

    target.cache_kind = "static"
    cache = target.new_cache(20)
    target.forward(torch.arange(3, 15), cache)
    ptr = cache.layers[0]._k.data_ptr()
    shape = tree_shape((-1, 0, 0, 1))  # a 4-node tree: keep the path root -> node 2
    target.forward(torch.arange(3, 7), cache, positions=shape.depths + 12, tree_mask=shape.mask)
    target.keep(cache, 12, [0, 2])
    assert target.cache_length(cache) == 14 and cache.layers[0]._k.data_ptr() == ptr
    target.forward(torch.arange(3, 13), cache)  # 24 > 20 slots
    assert target.cache_length(cache) == 24 and cache.layers[0].capacity >= 24
    fresh = target.new_cache()
    ids = list(range(3, 15)) + [3, 5] + list(range(3, 13))
    target.forward(torch.tensor(ids), fresh)
    for (k1, v1), (k2, v2) in zip(target.cache_tensors(cache), target.cache_tensors(fresh)):
        torch.testing.assert_close(k1, k2, atol=1e-5, rtol=1e-4)
