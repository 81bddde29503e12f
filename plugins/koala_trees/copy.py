"""Copy proposals for every tree policy (``copy=N``): the head's candidates plus prompt lookup's.

A trained head guesses what the target would write; it is poor at what the target *copies* (a
summary quoting its source, names and numbers kept in a translation, fields pulled out of a text),
which prompt lookup gets for free. With ``copy=N`` a policy drafts through :class:`WithCopies`:
wherever the last N or more tokens of a node's context occurred before, what followed them joins
that node's candidates, ranked with the head's by probability, so a tree of k children per node
still has k. The verifier checks every candidate as usual, so outputs do not change; only which
guesses are tried does.

A copy's probability is lookup's share of the earlier occurrences times how often a match of that
length is right (:data:`RELIABILITY`): lookup's share alone is 1 for any n-gram seen once, which
would outrank a confident head on every common phrase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from koala_core.errors import ConfigError
from koala_core.interfaces import Candidates, DraftContext, DraftHead, TreePolicy
from koala_core.ngrams import SuffixIndex
from koala_core.tree import Tree

# How often the target's next token is what followed the earlier occurrence(s) of the last n tokens,
# when they occurred before with one follower: 1 token 0.35, 2-gram 0.57, 3-gram 0.59, 4-gram 0.69,
# 5-gram 0.81 (several followers: 0.17-0.34, of which the share accounts for part). Measured on
# held-out ShareGPT conversations (records 10,000 on), 25.6k assistant positions, teacher-forced:
# `python benchmarks/copy_reliability.py`.
RELIABILITY = {1: 0.35, 2: 0.57, 3: 0.59, 4: 0.69, 5: 0.81}
LONGEST = max(RELIABILITY)


@dataclass(frozen=True)
class CopyOption:
    """The ``copy`` option every built-in policy's config inherits."""

    copy: int = field(default=0, kw_only=True, metadata={
        "help": "also propose what followed earlier occurrences of a node's last N+ tokens "
                "(prompt lookup: copying the head misses); 0 = off"})

    def __post_init__(self):
        if self.copy < 0:
            raise ConfigError(f"copy must be >= 0 (0 = off), got {self.copy}")


class WithCopies:
    """The head as a tree policy sees it with ``copy=N``: its proposals merged with lookup's."""

    def __init__(self, ngram: int) -> None:
        self.head: DraftHead | None = None
        self.index = SuffixIndex(max(LONGEST, ngram), ngram)  # grows with the context, step by step

    def wrap(self, head: DraftHead, ctx: DraftContext) -> "WithCopies":
        self.head = head
        self.index.sync(ctx.tokens[:-1])  # the root comes from the paths
        return self

    def copy_of(self, tree: Tree, node: int) -> tuple[int, float] | None:
        """(token, probability) of the copy proposal after ``node``, or None."""
        n, found = self.index.longest_match(tree.path_tokens(node))
        if not found:
            return None
        token, share = found[0]
        return token, share * RELIABILITY[min(n, LONGEST)]

    def expand(self, tree: Tree, nodes: list[int], k: int) -> Candidates:
        return merge(self.head.expand(tree, nodes, k), [self.copy_of(tree, n) for n in nodes])


def merge(cand: Candidates, copies: list[tuple[int, float] | None]) -> Candidates:
    """Each row's candidates with its copy proposal (token, probability) ranked in: a token both
    propose keeps the higher probability; a new one takes the last place if it is more probable
    than what holds it. Rows stay sorted by probability, width unchanged."""
    if all(found is None for found in copies):
        return cand
    rows_t, rows_lp = cand.tokens.tolist(), cand.logprobs.tolist()  # small rows: Python, one read
    for row, found in enumerate(copies):
        if found is None:
            continue
        token, p = found
        lp = math.log(p)
        t, l = rows_t[row], rows_lp[row]
        if token in t:
            j = t.index(token)
            l[j] = max(l[j], lp)
        elif lp > l[-1]:
            t[-1], l[-1] = token, lp
        else:
            continue
        order = sorted(range(len(t)), key=lambda i: -l[i])  # stable: ties keep their order
        rows_t[row], rows_lp[row] = [t[i] for i in order], [l[i] for i in order]
    return Candidates(torch.tensor(rows_t, dtype=cand.tokens.dtype, device=cand.tokens.device),
                      torch.tensor(rows_lp, dtype=cand.logprobs.dtype, device=cand.logprobs.device))


class CopyingPolicy(TreePolicy):
    """Base of the built-in policies: their configs inherit :class:`CopyOption`, and they draft
    through :meth:`drafter`."""

    def drafter(self, head: DraftHead, ctx: DraftContext):
        """The head itself, or with ``copy=N`` the head with lookup's proposals merged in."""
        if not self.config.copy:
            return head
        if getattr(self, "_copies", None) is None:
            self._copies = WithCopies(self.config.copy)
        return self._copies.wrap(head, ctx)
