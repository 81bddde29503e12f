"""`koala export` / `koala import`: EAGLE-3 heads to vLLM's speculators format and SGLang's layout.

Here: round trips on a tiny model, and the refusals. The proof by the format's own code (the
``speculators`` package loads the export and gives the same draft logits on the real model) is in
tests/test_interop.py, in a separate venv.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_target
from koala_core.checkpoint import load_head, save_head
from koala_core.errors import CheckpointError
from koala_core.export import ExportError, export_head, import_head
from koala_core.heads import TrainBatch

L = 16


def eagle3_head(registry, target, layers=1, draft_vocab=64, aux="0,1"):
    torch.manual_seed(0)
    head = registry.create("heads", "eagle", {"layers": layers, "draft_vocab": draft_vocab,
                                              "aux_layers": aux, "ttt_steps": 3}, target=target)
    if draft_vocab:
        head.set_draft_vocab(torch.randperm(96)[:draft_vocab].sort().values)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return head.eval()


def logits_of(head, target):
    """The head's per-depth draft logits (training-time unroll) on one random sequence."""
    ids = torch.randint(2, 96, (L,), generator=torch.Generator().manual_seed(3))
    hidden, aux = target.forward(ids, target.new_cache(), aux_layers=head.aux_layers or (0,))
    batch = TrainBatch(ids[None], hidden[None].clone(), ids[None], torch.ones(1, L),
                       aux=aux[None].clone() if head.aux_layers else None)
    with torch.no_grad():
        return [o.logits for o in head.train_outputs(batch)]


@pytest.mark.parametrize("fmt,layers,draft_vocab", [("speculators", 1, 64), ("speculators", 2, 0),
                                                     ("sglang", 1, 64)])
def test_round_trip_gives_the_same_head(registry, tmp_path, fmt, layers, draft_vocab):
    target = tiny_target()
    head = eagle3_head(registry, target, layers, draft_vocab)
    save_head(head, tmp_path / "ck", "eagle", registry=registry)
    exported = export_head(tmp_path / "ck", target, tmp_path / "out", fmt, verifier="org/tiny")
    meta = json.loads((exported / "config.json").read_text())
    tensors = load_file(exported / "model.safetensors")
    if fmt == "speculators":
        assert meta["speculators_model_type"] == "eagle3"
        assert meta["eagle_aux_hidden_state_layer_ids"] == [0, 1]
        assert meta["transformer_layer_config"]["num_hidden_layers"] == layers
        assert meta["speculators_config"]["verifier"]["name_or_path"] == "org/tiny"
        assert "layers.0.hidden_norm.weight" in tensors and "fc.weight" in tensors
    else:
        assert meta["architectures"] == ["LlamaForCausalLMEagle3"]
        assert "midlayer.self_attn.q_proj.weight" in tensors
    n = draft_vocab or 96
    assert meta["draft_vocab_size"] == n and tensors["lm_head.weight"].shape == (n, 32)
    if draft_vocab:  # target id = draft id + d2t[draft id]; t2d marks the draft tokens
        ids = torch.arange(n) + tensors["d2t"]
        assert torch.equal(ids, head.vocab_ids) and int(tensors["t2d"].sum()) == n
        assert torch.equal(tensors["t2d"].nonzero().flatten(), head.vocab_ids)
    else:
        assert "d2t" not in tensors and "t2d" not in tensors
    back = import_head(exported, target, tmp_path / "back", registry=registry)
    again = load_head(back, target, registry)
    first = load_head(tmp_path / "ck", target, registry)
    for a, b in zip(logits_of(first, target), logits_of(again, target)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_what_the_formats_cannot_express_is_refused(registry, tmp_path):
    target = tiny_target()
    torch.manual_seed(0)
    eagle1 = registry.create("heads", "eagle", {"draft_vocab": 64}, target=target)
    save_head(eagle1, tmp_path / "e1", "eagle", registry=registry)
    with pytest.raises(ExportError, match="EAGLE-1/2 head"):
        export_head(tmp_path / "e1", target, tmp_path / "x", "speculators")
    hydra = registry.create("heads", "hydra", {"draft_vocab": 64}, target=target)
    save_head(hydra, tmp_path / "h", "hydra", registry=registry)
    with pytest.raises(ExportError, match="EAGLE heads only"):
        export_head(tmp_path / "h", target, tmp_path / "x", "speculators")
    deep = eagle3_head(registry, target, layers=2)
    save_head(deep, tmp_path / "k2", "eagle", registry=registry)
    with pytest.raises(ExportError, match="one decoder layer"):
        export_head(tmp_path / "k2", target, tmp_path / "x", "sglang")
    with pytest.raises(ExportError, match="unknown export format"):
        export_head(tmp_path / "k2", target, tmp_path / "x", "onnx")
    qwen = tiny_target("qwen2")
    head = eagle3_head(registry, qwen)
    save_head(head, tmp_path / "q", "eagle", registry=registry)
    with pytest.raises(ExportError, match="Llama"):
        export_head(tmp_path / "q", qwen, tmp_path / "x", "speculators")
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_import_refuses_what_koala_cannot_run_exactly(registry, tmp_path):
    target = tiny_target()
    head = eagle3_head(registry, target)
    save_head(head, tmp_path / "ck", "eagle", registry=registry)
    out = export_head(tmp_path / "ck", target, tmp_path / "out", "speculators")
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**meta, "norm_output": True}))
    with pytest.raises(CheckpointError, match="norm_output"):
        import_head(out, target, tmp_path / "back", registry=registry)
    (out / "config.json").write_text(json.dumps(meta))
    from safetensors.torch import save_file

    tensors = load_file(out / "model.safetensors")
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1.0  # a head that trained its LM head
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="frozen LM-head rows"):
        import_head(out, target, tmp_path / "back", registry=registry)
    other = tiny_target(vocab=128)
    with pytest.raises(CheckpointError, match="another target"):
        import_head(out, other, tmp_path / "back", registry=registry)
    with pytest.raises(CheckpointError, match="missing"):
        import_head(tmp_path, target, tmp_path / "back", registry=registry)


def test_export_and_import_commands(registry, tmp_path):
    from click.testing import CliRunner

    from conftest import tiny_model, tiny_tokenizer
    from koala_core.cli import main
    from koala_core.model import load_target

    tiny_model().save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    target = load_target(str(tmp_path / "model"))
    save_head(eagle3_head(registry, target), tmp_path / "ck", "eagle", registry=registry)
    run = CliRunner().invoke(main, ["export", str(tmp_path / "ck"), "--model", str(tmp_path / "model"),
                                    "-o", str(tmp_path / "vllm"), "--dtype", "bfloat16"])
    assert run.exit_code == 0, run.output
    meta = json.loads((tmp_path / "vllm" / "config.json").read_text())
    assert meta["speculators_config"]["verifier"]["name_or_path"] == str(tmp_path / "model")
    assert load_file(tmp_path / "vllm" / "model.safetensors")["fc.weight"].dtype == torch.bfloat16
    run = CliRunner().invoke(main, ["import", str(tmp_path / "vllm"), "--model",
                                    str(tmp_path / "model"), "-o", str(tmp_path / "back")])
    assert run.exit_code == 0, run.output
    assert json.loads((tmp_path / "back" / "koala.json").read_text())["recipe"]["format"] == "speculators"
    run = CliRunner().invoke(main, ["export", str(tmp_path / "nope"), "--model", str(tmp_path / "model"),
                                    "-o", str(tmp_path / "x")])
    assert run.exit_code == 2 and "no checkpoint folder" in run.output
