"""The verify phase reads the device once per step (the GPU engine's rule), tested on the CPU by
counting host reads of tensor values (koala_core.syncs.HostReads)."""

import pytest
import torch

from conftest import tiny_target
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.sampling import Sampling
from koala_core.syncs import HostReads
from koala_core.tree import Tree

PROMPT = [0, 5, 6, 7, 8, 5, 6, 7, 9, 10, 5, 6]


def test_host_reads_are_counted_and_restored():
    x = torch.arange(4)
    with HostReads() as reads:
        x.tolist()
        int(x[1])
        float(x.float().sum())
        with reads.paused():
            x.item() if x.numel() == 1 else x[0].item()
    assert reads.count == 3 and reads.calls == {"tolist": 1, "__int__": 1, "__float__": 1}
    x.tolist()
    assert reads.count == 3  # patches removed


def tree_with_duplicates():
    tree = Tree(3)
    a = tree.add(0, 5)
    tree.add(0, 5)  # a repeated sibling
    tree.add(0, 7)
    b = tree.add(a, 8)
    tree.add(b, 9)
    tree.add(a, 2)
    return tree


@pytest.mark.parametrize("name,temperature", [("greedy", 0.0), ("rejection", 1.0),
                                              ("rejection", 0.0), ("typical", 0.7)])
def test_each_verifier_reads_the_device_once(registry, name, temperature):
    verifier = registry.create("verifiers", name)
    tree = tree_with_duplicates()
    logits = torch.randn(len(tree), 16, generator=torch.Generator().manual_seed(0))
    tree.on("cpu")  # the engine builds the tree's tensors before the forward
    with HostReads() as reads:
        verdict = verifier.verify(tree, tree.shape(), logits, Sampling(temperature),
                                  torch.Generator().manual_seed(1))
    assert reads.count == 1, reads.calls
    assert verdict.path[0] == 0 and 0 <= verdict.bonus < 16


def test_greedy_verdict_takes_the_first_matching_sibling():
    from koala_core.registry import default_registry

    tree = tree_with_duplicates()
    logits = torch.full((len(tree), 16), -1.0)
    logits[0, 5] = logits[1, 8] = logits[2, 4] = logits[4, 1] = 1.0  # root->5, node 1->8, node 4->1
    v = default_registry().create("verifiers", "greedy").verify(tree, tree.shape(), logits,
                                                                 Sampling(), None)
    assert v.path == [0, 1, 4] and v.bonus == 1


@pytest.mark.parametrize("head,policy,options", [
    (None, None, {}), ("lookup", "static", {"preset": "medium"}),
    ("hydra", "dynamic", {"depth": 3, "top_k": 3, "nodes": 8})])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_engine_step_reads_the_device_at_most_twice_outside_drafting(registry, head, policy,
                                                                     options, temperature):
    """Per decode step, from the tree to the emitted tokens (target forward, verification, cache
    edit, bookkeeping): <= 2 host reads. Drafting reads each level's proposals (tree policies
    build trees on the host) and is counted apart."""
    target = tiny_target()
    drafter = None
    if head is not None:
        drafter = registry.create("heads", head, {"heads": 3, "draft_vocab": 0} if head == "hydra" else None,
                                  target=target)
    engine = SpeculativeEngine(target, drafter,
                               registry.create("tree_policies", policy, options) if policy else None)
    config = GenerationConfig(24, sampling=Sampling(temperature), seed=0, stop_at_eos=False)
    drafting = [(drafter, "begin"), (engine.tree_policy, "build")] if drafter is not None else []
    with HostReads() as reads, reads.excluding(*drafting):
        stream = engine.stream(PROMPT, config)
        with reads.paused():
            next(stream)  # the prefill
        per_step = []
        while True:
            before = reads.count
            try:
                next(stream)
            except StopIteration:
                break
            per_step.append(reads.count - before)
    assert per_step and max(per_step) <= 2, (per_step, reads.calls)
