"""How an engine is put together: a head's own defaults (no plugin is special in the core), one
read of a checkpoint, recipes without the training code, prompt selection."""

import json
import subprocess
import sys
import types

import pytest
import torch

from conftest import tiny_model, tiny_target, tiny_tokenizer
from koala_core.hookspecs import hookimpl
from koala_core.interfaces import Candidates, DraftHead
from koala_core.registry import Registry


def third_party_registry():
    """The installed plugins plus a test package with two heads of its own."""
    from koala_medusa.head import MedusaHead

    class EchoHead(MedusaHead):
        """A trainable head with defaults of its own."""

        default_tree = ("static", {"preset": "tiny"})
        default_loss = "kd"

    class FreeHead(DraftHead):
        """A training-free head that offers itself as the fallback."""

        fallback = True

        def expand(self, tree, nodes, k):
            return Candidates(torch.full((len(nodes), k), 5), torch.zeros(len(nodes), k))

    mod = types.ModuleType("third_party")

    @hookimpl
    def register_heads(register):
        register("echo", EchoHead)
        register("aaa-free", FreeHead)

    mod.register_heads = register_heads
    reg = Registry.from_entry_points()
    reg.add(mod, name="third-party", package="third-party-pkg", version="0.1")
    return reg


def test_a_third_party_head_brings_its_own_tree_and_loss(prepared, tmp_path):
    from koala_core.compose import choose_tree, fallback_head
    from koala_core.engine import SpeculativeEngine
    from koala_core.training import TrainConfig, train

    reg = third_party_registry()
    cls = reg.get("heads", "echo").cls
    assert choose_tree(None, cls, None, None) == ("static", {"preset": "tiny"})
    assert choose_tree(None, cls, None, {"preset": "wide"}) == ("static", {"preset": "wide"})
    target, data = prepared
    head = reg.create("heads", "echo", {"heads": 2, "draft_vocab": 64}, target=target)
    assert SpeculativeEngine(target, head).tree_policy.config.preset == "tiny"
    train(target, data, tmp_path / "ck", TrainConfig(head="echo", head_options={"heads": 2,
          "draft_vocab": 64}, steps=2, batch_size=2, window=16, eval_every=2), registry=reg,
          progress=False)
    meta = json.loads((tmp_path / "ck" / "koala.json").read_text())
    assert meta["recipe"]["loss"] == "kd"
    assert meta["inference"] == {"tree": "static", "tree_options": {"preset": "tiny"}}
    assert fallback_head(reg) == "aaa-free" and fallback_head(Registry.from_entry_points()) == "lookup"


def test_a_third_party_training_free_head_is_a_bench_method():
    from koala_core.compose import build_method

    reg = third_party_registry()
    method = build_method("aaa-free", tiny_target(), reg)
    assert type(method.engine.head).__name__ == "FreeHead"
    assert method.engine.tree_policy.plugin_name == "chain"


def test_a_checkpoint_is_read_once_on_the_way_to_an_engine(tmp_path, monkeypatch):
    import safetensors.torch

    from koala_core import checkpoint
    from koala_core.compose import build_engine

    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    reg = Registry.from_entry_points()
    head = reg.create("heads", "hydra", {"heads": 2, "draft_vocab": 64}, target=tiny_target())
    checkpoint.save_head(head, tmp_path / "ck", "hydra")
    reads = {"meta": 0, "weights": 0}
    read_meta, load_file = checkpoint.read_meta, safetensors.torch.load_file

    def count(kind, fn):
        def wrapped(*a, **k):
            reads[kind] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(checkpoint, "read_meta", count("meta", read_meta))
    monkeypatch.setattr(safetensors.torch, "load_file", count("weights", load_file))
    engine = build_engine(str(folder), head="hydra", checkpoint=str(tmp_path / "ck"), registry=reg)
    assert reads == {"meta": 1, "weights": 1}
    assert engine.tree_policy.plugin_name == "static"  # the checkpoint's tree, from that one read


def test_generating_from_a_recipe_does_not_import_training_code():
    code = ("import sys; from koala_core.recipe import load_recipe; "
            "from koala_core.compose import recipe_engine_args; "
            "args = recipe_engine_args(load_recipe('recipes/eagle-k1.toml')); "
            "assert args['checkpoint'].endswith('eagle-k1'), args; "
            "bad = [m for m in ('koala_core.training', 'koala_core.adversary', 'koala_core.data') "
            "if m in sys.modules]; assert not bad, bad")
    from pathlib import Path

    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parent.parent)


def test_a_prompt_file_runs_whole_by_default(tmp_path):
    from koala_core.bench import select_prompts

    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"question {i}"}) for i in range(13)))
    assert len(select_prompts(str(path))) == 13
    assert len(select_prompts(str(path), offset=3, limit=4)) == 4
    assert len(select_prompts("mtbench")) == 10 and len(select_prompts("mtbench", limit=0)) == 80
    with pytest.raises(Exception, match="no prompts left"):
        select_prompts(str(path), offset=20)


def test_prompts_from_several_files_and_chosen_categories(tmp_path):
    from koala_core.bench import select_prompts
    from koala_core.errors import ConfigError

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps({"prompt": f"a{i}", "category": c})
                           for i, c in enumerate(["maths", "translation", "code"])))
    b.write_text("\n".join(json.dumps({"prompt": f"b{i}", "category": c})
                           for i, c in enumerate(["translation", "summarisation"])))
    both = f"{a},{b}"
    assert [p["prompt"] for p in select_prompts(both)] == ["a0", "a1", "a2", "b0", "b1"]
    chosen = select_prompts(both, categories="translation,summarisation")
    assert [p["prompt"] for p in chosen] == ["a1", "b0", "b1"]
    assert [p["prompt"] for p in select_prompts(both, 1, 1, "translation")] == ["b0"]
    with pytest.raises(ConfigError, match="no prompt of category poetry.*code, maths"):
        select_prompts(both, categories="poetry")


def test_recipe_overrides_are_library_code():
    from koala_core.recipe import Recipe, Slot

    reg = Registry.from_entry_points()
    recipe = Recipe(head=Slot("eagle"), tree=Slot("dynamic")).with_flags(
        ["--layers", "2", "--depth=3", "--train.steps", "40"], reg).validate(reg)
    assert recipe.head.options == {"layers": 2} and recipe.tree.options == {"depth": 3}
    again = recipe.with_overrides(eval_every=10)
    assert again.train_config().steps == 40 and again.train_config().save_every == 10
