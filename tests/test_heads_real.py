"""Each shipped head family on the real default model: greedy output identical to plain decoding."""

from pathlib import Path

import pytest

from conftest import mtbench_prompts
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.prompts import encode_prompt
from koala_core.shipped import default_checkpoint, shipped_checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def references(real_target):
    out = []
    for text in mtbench_prompts(80)[70:75]:
        ids = encode_prompt(real_target.tokenizer, text)
        out.append((ids, SpeculativeEngine(real_target).generate(ids, GenerationConfig(48)).token_ids))
    return out


@pytest.mark.parametrize("family", ["medusa", "hydra", "eagle"])
def test_shipped_family_is_lossless(real_target, references, registry, family):
    from koala_core.compose import build_method

    names = [n for n in shipped_checkpoints() if n.startswith(family)]
    assert names, f"no shipped {family} checkpoint"
    method = build_method(names[0], real_target, registry)
    forwards = tokens = 0
    for ids, ref in references:
        result = method.engine.generate(ids, GenerationConfig(48))
        assert result.token_ids == ref
        forwards += result.target_forwards
        tokens += result.decode_tokens
    assert tokens / forwards > 1.2, "a trained head must get drafts accepted"


def test_int8_dynamic_drafting_is_lossless_and_accepts_like_weight_only_int8(real_target, references,
                                                                              registry):
    """The default head drafting with int8 activations too (int8-dynamic): the same outputs as
    plain decoding, and its drafts accepted about as often as with weight-only int8 (quantising
    activations must not cost the drafts their quality: on one fixed tree, not `auto`, whose
    sizes follow measured times, the same tokens per target forward within 10 %)."""
    from koala_core import kernels
    from koala_core.compose import build_method

    if not (kernels.int8_available() and kernels.dynamic_int8_available()):
        pytest.skip("needs torch's weight-only int8 kernel and fbgemm's dynamic int8 linear")
    per_forward = {}
    for kind in ("int8", "int8-dynamic"):
        method = build_method("default", real_target, registry, draft_dtype=kind,
                              tree=("dynamic", {"depth": 3, "top_k": 3, "nodes": 8}))
        assert method.engine.head.drafts_in == kind
        forwards = tokens = 0
        for ids, ref in references:
            result = method.engine.generate(ids, GenerationConfig(48))
            assert result.token_ids == ref, kind
            forwards += result.target_forwards
            tokens += result.decode_tokens
        per_forward[kind] = tokens / forwards
    assert per_forward["int8-dynamic"] >= 0.9 * per_forward["int8"], per_forward


@pytest.mark.parametrize("recipe", ["eagle-k1-deep.toml", "medusa-k1-wide.toml"])
def test_shipped_tau_recipes_are_lossless(real_target, references, registry, recipe):
    """The shipped heads with the bigger trees of the tau-oriented recipes."""
    from koala_core.compose import build_method

    folder = Path(__file__).resolve().parent.parent / "recipes"
    method = build_method(str(folder / recipe), real_target, registry)
    for ids, ref in references:
        assert method.engine.generate(ids, GenerationConfig(48)).token_ids == ref


def test_default_checkpoint_exists_and_loads(real_target, registry):
    from koala_core.checkpoint import load_head

    folder = default_checkpoint("default")
    assert folder is not None
    head = load_head(folder, real_target, registry)
    assert head.checkpoint_meta["metrics"]["val_top1"]
