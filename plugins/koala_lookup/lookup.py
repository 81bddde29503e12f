"""Prompt-lookup drafting: propose what followed the latest earlier occurrence of the current n-gram.

Needs no training and no hidden states. For a node, the context is every token so far plus the
node's path; the longest suffix n-gram (``max_ngram`` down to ``min_ngram``) that occurred before
gives the candidates: the tokens that followed its occurrences, ranked by count, then recency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from koala_core.errors import ConfigError
from koala_core.interfaces import Candidates, DraftContext, DraftHead
from koala_core.ngrams import continuations
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

    def begin(self, ctx: DraftContext) -> None:
        super().begin(ctx)
        self._context = torch.tensor(ctx.tokens[:-1], dtype=torch.long)  # root comes from the path

    def expand(self, tree: Tree, nodes: list[int], k: int) -> Candidates:
        tokens = torch.full((len(nodes), k), -1, dtype=torch.long)
        logprobs = torch.full((len(nodes), k), float("-inf"))
        for row, node in enumerate(nodes):
            seq = torch.cat([self._context, torch.tensor(tree.path_tokens(node), dtype=torch.long)])
            found = continuations(seq, self.config.max_ngram, self.config.min_ngram)
            for j, (tok, p) in enumerate(found[:k]):
                tokens[row, j] = tok
                logprobs[row, j] = torch.log(torch.tensor(p))
        return Candidates(tokens, logprobs)
