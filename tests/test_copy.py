"""Copy proposals (``copy=N`` on every built-in tree policy): prompt lookup's guesses ranked in with
the head's, outputs unchanged."""

import math

import pytest
import torch

from conftest import tiny_target
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.interfaces import Candidates, DraftContext, DraftHead, TreeBudget
from koala_trees.copy import merge

POLICIES = ["chain", "static", "dynamic", "auto"]


def test_merge_ranks_the_copy_in_and_keeps_the_width():
    lp = torch.log(torch.tensor([[0.5, 0.2], [0.6, 0.3], [0.9, 0.05]]))
    cand = Candidates(torch.tensor([[10, 11], [20, 21], [30, 31]]), lp)
    out = merge(cand, [(11, 0.8), (99, 0.4), (98, 0.01)])
    assert out.tokens.tolist() == [[11, 10], [20, 99], [30, 31]]  # boosted; new in 2nd; too weak
    assert out.logprobs[0, 0].exp().item() == pytest.approx(0.8)
    assert out.logprobs[1, 1].exp().item() == pytest.approx(0.4)
    assert merge(cand, [None, None, None]).tokens.tolist() == cand.tokens.tolist()
    assert cand.tokens[0].tolist() == [10, 11]  # the head's candidates are not edited in place


def test_suffix_index_answers_as_the_scan_does():
    """The incremental index behind copy proposals gives what a scan of the whole sequence gives:
    for contexts that grow step by step and switch, paths of any length, and n-gram ranges."""
    import random

    from koala_core.ngrams import SuffixIndex, longest_match

    rng = random.Random(0)
    for max_n, min_n in ((5, 3), (5, 1), (2, 2)):
        index = SuffixIndex(max_n, min_n)
        context: list[int] = []
        for step in range(150):
            if step % 50 == 0:
                context = []  # another generation: the index starts over
            context = context + [rng.randrange(6) for _ in range(rng.randrange(0, 4))]
            index.sync(context)
            for _ in range(3):
                path = [rng.randrange(6) for _ in range(rng.randrange(1, 6))]
                seq = torch.tensor(context + path, dtype=torch.long)
                want = longest_match(seq, max_n, min_n)
                got = index.longest_match(path)
                assert got[0] == want[0], (context, path)
                assert [t for t, _ in got[1]] == [t for t, _ in want[1]]
                assert [s for _, s in got[1]] == pytest.approx([s for _, s in want[1]])
    with pytest.raises(ValueError):
        SuffixIndex(2, 3)


def test_lookup_head_proposes_what_the_scan_finds(registry):
    """The ``lookup`` head drafts from the incremental index: per node, the followers of the
    longest suffix n-gram of context + path, as a scan of the whole sequence ranks them, through
    contexts that grow step by step and a new generation's context."""
    import random

    from koala_core.ngrams import longest_match
    from koala_core.tree import Tree

    rng = random.Random(1)
    head = registry.create("heads", "lookup", {"max_ngram": 3, "min_ngram": 1})
    context: list[int] = []
    for step in range(60):
        if step == 30:
            context = []  # another generation
        context = context + [rng.randrange(5) for _ in range(rng.randrange(1, 4))]
        head.begin(DraftContext(context, torch.zeros(1, 4), TreeBudget(8, 4), step=step))
        tree = Tree(context[-1])
        node = tree.add(0, rng.randrange(5), -1.0)
        tree.add(node, rng.randrange(5), -2.0)
        nodes = list(range(len(tree)))
        cand = head.expand(tree, nodes, 2)
        for row, n in enumerate(nodes):
            seq = torch.tensor(context[:-1] + tree.path_tokens(n), dtype=torch.long)
            want = longest_match(seq, 3, 1)[1][:2]
            got = [(t, lp) for t, lp in zip(cand.tokens[row].tolist(), cand.logprobs[row].tolist())
                   if t >= 0]
            assert [t for t, _ in got] == [t for t, _ in want], (context, n)
            assert [lp for _, lp in got] == pytest.approx([math.log(p) for _, p in want])


class Fixed(DraftHead):
    """Always proposes tokens 90, 91, ... with falling probabilities (a head that never copies)."""

    def expand(self, tree, nodes, k):
        p = torch.tensor([0.3 / (j + 1) for j in range(k)])
        return Candidates(torch.arange(90, 90 + k).repeat(len(nodes), 1), p.log().repeat(len(nodes), 1))


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_tries_what_the_context_repeats(registry, policy):
    # "5 6 7 8 ... 5 6 7" : the 3-gram 5 6 7 occurred before, followed by 8
    ctx = DraftContext([1, 5, 6, 7, 8, 2, 3, 5, 6, 7], None, TreeBudget(16, 4))
    head = Fixed()
    plain = registry.create("tree_policies", policy).build(head, ctx)
    copying = registry.create("tree_policies", policy, {"copy": 3}).build(head, ctx)
    first = lambda tree: {tree.tokens[i] for i in range(1, len(tree)) if tree.parents[i] == 0}
    assert 8 not in first(plain) and 8 in first(copying)


@pytest.mark.parametrize("policy", POLICIES)
def test_copy_n_sets_the_shortest_match(registry, policy):
    # "... 5 8 ... 5": only the 1-token suffix 5 occurred before (followed by 8)
    ctx = DraftContext([1, 5, 8, 2, 3, 5], None, TreeBudget(16, 4))
    first = lambda tree: {tree.tokens[i] for i in range(1, len(tree)) if tree.parents[i] == 0}
    built = {n: registry.create("tree_policies", policy, {"copy": n}).build(Fixed(), ctx)
             for n in (1, 2)}
    assert 8 in first(built[1]) and 8 not in first(built[2])


@pytest.mark.parametrize("policy", POLICIES)
def test_copying_changes_no_output(registry, policy):
    target = tiny_target()
    head = registry.create("heads", "eagle", {"draft_vocab": 64}, target=target)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    prompt = [0, 5, 6, 7, 8, 5, 6, 7, 9, 5, 6, 7]
    config = GenerationConfig(40, stop_at_eos=False)
    got = SpeculativeEngine(target, head, registry.create("tree_policies", policy, {"copy": 2})
                            ).generate(prompt, config)
    assert got.token_ids == SpeculativeEngine(target).generate(prompt, config).token_ids
    assert got.drafted > 0


def test_copy_option_is_checked_and_listed(registry):
    from koala_core.config import describe_options
    from koala_core.errors import ConfigError

    for policy in POLICIES:
        assert "copy" in {o["name"] for o in describe_options(registry.get("tree_policies", policy).cls)}
        with pytest.raises(ConfigError, match="copy must be >= 0"):
            registry.create("tree_policies", policy, {"copy": -1})
