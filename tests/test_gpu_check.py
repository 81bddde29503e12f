"""The GPU check script (benchmarks/gpu_check.py) cannot rot: its CPU dry run (tiny random model,
the real tokenizer, fresh heads) runs every section and must report them all green."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_reports_every_section(tmp_path):
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(out),
                          "--dry-run", "--limit", "2"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((out / "report.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["env", "lossless", "syncs", "cost", "cost-1b", "bench"]
    assert all(s["status"] == "ok" for s in sections.values()), sections
    assert sections["lossless"]["float32"]["all_identical"]
    assert sections["lossless"]["bfloat16"]["all_identical"]
    assert sections["syncs"]["max_host_reads"] <= 2
    assert [r["n"] for r in sections["cost"]["float32"]] == [1, 2, 4, 8, 16, 32, 64]
    assert (out / "bench" / "results.json").is_file() and (out / "report.md").is_file()


def test_gpu_check_refuses_to_run_without_cuda_unless_dry(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--dry-run" in run.stderr
