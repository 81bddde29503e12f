"""Prompt lookup's one idea, shared by the ``lookup`` head and the trees' copy proposals: text that
repeats tends to go on as it went before."""

from __future__ import annotations

from collections import Counter

import torch


def longest_match(seq: torch.Tensor, max_ngram: int,
                  min_ngram: int = 1) -> tuple[int, list[tuple[int, float]]]:
    """(n, continuations): the length of the longest suffix n-gram of ``seq`` (``max_ngram`` down
    to ``min_ngram`` tokens) that occurred before (0 if none), and (token, share of matches) for
    what followed its earlier occurrences, most frequent first, then most recent (empty if none).
    A scan of the whole sequence: the reference :class:`SuffixIndex` answers as."""
    n_seq = seq.shape[0]
    for n in range(min(max_ngram, n_seq - 1), min_ngram - 1, -1):
        windows = seq[:-1].unfold(0, n, 1)  # (n_seq - n, n): every earlier n-gram with a follower
        hits = (windows == seq[-n:]).all(-1).nonzero().flatten()
        if hits.numel() == 0:
            continue
        return n, _ranked(seq[hits + n].tolist())
    return 0, []


def _ranked(followers: list[int]) -> list[tuple[int, float]]:
    """(token, share) of ``followers`` (oldest first): most frequent first, then most recent."""
    followers = followers[::-1]
    counts = Counter(followers)
    order = sorted(counts, key=lambda t: (-counts[t], followers.index(t)))
    return [(t, counts[t] / len(followers)) for t in order]


class SuffixIndex:
    """:func:`longest_match` for a sequence that grows step by step, in Python dict lookups.

    The followers of every n-gram (``min_ngram`` to ``max_ngram`` tokens) of the indexed tokens
    are kept, so asking what followed a suffix costs a few lookups instead of a scan of the whole
    context; :meth:`sync` extends the index with the new tokens of a context that grew (and
    rebuilds it for another one). :meth:`longest_match` takes a short ``path`` after the indexed
    tokens (a draft tree's path) and answers as ``longest_match(tokens + path)`` would."""

    def __init__(self, max_ngram: int, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self.followers: dict[tuple[int, ...], list[int]] = {}

    def sync(self, tokens: list[int]) -> None:
        """Index ``tokens``: the tokens indexed so far must be their prefix, else it starts over."""
        have = len(self.tokens)
        if len(tokens) < have or tokens[:have] != self.tokens:
            self.tokens, self.followers, have = [], {}, 0
        for f in range(have, len(tokens)):  # the token at f follows the n-grams ending before it
            for n in range(self.min_ngram, min(self.max_ngram, f) + 1):
                self.followers.setdefault(tuple(tokens[f - n:f]), []).append(tokens[f])
        self.tokens.extend(tokens[have:])

    def longest_match(self, path: list[int]) -> tuple[int, list[tuple[int, float]]]:
        """:func:`longest_match` of the indexed tokens followed by ``path``."""
        total = len(self.tokens) + len(path)
        tail = self.tokens[-self.max_ngram:] + list(path)  # enough to see every suffix and window
        offset = total - len(tail)  # position of tail[0] in the whole sequence
        for n in range(min(self.max_ngram, total - 1), self.min_ngram - 1, -1):
            suffix = tail[-n:]
            followers = list(self.followers.get(tuple(suffix), ()))  # followers inside the tokens
            for f in range(max(len(self.tokens), n), total):  # followers inside the path
                if tail[f - n - offset:f - offset] == suffix:
                    followers.append(tail[f - offset])
            if followers:
                return n, _ranked(followers)
        return 0, []
