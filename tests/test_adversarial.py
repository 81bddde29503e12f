"""KOALA's adversarial training: discriminators, games, the head/discriminator loop and its guards."""

import json
from dataclasses import replace

import pytest
import torch

from koala_core.adversary import Adversary, AdversaryConfig, CollapseError
from koala_core.checkpoint import load_head
from koala_core.interfaces import DepthOutput, Discriminator
from koala_core.training import TrainConfig, train


def toy_output(n: int, features: torch.Tensor, target_features: torch.Tensor, context: torch.Tensor,
               logits: torch.Tensor | None = None, topk_ids=None, topk_logp=None) -> DepthOutput:
    return DepthOutput(logits=logits if logits is not None else torch.zeros(n, 4),
                       labels=torch.zeros(n, dtype=torch.long), weight=torch.ones(n),
                       context=context, features=features, target_features=target_features,
                       topk_ids=topk_ids, topk_logp=topk_logp)


@pytest.mark.parametrize("game", ["bce", "hinge", "wgan-gp"])
def test_discriminator_learns_to_separate_real_from_fake(registry, game):
    torch.manual_seed(0)
    n, d = 512, 8
    ctx = torch.randn(n, d)
    real = ctx @ torch.randn(d, d) * 0.5 + 1.0  # the "target's" feature depends on the context
    fake = torch.randn(n, d)
    adv = Adversary(AdversaryConfig(discriminator="feature-mlp", adv_loss=game, d_lr=2e-3,
                                    discriminator_options={"hidden": 64}),
                    registry, context_dim=d, topk=0, device="cpu")
    out = toy_output(n, fake, real, ctx)
    with torch.no_grad():
        first = (adv.disc(ctx, real) > adv.disc(ctx, fake)).float().mean().item()
    for step in range(200):
        stats = adv.discriminator_steps([out], step)
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert first < 0.75 and stats["d_acc"] > 0.9, (first, stats)


def test_adversarial_term_moves_the_head_toward_the_target_distribution(registry):
    """Hard-label CE alone pushes a head toward one-hot; the logit discriminator sees the target's
    soft distribution and pulls the head's back toward it (lower KL than supervised alone)."""
    n, v, k = 256, 6, 5
    torch.manual_seed(0)
    ctx = torch.randn(n, 4)
    target_logp = torch.log_softmax(torch.tensor([2.0, 1.2, 0.8, 0.3, 0.0, -3.0]), -1)
    topk_logp, topk_ids = target_logp.topk(k)

    def run(adversarial: bool) -> float:
        torch.manual_seed(1)
        logits = torch.zeros(v, requires_grad=True)  # the "head": one learnable distribution
        opt = torch.optim.Adam([logits], lr=0.05)
        adv = Adversary(AdversaryConfig(discriminator="logit-mlp", adv_loss="bce", adv_weight=1.0,
                                        adv_warmup=0, d_lr=1e-3, discriminator_options={"hidden": 32}),
                        registry, context_dim=4, topk=k, device="cpu", seed=1)
        for step in range(300):
            out = toy_output(n, None, None, ctx, logits=logits.expand(n, v),
                             topk_ids=topk_ids.expand(n, k), topk_logp=topk_logp.expand(n, k))
            loss = torch.nn.functional.cross_entropy(out.logits, out.labels)
            if adversarial:
                adv.discriminator_steps([out], step)
                loss = loss + adv.generator_loss([out], step, 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        logq = torch.log_softmax(logits.detach(), -1)
        return float((target_logp.exp() * (target_logp - logq)).sum())

    supervised, koala = run(False), run(True)
    assert koala < 0.7 * supervised, (koala, supervised)


def separable_game(registry, **kw):
    """A discriminator on samples it can tell apart (nearly) outright."""
    torch.manual_seed(0)
    n, d = 256, 4
    ctx = torch.randn(n, d)
    real, fake = torch.randn(n, d) * 0.3 + 0.3, torch.randn(n, d) * 0.3 - 0.3
    adv = Adversary(AdversaryConfig(discriminator="feature-mlp", d_lr=3e-3, collapse_patience=10_000,
                                    discriminator_options={"hidden": 32, "spectral_norm": False},
                                    **kw), registry, context_dim=d, topk=0, device="cpu")
    out = toy_output(n, fake, real, ctx)
    for step in range(300):
        stats = adv.discriminator_steps([out], step)
    with torch.no_grad():
        p_real = torch.sigmoid(adv.disc(ctx, real)).mean().item()
    return adv, stats, p_real


def test_label_smoothing_keeps_the_discriminator_from_certainty(registry):
    _, plain, p_plain = separable_game(registry)
    _, smooth, p_smooth = separable_game(registry, adv_loss_options={"real_label": 0.9})
    assert plain["d_acc"] > 0.99 and smooth["d_acc"] > 0.99  # both still rank real above fake
    assert p_plain > 0.97 and 0.8 < p_smooth < 0.95, (p_plain, p_smooth)
    with pytest.raises(Exception, match="real_label"):
        separable_game(registry, adv_loss_options={"real_label": 0.4})


def test_instance_noise_keeps_the_game_open_and_decays(registry):
    _, plain, _ = separable_game(registry)
    adv, noisy, _ = separable_game(registry, instance_noise=3.0)
    # on clean samples the sets are apart, but the discriminator trains on overlapping ones, so
    # its loss cannot fall to zero (the head's gradient is not saturated)
    assert plain["d_loss"] < 0.05 and noisy["d_loss"] > 0.3, (plain, noisy)
    decaying = Adversary(AdversaryConfig(discriminator="feature-mlp", instance_noise=2.0,
                                         noise_steps=100), registry, context_dim=4, topk=0, device="cpu")
    assert [decaying.noise_at(s) for s in (0, 50, 100, 500)] == [2.0, 1.0, 0.0, 0.0]
    assert adv.noise_at(10_000) == 3.0  # noise_steps=0: constant
    with pytest.raises(Exception, match="instance_noise"):
        AdversaryConfig(discriminator="feature-mlp", instance_noise=-1.0)


class Cheater(Discriminator):
    """Forced collapse: it is handed the answer, so it is always right."""

    def __init__(self, config=None, context_dim=0, topk=0):
        super().__init__(config, context_dim, topk)
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.nan = False

    def samples(self, out):
        n = out.weight.shape[0]
        return torch.ones(n, 1), out.features[:, :1] * 0

    def forward(self, context, sample):
        score = (sample[:, 0] * 2 - 1) * 10 + self.bias * 0
        return score * float("nan") if self.nan else score


def cheating_registry(registry):
    from koala_core.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def register_discriminators(self, register):
            register("cheater", Cheater)

    registry.add(Plugin(), name="cheater-test")
    return registry


def test_collapse_guard_backs_off_then_gives_up_the_game(registry, capsys):
    reg = cheating_registry(registry)
    adv = Adversary(AdversaryConfig(discriminator="cheater", collapse_patience=3, max_backoffs=1,
                                    adv_warmup=0),
                    reg, context_dim=4, topk=0, device="cpu")
    out = toy_output(8, torch.randn(8, 4, requires_grad=True), torch.randn(8, 4), torch.randn(8, 4))
    lr0 = adv.opt.param_groups[0]["lr"]
    for step in range(20):
        adv.discriminator_steps([out], step)
        if step == 3:  # the first back-off: learning rate halved, updates paused
            assert adv.backoffs == 1 and adv.paused > 0
            assert adv.opt.param_groups[0]["lr"] == lr0 / 2
    assert adv.stopped_at is not None and adv.stopped_at < 20
    printed = capsys.readouterr()
    assert "backing off" in printed.out + printed.err
    assert "adversarial training stops here" in printed.out + printed.err
    assert float(adv.generator_loss([out], 20, 1.0)) == 0.0  # the game is over: supervised only


def test_nan_discriminator_stops_with_a_clear_message(registry):
    adv = Adversary(AdversaryConfig(discriminator="cheater"), cheating_registry(registry),
                    context_dim=4, topk=0, device="cpu")
    adv.disc.nan = True
    out = toy_output(8, torch.randn(8, 4), torch.randn(8, 4), torch.randn(8, 4))
    with pytest.raises(CollapseError, match="discriminator loss is nan"):
        adv.discriminator_steps([out], 0)


def adv_config(steps, **kw):
    return TrainConfig(head="eagle", head_options={"draft_vocab": 64, "layers": 2}, steps=steps,
                       batch_size=2, window=32, warmup=2, eval_every=100, save_every=3, seed=3,
                       adversary=AdversaryConfig(discriminator=kw.pop("disc", "feature-mlp"),
                                                 adv_loss=kw.pop("game", "hinge"), adv_warmup=2,
                                                 d_positions=32, **kw))


BALANCED = {"instance_noise": 1.0, "noise_steps": 4, "adv_loss_options": {"real_label": 0.9}}


@pytest.mark.parametrize("disc,game,extra", [("feature-mlp", "hinge", {}), ("logit-mlp", "wgan-gp", {}),
                                             ("feature-mlp", "bce", {}), ("logit-mlp", "bce", BALANCED)])
def test_adversarial_training_is_finite_and_resumes_exactly(prepared, registry, tmp_path, disc, game,
                                                           extra):
    target, data = prepared
    metrics = train(target, data, tmp_path / "full", adv_config(6, disc=disc, game=game, **extra),
                    registry=registry, progress=False)
    last = metrics["history"][-1]
    assert last["g_adv"] != 0.0 and "d_acc" in last  # the game was played to the end
    train(target, data, tmp_path / "part", adv_config(3, disc=disc, game=game, **extra),
          registry=registry, progress=False)
    train(target, data, tmp_path / "part", adv_config(6, disc=disc, game=game, **extra), resume=True,
          registry=registry, progress=False)
    a = load_head(tmp_path / "full", target, registry).state_dict()
    b = load_head(tmp_path / "part", target, registry).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    # the discriminator is in the training state, not in the inference checkpoint
    from safetensors.torch import load_file

    assert any(k.startswith("disc.") for k in load_file(tmp_path / "part.train-state" / "state.safetensors"))
    assert not any("disc" in k for k in load_file(tmp_path / "part" / "model.safetensors"))
    recipe = json.loads((tmp_path / "part" / "koala.json").read_text())["recipe"]
    assert recipe["train"]["adversary"]["discriminator"] == disc


def test_the_game_over_micro_batches_plays_and_resumes_exactly(prepared, registry, tmp_path):
    """A batch in micro-batches: the discriminator learns from all of them, each adds its head
    loss, and the draws of each depend on the step and its index alone (no stream to save)."""
    target, data = prepared

    def config(steps):
        return replace(adv_config(steps, game="bce", **BALANCED, d_steps=2), micro_batches=2)

    metrics = train(target, data, tmp_path / "full", config(6), registry=registry, progress=False)
    last = metrics["history"][-1]
    assert last["g_adv"] != 0.0 and 0.0 <= last["d_acc"] <= 1.0
    train(target, data, tmp_path / "part", config(3), registry=registry, progress=False)
    train(target, data, tmp_path / "part", config(6), resume=True, registry=registry, progress=False)
    a = load_head(tmp_path / "full", target, registry).state_dict()
    b = load_head(tmp_path / "part", target, registry).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    train(target, data, tmp_path / "one", adv_config(6, game="bce", **BALANCED, d_steps=2),
          registry=registry, progress=False)
    c = load_head(tmp_path / "one", target, registry).state_dict()
    assert not all(torch.allclose(a[k], c[k]) for k in a)  # the split game is not the 1-batch run


def test_resume_refuses_a_different_adversary(prepared, registry, tmp_path):
    target, data = prepared
    train(target, data, tmp_path / "ck", adv_config(3), registry=registry, progress=False)
    with pytest.raises(Exception, match="settings differ"):
        train(target, data, tmp_path / "ck", adv_config(6, d_lr=1e-3), resume=True,
              registry=registry, progress=False)


def test_ablation_trains_every_configuration_and_reports(prepared, registry, tmp_path):
    from koala_core.ablation import AblationConfig, run_ablation
    from koala_core.engine import GenerationConfig

    target, data = prepared
    config = AblationConfig(families=("medusa", "eagle"), layers=(1, 2),
                            train=TrainConfig(steps=2, batch_size=2, window=16, eval_every=2,
                                              save_every=1),
                            adversary=AdversaryConfig(discriminator="logit-mlp", adv_warmup=1,
                                                      d_positions=16),
                            head_options={"draft_vocab": 64})
    prompts = [{"prompt": "hello there"}, {"prompt": "tell me a story"}]
    doc = run_ablation(target, data, tmp_path / "abl", config, prompts,
                       GenerationConfig(max_new_tokens=6), registry=registry, progress=False)
    names = [r["name"] for r in doc["rows"]]
    assert names == ["medusa-k1-sup", "medusa-k1-koala", "medusa-k2-sup", "medusa-k2-koala",
                     "eagle-k1-sup", "eagle-k1-koala", "eagle-k2-sup", "eagle-k2-koala"]
    assert all(r["identical"] == 1.0 for r in doc["rows"])
    assert all(r["draft_ms_per_step"] > 0 for r in doc["rows"])  # each trained head drafted
    for f in ("ablation.json", "ablation.md", "ablation.png", "bench/results.json"):
        assert (tmp_path / "abl" / f).is_file(), f
    meta = json.loads((tmp_path / "abl/bench/results.json").read_text())["meta"]
    assert (meta["n_prompts"], meta["max_new_tokens"], meta["kernels"]) == (2, 6, target.kernels)
    assert "2 prompts x 6 new tokens" in (tmp_path / "abl/bench/results.md").read_text()
    # the A/A control ran beside the heads (not a row of the table) and its spread is printed
    methods = [m["method"] for m in json.loads((tmp_path / "abl/bench/results.json").read_text())["methods"]]
    assert methods[:2] == ["vanilla", "vanilla-again"] and len(methods) == 2 + len(names)
    assert "Noise (A/A)" in (tmp_path / "abl/ablation.md").read_text()
    # rerunning trains nothing again
    mtime = (tmp_path / "abl/checkpoints/eagle-k2-koala/model.safetensors").stat().st_mtime
    run_ablation(target, data, tmp_path / "abl", replace(config, noise_control=False), prompts,
                 GenerationConfig(max_new_tokens=6), registry=registry, progress=False)
    assert (tmp_path / "abl/checkpoints/eagle-k2-koala/model.safetensors").stat().st_mtime == mtime
    methods = [m["method"] for m in json.loads((tmp_path / "abl/bench/results.json").read_text())["methods"]]
    assert "vanilla-again" not in methods and "Noise (A/A)" not in (tmp_path / "abl/ablation.md").read_text()


def test_micro_batches_tell_adversarial_baselines_apart_not_supervised_ones(tmp_path):
    from dataclasses import asdict

    from koala_core.ablation import baseline_differences

    def trained_as(cfg, folder):
        train = asdict(cfg)
        if not cfg.adversary.enabled:
            train.pop("adversary")  # as a supervised checkpoint records it
        folder.mkdir()
        (folder / "koala.json").write_text(json.dumps(
            {"recipe": {"train": train, "loss": "ce", "data": {"hash": "h"}}, "head_config": {}}))
        return folder

    supervised = TrainConfig(head="medusa")
    adversarial = replace(supervised, adversary=AdversaryConfig(discriminator="logit-mlp"))
    assert baseline_differences(trained_as(replace(supervised, micro_batches=2), tmp_path / "s"),
                                supervised, "h") == []
    split = trained_as(replace(adversarial, micro_batches=2), tmp_path / "a")
    assert baseline_differences(split, adversarial, "h") == [
        "micro_batches: 2 there, 1 here (the adversarial game draws per micro-batch)"]
    assert baseline_differences(split, replace(adversarial, micro_batches=2), "h") == []


def test_ablation_reuses_a_baseline_only_if_it_is_that_configuration(prepared, registry, tmp_path):
    """A shipped head trained at the ablation's budget stands in for its configuration (an hour
    less of training at the shipped budget), but only when its settings and data match."""
    from koala_core.ablation import AblationConfig, run_ablation
    from koala_core.engine import GenerationConfig
    from koala_core.errors import ConfigError

    target, data = prepared
    schedule = TrainConfig(steps=2, batch_size=2, window=16, eval_every=2, save_every=1)
    config = AblationConfig(families=("medusa",), layers=(1,), train=schedule,
                            adversary=AdversaryConfig(discriminator="logit-mlp", adv_warmup=1,
                                                      d_positions=16),
                            head_options={"draft_vocab": "64"})  # as the CLI gives it
    (name, cfg, tree), _ = config.runs(registry)
    assert name == "medusa-k1-sup" and cfg.head_options["draft_vocab"] == 64  # typed: comparable
    with pytest.raises(ConfigError, match="draft_vocab"):
        replace(config, head_options={"draft_vocab": "many"}).runs(registry)
    train(target, data, tmp_path / "shipped", cfg, registry=registry, progress=False)
    prompts = [{"prompt": "hello there"}]
    doc = run_ablation(target, data, tmp_path / "abl", replace(config, baselines={name: str(tmp_path / "shipped")}),
                       prompts, GenerationConfig(max_new_tokens=4), registry=registry, progress=False)
    rows = {r["name"]: r for r in doc["rows"]}
    assert rows[name]["checkpoint"] == str(tmp_path / "shipped")
    # the baseline drafts with the ablation's tree, not the one its checkpoint names
    from koala_core.compose import build_method

    assert tree == ("static", {"preset": "small"})  # medusa's own default
    shipped = tmp_path / "shipped-chain"
    train(target, data, shipped, cfg, registry=registry, progress=False, tree=("chain", {}))
    assert build_method(str(shipped), target, registry).engine.tree_policy.plugin_name == "chain"
    policy = build_method(str(shipped), target, registry, tree=tree).engine.tree_policy
    assert (policy.plugin_name, policy.config.preset) == ("static", "small")
    assert rows[name]["tree"] == rows["medusa-k1-koala"]["tree"] == "static (preset=small)"
    assert not (tmp_path / "abl/checkpoints" / name).exists()  # not trained again
    assert (tmp_path / "abl/checkpoints/medusa-k1-koala/koala.json").is_file()
    # trained otherwise: refused, naming what differs, before anything trains
    train(target, data, tmp_path / "other", replace(cfg, steps=3), registry=registry, progress=False)
    with pytest.raises(ConfigError, match="steps: 3 there, 2 here"):
        run_ablation(target, data, tmp_path / "abl2", replace(config, baselines={name: str(tmp_path / "other")}),
                     prompts, GenerationConfig(max_new_tokens=4), registry=registry, progress=False)
    assert not (tmp_path / "abl2/checkpoints/medusa-k1-koala").exists()
    train(target, data, tmp_path / "kd", replace(cfg, loss="kd"), registry=registry, progress=False)
    with pytest.raises(ConfigError, match="loss: 'kd' there, 'ce' here"):
        run_ablation(target, data, tmp_path / "abl4", replace(config, baselines={name: str(tmp_path / "kd")}),
                     prompts, GenerationConfig(max_new_tokens=4), registry=registry, progress=False)
    with pytest.raises(ConfigError, match="no configuration named medusa-k9-sup"):
        run_ablation(target, data, tmp_path / "abl3", replace(config, baselines={"medusa-k9-sup": "x"}),
                     prompts, GenerationConfig(max_new_tokens=4), registry=registry, progress=False)


def test_ablate_budget_takes_the_schedule_from_a_recipe(tmp_path):
    from pathlib import Path

    from click.testing import CliRunner

    from koala_core.ablation import budget_of, budget_tree
    from koala_core.cli import main
    from koala_core.recipe import load_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "eagle-k1.toml"
    schedule, shipped = budget_of(recipe), load_recipe(recipe).train_config()
    for key in ("steps", "batch_size", "window", "lr", "warmup", "seed", "precision"):
        assert getattr(schedule, key) == getattr(shipped, key), key
    assert schedule.head == "" and not schedule.adversary.enabled
    shipped_tree = load_recipe(recipe).tree
    assert shipped_tree.name == "static" and shipped_tree.options["preset"] == "tiny"
    assert budget_tree(recipe) == ("static", dict(shipped_tree.options))  # every head drafts it
    result = CliRunner().invoke(main, ["ablate", "--data", str(tmp_path), "--budget", str(recipe),
                                       "--steps", "5"])
    assert result.exit_code != 0 and "drop --budget" in result.output
    result = CliRunner().invoke(main, ["ablate", "--data", str(tmp_path), "--baseline", "eagle-k1-sup"])
    assert result.exit_code != 0 and "expected NAME=DIR" in result.output


def test_ablate_tree_options_amend_the_budget_tree_or_fail():
    from pathlib import Path

    from koala_core.cli import _ablation_tree
    from koala_core.errors import ConfigError

    from koala_core.recipe import load_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "eagle-k1.toml"
    shipped = dict(load_recipe(recipe).tree.options)  # static tiny (+ copy proposals)
    assert _ablation_tree(None, {}, str(recipe)) == ("static", shipped)
    assert _ablation_tree(None, {"preset": "small"}, str(recipe)) == ("static", {**shipped, "preset": "small"})
    assert _ablation_tree("chain", {"depth": "3"}, str(recipe)) == ("chain", {"depth": "3"})
    assert _ablation_tree(None, {}, None) is None  # each head's own default tree
    with pytest.raises(ConfigError, match="--tree-option needs --tree"):
        _ablation_tree(None, {"depth": "3"}, None)


def test_ablation_only_keeps_the_named_configurations(registry):
    from koala_core.ablation import AblationConfig
    from koala_core.errors import ConfigError

    adversary = AdversaryConfig(discriminator="logit-mlp")
    config = AblationConfig(families=("eagle",), layers=(1, 2), adversary=adversary,
                            only=("eagle-k1-sup", "eagle-k2-koala", "eagle-k1-koala"))
    assert [name for name, _, _ in config.runs(registry)] == ["eagle-k1-sup", "eagle-k1-koala",
                                                              "eagle-k2-koala"]
    with pytest.raises(ConfigError, match="no configuration named eagle-k3-sup; the names are "
                                          "eagle-k1-sup, eagle-k1-koala"):
        AblationConfig(families=("eagle",), layers=(1, 2), adversary=adversary,
                       only=("eagle-k3-sup",)).runs(registry)
