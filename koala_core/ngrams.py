"""Prompt lookup's one idea, shared by the ``lookup`` head and the trees' copy proposals: text that
repeats tends to go on as it went before."""

from __future__ import annotations

from collections import Counter

import torch


def continuations(seq: torch.Tensor, max_ngram: int, min_ngram: int = 1) -> list[tuple[int, float]]:
    """(token, share of matches) for what followed the earlier occurrences of ``seq``'s longest
    suffix n-gram (``max_ngram`` down to ``min_ngram`` tokens), most frequent first, then most
    recent; empty when no such suffix occurred before."""
    return longest_match(seq, max_ngram, min_ngram)[1]


def longest_match(seq: torch.Tensor, max_ngram: int,
                  min_ngram: int = 1) -> tuple[int, list[tuple[int, float]]]:
    """(n, continuations): the length of the longest suffix n-gram of ``seq`` that occurred before
    (0 if none) and :func:`continuations` of it."""
    n_seq = seq.shape[0]
    for n in range(min(max_ngram, n_seq - 1), min_ngram - 1, -1):
        windows = seq[:-1].unfold(0, n, 1)  # (n_seq - n, n): every earlier n-gram with a follower
        hits = (windows == seq[-n:]).all(-1).nonzero().flatten()
        if hits.numel() == 0:
            continue
        followers = seq[hits + n].tolist()[::-1]  # most recent first
        counts = Counter(followers)
        order = sorted(counts, key=lambda t: (-counts[t], followers.index(t)))
        return n, [(t, counts[t] / len(followers)) for t in order]
    return 0, []
