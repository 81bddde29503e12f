"""A tree forward's logits equal separate forwards of each root-to-node path."""

import torch

from conftest import tiny_target
from koala_core.tree import Tree


def make_tree() -> Tree:
    tree = Tree(5)
    a = tree.add(0, 7)
    b = tree.add(0, 9)
    c = tree.add(a, 11)
    tree.add(a, 13)
    tree.add(b, 17)
    tree.add(c, 19)
    return tree


def test_tree_mask_matches_per_path_forwards(arch):
    target = tiny_target(arch)
    prefix = torch.tensor([0, 3, 4, 8, 21, 33, 2])
    tree = make_tree()
    shape = tree.shape()
    cache = target.new_cache()
    target.forward(prefix, cache)
    past = target.cache_length(cache)
    hidden = target.forward(torch.tensor(tree.tokens), cache, positions=shape.depths + past,
                            tree_mask=shape.mask)
    tree_logits = target.logits(hidden)
    for node in range(len(tree)):
        path = torch.tensor(tree.path_tokens(node))
        fresh = target.new_cache()
        ref = target.logits(target.forward(torch.cat([prefix, path]), fresh))[-1]
        torch.testing.assert_close(tree_logits[node], ref, atol=1e-4, rtol=1e-4)


def test_shape_is_cached_and_consistent():
    tree = make_tree()
    shape = tree.shape()
    assert shape is make_tree().shape()
    assert shape.depths.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert shape.path_to(6) == [0, 1, 3, 6]
    assert shape.children[0] == (1, 2)
    # every node attends to exactly its ancestors and itself
    for i in range(len(tree)):
        assert set(torch.nonzero(shape.mask[i]).flatten().tolist()) == set(shape.path_to(i))


def test_keep_reindexes_and_requires_ancestors():
    import pytest

    tree = make_tree()
    kept = tree.keep([1, 3, 6])
    assert kept.tokens == [5, 7, 11, 19] and kept.parents == [-1, 0, 1, 2]
    with pytest.raises(AssertionError):
        tree.keep([6])


def test_grouped_attention_equals_transformers_sdpa_bit_for_bit(arch):
    """``koala_sdpa`` runs masked grouped-query attention on the key/value heads instead of
    repeating them; on a CPU that gives the logits of transformers' ``sdpa`` exactly."""
    from koala_core.attention import NAME

    target = tiny_target(arch)
    assert target.attention == NAME and target.config._attn_implementation == NAME
    prefix = torch.tensor([0, 3, 4, 8, 21, 33, 2])
    shape = make_tree().shape()

    def verify():
        cache = target.new_cache()
        target.forward(prefix, cache)
        tree = torch.tensor(make_tree().tokens)
        return target.logits(target.forward(tree, cache, positions=shape.depths + len(prefix),
                                            tree_mask=shape.mask))

    def padded_rows():  # a teacher pass: left-padded rows, HF's own padding mask
        ids = torch.randint(5, 90, (3, 9), generator=torch.Generator().manual_seed(0))
        mask = torch.ones(3, 9, dtype=torch.long)
        mask[0, :4] = mask[1, :2] = 0
        return target.forward_rows(ids, mask, target.new_cache())

    grouped, rows = verify(), padded_rows()
    target.model.set_attn_implementation("sdpa")
    assert torch.equal(verify(), grouped) and torch.equal(padded_rows(), rows)


def test_other_attention_implementations_are_left_alone():
    from conftest import tiny_model, tiny_tokenizer
    from koala_core.adapter import TargetModel

    model = tiny_model()
    model.set_attn_implementation("eager")
    assert TargetModel(model, tiny_tokenizer()).attention == "eager"
