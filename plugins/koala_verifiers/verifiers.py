"""Verifiers: which path of a token tree the target accepts, and its bonus token.

Each runs as tensor operations over the whole tree on the logits' device and waits on it once, to
learn the accepted node and the bonus token (:func:`verdict`): no per-node round trips to the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from koala_core.errors import ConfigError
from koala_core.interfaces import Verdict, Verifier
from koala_core.sampling import Sampling, warp
from koala_core.tree import ShapeTensors, Tree, TreeShape


def first_of_siblings(flags: torch.Tensor, st: ShapeTensors) -> torch.Tensor:
    """(n,) bool: ``flags`` kept only on the first flagged child of each parent (the root stays)."""
    return flags & ~(st.earlier_siblings & flags[None]).any(-1)


def deepest_accepted(accepted: torch.Tensor, st: ShapeTensors) -> torch.Tensor:
    """The deepest node whose path from the root is accepted all the way (0-d tensor); ``accepted``
    holds at most one child per parent, so those nodes form a single path."""
    ok = ~(st.ancestors & ~accepted[None]).any(-1)
    return torch.argmax(ok * (st.depths + 1))


def verdict(shape: TreeShape, node: torch.Tensor, bonus: torch.Tensor) -> Verdict:
    """The step's one host sync: the accepted node and the bonus token, read together."""
    last, token = torch.stack([node, bonus.reshape(())]).tolist()
    return Verdict(shape.path_to(last), token)


class GreedyVerifier(Verifier):
    """Lossless at T=0: the longest path that matches the target's argmax, plus its next token."""

    greedy_only = True

    def verify(self, tree: Tree, shape: TreeShape, logits: torch.Tensor, sampling: Sampling,
               generator: torch.Generator | None) -> Verdict:
        t = tree.on(logits.device)
        best = logits.argmax(-1)  # (n,)
        match = t.tokens == best[t.shape.parents]  # the target would have chosen this node
        match[0] = True
        node = deepest_accepted(first_of_siblings(match, t.shape), t.shape)
        return verdict(shape, node, best[node])


class RejectionVerifier(Verifier):
    """Lossless at T>0: recursive rejection sampling across siblings (SpecInfer / EAGLE).

    At a node with target distribution p, each child proposal x (a fixed candidate) is accepted
    with probability p(x); on rejection x is removed from p and p renormalised before the next
    sibling. If no child is accepted the bonus token is drawn from what remains of p. Every emitted
    token is therefore distributed exactly as p (the same argument as sampling without replacement),
    whatever the draft proposed. At T=0 it reduces to greedy verification.

    Vectorised: after rejecting earlier siblings with distinct tokens of mass S, what remains of p
    gives child x the probability p(x) / (1 - S); one uniform per node decides every child at once,
    and the first accepted child of each node is the one the sequential walk would take.
    """

    def verify(self, tree: Tree, shape: TreeShape, logits: torch.Tensor, sampling: Sampling,
               generator: torch.Generator | None) -> Verdict:
        if sampling.greedy:
            return GreedyVerifier().verify(tree, shape, logits, sampling, generator)
        t = tree.on(logits.device)
        st, tok = t.shape, t.tokens
        probs = warp(logits, sampling)  # (n, V)
        px = probs[st.parents, tok]  # each node's token under its parent's distribution
        repeated = (st.earlier_siblings & (tok[None] == tok[:, None])).any(-1)
        px = px.masked_fill(repeated, 0.0)  # an earlier sibling already offered (and lost) it
        removed = st.earlier_siblings.to(px.dtype) @ px  # mass taken out before each child
        chance = (px / (1.0 - removed).clamp_min(1e-30)).clamp(max=1.0)
        u = torch.rand(px.shape, device=px.device, generator=generator)
        accepted = u < chance
        accepted[0] = True
        node = deepest_accepted(first_of_siblings(accepted, st), st)
        # no child of `node` was accepted: the bonus comes from p with all its children removed
        children = (st.parents == node) & (st.depths > 0)
        gone = torch.zeros_like(probs[0]).scatter_reduce(0, tok, children.to(probs.dtype), "amax")
        rest = probs[node] * (1.0 - gone)
        rest = rest / rest.sum().clamp_min(1e-30)
        return verdict(shape, node, torch.multinomial(rest, 1, generator=generator))


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
        t = tree.on(logits.device)
        st, tok = t.shape, t.tokens
        probs = warp(logits, sampling)  # (n, V)
        entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum(-1)  # (n,)
        limit = torch.minimum(torch.full_like(entropy, self.config.threshold),
                              self.config.alpha * torch.exp(-entropy))
        px = probs[st.parents, tok]
        passes = px > limit[st.parents]
        passes[0] = True
        ok = ~(st.ancestors & ~passes[None]).any(-1)
        # the longest accepted path; ties go to the higher product of target probabilities
        logp = px.clamp_min(1e-30).log()
        logp[0] = 0.0
        path_logp = st.ancestors.to(logp.dtype) @ logp
        depth = torch.where(ok, st.depths, -1)
        score = torch.where(depth == depth.max(), path_logp, float("-inf"))
        node = torch.argmax(score)
        return verdict(shape, node, torch.multinomial(probs[node], 1, generator=generator))
