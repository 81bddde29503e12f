"""Data-parallel `koala train` under torchrun and accelerate launch (2 CPU workers, gloo).

A run on N workers must compute what one process computes with ``--micro-batches N`` (the same
global batches, gradients accumulated over the same chunks), only rank 0 writes, and a run resumes
on another number of workers.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import tiny_model_folder

pytestmark = pytest.mark.slow

ARGS = ["--head", "hydra", "--head-option", "heads=2", "--head-option", "draft_vocab=64",
        "--batch-size", "4", "--micro-batches", "2", "--window", "32", "--warmup", "2",
        "--lr", "3e-2", "--seed", "5", "--eval-every", "3"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    tiny_model_folder(root)
    return root


def koala_train(root, out, steps, workers=1, launcher="torchrun", resume=False, extra=(), base=ARGS):
    args = ["train", "--model", str(root / "model"), "--data", str(root / "data"), "--out",
            str(out), "--steps", str(steps), *base, *extra] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    if workers == 1:
        cmd = [sys.executable, "-m", "koala_core.cli", *args]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(workers), "-m", "koala_core.cli", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(workers),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "koala_core.cli", *args]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "state.safetensors"))


def assert_same_training(a, b, parts=("head.",)):
    wa, wb = weights(a), weights(b)
    for part in parts:
        assert any(k.startswith(part) for k in wa), part
    for k in [k for k in wa if k.startswith(parts)]:
        torch.testing.assert_close(wa[k].float(), wb[k].float(), atol=1e-5, rtol=1e-4, msg=k)
    assert json.loads((a / "state.json").read_text())["step"] == \
        json.loads((b / "state.json").read_text())["step"]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_workers_match_one_process_with_the_same_global_batch(setup, tmp_path, launcher):
    koala_train(setup, tmp_path / "one", 6)
    run = koala_train(setup, tmp_path / "two", 6, workers=2, launcher=launcher)
    assert run.stdout.count("validation top-1") == 1  # rank 0 reports (and writes) alone
    assert "2 workers" in run.stdout
    assert_same_training(tmp_path / "one.train-state", tmp_path / "two.train-state")
    meta = json.loads((tmp_path / "two" / "koala.json").read_text())
    assert meta["metrics"]["workers"] == 2 and meta["recipe"]["train"]["micro_batches"] == 2


def test_a_run_resumes_on_another_number_of_workers(setup, tmp_path):
    koala_train(setup, tmp_path / "one", 6)
    koala_train(setup, tmp_path / "mixed", 3, workers=2)  # interrupted after 3 steps, on 2 workers
    koala_train(setup, tmp_path / "mixed", 6, resume=True)  # resumed in one process
    assert_same_training(tmp_path / "one.train-state", tmp_path / "mixed.train-state")


def test_a_time_budget_stops_every_worker_at_the_same_step(setup, tmp_path):
    """Rank 0's clock decides the learning rate and the stop: a worker that stopped a step apart
    would leave the other waiting in a collective (this run would time out)."""
    koala_train(setup, tmp_path / "timed", 10**6, workers=2, extra=("--max-minutes", "0.03"))
    metrics = json.loads((tmp_path / "timed" / "koala.json").read_text())["metrics"]
    assert metrics["stopped_by_time"] and 1 <= metrics["steps"] < 10**6 and metrics["workers"] == 2


ADVERSARIAL = ("--discriminator", "feature-mlp", "--adv-loss", "hinge", "--adv-warmup", "1",
               "--d-positions", "24", "--d-steps", "2", "--instance-noise", "1.0", "--noise-steps", "6")


def test_the_adversarial_game_on_two_workers_matches_one_process(setup, tmp_path):
    """The discriminator learns from every worker's samples and each worker's head loss is played
    against the updated discriminator: head and discriminator end as in one process with
    ``--micro-batches 2``, and a run resumes on another number of workers."""
    koala_train(setup, tmp_path / "one", 6, extra=ADVERSARIAL)
    koala_train(setup, tmp_path / "two", 6, workers=2, extra=ADVERSARIAL)
    assert_same_training(tmp_path / "one.train-state", tmp_path / "two.train-state",
                         parts=("head.", "disc."))
    one, two = (json.loads((tmp_path / n / "koala.json").read_text())["metrics"]["history"][-1]
                for n in ("one", "two"))
    assert two["g_adv"] != 0.0 and 0.0 <= two["d_acc"] <= 1.0
    for key in ("loss", "g_adv", "d_loss", "d_acc"):  # the whole batch's, not rank 0's share
        assert two[key] == pytest.approx(one[key], rel=1e-4), key
    koala_train(setup, tmp_path / "mixed", 3, workers=2, extra=ADVERSARIAL)
    koala_train(setup, tmp_path / "mixed", 6, resume=True, extra=ADVERSARIAL)
    assert_same_training(tmp_path / "one.train-state", tmp_path / "mixed.train-state",
                         parts=("head.", "disc."))


def test_random_input_augmentation_on_two_workers_matches_one_process(setup, tmp_path):
    """EAGLE's feature noise is drawn from each micro-batch's own stream (seed, step, micro-batch),
    not from a worker's global generator: 2 workers draw what one process draws."""
    eagle = ["--head", "eagle", "--head-option", "feature_noise=0.3"] + ARGS[4:]  # not Hydra's options
    koala_train(setup, tmp_path / "one", 4, base=eagle)
    koala_train(setup, tmp_path / "two", 4, workers=2, base=eagle)
    assert_same_training(tmp_path / "one.train-state", tmp_path / "two.train-state")


def test_workers_that_do_not_divide_the_micro_batches_are_refused(setup, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [a if a != "2" else "1" for a in ARGS]  # --micro-batches 1 on 2 workers
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "koala_core.cli", "train", "--model",
                          str(setup / "model"), "--data", str(setup / "data"), "--out",
                          str(tmp_path / "x"), "--steps", "2", *args],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode != 0 and "--micro-batches divisible by 2" in run.stderr
    assert not (tmp_path / "x").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


def records_of(folder, split):
    """record id -> its input ids and labels, from a prepared set."""
    from koala_core.data import load_split

    manifest = json.loads((folder / "manifest.json").read_text())
    arrays = load_split(folder, split)
    out, start = {}, 0
    for rec, n in zip(manifest["records"][split], arrays["lengths"].tolist()):
        out[rec] = (arrays["input_ids"][start:start + n], arrays["labels"][start:start + n],
                    arrays["hidden"][start:start + n])
        start += n
    return out


def test_prepare_on_two_workers_gives_the_same_records(setup, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    args = ["prepare", "--model", str(setup / "model"), "--data", str(setup / "s.json"),
            "--max-tokens", "100000", "--max-length", "64", "--topk", "0"]
    one = subprocess.run([sys.executable, "-m", "koala_core.cli", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "koala_core.cli", *args, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-3000:]
    assert "(2 workers)" in two.stdout and two.stdout.count("validation tokens") == 1
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["parts"] == 2 and all(n.startswith("part-") for n in manifest["shards"])
    for split in ("train", "val"):
        a, b = records_of(tmp_path / "one", split), records_of(tmp_path / "two", split)
        assert a.keys() == b.keys() and a
        for rec in a:
            for x, y in zip(a[rec], b[rec]):
                torch.testing.assert_close(x, y, atol=1e-3, rtol=1e-3)
    # the set trains like any other, and a single process refuses to resume it
    koala_train_on = subprocess.run([sys.executable, "-m", "koala_core.cli", "train", "--model",
                                     str(setup / "model"), "--data", str(tmp_path / "two"), "--out",
                                     str(tmp_path / "ck"), "--steps", "2", *ARGS],
                                    capture_output=True, text=True, env=env, timeout=600)
    assert koala_train_on.returncode == 0, koala_train_on.stderr[-2000:]
    again = subprocess.run([sys.executable, "-m", "koala_core.cli", *args, "--out",
                            str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode != 0 and "prepared by 2 workers" in again.stderr
