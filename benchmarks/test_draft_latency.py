"""Draft-step latency per head family and K (one steady-state draft step after a real prefill).

Heads are freshly initialised: latency depends on the architecture, not on the weights.
    python -m pytest benchmarks/test_draft_latency.py --benchmark-only
"""

import pytest
import torch

from koala_core.interfaces import DraftContext, TreeBudget
from koala_core.prompts import encode_prompt
from koala_core.registry import default_registry
from koala_core.sampling import Sampling

TREES = {"medusa": ("static", {"preset": "tiny"}), "hydra": ("static", {"preset": "small"}),
         "eagle": ("static", {"preset": "tiny"})}


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("family", ["medusa", "hydra", "eagle"])
def test_draft_step_latency(benchmark, bench_target, family, layers):
    target, reg = bench_target, default_registry()
    torch.manual_seed(0)
    options = {"layers": layers, **({"heads": 3} if family != "eagle" else {})}
    head = reg.create("heads", family, options, target=target).to(target.device).eval()
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

    def draft():
        with torch.inference_mode():
            head.begin(ctx)
            return policy.build(head, ctx)

    tree = benchmark.pedantic(draft, rounds=10, warmup_rounds=2)
    benchmark.extra_info.update({"family": family, "layers": layers, "nodes": len(tree) - 1})
