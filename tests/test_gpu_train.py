"""The GPU training job (benchmarks/gpu_train.py) cannot rot: its CPU dry run (tiny random model,
the real tokenizer and ShareGPT, a few seconds of training) runs every stage through the real CLI
and brings the heads back; the deadline stops what overruns."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_side_by_side_stops_what_overruns_its_deadline(tmp_path):
    from gpu_train import side_by_side

    t0 = time.monotonic()
    done = side_by_side({"quick": ["true"], "slow": ["sleep", "60"],
                         "queued": ["sleep", "60"]}, tmp_path / "logs", seconds=2, width=2)
    assert time.monotonic() - t0 < 30
    assert done["quick"]["exit"] == 0
    assert done["slow"]["exit"] is None and done["queued"]["exit"] is None  # stopped, never started
    assert (tmp_path / "logs" / "slow.log").is_file()


@pytest.mark.slow
def test_gpu_train_dry_run_brings_heads_back(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), str(out),
                          "--dry-run", "--work", str(work), "--heads", "eagle-gpu,medusa-gpu",
                          "--eval-prompts", "1"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["model", "data", "train", "eval", "heads"]
    assert all(s["status"] == "ok" for s in stages.values()), stages
    sets = stages["data"]["sets"]
    assert sets["heldout"]["tokens"] > 0 and stages["data"]["train_tokens"] > 0
    for name in ("eagle-gpu", "medusa-gpu"):
        trained = stages["train"]["heads"][name]
        assert trained["stopped_by_time"] and trained["steps"] >= 1
        assert len(stages["eval"]["heads"][name]["heldout"]["top1"]) >= 1
        assert stages["eval"]["heads"][name]["free"]["tau"] >= 1.0
        card = json.loads((out / "heads" / name / "koala.json").read_text())
        assert card["metrics"]["stopped_by_time"]
        assert (out / "heads" / name / "model.safetensors").is_file()
    # the ranges were prepared side by side and none reached into the held-out records
    manifests = [json.loads(p.read_text()) for p in (work / "data").glob("range-*/manifest.json")]
    assert len(manifests) == 2 and all(m["config"]["until"] <= 10_000 for m in manifests)
    assert not list((out / "heads").glob("*.train-state"))  # only the checkpoints come back
    assert (out / "report.md").read_text().startswith("# koala GPU training (dry run on CPU)")
