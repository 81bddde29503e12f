"""Data preparation, supervised training, checkpoints and resume, on a tiny target."""

import json

import pytest
import torch

from conftest import prepare_interrupted, tiny_target, write_sharegpt
from koala_core.checkpoint import load_head, save_head
from koala_core.data import PrepareConfig, iter_sharegpt, load_split, prepare
from koala_core.errors import CheckpointError, ConfigError, KoalaError
from koala_core.training import TrainConfig, train


def test_sharegpt_reader_survives_truncation(tmp_path):
    src = write_sharegpt(tmp_path / "s.json", conversations=10)
    convs = list(iter_sharegpt(src))
    assert len(convs) == 9  # the cut-off last record is dropped, the rest decoded
    assert convs[0].messages[0]["role"] == "user" and convs[0].messages[1]["role"] == "assistant"


def test_validation_split_is_by_conversation_and_drops_duplicate_prompts(tmp_path):
    """ShareGPT stores a long conversation as records <id>_0, <id>_1, ...: they must share a
    split, and a prompt seen before must not come back (in the other split or the same)."""
    import random

    rng = random.Random(0)
    records = []
    for c in range(30):
        for part in range(3):
            turns = [{"from": "human" if j % 2 == 0 else "gpt",
                      "value": " ".join(f"t{rng.randrange(5, 96)}" for _ in range(12))}
                     for j in range(2)]
            records.append({"id": f"conv{c}_{part}", "conversations": turns})
    records += [json.loads(json.dumps(r)) | {"id": f"dup{i}_0"} for i, r in enumerate(records[:9])]
    src = tmp_path / "s.json"
    src.write_text(json.dumps(records))
    out = tmp_path / "d"
    manifest = prepare(tiny_target(), out, PrepareConfig(max_tokens=100_000, max_length=64,
                                                         val_every=3), data=src, progress=False)
    train_ids, val_ids = manifest["records"]["train"], manifest["records"]["val"]
    assert val_ids and train_ids and len(train_ids) + len(val_ids) == 90  # the 9 duplicates dropped
    conv = lambda rid: rid.rsplit("_", 1)[0]  # noqa: E731
    assert not {conv(r) for r in train_ids} & {conv(r) for r in val_ids}
    assert not any(r.startswith("dup") for r in train_ids + val_ids)
    held_out = prepare(tiny_target(), tmp_path / "h", PrepareConfig(max_tokens=100_000, max_length=64,
                                                                     val_every=3, skip=31),
                       data=src, progress=False)
    later = held_out["records"]["train"] + held_out["records"]["val"]
    assert later and min(int(conv(r)[4:]) for r in later) == 11  # conv10 began before record 31
    # ranges side by side (--skip/--until): disjoint, none reaching past its end, and together
    # every record of the whole file but the conversations that straddle a boundary
    ranges = [(0, 31), (31, 61), (61, 0)]
    parts = [prepare(tiny_target(), tmp_path / f"r{i}", PrepareConfig(
        max_tokens=100_000, max_length=64, val_every=3, skip=a, until=b), data=src, progress=False)
        for i, (a, b) in enumerate(ranges)]
    got = [set(m["records"]["train"] + m["records"]["val"]) for m in parts]
    assert not (got[0] & got[1]) and not (got[1] & got[2]) and not (got[0] & got[2])
    assert max(int(conv(r)[4:]) for r in got[0]) == 10  # records 0-30: conv0_0 .. conv10_0
    index = lambda rid: 3 * int(conv(rid)[4:]) + int(rid.rsplit("_", 1)[1])  # noqa: E731
    assert got[1] == {r for r in later if index(r) < 61}  # conv20 straddles record 61
    assert got[0] | got[1] | got[2] == set(train_ids + val_ids) - {f"conv10_{i}" for i in (1, 2)} \
        - {f"conv20_{i}" for i in (1, 2)}
    assert parts[0]["exhausted"] and parts[0]["complete"]
    with pytest.raises(ConfigError, match="until"):
        PrepareConfig(skip=5, until=5)


def test_prepare_labels_are_the_targets_choices(prepared):
    target, out = prepared
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["tokens"]["val"] > 0
    split = load_split(out, "train")
    n = int(split["lengths"][0])
    ids = split["input_ids"][:n].long()
    logits = target.logits(target.forward(ids, target.new_cache()))
    assert torch.equal(split["labels"][:n].long(), logits.argmax(-1))
    assert split["hidden"].dtype == torch.float16 and split["topk_ids"].shape[1] == 4
    assert 0 < split["loss_mask"].float().mean() < 1  # user turns are not targets


def test_prepare_resumes_after_interruption(tmp_path, monkeypatch):
    target = tiny_target()
    src = write_sharegpt(tmp_path / "s.json")
    config = PrepareConfig(max_tokens=3000, max_length=64, val_every=4, shard_tokens=300)
    prepare(target, tmp_path / "full", config, data=src, progress=False)
    prepare_interrupted(target, tmp_path / "part", config, src, monkeypatch, at=4)
    for split in ("train", "val"):
        a, b = load_split(tmp_path / "full", split), load_split(tmp_path / "part", split)
        for k in a:
            assert torch.equal(a[k], b[k]), (split, k)
    with pytest.raises(KoalaError, match="other settings"):
        prepare(target, tmp_path / "part", PrepareConfig(max_tokens=10), data=src, progress=False)


def test_training_reduces_loss_and_checkpoint_round_trips(prepared, registry, tmp_path):
    from koala_core.training import WindowSampler

    target, data = prepared
    config = TrainConfig(head="medusa", head_options={"heads": 2, "draft_vocab": 64}, steps=80,
                         batch_size=4, window=32, lr=3e-2, warmup=2, eval_every=80, save_every=40)
    metrics = train(target, data, tmp_path / "ck", config, registry=registry, progress=False)
    assert len(metrics["val_top1"]) == 2
    head = load_head(tmp_path / "ck", target, registry)
    meta = head.checkpoint_meta
    assert meta["plugin"]["name"] == "medusa" and meta["metrics"]["val_top1"] == metrics["val_top1"]
    assert meta["recipe"]["data"]["hash"] and meta["recipe"]["loss"] == "ce"  # the head's default
    # the trained head fits its training windows better than the untrained one it started as
    batch = WindowSampler(load_split(data, "train"), 32, "cpu").batch([(0, 0), (1, 0), (2, 0)])
    ce = registry.create("losses", "ce")

    def loss_of(h):
        with torch.no_grad():
            return sum(float(ce(h.to_draft_space(o))) for o in h.train_outputs(batch))

    fresh = registry.create("heads", "medusa", {"heads": 2, "draft_vocab": 64}, target=target)
    fresh.set_draft_vocab(head.vocab_ids)
    assert loss_of(head) < 0.95 * loss_of(fresh)  # measured: 7.59 against 8.32
    # an exact round trip at float32
    save_head(head, tmp_path / "ck32", "medusa", dtype=torch.float32)
    again = load_head(tmp_path / "ck32", target, registry)
    for (k, a), (_, b) in zip(head.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_lowers_the_loss(prepared, registry, tmp_path, precision, monkeypatch):
    import warnings

    from koala_core import kernels
    from koala_core.training import WindowSampler

    target, data = prepared
    config = TrainConfig(head="eagle", head_options={"draft_vocab": 64}, steps=40, batch_size=4,
                         window=32, lr=3e-3, warmup=2, eval_every=40, precision=precision)
    split = load_split(data, "train")
    loss_fn = registry.create("losses", "feature")

    def loss_of(head):
        batch = WindowSampler(split, 32, "cpu").batch([(0, 0), (1, 0), (2, 0)])
        with torch.no_grad():
            return float(loss_fn(head.to_draft_space(head.train_outputs(batch)[0])))

    monkeypatch.setattr(kernels, "cpu_has_bf16", lambda: False)  # an AVX2-only CPU
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(target, data, tmp_path / "e", config, registry=registry, progress=False)
    # bf16 autocast is emulated there: the user is told, and only when bf16 was asked for
    assert any("no native bf16" in str(w.message) for w in seen) == (precision == "bf16")
    trained = load_head(tmp_path / "e", target, registry)
    fresh = registry.create("heads", "eagle", {"draft_vocab": 64}, target=target)
    fresh.set_draft_vocab(trained.vocab_ids)
    assert loss_of(trained) < 0.9 * loss_of(fresh)
    assert trained.checkpoint_meta["recipe"]["train"]["precision"] == precision


def test_unknown_precision_is_refused():
    from koala_core.errors import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")


@pytest.mark.parametrize("head,options", [
    ("hydra", {"heads": 2, "draft_vocab": 64}),
    ("eagle", {"draft_vocab": 64, "feature_noise": 0.2}),  # random draws in every step
])
def test_resume_continues_from_the_saved_step(prepared, registry, tmp_path, head, options):
    target, data = prepared
    base = dict(head=head, head_options=options, batch_size=2,
                window=32, warmup=2, eval_every=100, save_every=3, seed=5)
    train(target, data, tmp_path / "full", TrainConfig(steps=6, **base), registry=registry,
          progress=False)
    # an "interrupted" run: stop after 3 steps (its state is saved), then resume to 6
    train(target, data, tmp_path / "part", TrainConfig(steps=3, **base), registry=registry,
          progress=False)
    spent = json.loads((tmp_path / "part" / "koala.json").read_text())["metrics"]["train_seconds"]
    train(target, data, tmp_path / "part", TrainConfig(steps=6, **base), resume=True,
          registry=registry, progress=False)
    a = load_head(tmp_path / "full", target, registry).state_dict()
    b = load_head(tmp_path / "part", target, registry).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    state = json.loads((tmp_path / "part.train-state" / "state.json").read_text())
    assert state["step"] == 6
    # the checkpoint reports the whole run, not only the part after the resume
    whole = json.loads((tmp_path / "part" / "koala.json").read_text())["metrics"]
    assert [h["step"] for h in whole["history"]] == [3, 6]
    assert whole["train_seconds"] >= spent and state["seconds"] == whole["train_seconds"]


def test_a_time_budget_ends_training_with_a_decayed_rate_and_a_final_evaluation(prepared, registry,
                                                                                 tmp_path):
    from koala_core.training import lr_factor

    target, data = prepared
    config = TrainConfig(head="medusa", head_options={"heads": 2, "draft_vocab": 64}, steps=10**6,
                         batch_size=2, window=32, warmup=2, eval_every=10**5, max_minutes=0.01)
    metrics = train(target, data, tmp_path / "timed", config, registry=registry, progress=False)
    assert metrics["stopped_by_time"] and 1 < metrics["steps"] < 10**6
    assert metrics["train_seconds"] >= 0.6
    assert [h["step"] for h in metrics["history"]] == [metrics["steps"]]  # evaluated at the stop
    saved = json.loads((tmp_path / "timed" / "koala.json").read_text())
    assert saved["metrics"]["steps"] == metrics["steps"] and saved["recipe"]["train"]["max_minutes"] == 0.01
    # the cosine follows the time spent when that is further along than the steps
    assert lr_factor(10, config, 0.5) == pytest.approx(0.5)
    assert lr_factor(10, config, 1.0) == pytest.approx(0.0)
    assert lr_factor(0, config, 0.9) == 0.5  # warm-up is by steps
    # a longer budget resumes the same run (how long to go on may change, as steps may)
    longer = TrainConfig(**{**config.__dict__, "max_minutes": 0.02})
    more = train(target, data, tmp_path / "timed", longer, resume=True, registry=registry,
                 progress=False)
    assert more["steps"] > metrics["steps"] and more["train_seconds"] >= 1.2
    with pytest.raises(ConfigError, match="max_minutes"):
        TrainConfig(max_minutes=-1)


def test_checkpoint_errors_are_clear(prepared, registry, tmp_path):
    target, _ = prepared
    head = registry.create("heads", "medusa", {"heads": 2, "draft_vocab": 64}, target=target)
    save_head(head, tmp_path / "ck", "medusa")
    with pytest.raises(CheckpointError, match="another target model"):
        load_head(tmp_path / "ck", tiny_target(seed=1), registry)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_head(tmp_path / "nope", target, registry)
    meta = json.loads((tmp_path / "ck" / "koala.json").read_text())
    del meta["head_config"]
    (tmp_path / "ck" / "koala.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="head_config"):
        load_head(tmp_path / "ck", target, registry)
    save_head(head, tmp_path / "ck2", "medusa")
    (tmp_path / "ck2" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_head(tmp_path / "ck2", target, registry)
    (tmp_path / "ck3").mkdir()
    with pytest.raises(CheckpointError, match="missing"):
        load_head(tmp_path / "ck3", target, registry)


def test_init_starts_from_a_checkpoint_and_refuses_another_shape(prepared, registry, tmp_path):
    """--init: fine-tuning starts from the checkpoint's weights and draft vocabulary (here adding
    training-time test, which changes no weight); a head of other shapes is refused, not resized
    (more layers, and nothing else different, grow it: the next test)."""
    target, data = prepared
    base = dict(head="eagle", batch_size=2, window=32, warmup=2, eval_every=100, seed=5)
    train(target, data, tmp_path / "a", TrainConfig(steps=3, head_options={"draft_vocab": 64}, **base),
          registry=registry, progress=False)
    first = load_head(tmp_path / "a", target, registry)
    zero = TrainConfig(steps=1, lr=1e-12, head_options={"draft_vocab": 64, "ttt_steps": 2},
                       init=str(tmp_path / "a"), **base)
    train(target, data, tmp_path / "b", zero, registry=registry, progress=False)
    second = load_head(tmp_path / "b", target, registry)
    assert torch.equal(first.vocab_ids, second.vocab_ids)
    for k, v in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[k], v, atol=1e-3, rtol=1e-3)
    meta = json.loads((tmp_path / "b" / "koala.json").read_text())
    assert meta["recipe"]["train"]["init"] == str(tmp_path / "a")
    other = TrainConfig(steps=1, head_options={"draft_vocab": 32, "layers": 2},
                        init=str(tmp_path / "a"), **base)
    with pytest.raises(ConfigError, match="do not fit"):
        train(target, data, tmp_path / "c", other, registry=registry, progress=False)
    with pytest.raises(ConfigError, match="cannot start a 'hydra'"):
        train(target, data, tmp_path / "c", TrainConfig(
            steps=1, head="hydra", head_options={"draft_vocab": 64}, init=str(tmp_path / "a"),
            **{k: v for k, v in base.items() if k != "head"}), registry=registry, progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(target, data, tmp_path / "c", TrainConfig(
            steps=1, head_options={"draft_vocab": 64}, init=str(tmp_path / "nope"), **base),
            registry=registry, progress=False)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("family,options", [
    ("eagle", {"draft_vocab": 64}),
    ("hydra", {"draft_vocab": 64, "heads": 2}),
    ("medusa", {"draft_vocab": 64, "heads": 2}),
])
def test_init_grows_a_trained_head_by_layers_that_start_as_the_identity(prepared, registry, tmp_path,
                                                                         family, options):
    """KOALA's K from a trained K = 1 head: --init with more layers loads the trained ones and
    starts the added ones as the identity, so the grown head first computes what the trained one
    did, then trains every layer."""
    from koala_core.training import WindowSampler, warm_start

    target, data = prepared
    base = dict(head=family, batch_size=2, window=32, warmup=2, eval_every=100, seed=5)
    train(target, data, tmp_path / "k1", TrainConfig(steps=3, head_options=options, **base),
          registry=registry, progress=False)
    trained = load_head(tmp_path / "k1", target, registry)
    grown = registry.create("heads", family, {**options, "layers": 3}, target=target)
    warm_start(grown, tmp_path / "k1", target, registry)
    from koala_core.data import load_split

    batch = WindowSampler(load_split(data, "val"), 32, "cpu").batch([(0, 0), (1, 0)])
    grown.eval()
    with torch.no_grad():
        for a, b in zip(trained.train_outputs(batch), grown.train_outputs(batch)):
            torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-4)
    # and training moves the added layers too
    train(target, data, tmp_path / "k3", TrainConfig(steps=2, head_options={**options, "layers": 3},
                                                      init=str(tmp_path / "k1"), **base),
          registry=registry, progress=False)
    after = load_head(tmp_path / "k3", target, registry).state_dict()
    added = [k for k in after if k not in trained.state_dict()]
    assert added and any(after[k].abs().sum() > 0 and not torch.equal(after[k], grown.state_dict()[k])
                         for k in added)
    assert json.loads((tmp_path / "k3" / "koala.json").read_text())["head_config"]["layers"] == 3


def test_hydra_prefix_layer_trains_and_round_trips(prepared, registry, tmp_path):
    """Hydra++: the prefix layer starts as the identity (the fresh head equals plain Hydra), is
    trained with the heads, and is saved and loaded with them."""
    from koala_core.training import WindowSampler

    target, data = prepared
    batch = WindowSampler(load_split(data, "train"), 32, "cpu").batch([(0, 0), (1, 0)])
    torch.manual_seed(0)
    plain = registry.create("heads", "hydra", {"heads": 2, "draft_vocab": 64}, target=target)
    torch.manual_seed(0)
    plus = registry.create("heads", "hydra", {"heads": 2, "draft_vocab": 64, "prefix": True},
                           target=target)
    with torch.no_grad():
        for a, b in zip(plain.train_outputs(batch), plus.train_outputs(batch)):
            torch.testing.assert_close(a.logits, b.logits)
    config = TrainConfig(head="hydra", head_options={"heads": 2, "draft_vocab": 64, "prefix": True},
                         steps=30, batch_size=4, window=32, lr=1e-2, warmup=2, eval_every=30)
    train(target, data, tmp_path / "h", config, registry=registry, progress=False)
    head = load_head(tmp_path / "h", target, registry)
    assert head.prefix is not None and head.prefix.mlp.down_proj.weight.abs().sum() > 0


def test_training_on_two_prepared_sets_joins_their_splits(prepared, registry, tmp_path):
    """`koala train --data A --data B`: both sets' windows are trained on, each set's validation
    split is validated on, and the checkpoint records both; sets of different kinds are refused."""
    from koala_core.data import load_splits

    target, data = prepared
    src = write_sharegpt(tmp_path / "more.json", seed=5)
    other = tmp_path / "more"
    prepare(target, other, PrepareConfig(max_tokens=1500, max_length=64, val_every=4, topk=4),
            data=src, progress=False)
    both = load_splits([data, other], "train")
    one, two = load_split(data, "train"), load_split(other, "train")
    assert both["input_ids"].shape[0] == one["input_ids"].shape[0] + two["input_ids"].shape[0]
    assert both["lengths"].shape[0] == one["lengths"].shape[0] + two["lengths"].shape[0]
    config = TrainConfig(head="medusa", head_options={"heads": 2, "draft_vocab": 64}, steps=4,
                         batch_size=2, window=16, eval_every=4)
    train(target, [data, other], tmp_path / "ck", config, registry=registry, progress=False)
    recorded = load_head(tmp_path / "ck", target, registry).checkpoint_meta["recipe"]["data"]
    assert recorded["sets"] == ["data", "more"] and len(recorded["prepare"]) == 2
    assert recorded["tokens"]["train"] == both["input_ids"].shape[0]
    plain = tmp_path / "plain"
    prepare(target, plain, PrepareConfig(max_tokens=800, max_length=64, val_every=4), data=src,
            progress=False)
    with pytest.raises(KoalaError, match="same --topk"):
        load_splits([data, plain], "train")


def test_a_set_without_validation_text_joins_others_but_not_alone(prepared, tmp_path):
    """Small ranges prepared side by side may hold no validation conversation: joined with sets
    that have one they add training text only; alone (or all of them so) it is an error."""
    from koala_core.data import load_splits

    target, data = prepared
    src = write_sharegpt(tmp_path / "more.json", seed=5)
    small = tmp_path / "small"
    prepare(target, small, PrepareConfig(max_tokens=400, max_length=64, val_every=1000, topk=4),
            data=src, progress=False)
    assert not any(n.startswith("val") for n in json.loads((small / "manifest.json").read_text())["shards"])
    val = load_splits([data, small], "val")
    assert val["input_ids"].shape[0] == load_split(data, "val")["input_ids"].shape[0]
    assert load_splits([data, small], "train")["input_ids"].shape[0] == (
        load_split(data, "train")["input_ids"].shape[0] + load_split(small, "train")["input_ids"].shape[0])
    with pytest.raises(KoalaError, match="no val shards"):
        load_splits([small], "val")
    with pytest.raises(KoalaError, match="none of .* has val shards"):
        load_splits([small, small], "val")
