"""Draft heads (medusa, hydra, eagle): shapes for K = 1..3, independent layers, drafting, training."""

import pytest
import torch

from conftest import tiny_model, tiny_target
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.heads import TrainBatch

FAMILIES = ["medusa", "hydra", "eagle"]


def make_head(registry, family, target, layers=1, **opts):
    opts = {"layers": layers, "draft_vocab": 64, **opts}
    return registry.create("heads", family, opts, target=target)


def random_batch(target, B=2, L=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, target.vocab_size, (B, L), generator=g)
    hidden = torch.stack([target.forward(row, target.new_cache()) for row in ids])
    labels = target.logits(hidden.flatten(0, 1)).argmax(-1).view(B, L)
    return TrainBatch(ids, hidden, labels, torch.ones(B, L))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_shapes_and_independent_layers(registry, family, layers):
    target = tiny_target()
    head = make_head(registry, family, target, layers)
    outs = head.train_outputs(random_batch(target))
    depths = 1 if family == "eagle" else head.config.heads
    assert len(outs) == depths
    for out in outs:
        assert out.logits.shape == (24, 64) and out.labels.shape == (24,)
        assert out.context.shape == (24, 32)
    # every layer has its own weights (the reference Medusa repo shared one module n times)
    ptrs = [p.data_ptr() for p in head.parameters()]
    assert len(ptrs) == len(set(ptrs))
    n_layers = len(head.layers) if family == "eagle" else len(head.blocks[0])
    assert n_layers == layers


def test_eagle_layer_matches_hf_decoder_layer(arch):
    from koala_core.layers import DecoderLayer, LayerShape

    model = tiny_model(arch)
    hf_layer = model.model.layers[0]
    mine = DecoderLayer(LayerShape.of(model.config))
    missing, _ = mine.load_state_dict(hf_layer.state_dict(), strict=False)
    assert not missing
    x = torch.randn(1, 7, 32)
    pos = torch.arange(7)[None]
    cos_sin = model.model.rotary_emb(x, pos)
    mask = torch.full((7, 7), float("-inf")).triu(1)[None, None]
    ref = hf_layer(x, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
    ref = ref[0] if isinstance(ref, tuple) else ref
    torch.testing.assert_close(mine(x, pos), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES + ["eagle-ttt"])
def test_training_reads_only_counted_rows_with_the_same_loss(registry, family):
    """Training batches keep only the rows whose loss weight is > 0 (cheaper LM head); the losses
    and gradients are the ones the full rows give."""
    import dataclasses

    target = tiny_target()
    opts = {"ttt_steps": 2} if family == "eagle-ttt" else {}
    head = make_head(registry, family.split("-")[0], target, 2, **opts)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    loss = registry.create("losses", head.default_loss)
    full = random_batch(target)
    full.loss_mask = (torch.rand(full.loss_mask.shape, generator=torch.Generator().manual_seed(1))
                      > 0.4).float()
    counted = dataclasses.replace(full, counted_only=True)

    def run(batch):
        head.zero_grad()
        outs = [head.to_draft_space(o) for o in head.train_outputs(batch)]
        total = sum(loss(o) for o in outs)
        total.backward()
        return outs, total.item(), [p.grad.clone() for p in head.parameters() if p.grad is not None]

    outs_full, loss_full, grads_full = run(full)
    outs, loss_counted, grads = run(counted)
    assert all(bool((o.weight > 0).all()) for o in outs)
    for o, f in zip(outs, outs_full):
        torch.testing.assert_close(o.logits, f.logits[f.weight > 0])
    assert loss_counted == pytest.approx(loss_full, rel=1e-5)
    for g, f in zip(grads, grads_full):
        torch.testing.assert_close(g, f, atol=1e-6, rtol=1e-4)


def test_eagle_extra_layers_can_be_narrower(registry):
    """K-layer EAGLE at less draft cost: layers 2..K with a narrower MLP (extra_intermediate)."""
    target = tiny_target()
    full = make_head(registry, "eagle", target, 2)
    narrow = make_head(registry, "eagle", target, 2, extra_intermediate=16)
    wide = full.layers[1].mlp.gate_proj.weight.shape[0]
    assert narrow.layers[0].mlp.gate_proj.weight.shape[0] == wide  # layer 1 keeps the target's
    assert narrow.layers[1].mlp.gate_proj.weight.shape[0] == 16 != wide
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters())
    with pytest.raises(Exception, match="extra_intermediate"):
        make_head(registry, "eagle", target, 2, extra_intermediate=-1)


def test_eagle_feature_noise_augments_the_read_features_in_training_only(registry):
    from koala_core.errors import ConfigError
    from koala_core.tensors import keyed_generator

    target = tiny_target()
    torch.manual_seed(0)
    plain = make_head(registry, "eagle", target)
    noisy = make_head(registry, "eagle", target, feature_noise=0.5)
    noisy.load_state_dict(plain.state_dict())
    batch = random_batch(target)

    def outs(head, key):
        batch.rng = keyed_generator(*key)
        return head.train_outputs(batch)[0]

    clean = outs(plain, (0, 0, 0))
    first, again = outs(noisy, (0, 0, 0)), outs(noisy, (0, 0, 0))
    other = outs(noisy, (0, 1, 0))
    # the stream decides the noise: the same key gives the same draws, another key others
    torch.testing.assert_close(first.features, again.features)
    assert not torch.allclose(first.features, clean.features)
    assert not torch.allclose(first.features, other.features)
    # what the head is trained towards stays the target's true next features
    torch.testing.assert_close(first.target_features, clean.target_features)
    noisy.eval()  # validation and drafting read the features as they are
    torch.testing.assert_close(outs(noisy, (0, 0, 0)).features, clean.features)
    with pytest.raises(ConfigError, match="feature_noise"):
        make_head(registry, "eagle", target, feature_noise=-0.1)


@pytest.mark.parametrize("family", FAMILIES + ["eagle3", "hydra-prefix", "eagle-narrow"])
@pytest.mark.parametrize("policy", ["chain", "static", "dynamic", "auto"])
def test_heads_draft_losslessly(registry, family, policy):
    target = tiny_target()
    if family == "eagle3":  # fused inputs of layers 0 and 1, handed over by the engine each step
        head = make_head(registry, "eagle", target, 2, aux_layers="0,1", ttt_steps=2)
        assert head.aux_layers == (0, 1)
    elif family == "hydra-prefix":  # Hydra++: a prefix layer with its own growing KV cache
        head = make_head(registry, "hydra", target, 2, prefix=True)
    elif family == "eagle-narrow":  # K = 2 with a narrower second layer
        head = make_head(registry, "eagle", target, 2, extra_intermediate=16)
    else:
        head = make_head(registry, family, target, 2)
    with torch.no_grad():  # make the zero-initialised heads do something non-trivial
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    engine = SpeculativeEngine(target, head, registry.create("tree_policies", policy))
    prompt = [0, 5, 6, 7, 8, 5, 6, 7]
    got = engine.generate(prompt, GenerationConfig(40, stop_at_eos=False))
    ref = SpeculativeEngine(target).generate(prompt, GenerationConfig(40, stop_at_eos=False))
    assert got.token_ids == ref.token_ids
    assert got.drafted > 0


def test_eagle_tree_rows_match_sequential_drafting(registry):
    """A node's draft distribution must not depend on its siblings (tree mask in the draft cache)."""
    from koala_core.interfaces import DraftContext, TreeBudget
    from koala_core.tree import Tree

    target = tiny_target()
    head = make_head(registry, "eagle", target, 2, draft_vocab=0)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    prompt = [0, 5, 6, 7, 8]
    cache = target.new_cache()
    hidden = target.forward(torch.tensor(prompt), cache)
    ctx = DraftContext(prompt + [9], hidden, TreeBudget(16, 4))
    head.begin(ctx)
    tree = Tree(9)
    a, b = tree.add(0, 11), tree.add(0, 12)
    c = tree.add(a, 13)
    both = head.expand(tree, [a, b], 3)
    deep = head.expand(tree, [c], 3)
    head.begin(ctx)  # again, with only the path to c
    alone = Tree(9)
    a2 = alone.add(0, 11)
    c2 = alone.add(a2, 13)
    head.expand(alone, [a2], 3)
    torch.testing.assert_close(head.expand(alone, [c2], 3).logprobs, deep.logprobs)
    head.begin(ctx)
    only_b = Tree(9)
    b2 = only_b.add(0, 12)
    torch.testing.assert_close(head.expand(only_b, [b2], 3).logprobs, both.logprobs[1:])


def test_draft_kv_cache_grows_and_rewinds():
    from koala_core.layers import KVCache

    cache = KVCache(1, 2, 4, capacity=4, dtype=torch.float32, device="cpu")
    k = torch.randn(1, 2, 3, 4)
    cache.append(0, k, k)
    cache.commit()
    k2 = torch.randn(1, 2, 3, 4)
    keys, _ = cache.append(0, k2, k2)
    cache.commit()
    assert cache.length == 6 and cache.capacity >= 6
    torch.testing.assert_close(keys, torch.cat([k, k2], 2))
    cache.length = 3  # rewinding is moving a length
    keys, _ = cache.append(0, k2, k2)
    torch.testing.assert_close(keys, torch.cat([k, k2], 2))


def test_medusa_reads_the_lm_head_rows_once_per_draft_step(registry):
    """Every Medusa head reads the same state, so one pass over the LM-head rows (the costly read
    on a CPU) serves all of them; each head's candidates are still its own."""
    from koala_core.interfaces import DraftContext, TreeBudget

    target = tiny_target()
    head = make_head(registry, "medusa", target, 2, heads=3)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hidden = target.forward(torch.tensor([0, 5, 6, 7]), target.new_cache())
    ctx = DraftContext([0, 5, 6, 7, 9], hidden, TreeBudget(8, 4))
    calls = []
    project = head.project
    head.project = lambda f: calls.append(f.shape) or project(f)
    with torch.no_grad():
        head.begin(ctx)
        alone = [head.top(project(f), head.config.max_k) for f in head.features(hidden[-1:])]
    assert calls == [torch.Size([3, target.hidden_size])]
    for d, cand in enumerate(alone):
        assert torch.equal(head._top.tokens[d], cand.tokens[0])
