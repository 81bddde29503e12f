"""Draft-step latency per head family, K and draft dtype, as the engine pays it: each timed draft
step follows an (untimed) target forward, so the head's weights are as cold as in real decoding.

Heads are freshly initialised (latency depends on the architecture, not on the weights) and draft
the tree their shipped checkpoint uses (eagle: static tiny; hydra / medusa: dynamic 3/3/8, the size
their `auto` trees average), with the copy proposals (copy=3) every shipped head drafts with.
    python -m pytest benchmarks/test_draft_latency.py --benchmark-only
"""

import pytest
import torch

from draft_step import second_draft_step
from koala_core import kernels
from koala_core.registry import default_registry

TREES = {"medusa": ("dynamic", {"depth": 3, "top_k": 3, "nodes": 8, "copy": 3}),
         "hydra": ("dynamic", {"depth": 3, "top_k": 3, "nodes": 8, "copy": 3}),
         "eagle": ("static", {"preset": "tiny", "copy": 3})}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8,
          "int8-dynamic": torch.qint8}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("family", ["medusa", "hydra", "eagle"])
def test_draft_step_latency(benchmark, bench_target, family, layers, dtype):
    options = {"layers": layers, **({"heads": 3} if family != "eagle" else {})}
    time_draft_step(benchmark, bench_target, family, options, dtype)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_eagle_narrow_second_layer(benchmark, bench_target, dtype):
    """EAGLE K = 2 with layer 2's MLP a quarter of the target's width (`extra_intermediate=384`,
    the ablation's narrow arm): what the narrower layer saves against `eagle-2-*` above."""
    time_draft_step(benchmark, bench_target, "eagle", {"layers": 2, "extra_intermediate": 384}, dtype)


def time_draft_step(benchmark, target, family: str, options: dict, dtype: str) -> None:
    reg = default_registry()
    if dtype == "int8" and not kernels.int8_available():
        pytest.skip("no weight-only int8 kernel in this torch")
    if dtype == "int8-dynamic" and not kernels.dynamic_int8_available():
        pytest.skip("no fbgemm dynamic int8 linear in this torch")
    torch.manual_seed(0)
    head = reg.create("heads", family, options, target=target).to(target.device)
    head.prepare_drafting(DTYPES[dtype])
    policy = reg.create("tree_policies", *TREES[family])
    # untimed before each timing: the target's forward that runs between two draft steps
    ctx, target_step = second_draft_step(target, head, policy, "Explain how a bicycle stays upright.")

    def draft():
        with torch.inference_mode():
            head.begin(ctx)
            return policy.build(head, ctx)

    tree = benchmark.pedantic(draft, setup=target_step, rounds=15, warmup_rounds=2)
    benchmark.extra_info.update({"family": family, **options, "dtype": dtype, "nodes": len(tree) - 1})
