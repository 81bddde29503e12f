"""koala inside transformers' own generate(): custom_generate=KoalaDecoding(...)."""

import pytest
import torch

from conftest import mtbench_prompts, tiny_model
from koala_core.errors import ConfigError
from koala_core.hf import KoalaDecoding

PROMPT = torch.tensor([[0, 5, 6, 7, 8, 5, 6, 7, 9, 10, 5, 6]])


def test_greedy_equals_plain_generate_on_a_tiny_model():
    model = tiny_model()
    koala = KoalaDecoding(head="lookup", tree="dynamic")
    for prompt in (PROMPT, PROMPT[:, :6]):
        plain = model.generate(prompt, max_new_tokens=40, do_sample=False, pad_token_id=1)
        ours = model.generate(prompt, max_new_tokens=40, do_sample=False, pad_token_id=1,
                              custom_generate=koala)
        assert torch.equal(plain, ours)
    assert koala.engine_for(model).head is not None  # it did draft (with its own engine)


def test_sampling_and_dict_outputs():
    model = tiny_model()
    koala = KoalaDecoding(head="lookup")
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(model.generate(PROMPT, max_new_tokens=16, do_sample=True, temperature=0.8,
                                   top_k=20, pad_token_id=1, custom_generate=koala))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (1, PROMPT.shape[1] + 16)

    out = model.generate(PROMPT, max_new_tokens=10, do_sample=False, pad_token_id=1,
                         return_dict_in_generate=True, custom_generate=koala)
    plain = model.generate(PROMPT, max_new_tokens=10, do_sample=False, pad_token_id=1)
    assert torch.equal(out.sequences, plain)


def test_what_it_cannot_do_is_refused():
    model = tiny_model()
    koala = KoalaDecoding(head="lookup")
    with pytest.raises(ConfigError, match="one sequence"):
        model.generate(PROMPT.repeat(2, 1), max_new_tokens=4, do_sample=False, pad_token_id=1,
                       custom_generate=koala)
    with pytest.raises(ConfigError, match="RepetitionPenalty"):
        model.generate(PROMPT, max_new_tokens=4, do_sample=False, repetition_penalty=1.3,
                       pad_token_id=1, custom_generate=koala)
    with pytest.raises(ConfigError, match="exactly one"):
        KoalaDecoding()


@pytest.mark.slow
def test_the_shipped_head_inside_generate_equals_plain_generate(real_target):
    from koala_core.prompts import encode_prompt

    model, koala = real_target.model, KoalaDecoding(checkpoint="default")
    for text in mtbench_prompts(80)[60:65]:
        ids = torch.tensor([encode_prompt(real_target.tokenizer, text)])
        plain = model.generate(ids, max_new_tokens=48, do_sample=False)
        assert torch.equal(model.generate(ids, max_new_tokens=48, do_sample=False,
                                          custom_generate=koala), plain)
    engine = koala.engine_for(model)
    import json
    from pathlib import Path

    from koala_core.shipped import default_checkpoint

    family = json.loads((Path(default_checkpoint("default")) / "koala.json").read_text())["plugin"]["name"]
    assert engine.head is not None and engine.head.plugin_name == family  # the shipped default
