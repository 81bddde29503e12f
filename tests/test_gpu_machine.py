"""The hand-over to the lent GPU machine (benchmarks/gpu_machine.sh) cannot rot between the rare
sessions that have one: the model is split into as many parts as a call's 64 MiB leaves room for
next to the working tree, each call carries one part, and the last joins them and checks the hash."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_machine.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("git") is None,
                                reason="needs bash and git")


def machine(verb, env, **kw):
    return subprocess.run(["bash", str(SCRIPT), verb], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def handover(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(os.urandom(1_000_000))
    env = {"GGUF": str(model), "KOALA_GPU_PARTS": str(tmp_path / "parts"),
           "KOALA_GPU_STAGE": str(tmp_path / "stage"), "KOALA_GPU_WHEELS": "none",
           "KOALA_GPU_SHA": hashlib.sha256(model.read_bytes()).hexdigest()}
    travel = int(machine("travel", env).stdout)
    # room for 300 kB next to the working tree and the safety margin: 4 parts of 250 kB
    env["KOALA_GPU_LIMIT"] = str(travel + 1024 * 1024 + 300_000)
    prepared = machine("prepare", env)
    assert prepared.returncode == 0, prepared.stderr
    return model, env, prepared.stdout, tmp_path


def carry(env, tmp_path, part):
    """One call: only the carried part is in the working tree's parts folder."""
    call = tmp_path / f"call-{part}"
    shutil.copytree(Path(env["KOALA_GPU_PARTS"]) / f"p{part}", call / f"p{part}")
    return {**env, "KOALA_GPU_PARTS": str(call)}


def test_the_model_travels_in_parts_and_is_joined_intact(handover):
    model, env, printed, tmp_path = handover
    parts = sorted(Path(env["KOALA_GPU_PARTS"]).glob("p*"))
    assert [p.name for p in parts] == ["p1", "p2", "p3", "p4"]
    assert all((p / "count").read_text().strip() == "4" for p in parts)
    assert printed.count("gpu_machine.sh stage") == 3 and printed.count("gpu_machine.sh run") == 1
    for part in (1, 2, 3):
        assert machine("stage", carry(env, tmp_path, part)).returncode == 0
    joined = machine("join", carry(env, tmp_path, 4))
    assert joined.returncode == 0, joined.stderr
    assert (tmp_path / "stage" / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes() == model.read_bytes()


def test_a_part_lost_between_calls_is_named(handover):
    _, env, _, tmp_path = handover
    for part in (1, 3):  # the machine went back after the first call
        machine("stage", carry(env, tmp_path, part))
    joined = machine("join", carry(env, tmp_path, 4))
    assert joined.returncode == 3 and "part 2 of 4 is missing" in joined.stderr


def test_a_corrupt_part_fails_the_hash(handover):
    _, env, _, tmp_path = handover
    for part in (1, 2, 3):
        machine("stage", carry(env, tmp_path, part))
    last = carry(env, tmp_path, 4)
    with open(Path(last["KOALA_GPU_PARTS"]) / "p4" / "part-03", "r+b") as f:
        f.write(b"\0" * 16)
    joined = machine("join", last)
    assert joined.returncode != 0 and "FAILED" in joined.stdout + joined.stderr
