"""benchmarks/data_as_trained.py: the data a head was trained on, rebuilt from a set grown since."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_target, write_sharegpt
from koala_core.data import PrepareConfig, load_split, prepare
from koala_core.training import TrainConfig, data_summary, train

ROOT = Path(__file__).resolve().parents[1]


def script():
    spec = importlib.util.spec_from_file_location("data_as_trained", ROOT / "benchmarks" / "data_as_trained.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_view_of_a_grown_set_is_the_set_the_head_saw(tmp_path, registry, capsys):
    target = tiny_target()
    src = write_sharegpt(tmp_path / "s.json", conversations=60)
    data = tmp_path / "data"
    options = dict(max_length=64, val_every=4, topk=4, shard_tokens=300)
    prepare(target, data, PrepareConfig(max_tokens=1500, **options), data=src, progress=False)
    then = {s: load_split(data, s) for s in ("train", "val")}
    config = TrainConfig(head="medusa", head_options={"heads": 2, "draft_vocab": 64}, steps=2,
                         batch_size=2, window=32, warmup=1, eval_every=2, save_every=2)
    train(target, data, tmp_path / "ck", config, registry=registry, progress=False)
    recorded = json.loads((tmp_path / "ck" / "koala.json").read_text())["recipe"]["data"]["hash"]

    prepare(target, data, PrepareConfig(max_tokens=4000, **options), data=src, progress=False)
    assert data_summary([data])["hash"] != recorded  # grown: the head's hash no longer matches

    tool = script()
    assert tool.main(["--checkpoint", str(tmp_path / "ck"), "--data", str(data),
                      "--out", str(tmp_path / "views")]) == 0
    view = Path(capsys.readouterr().out.split()[-1])
    assert view == tmp_path / "views" / "data"
    assert data_summary([view])["hash"] == recorded
    for split, tensors in then.items():
        now = load_split(view, split)
        assert all(torch.equal(tensors[k], now[k]) for k in tensors), split
    manifest = json.loads((view / "manifest.json").read_text())
    assert manifest["tokens"] == {s: len(then[s]["input_ids"]) for s in then}
    assert len(manifest["records"]["train"]) == len(then["train"]["lengths"])
    assert manifest["complete"] and (data / "manifest.json").is_file()  # the source is untouched

    # other data: refused with a message, nothing written
    prepare(target, tmp_path / "fresh", PrepareConfig(max_tokens=1500, skip=10, **options), data=src,
            progress=False)
    with pytest.raises(SystemExit, match="not the sets it was trained on"):
        tool.main(["--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path / "fresh"),
                   "--out", str(tmp_path / "views2")])
    assert not (tmp_path / "views2").exists()
