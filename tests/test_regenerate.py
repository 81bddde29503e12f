"""On-policy data (`koala prepare --regenerate`): batched greedy answers with what the target
computed while generating them, identical to unbatched greedy decoding and a teacher-forced pass."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import prepare_interrupted, tiny_target, write_sharegpt
from koala_core.data import PrepareConfig, load_split, prepare, teacher_pass
from koala_core.errors import KoalaError
from koala_core.prompts import encode_chat
from koala_core.regenerate import answer_batch


def greedy(target, ids: list[int], n: int) -> list[int]:
    """Plain greedy decoding, one full forward per token (the slow, obvious reference)."""
    seq = list(ids)
    for _ in range(n):
        t = int(target.logits(target.forward(torch.tensor(seq), target.new_cache()))[-1].argmax())
        seq.append(t)
        if t in target.eos_token_ids:
            break
    return seq


@pytest.mark.parametrize("aux", [(), (0, 1)])
def test_batched_answers_are_greedy_and_carry_the_targets_outputs(aux):
    target = tiny_target(scale=4.0)
    texts = ["t5 t6 t7", "t9 " * 17, "t10 t11", "t40 t41 t42 t43 t44 t45"]
    prompts = [encode_chat(target.tokenizer, [{"role": "user", "content": t}]) for t in texts]
    limits = [12, 5, 20, 9]
    records = answer_batch(target, prompts, limits, aux_layers=aux, topk=3)
    for prompt, limit, rec in zip(prompts, limits, records):
        seq = greedy(target, prompt, limit)
        n = len(seq) - 1  # the last answer token is never fed to the target
        assert rec["input_ids"].tolist() == seq[:n]
        assert rec["labels"][len(prompt) - 1:].tolist() == seq[len(prompt):]
        assert rec["loss_mask"].tolist() == [0] * (len(prompt) - 1) + [1] * (n - len(prompt) + 1)
        ref = teacher_pass(target, seq[:n], [0] * n, aux_layers=aux, topk=3)
        assert torch.equal(rec["labels"], ref["labels"])
        assert torch.allclose(rec["hidden"].float(), ref["hidden"].float(), atol=2e-3)
        assert torch.equal(rec["topk_ids"], ref["topk_ids"])
        if aux:
            assert rec["aux"].shape == ref["aux"].shape
            assert torch.allclose(rec["aux"].float(), ref["aux"].float(), atol=2e-2)
        else:
            assert "aux" not in rec


def test_prepare_regenerate_writes_resumable_on_policy_shards(tmp_path, monkeypatch):
    target = tiny_target(scale=4.0)
    src = write_sharegpt(tmp_path / "s.json")
    config = PrepareConfig(max_tokens=600, max_length=64, val_every=4, topk=2, shard_tokens=120,
                           regenerate=True, max_new_tokens=10, batch_size=3)
    full = prepare(target, tmp_path / "full", config, data=src, progress=False)
    assert full["complete"] and full["config"]["regenerate"] and full["tokens"]["train"] >= 600 - 120
    split = load_split(tmp_path / "full", "train")
    start = 0
    for length in split["lengths"].tolist():  # each record: a first user turn and its answer
        ids = split["input_ids"][start:start + length].tolist()
        mask = split["loss_mask"][start:start + length].tolist()
        prompt = ids[:mask.index(1) + 1]
        assert greedy(target, prompt, 10)[:length] == ids
        start += length
    prepare_interrupted(target, tmp_path / "part", config, src, monkeypatch, at=3)
    for name in ("train", "val"):
        a, b = load_split(tmp_path / "full", name), load_split(tmp_path / "part", name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    teacher = PrepareConfig(**{**config.__dict__, "regenerate": False})
    with pytest.raises(KoalaError, match="other settings"):
        prepare(target, tmp_path / "part", teacher, data=src, progress=False)


@pytest.mark.slow
def test_real_model_answers_in_a_batch_as_it_decodes_alone(real_target):
    """The real target answering three MT-bench questions in one left-padded batch writes what
    plain greedy decoding writes for each alone, and its labels are the teacher-forced ones."""
    from conftest import mtbench_prompts
    from koala_core.engine import GenerationConfig, SpeculativeEngine

    prompts = [encode_chat(real_target.tokenizer, [{"role": "user", "content": t}])
               for t in mtbench_prompts(3)]
    records = answer_batch(real_target, prompts, [24, 16, 24], topk=4)
    for prompt, n, rec in zip(prompts, [24, 16, 24], records):
        answer = SpeculativeEngine(real_target).generate(prompt, GenerationConfig(n)).token_ids
        assert rec["input_ids"].tolist() + rec["labels"][-1:].tolist() == prompt + answer
        ref = teacher_pass(real_target, rec["input_ids"].tolist(), [], topk=4)
        assert torch.equal(rec["labels"], ref["labels"])
        assert (rec["hidden"].float() - ref["hidden"].float()).abs().max() < 0.05


def test_cli_prepare_regenerate_reports_what_it_added(tmp_path):
    from click.testing import CliRunner

    from conftest import tiny_model, tiny_tokenizer
    from koala_core.cli import main

    tiny_model(scale=4.0).save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    src = write_sharegpt(tmp_path / "s.json")
    args = ["prepare", "--model", str(tmp_path / "model"), "--data", str(src), "--regenerate",
            "--max-new-tokens", "8", "--batch-size", "4", "--max-length", "64", "--topk", "2",
            "--out", str(tmp_path / "regen")]
    result = CliRunner().invoke(main, args + ["--max-tokens", "300"])
    assert result.exit_code == 0, result.output
    assert "this run added" in result.output and "tokens/s" in result.output
    manifest = json.loads((tmp_path / "regen" / "manifest.json").read_text())
    assert manifest["config"]["regenerate"] and manifest["config"]["max_new_tokens"] == 8
    grown = CliRunner().invoke(main, args + ["--max-tokens", "600"])  # resumes and grows
    assert grown.exit_code == 0, grown.output
    assert json.loads((tmp_path / "regen" / "manifest.json").read_text())["tokens"]["train"] > \
        manifest["tokens"]["train"]
    other = CliRunner().invoke(main, args[:-1] + [str(tmp_path / "regen"), "--max-tokens", "600",
                                                  "--dtype", "bfloat16"])
    assert other.exit_code != 0 and "other settings" in other.output


def test_rebuild_teacher_forces_a_regenerated_sets_tokens(tmp_path):
    """`koala prepare --rebuild DIR`: the token ids of a regenerated set, teacher-forced again (here
    with the inputs of layers 0 and 1 added), give its records, splits, labels and features."""
    target = tiny_target(scale=4.0)
    src = write_sharegpt(tmp_path / "s.json")
    regen = PrepareConfig(max_tokens=500, max_length=64, val_every=4, topk=2, shard_tokens=120,
                          regenerate=True, max_new_tokens=10, batch_size=3)
    first = prepare(target, tmp_path / "regen", regen, data=src, progress=False)
    again = PrepareConfig(max_tokens=10_000, max_length=64, val_every=4, topk=2, shard_tokens=150,
                          aux_layers="0,1", rebuild=str(tmp_path / "regen"))
    rebuilt = prepare(target, tmp_path / "rebuilt", again, progress=False)
    assert rebuilt["exhausted"] and rebuilt["records"] == first["records"]
    assert rebuilt["tokens"] == first["tokens"]
    for split in ("train", "val"):
        a, b = load_split(tmp_path / "regen", split), load_split(tmp_path / "rebuilt", split, (0, 1))
        for k in ("input_ids", "lengths", "loss_mask", "labels", "topk_ids"):
            assert torch.equal(a[k], b[k]), (split, k)
        assert torch.allclose(a["hidden"].float(), b["hidden"].float(), atol=2e-3)
        assert b["aux"].shape == (b["input_ids"].shape[0], 2 * target.hidden_size)
    with pytest.raises(KoalaError, match="no prepared data"):
        prepare(target, tmp_path / "x", PrepareConfig(rebuild=str(tmp_path / "nothing")),
                progress=False)
