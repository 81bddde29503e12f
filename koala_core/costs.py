"""The verify cost curve: what one target forward over n new tokens costs, relative to n = 1.

Speculation pays only when verifying a tree costs little more than a decode step, so tree sizes
must be chosen from this curve on the hardware at hand. Each size runs what verification really
runs: for a tree (the default) the additive tree mask and per-node positions of a balanced binary
tree of n nodes, for a chain plain causal attention. Sizes are measured interleaved (every size
once per round) so that drift in machine speed hits all of them alike.
"""

from __future__ import annotations

import statistics
import time

import torch

from .errors import ConfigError


@torch.inference_mode()
def verify_cost_curve(target, sizes: list[int], context: int = 256, repeats: int = 7,
                      warmup: int = 2, seed: int = 0, progress: bool = False,
                      shape: str = "tree") -> list[dict]:
    """Median seconds of ``forward + logits`` for n new tokens on a ``context``-token cache
    (``shape``: ``tree`` = a binary tree with its mask, ``chain`` = causal tokens).

    Returns one row per size: ``{"n", "ms", "min_ms", "max_ms", "ratio"}`` (ratio = ms / ms at n=1).
    """
    from tqdm.auto import tqdm

    from .tree import tree_shape

    if shape not in ("tree", "chain"):
        raise ConfigError(f"shape must be 'tree' or 'chain', got {shape!r}")
    sizes = sorted(set(sizes) | {1})
    gen = torch.Generator().manual_seed(seed)
    vocab = target.vocab_size
    prefix = torch.randint(0, vocab, (context,), generator=gen).to(target.device)
    cache = target.new_cache()
    target.forward(prefix, cache)
    times: dict[int, list[float]] = {n: [] for n in sizes}
    rounds = range(warmup + repeats)
    for r in tqdm(rounds, desc="verify cost", disable=not progress, leave=False):
        for n in sizes:
            ids = torch.randint(0, vocab, (n,), generator=gen).to(target.device)
            masked = shape == "tree" and n > 1
            if masked:  # node i's parent is (i - 1) // 2, as the engine would verify it
                tree = tree_shape((-1,) + tuple((i - 1) // 2 for i in range(1, n)))
                positions, mask = tree.depths.to(target.device) + context, tree.mask
            _sync(target.device)
            t0 = time.perf_counter()
            if masked:
                target.logits(target.forward(ids, cache, positions=positions, tree_mask=mask))
            else:
                target.logits(target.forward(ids, cache))
            _sync(target.device)
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
            target.keep(cache, context, [])
    base = statistics.median(times[1])
    return [{"n": n, "ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t),
             "max_ms": 1e3 * max(t), "ratio": statistics.median(t) / base} for n, t in times.items()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
