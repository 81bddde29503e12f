"""Train/inference parity: what a head learns at position t is what it proposes at inference.

Losslessness cannot catch a misaligned head (the verifier repairs any draft); this can. For each
family and K, the head's training-time log-probs at position t and depth k must equal what
``begin`` + ``expand`` propose at the matching engine state (atol 1e-5), over several decode steps
(so EAGLE's draft KV cache, rebuilt from committed rows, is covered too).
"""

import pytest
import torch

from conftest import tiny_target
from koala_core.heads import TrainBatch
from koala_core.interfaces import DraftContext, TreeBudget
from koala_core.tree import Tree

L = 20
STEPS = (5, 8, 9, 13)  # the engine's root after each step is token t+1: states up to t are cached


def random_head(registry, family, layers, target, **options):
    torch.manual_seed(layers)
    head = registry.create("heads", family, {"layers": layers, "draft_vocab": 64, **options},
                           target=target)
    head.set_draft_vocab(torch.randperm(96)[:64].sort().values)
    with torch.no_grad():
        for p in head.parameters():  # zero-initialised blocks would make every position alike
            p.add_(torch.randn_like(p) * 0.1)
    return head.eval()


VARIANTS = {  # EAGLE with training-time test, EAGLE-3 (fused layers 0 and 1 of 2), Hydra++
    "eagle-ttt": ("eagle", {"ttt_steps": 3}),
    "eagle3": ("eagle", {"aux_layers": "0,1", "ttt_steps": 3}),
    "hydra-prefix": ("hydra", {"prefix": True}),
}


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("family", ["medusa", "hydra", "eagle", *VARIANTS])
def test_training_outputs_equal_inference_proposals(registry, family, layers):
    target = tiny_target()
    plugin, options = VARIANTS.get(family, (family, {}))
    head = random_head(registry, plugin, layers, target, **options)
    ids = torch.randint(2, 96, (L,), generator=torch.Generator().manual_seed(1))
    hidden, aux = target.forward(ids, target.new_cache(), aux_layers=(0, 1))  # (L, D): the f_t
    aux = aux if head.aux_layers else None
    # labels[p] is the target's choice after position p; here, the text itself: ids[p + 1]
    labels = torch.cat([ids[1:], ids[:1]])
    batch = TrainBatch(ids[None], hidden[None].clone(), labels[None], torch.ones(1, L),
                       aux=None if aux is None else aux[None].clone())
    with torch.no_grad():
        outs = head.train_outputs(batch)
    assert len(outs) == options.get("ttt_steps", len(outs))
    train_logp = [torch.log_softmax(o.logits, -1) for o in outs]  # (L, Vd) per depth
    vd = head.vocab_ids.numel()
    prev = -1
    for step, t in enumerate(STEPS):
        # as in the engine: the states of the tokens that entered the cache since the last step
        ctx = DraftContext(ids[: t + 2].tolist(), hidden[prev + 1: t + 1], TreeBudget(64, 8),
                           step=step, aux=None if aux is None else aux[prev + 1: t + 1])
        prev = t
        with torch.inference_mode():  # as the engine runs it
            head.begin(ctx)
        tree, node = Tree(int(ids[t + 1])), 0
        for depth, (out, logp) in enumerate(zip(outs, train_logp), start=1):
            # depth k at position t predicts token t+k+1, proposed as a child of the path's node k-1
            assert int(out.labels[t]) == int(ids[t + depth + 1]), f"{family}: label of depth {depth}"
            with torch.inference_mode():
                cand = head.expand(tree, [node], vd)
            given = cand.tokens[0] >= 0  # medusa keeps its top max_k per head
            assert given.sum() >= 8
            index = head.vocab_index[cand.tokens[0][given]]
            torch.testing.assert_close(cand.logprobs[0][given], logp[t, index], atol=1e-5, rtol=1e-5,
                                       msg=lambda m: f"{family} K={layers} t={t} depth {depth}: {m}")
            node = tree.add(node, int(ids[t + depth + 1]))
