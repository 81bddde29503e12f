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
