"""`koala compose` recipes: writing, reading, validation, and their use by generate/train/bench."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import tiny_model, tiny_tokenizer
from koala_core.cli import main
from koala_core.errors import ConfigError
from koala_core.recipe import Recipe, Slot, describe, load_recipe

REPO = Path(__file__).resolve().parents[1]


def compose(*args):
    return CliRunner().invoke(main, ["compose", *args])


def test_compose_writes_the_issue_example(tmp_path):
    out = tmp_path / "recipes" / "eagle-koala.toml"
    result = compose("--head", "eagle", "--layers", "2", "--discriminator", "feature-mlp",
                     "--adv-loss", "hinge", "--tree", "dynamic", "--verifier", "greedy",
                     "--discriminator.hidden", "128", "--train.steps=2000", "--adv-weight", "0.2",
                     "-o", str(out))
    assert result.exit_code == 0, result.output
    r = load_recipe(out)
    assert (r.head.name, r.head.options) == ("eagle", {"layers": 2})  # typed, head first
    assert (r.discriminator.name, r.discriminator.options) == ("feature-mlp", {"hidden": 128})
    assert (r.adv_loss.name, r.tree.name, r.verifier.name) == ("hinge", "dynamic", "greedy")
    config = r.train_config()
    assert config.steps == 2000 and config.adversary.adv_weight == 0.2
    assert config.adversary.discriminator == "feature-mlp" and config.head_options == {"layers": 2}
    assert Recipe.from_dict(__import__("tomllib").loads(r.to_toml())) == r  # round trip


def test_help_options_lists_every_plugin_option_with_defaults():
    result = compose("--head", "eagle", "--discriminator", "logit-mlp", "--help-options")
    assert result.exit_code == 0, result.output
    for text in ("--layers", "default 1", "--draft-vocab", "--spectral-norm", "--adv-weight",
                 "--steps", "default 1000"):
        assert text in result.output, text


def test_a_third_party_plugins_options_appear_without_core_changes(registry):
    from dataclasses import dataclass, field

    from koala_core.hookspecs import hookimpl
    from koala_core.interfaces import Loss

    class Focal(Loss):
        @dataclass(frozen=True)
        class Config:
            gamma: float = field(default=2.0, metadata={"help": "focusing strength"})

        def forward(self, out):
            return out.logits.sum() * 0

    class Plugin:
        @hookimpl
        def register_losses(self, register):
            register("focal", Focal)

    registry.add(Plugin(), name="focal-test")
    r = Recipe(head=Slot("medusa"), loss=Slot("focal", {"gamma": "3"})).validate(registry)
    assert r.loss.options == {"gamma": 3.0}
    assert "--gamma" in describe(r, registry) and "focusing strength" in describe(r, registry)
    with pytest.raises(ConfigError, match="valid options: gamma"):
        Recipe(head=Slot("medusa"), loss=Slot("focal", {"alpha": 1})).validate(registry)


@pytest.mark.parametrize("args,message", [
    (["--head", "eaglet"], "eaglet.*eagle"),
    (["--head", "eagle", "--widht", "3"], "no chosen plugin has an option 'widht'"),
    (["--head", "eagle", "--layers", "0"], "layers"),
    (["--head", "eagle", "--tree", "chain", "--depth", "many"], "'depth' must be int"),
    (["--head", "eagle", "--verifier", "greedy", "--temperature", "0.7"], "greedy verifier needs"),
    (["--head", "eagle", "--adv-weight", "0.3"], "need a discriminator"),
    (["--head", "lookup", "--discriminator", "feature-mlp"], "nothing to train"),
    (["--head", "eagle", "--discriminator.hidden", "8"], "no discriminator chosen"),
    (["--head", "eagle", "--bogus.x", "1"], "unknown section 'bogus'"),
    (["--head", "eagle", "--discriminator", "logit-mlp", "--adv-loss", "minimax"], "minimax"),
])
def test_invalid_recipes_are_clear_errors(args, message):
    result = compose(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    import re

    assert re.search(message, result.output), result.output


def test_bad_recipe_files_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[head\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(bad)
    bad.write_text('colour = "red"\n[head]\nname = "eagle"\n')
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        load_recipe(bad)
    bad.write_text('[head]\nname = "eagle"\n[train]\nstepz = 3\n')
    with pytest.raises(ConfigError, match="unknown setting.*stepz"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="no recipe file"):
        load_recipe(tmp_path / "missing.toml")
    bad.write_text('checkpoint = "$KOALA_TEST_UNSET_VAR/runs/x"\n[head]\nname = "eagle"\n')
    with pytest.raises(ConfigError, match="environment variable that is not set"):
        load_recipe(bad)


def test_recipe_checkpoint_paths_expand_home_and_variables(tmp_path, monkeypatch):
    from pathlib import Path

    recipe = tmp_path / "sub" / "r.toml"
    recipe.parent.mkdir()
    monkeypatch.setenv("KOALA_TEST_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for written, want in (("$KOALA_TEST_RUNS/a", tmp_path / "runs" / "a"),
                          ("~/b", tmp_path / "home" / "b"),
                          ("../c", tmp_path / "c"),  # relative: against the recipe's folder
                          (str(tmp_path / "d"), tmp_path / "d")):
        recipe.write_text(f'checkpoint = "{written}"\n[head]\nname = "eagle"\n')
        assert Path(load_recipe(recipe).checkpoint) == want.resolve(), written


def test_shipped_recipes_load_and_point_at_their_checkpoints():
    for path in sorted((REPO / "recipes").glob("*.toml")):
        r = load_recipe(path)
        assert (Path(r.checkpoint) / "koala.json").is_file(), path
        meta = json.loads((Path(r.checkpoint) / "koala.json").read_text())
        assert meta["plugin"]["name"] == r.head.name
        assert r.head.options == {k: v for k, v in meta["head_config"].items() if k in r.head.options}
        if r.train:  # a training recipe reproduces its checkpoint; the others only pick a tree
            train = meta["recipe"]["train"]
            assert all(train[k] == v for k, v in r.train.items()), path
        if path.stem == Path(r.checkpoint).name:  # the checkpoint's own recipe: its default tree
            assert meta["inference"] == {"tree": r.tree.name, "tree_options": r.tree.options}


def test_recipe_draft_dtype_is_checked_written_and_decides(tmp_path, registry):
    """A recipe may say what its trained head drafts in: checked like --draft-dtype, written back,
    and then the command line may not contradict it."""
    recipe = Recipe.from_dict({"draft_dtype": "int8-dynamic", "head": {"name": "lookup"}}).validate(registry)
    assert 'draft_dtype = "int8-dynamic"' in recipe.to_toml()
    again = tmp_path / "r.toml"
    recipe.save(again)
    assert load_recipe(again).draft_dtype == "int8-dynamic"
    with pytest.raises(ConfigError, match="unknown draft dtype 'fp8'"):
        Recipe.from_dict({"draft_dtype": "fp8", "head": {"name": "lookup"}}).validate(registry)
    clash = CliRunner().invoke(main, ["generate", "--recipe", str(again), "--draft-dtype", "int8", "hi"])
    assert clash.exit_code == 2 and "--draft-dtype: the recipe decides" in clash.output


@pytest.fixture
def tiny_folder(tmp_path):
    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_generate_and_bench_accept_a_recipe(tiny_folder, tmp_path):
    recipe = tmp_path / "lookup.toml"
    result = compose("--model", str(tiny_folder), "--head", "lookup", "--tree", "chain", "--depth", "3",
                     "-o", str(recipe))
    assert result.exit_code == 0, result.output
    plain = CliRunner().invoke(main, ["generate", "--model", str(tiny_folder), "--head", "none",
                                      "--max-new-tokens", "12", "--json", "--raw", "a b c a b"])
    spec = CliRunner().invoke(main, ["generate", "--recipe", str(recipe), "--max-new-tokens", "12",
                                     "--json", "--raw", "a b c a b"])
    assert spec.exit_code == 0, spec.output
    assert json.loads(spec.output)["token_ids"] == json.loads(plain.output)["token_ids"]
    clash = CliRunner().invoke(main, ["generate", "--recipe", str(recipe), "--head", "eagle", "hi"])
    assert clash.exit_code == 2 and "the recipe decides" in clash.output
    untrained = tmp_path / "eagle.toml"
    compose("--model", str(tiny_folder), "--head", "eagle", "-o", str(untrained))
    result = CliRunner().invoke(main, ["generate", "--recipe", str(untrained), "hi"])
    assert result.exit_code == 2 and "untrained" in result.output
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a b c a b c", "id": "x"}) + "\n")
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_folder), "--prompts", str(prompts),
                                       "--methods", f"vanilla,{recipe}", "--max-new-tokens", "8",
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    methods = results["methods"]
    assert results["meta"]["draft_dtype_used"] in ("float32", "bfloat16", "int8", "int8-dynamic")
    assert [m["method"] for m in methods] == ["vanilla", "lookup"]
    assert methods[1]["identical_to_vanilla"] == 1.0


def test_train_accepts_a_recipe_and_command_line_overrides(prepared, tiny_folder, tmp_path):
    _, data = prepared
    recipe = tmp_path / "medusa-koala.toml"
    result = compose("--model", str(tiny_folder), "--head", "medusa", "--heads", "2", "--draft-vocab",
                     "64", "--layers", "2", "--discriminator", "logit-mlp", "--adv-loss", "hinge",
                     "--tree", "static", "--preset", "tiny", "--train.steps", "3", "--batch-size",
                     "2", "--window", "16", "--adv-warmup", "1", "--d-positions", "16", "-o", str(recipe))
    assert result.exit_code == 0, result.output
    out = tmp_path / "ck"
    result = CliRunner().invoke(main, ["train", "--recipe", str(recipe), "--data", str(data),
                                       "--out", str(out), "--steps", "4"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "koala.json").read_text())
    train = meta["recipe"]["train"]
    assert train["steps"] == 4 and train["batch_size"] == 2 and train["head_options"]["layers"] == 2
    assert train["adversary"]["discriminator"] == "logit-mlp" and train["adversary"]["adv_loss"] == "hinge"
    assert meta["inference"] == {"tree": "static", "tree_options": {"preset": "tiny"}}
    clash = CliRunner().invoke(main, ["train", "--recipe", str(recipe), "--data", str(data), "--out",
                                      str(out), "--head", "eagle"])
    assert clash.exit_code == 2 and "the recipe decides" in clash.output


def test_benchmark_recipes_validate_and_name_existing_checkpoints(monkeypatch, tmp_path, registry):
    """Every recipe a benchmark command names loads, its plugins and options check out, and one
    naming a shipped checkpoint finds it (those under ``$KOALA_CACHE/runs`` name a training run's
    output, not kept in git: only their options are checked)."""
    monkeypatch.setenv("KOALA_CACHE", str(tmp_path))
    recipes = sorted((REPO / "benchmarks" / "recipes").glob("*.toml"))
    assert recipes
    for path in recipes:
        recipe = load_recipe(path).validate(registry)
        if recipe.checkpoint and not Path(recipe.checkpoint).is_relative_to(tmp_path.resolve()):
            assert (Path(recipe.checkpoint) / "koala.json").is_file(), path
