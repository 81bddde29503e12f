"""Verifiers: which path of a token tree the target accepts, and its bonus token."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from koala_core.errors import ConfigError
from koala_core.interfaces import Verdict, Verifier
from koala_core.sampling import Sampling, warp
from koala_core.tree import Tree, TreeShape


class GreedyVerifier(Verifier):
    """Lossless at T=0: the longest path that matches the target's argmax, plus its next token."""

    greedy_only = True

    def verify(self, tree: Tree, shape: TreeShape, logits: torch.Tensor, sampling: Sampling,
               generator: torch.Generator | None) -> Verdict:
        best = logits.argmax(-1).tolist()  # (n,)
        path = [0]
        while True:
            node = path[-1]
            nxt = next((c for c in shape.children[node] if tree.tokens[c] == best[node]), None)
            if nxt is None:
                return Verdict(path, best[node])
            path.append(nxt)


class RejectionVerifier(Verifier):
    """Lossless at T>0: recursive rejection sampling across siblings (SpecInfer / EAGLE).

    At a node with target distribution p, each child proposal x (a fixed candidate) is accepted
    with probability p(x); on rejection x is removed from p and p renormalised before the next
    sibling. If no child is accepted the bonus token is drawn from what remains of p. Every emitted
    token is therefore distributed exactly as p (the same argument as sampling without replacement),
    whatever the draft proposed. At T=0 it reduces to greedy verification.
    """

    def verify(self, tree: Tree, shape: TreeShape, logits: torch.Tensor, sampling: Sampling,
               generator: torch.Generator | None) -> Verdict:
        if sampling.greedy:
            return GreedyVerifier().verify(tree, shape, logits, sampling, generator)
        probs = warp(logits, sampling)  # (n, V), on the logits' device
        device = probs.device
        path = [0]
        while True:
            node = path[-1]
            p = probs[node].clone()
            accepted = None
            for child in shape.children[node]:
                x = tree.tokens[child]
                px = float(p[x])
                if px <= 0.0:
                    continue
                u = float(torch.rand((), device=device, generator=generator))
                if u < px:
                    accepted = child
                    break
                p[x] = 0.0
                p /= p.sum()
            if accepted is None:
                return Verdict(path, int(torch.multinomial(p, 1, generator=generator)))
            path.append(accepted)


class TypicalVerifier(Verifier):
    """LOSSY (output distribution differs from the target's): Medusa-2 typical acceptance.

    A drafted token x after a node is accepted when p(x) > min(threshold, alpha * exp(-H(p))),
    p being the target's tempered distribution there; the longest accepted path wins. Faster than
    rejection sampling at high temperature, but it does not preserve the target's distribution.
    """

    lossy = True

    @dataclass(frozen=True)
    class Config:
        threshold: float = field(default=0.09, metadata={"help": "posterior threshold epsilon"})
        alpha: float = field(default=0.3, metadata={"help": "entropy-scaled threshold factor"})

        def __post_init__(self):
            if not (0 < self.threshold <= 1 and 0 < self.alpha <= 1):
                raise ConfigError("typical: threshold and alpha must be in (0, 1]")

    def verify(self, tree: Tree, shape: TreeShape, logits: torch.Tensor, sampling: Sampling,
               generator: torch.Generator | None) -> Verdict:
        if sampling.greedy:
            return GreedyVerifier().verify(tree, shape, logits, sampling, generator)
        probs = warp(logits, sampling)  # (n, V)
        entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum(-1)  # (n,)
        limit = torch.minimum(torch.full_like(entropy, self.config.threshold),
                              self.config.alpha * torch.exp(-entropy))
        ok = [False] * len(tree)
        ok[0] = True
        for i in range(1, len(tree)):
            parent = shape.parents[i]
            ok[i] = ok[parent] and float(probs[parent, tree.tokens[i]]) > float(limit[parent])
        # longest accepted path; ties go to the higher product of target probabilities
        def score(i: int) -> tuple[int, float]:
            logp = sum(math.log(max(float(probs[shape.parents[j], tree.tokens[j]]), 1e-30))
                       for j in shape.path_to(i)[1:])
            return (int(shape.depths[i]), logp)

        last = max((i for i in range(len(tree)) if ok[i]), key=score)
        path = shape.path_to(last)
        bonus = int(torch.multinomial(probs[last], 1, generator=generator))
        return Verdict(path, bonus)
