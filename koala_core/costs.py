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
    cache = target.new_cache(context + max(sizes))  # the cache the engine generates with
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


def processor(device: torch.device) -> str:
    """What a curve was measured on: the GPU's name, or the vector ISA torch dispatches to on this
    CPU (AVX2, AVX512, ...) and the CPU's model name. A cache shared by machines of different kinds
    (a network home directory; this project's sessions land on AVX-512 and AVX2-only EPYCs, whose
    verify curves differ: 8 tokens cost 1.34x a step on one, 1.54x on the other) must not hand one
    machine's curve to the other."""
    import platform
    import re

    from .kernels import cpuinfo

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        model = next((line.split(":", 1)[1] for line in cpuinfo().splitlines()
                      if line.startswith("model name")), platform.processor())
        name = f"{torch.backends.cpu.get_cpu_capability()}-{model}"
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:48]


def cost_key(target) -> str:
    """The file name under which this machine's costs for ``target`` are kept: model identity,
    dtype, kernels, attention, device, processor and threads (each changes the curve)."""
    ident = target.identity()
    dtype = str(target.dtype).replace("torch.", "")
    kernels = getattr(target, "kernels", "torch")
    if kernels == "onednn":  # the two oneDNN paths cost differently (koala_core/kernels.py),
        from .kernels import onednn_path  # and so did the unfused sibling projections

        kernels = f"onednn-{onednn_path()}-fused"
    attention = getattr(target, "attention", "sdpa")  # koala_sdpa: masked steps copy no KV cache
    return (f"{ident.architecture}-{ident.lm_head_fingerprint[:12]}-{dtype}-{kernels}-{attention}-"
            f"{target.device.type}-{processor(target.device)}-t{torch.get_num_threads()}")


def cost_path(target):
    from .model import cache_dir

    return cache_dir() / "costs" / f"{cost_key(target)}.json"


def save_costs(target, curves: dict[int, list[dict]], shape: str) -> str:
    """Keep measured curves (context length -> rows) in the cache for ``auto`` and later runs."""
    from .files import write_json_atomic

    path = cost_path(target)
    write_json_atomic(path, {"key": cost_key(target), "shape": shape,
                             "curves": {str(c): rows for c, rows in curves.items()}})
    return str(path)


def saved_ratios(target) -> dict[int, float] | None:
    """verify(n) / verify(1) from this machine's saved tree curve (the context closest to 256),
    or None when ``koala cost`` has not been run for this target and setup."""
    import json

    path = cost_path(target)
    try:
        doc = json.loads(path.read_text())
        curves = {int(c): rows for c, rows in doc["curves"].items()}
    except (OSError, ValueError, KeyError):
        return None
    if not curves or doc.get("shape") != "tree":
        return None
    rows = curves[min(curves, key=lambda c: abs(c - 256))]
    return {int(r["n"]): float(r["ratio"]) for r in rows}
