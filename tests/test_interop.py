"""Proof by the formats' own code: the ``speculators`` package (vLLM's draft-head format) loads a head
koala exported, and its own forward gives koala's draft logits on real inputs of the default model.

``speculators`` pins transformers <= 5.19, so it lives in a venv of its own (``make interop-venv``,
tests/interop/requirements.txt); ``$KOALA_INTEROP_PYTHON`` names its python. Without it these tests
skip, unless ``$KOALA_REQUIRE_INTEROP`` is set (CI sets it, so they cannot silently stop running).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from koala_core.checkpoint import Checkpoint, save_head
from koala_core.export import export_head
from koala_core.heads import TrainBatch

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parent / "interop" / "speculators_forward.py"
PROMPT = "Explain in two sentences why the sky is blue, then translate them into French."


def interop_python() -> str:
    python = os.environ.get("KOALA_INTEROP_PYTHON", "")
    if not python or not Path(python).exists():
        if os.environ.get("KOALA_REQUIRE_INTEROP"):
            pytest.fail("KOALA_REQUIRE_INTEROP is set but $KOALA_INTEROP_PYTHON is no python "
                        "(make interop-venv)")
        pytest.skip("the speculators venv is not set up (make interop-venv)")
    return python


def eagle3_checkpoint(registry, target, folder, layers):
    """The shipped EAGLE-3 head if there is one, else a perturbed fresh one."""
    from koala_core.shipped import shipped_checkpoints

    for path in shipped_checkpoints().values():
        ck = Checkpoint.open(path)
        if ck.plugin == "eagle" and ck.meta["head_config"].get("aux_layers") and layers == 1:
            return path
    torch.manual_seed(0)
    head = registry.create("heads", "eagle", {"layers": layers, "aux_layers": "eagle3",
                                              "ttt_steps": 3}, target=target)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return save_head(head, folder, "eagle", registry=registry)


@pytest.mark.parametrize("fmt,layers", [("speculators", 1), ("speculators", 2), ("sglang", 1)])
def test_speculators_runs_the_export_with_koalas_logits(real_target, registry, tmp_path, fmt, layers):
    python = interop_python()
    target = real_target
    ck_path = eagle3_checkpoint(registry, target, tmp_path / "ck", layers)
    out = export_head(ck_path, target, tmp_path / "export", fmt)
    head = Checkpoint.open(ck_path).build_head(target, registry, draft_dtype="float32")
    tok = target.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    ids = torch.tensor(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    hidden, aux = target.forward(ids, target.new_cache(), aux_layers=head.aux_layers)
    T = ids.numel()
    batch = TrainBatch(ids[None], hidden[None].clone(), ids[None], torch.ones(1, T), aux=aux[None].clone())
    with torch.no_grad():
        outs = head.train_outputs(batch)
    # row t reads token t+1 (and the states at t): speculators' alignment, positions 1..T
    inputs = {"aux": aux[None].contiguous(),
              "input_ids": torch.cat([ids[1:], ids.new_zeros(1)])[None].contiguous(),
              "position_ids": torch.arange(1, T + 1)[None].contiguous()}
    inputs.update({f"logits_{s}": o.logits.contiguous() for s, o in enumerate(outs)})
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    run = subprocess.run([python, str(SCRIPT), str(out), str(tmp_path / "inputs.safetensors"),
                          "--verifier", str(target.folder)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(report["steps"]) == len(outs) == 3
    for s, step in enumerate(report["steps"]):
        assert step["max_abs_diff"] <= 1e-4, (s, report)  # fp32 on both sides
        assert step["argmax_agreement"] == 1.0, (s, report)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
