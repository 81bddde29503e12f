"""Draft-step latency per head family, K and draft dtype, as the engine pays it: each timed draft
step follows an (untimed) target forward, so the head's weights are as cold as in real decoding.

Heads are freshly initialised (latency depends on the architecture, not on the weights) and draft
the tree their shipped checkpoint uses (eagle: static tiny; hydra / medusa: dynamic 3/3/8, the size
their `auto` trees average), with the copy proposals (copy=3) every shipped head drafts with.
    python -m pytest benchmarks/test_draft_latency.py --benchmark-only
"""

import pytest
import torch

from koala_core import kernels
from koala_core.interfaces import DraftContext, TreeBudget
from koala_core.prompts import encode_prompt
from koala_core.registry import default_registry
from koala_core.sampling import Sampling

TREES = {"medusa": ("dynamic", {"depth": 3, "top_k": 3, "nodes": 8, "copy": 3}),
         "hydra": ("dynamic", {"depth": 3, "top_k": 3, "nodes": 8, "copy": 3}),
         "eagle": ("static", {"preset": "tiny", "copy": 3})}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("family", ["medusa", "hydra", "eagle"])
def test_draft_step_latency(benchmark, bench_target, family, layers, dtype):
    target, reg = bench_target, default_registry()
    if dtype == "int8" and not kernels.int8_available():
        pytest.skip("no weight-only int8 kernel in this torch")
    torch.manual_seed(0)
    options = {"layers": layers, **({"heads": 3} if family != "eagle" else {})}
    head = reg.create("heads", family, options, target=target).to(target.device)
    head.prepare_drafting(DTYPES[dtype])
    policy = reg.create("tree_policies", *TREES[family])
    budget, sampling = TreeBudget(max_nodes=64, max_depth=8), Sampling()
    tokens = encode_prompt(target.tokenizer, "Explain how a bicycle stays upright.")
    with torch.inference_mode():
        cache = target.new_cache()
        hidden = target.forward(torch.tensor(tokens), cache)
        tokens = tokens + [int(target.logits(hidden[-1:]).argmax())]
        ctx = DraftContext(tokens, hidden, budget, sampling, 0)
        head.begin(ctx)
        policy.build(head, ctx)
        hidden = target.forward(torch.tensor(tokens[-1:]), cache)  # one plain step
        tokens = tokens + [int(target.logits(hidden).argmax())]
        ctx = DraftContext(tokens, hidden, budget, sampling, 1)
        past = target.cache_length(cache)

    def target_step():  # untimed: what runs between two draft steps in the engine
        with torch.inference_mode():
            target.logits(target.forward(torch.tensor(tokens[-1:]), cache))
            target.keep(cache, past, [])

    def draft():
        with torch.inference_mode():
            head.begin(ctx)
            return policy.build(head, ctx)

    tree = benchmark.pedantic(draft, setup=target_step, rounds=15, warmup_rounds=2)
    benchmark.extra_info.update({"family": family, "layers": layers, "dtype": dtype,
                                 "nodes": len(tree) - 1})
