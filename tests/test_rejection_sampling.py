"""Speculative sampling keeps the target's distribution: a chi-square test against exact probabilities.

A tiny model with a 5-token vocabulary lets us enumerate every 4-token continuation and compute its
exact probability under the target (after temperature / top-k / top-p). The engine then samples
thousands of continuations with chain and tree drafts, from a good and a deliberately bad drafter.
"""

import itertools

import pytest
import torch
from scipy.stats import chisquare

from conftest import tiny_target
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.interfaces import Candidates, DraftHead
from koala_core.sampling import Sampling, warp

VOCAB, NEW, PROMPT = 5, 4, [0, 3, 4, 2]


def next_logits(target, prefix: tuple) -> torch.Tensor:
    """The target's next-token logits after ``prefix`` (memoised: the vocabulary is tiny)."""
    memo = target.__dict__.setdefault("_memo", {})
    if prefix not in memo:
        with torch.no_grad():
            memo[prefix] = target.model(torch.tensor([prefix])).logits[0, -1]
    return memo[prefix]


class OracleHead(DraftHead):
    """A good drafter: the target's own top-k."""

    def expand(self, tree, nodes, k):
        rows = [torch.topk(torch.log_softmax(next_logits(
            self.target, tuple(self.ctx.tokens[:-1] + tree.path_tokens(n))), -1), k) for n in nodes]
        return Candidates(torch.stack([r.indices for r in rows]), torch.stack([r.values for r in rows]))


class BadHead(DraftHead):
    """A deliberately bad drafter: the target's least likely tokens first."""

    def expand(self, tree, nodes, k):
        rows = [torch.topk(-next_logits(self.target, tuple(self.ctx.tokens[:-1] + tree.path_tokens(n))),
                           k).indices for n in nodes]
        return Candidates(torch.stack(rows), torch.full((len(nodes), k), -1.0))


def exact_distribution(target, sampling):
    """{continuation: probability} for every sequence of NEW tokens."""
    probs = {}
    for seq in itertools.product(range(VOCAB), repeat=NEW):
        p = 1.0
        for i in range(NEW):
            p *= float(warp(next_logits(target, tuple(PROMPT) + seq[:i]), sampling)[seq[i]])
            if p == 0.0:
                break
        probs[seq] = p
    total = sum(probs.values())
    return {k: v / total for k, v in probs.items()}


CASES = [
    ("oracle-chain", OracleHead, "chain", {"depth": 3}, Sampling(1.0)),
    ("oracle-tree", OracleHead, "static", {"preset": "small"}, Sampling(0.8)),
    ("bad-tree", BadHead, "static", {"preset": "small"}, Sampling(1.0)),
    ("bad-dynamic-topk-topp", BadHead, "dynamic", {"depth": 3, "top_k": 2, "nodes": 5},
     Sampling(1.0, top_k=4, top_p=0.9)),
]


@pytest.mark.parametrize("name,head_cls,policy,options,sampling", CASES, ids=[c[0] for c in CASES])
def test_rejection_sampling_matches_target(registry, name, head_cls, policy, options, sampling):
    target = tiny_target("llama", vocab=VOCAB, seed=3, scale=4.0)
    with torch.no_grad():
        exact = exact_distribution(target, sampling)
    engine = SpeculativeEngine(target, head_cls(target=target),
                               registry.create("tree_policies", policy, options),
                               registry.create("verifiers", "rejection"))
    n = 3000
    counts = dict.fromkeys(exact, 0)
    accepted = 0
    for seed in range(n):
        result = engine.generate(PROMPT, GenerationConfig(NEW, sampling, seed=seed, stop_at_eos=False))
        counts[tuple(result.token_ids)] += 1
        accepted += result.accepted
    if head_cls is OracleHead:
        assert accepted > n * 0.5, "a good drafter should have many tokens accepted"
    # pool rare outcomes so every cell expects at least 5 samples
    cells = sorted(exact, key=exact.get, reverse=True)
    obs, exp, rest_o, rest_e = [], [], 0, 0.0
    for c in cells:
        if exact[c] * n >= 5:
            obs.append(counts[c])
            exp.append(exact[c] * n)
        else:
            rest_o += counts[c]
            rest_e += exact[c] * n
    obs.append(rest_o)
    exp.append(rest_e)
    assert sum(counts[c] for c in cells if exact[c] == 0) == 0, "sampled an impossible sequence"
    stat, pvalue = chisquare(obs, exp)
    assert pvalue > 1e-3, f"{name}: chi2={stat:.1f} over {len(obs)} cells, p={pvalue:.2e}"


def test_detects_a_biased_sampler(registry):
    """The same test rejects a verifier that is not exact (the typical acceptance, lossy)."""
    target = tiny_target("llama", vocab=VOCAB, seed=3, scale=4.0)
    sampling = Sampling(1.0)
    with torch.no_grad():
        exact = exact_distribution(target, sampling)
    engine = SpeculativeEngine(target, OracleHead(target=target),
                               registry.create("tree_policies", "chain", {"depth": 3}),
                               registry.create("verifiers", "typical", {"threshold": 0.3, "alpha": 0.5}))
    n = 3000
    counts = dict.fromkeys(exact, 0)
    for seed in range(n):
        counts[tuple(engine.generate(PROMPT, GenerationConfig(NEW, sampling, seed=seed,
                                                              stop_at_eos=False)).token_ids)] += 1
    keep = [c for c in exact if exact[c] * n >= 5]
    obs = [counts[c] for c in keep] + [n - sum(counts[c] for c in keep)]
    exp = [exact[c] * n for c in keep] + [n - sum(exact[c] * n for c in keep)]
    assert chisquare(obs, exp).pvalue < 1e-6
