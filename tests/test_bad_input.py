"""The bad-input matrix, at the command line: every case exits with code 2 and one line that says
what to do, never a traceback, and leaves nothing half-written behind."""

import errno
import json

import pytest
from click.testing import CliRunner

from conftest import tiny_model, tiny_target, tiny_tokenizer
from koala_core.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny model folders (different weights) and a checkpoint trained for the first."""
    from koala_core.checkpoint import save_head
    from koala_core.registry import Registry

    root = tmp_path_factory.mktemp("models")
    for name, seed in (("a", 0), ("b", 1)):
        tiny_model(seed=seed).save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
    target = tiny_target(seed=0)
    head = Registry.from_entry_points().create("heads", "medusa", {"heads": 2, "draft_vocab": 64},
                                               target=target)
    save_head(head, root / "ck-a", "medusa")
    return root


def fails(args, *needles, input=None):
    """Run koala ARGS; assert exit 2 and exactly one line, 'Error: ...' containing every needle
    (progress bars that ran before the error are not lines of the message)."""
    import re

    result = CliRunner().invoke(main, args, input=input)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [seg for seg in re.split(r"[\r\n]|(?=Error: )", result.output) if seg.strip()
             and not re.search(r"\d+%\|", seg)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def generate(models, *extra, model="a"):
    return ["generate", "--model", str(models / model), "--head", "lookup", *extra]


def copy_checkpoint(models, tmp_path, name="ck"):
    import shutil

    return shutil.copytree(models / "ck-a", tmp_path / name)


def test_model_paths(models, tmp_path, monkeypatch):
    fails(generate(models, "hi", model="nope"), "does not exist")
    (tmp_path / "empty").mkdir()
    fails(generate(models, "hi", model=str(tmp_path / "empty")), "no config.json")
    monkeypatch.setenv("KOALA_CACHE", str(tmp_path / "cache"))
    fails(generate(models, "hi", model=str(write_gguf(tmp_path / "net.gguf", "koalanet"))),
          "cannot load", "net.gguf")
    assert not any((tmp_path / "cache" / "models").glob("net*")), "no half-written conversion"


def write_gguf(path, arch):
    """A well-formed GGUF file of an architecture transformers does not know."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_checkpoints(models, tmp_path):
    fails(["generate", "--model", str(models / "b"), "--checkpoint", str(models / "ck-a"), "hi"],
          "another target model")
    ck = copy_checkpoint(models, tmp_path, "truncated")
    weights = ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    fails(generate(models, "--checkpoint", str(ck), "hi"), "corrupt")
    for change, needle in ((lambda m: m.pop("target"), "lacks the field(s) target"),
                           (lambda m: m.update(format=99), "format 99")):
        ck = copy_checkpoint(models, tmp_path, needle.split()[0])
        meta = json.loads((ck / "koala.json").read_text())
        change(meta)
        (ck / "koala.json").write_text(json.dumps(meta))
        fails(["generate", "--model", str(models / "a"), "--checkpoint", str(ck), "hi"], needle)
    fails(["generate", "--checkpoint", str(tmp_path / "nope"), "hi"], "does not exist")


def test_plugins_and_options(models):
    fails(["generate", "--head", "nope", "hi"], "unknown head 'nope'", "lookup")
    fails(["generate", "--head", "lookup", "--head-option", "width=2", "hi"], "valid options")
    fails(["generate", "--tree", "chain", "--tree-option", "width=2", "hi"], "valid options: copy, depth")
    fails(["train", "--data", str(models), "--out", str(models / "never"), "--tree-option", "depth=3"],
          "--tree-option needs --tree")
    fails(["generate", "--tree", "bushy", "hi"], "unknown tree policy", "chain")
    fails(["generate", "--verifier", "greedy", "--temperature", "0.5", "hi"], "temperature 0")


def test_prompts_and_token_counts(models):
    fails(generate(models, ""), "prompt is empty")
    fails(generate(models, "-"), "prompt is empty", input="   \n")
    fails(generate(models, "--raw", " ".join(["t5"] * 300)), "300 tokens", "context is 256")
    fails(generate(models, "--max-new-tokens", "0", "hi"), "max_new_tokens must be >= 1")
    fails(generate(models, "--max-new-tokens", "-3", "hi"), "max_new_tokens must be >= 1")


def test_prompt_file_with_a_bad_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    fails(["bench", "--prompts", str(bad)], "p.jsonl:2:", "not valid JSON")
    fails(["bench", "--prompts", str(tmp_path / "none.jsonl")], "does not exist")


@pytest.fixture
def tiny_data(prepared):
    return prepared[1]


def train_args(models, data, out, *extra):
    return ["train", "--model", str(models / "a"), "--data", str(data), "--out", str(out),
            "--head", "medusa", "--head-option", "heads=2", "--head-option", "draft_vocab=64",
            "--steps", "2", "--batch-size", "2", "--window", "16", "--eval-every", "1", *extra]


def test_resume_with_other_settings(models, tiny_data, tmp_path):
    result = CliRunner().invoke(main, train_args(models, tiny_data, tmp_path / "ck"))
    assert result.exit_code == 0, result.output
    fails(train_args(models, tiny_data, tmp_path / "ck", "--resume", "--lr", "0.5"),
          "cannot resume", "lr")
    fails(train_args(models, tiny_data, tmp_path / "fresh", "--resume"), "nothing to resume")


def test_disk_full_keeps_the_old_checkpoint(models, tiny_data, tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "ck"
    assert CliRunner().invoke(main, train_args(models, tiny_data, out)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = safetensors.torch.save_file

    def full_disk(tensors, path, *args, **kwargs):
        real(tensors, path, *args, **kwargs)
        if str(path).endswith("model.safetensors"):  # the checkpoint's weights: half a file, then
            with open(path, "r+b") as f:  # the disk is full
                f.truncate(100)
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    fails(train_args(models, tiny_data, out, "--steps", "3"), "could not write", "/ck:",
          "No space left")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
