"""Prompt-lookup drafting: propose what followed the latest earlier occurrence of the current n-gram.

Needs no training and no hidden states. For a node, the context is every token so far plus the
node's path; the longest suffix n-gram (``max_ngram`` down to ``min_ngram``) that occurred before
gives the candidates: the tokens that followed its occurrences, ranked by count, then recency.
The context's n-grams are indexed as it grows (:class:`~koala_core.ngrams.SuffixIndex`), so a
step costs a few dictionary lookups per node, not a scan of the whole context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from koala_core.errors import ConfigError
from koala_core.interfaces import Candidates, DraftContext, DraftHead
from koala_core.ngrams import SuffixIndex
from koala_core.tree import Tree


class LookupHead(DraftHead):
    """Training-free n-gram drafter: copies continuations of repeated text from the context."""

    fallback = True  # `--head default` uses it for a model without a trained head

    @dataclass(frozen=True)
    class Config:
        max_ngram: int = field(default=3, metadata={"help": "longest suffix n-gram to match"})
        min_ngram: int = field(default=1, metadata={"help": "shortest suffix n-gram to match"})

        def __post_init__(self):
            if not 1 <= self.min_ngram <= self.max_ngram:
                raise ConfigError("lookup: need 1 <= min_ngram <= max_ngram")

    def __init__(self, config=None, target=None) -> None:
        super().__init__(config, target)
        self._index = SuffixIndex(self.config.max_ngram, self.config.min_ngram)

    def begin(self, ctx: DraftContext) -> None:
        super().begin(ctx)
        self._index.sync(ctx.tokens[:-1])  # the root comes from the paths; a new context restarts

    def expand(self, tree: Tree, nodes: list[int], k: int) -> Candidates:
        tokens = [[-1] * k for _ in nodes]
        logprobs = [[-math.inf] * k for _ in nodes]
        for row, node in enumerate(nodes):
            _, found = self._index.longest_match(tree.path_tokens(node))
            for j, (tok, p) in enumerate(found[:k]):
                tokens[row][j], logprobs[row][j] = tok, math.log(p)
        return Candidates(torch.tensor(tokens, dtype=torch.long), torch.tensor(logprobs))
