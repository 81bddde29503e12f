"""Building an engine (or a bench method) from plugin names, options, a checkpoint or a recipe.

No plugin is special here: a head brings its own default tree (``DraftHead.default_tree``), a
checkpoint records the tree it was tuned with, the verifier nobody named is chosen by the engine's
one rule, and ``--head default`` falls back to a training-free head that declares ``fallback``.
"""

from __future__ import annotations

from typing import Any

from .config import build_config
from .errors import ConfigError
from .registry import Registry, default_registry
from .sampling import Sampling


def build_engine(model: str = "default", head: str | None = "default", checkpoint: str | None = None,
                 head_options: dict[str, Any] | None = None, tree: str | None = None,
                 tree_options: dict[str, Any] | None = None, verifier: str | None = None,
                 verifier_options: dict[str, Any] | None = None, sampling: Sampling = Sampling(),
                 device: str = "cpu", dtype: str = "float32", kernels: str = "auto",
                 registry: Registry | None = None, draft_dtype: str = "auto"):
    """A :class:`~koala_core.engine.SpeculativeEngine`; every name, option and checkpoint file is
    checked before the model loads, so a typo or a damaged file fails in milliseconds.
    ``draft_dtype``: what a trained head drafts in (:func:`koala_core.kernels.draft_dtype`)."""
    from .checkpoint import Checkpoint
    from .engine import SpeculativeEngine, check_verifier
    from .model import load_target
    from .shipped import default_checkpoint

    reg = registry or default_registry()
    if head == "default" and checkpoint is None:
        checkpoint = default_checkpoint(model)
        head = None if checkpoint else fallback_head(reg)
    if head in (None, "", "none", "default"):
        head = None
    ck = Checkpoint.open(checkpoint) if checkpoint is not None else None
    if ck is not None and head_options:
        raise ConfigError("head options come from the checkpoint; drop --head-option")
    if head is not None and ck is None:  # a bad head name or option fails here
        build_config(reg.get("heads", head).cls, head_options or {}, where=f"head {head!r}")
    elif head_options and ck is None:
        raise ConfigError("head options given without a head")
    head_cls = reg.get("heads", ck.plugin if ck else head).cls if (ck or head) else None
    policy = None
    if head_cls is not None or tree:
        policy = reg.create("tree_policies", *choose_tree(ck, head_cls, tree, tree_options))
    ver = reg.create("verifiers", verifier, verifier_options) if verifier else None
    if ver is not None:
        check_verifier(ver, sampling)
    from .config import check_draft_dtype

    check_draft_dtype(draft_dtype)  # before the model loads
    target = load_target(model, device=device, dtype=dtype, kernels=kernels)
    drafter = make_drafter(target, head, head_options, ck, reg, draft_dtype)
    return SpeculativeEngine(target, drafter, policy if drafter is not None else None, ver)


def fallback_head(registry: Registry) -> str | None:
    """The training-free head ``--head default`` uses when no trained head exists (first by name)."""
    names = [n for n in registry.names("heads") if registry.get("heads", n).cls.fallback]
    return names[0] if names else None


def choose_tree(checkpoint, head_cls: type | None, tree: str | None,
                tree_options: dict | None) -> tuple[str, dict]:
    """The tree policy to draft with: the one given, else the checkpoint's own, else the head's
    default. Options given without a tree name refine the chosen one."""
    if tree:
        return tree, dict(tree_options or {})
    name, options = ((checkpoint.tree if checkpoint is not None else None)
                     or (head_cls.default_tree if head_cls is not None else ("chain", {})))
    return name, {**options, **(tree_options or {})}


def recipe_engine_args(recipe, checkpoint: str | None = None) -> dict:
    """build_engine keyword arguments from a validated recipe (a trained head needs a checkpoint)."""
    from .heads import NeuralHead

    reg = default_registry()
    checkpoint = checkpoint or recipe.checkpoint or None
    head = recipe.head.name or None
    if checkpoint is None and head and issubclass(reg.get("heads", head).cls, NeuralHead):
        raise ConfigError(f"the recipe's {head!r} head is untrained: set checkpoint = \"DIR\" in the "
                          "recipe, pass --checkpoint DIR, or train one with `koala train --recipe`")
    return {"model": recipe.model, "head": None if checkpoint else head,
            "head_options": None if checkpoint else dict(recipe.head.options),
            "checkpoint": checkpoint, "tree": recipe.tree.name or None,
            "tree_options": dict(recipe.tree.options), "verifier": recipe.verifier.name or None,
            "verifier_options": dict(recipe.verifier.options),
            "sampling": Sampling(recipe.temperature), "draft_dtype": recipe.draft_dtype or None}


def make_drafter(target, head: str | None, head_options: dict | None, checkpoint,
                 registry: Registry, draft_dtype: str = "auto"):
    """A head from an opened :class:`~koala_core.checkpoint.Checkpoint`, a plugin name, or None."""
    if checkpoint is not None:
        return checkpoint.build_head(target, registry, draft_dtype)
    if head is not None:
        return registry.create("heads", head, head_options, target=target).to(target.device)
    return None


def build_method(spec: str, target, registry: Registry | None = None, draft_dtype: str = "auto",
                 tree: tuple[str, dict] | None = None):
    """A bench method from its name: ``vanilla``, ``vanilla-again`` (plain decoding once more: the
    bench's own noise, an A/A control), ``hf-lookup``, a training-free head plugin
    (e.g. ``lookup``), ``default``, a shipped head's name, a checkpoint folder or a recipe file.
    ``tree`` (name, options) replaces a checkpoint's own tree (heads compared on one tree)."""
    from pathlib import Path

    from .bench import Method
    from .checkpoint import Checkpoint
    from .engine import SpeculativeEngine
    from .heads import NeuralHead
    from .shipped import default_checkpoint, shipped_checkpoints

    reg = registry or default_registry()
    if spec.endswith(".toml"):
        from .recipe import load_recipe

        args = recipe_engine_args(load_recipe(spec, reg))
        if args["model"] != "default" and args["model"] != target.name:
            raise ConfigError(f"recipe {spec} is for model {args['model']!r}; bench runs {target.name!r}")
        ck = Checkpoint.open(args["checkpoint"]) if args["checkpoint"] else None
        head_cls = reg.get("heads", ck.plugin if ck else args["head"]).cls
        policy = reg.create("tree_policies", *choose_tree(ck, head_cls, args["tree"],
                                                          args["tree_options"]))
        verifier = (reg.create("verifiers", args["verifier"], args["verifier_options"])
                    if args["verifier"] else None)
        drafter = make_drafter(target, args["head"], args["head_options"], ck, reg,
                               args["draft_dtype"] or draft_dtype)
        return Method(Path(spec).stem, SpeculativeEngine(target, drafter, policy, verifier))
    if spec in ("vanilla", "vanilla-again"):
        return Method(spec, SpeculativeEngine(target))
    if spec == "hf-lookup":
        return Method(spec, hf_target=target)
    training_free = [n for n in reg.names("heads")
                     if not issubclass(reg.get("heads", n).cls, NeuralHead)]
    if spec in training_free:
        return Method(spec, SpeculativeEngine(target, make_drafter(target, spec, None, None, reg)))
    folder = default_checkpoint("default") if spec == "default" else None
    if spec == "default" and folder is None:
        raise ConfigError("no shipped default checkpoint in this installation")
    folder = folder or (shipped_checkpoints().get(spec) or spec)
    if not (Path(folder) / "koala.json").is_file():
        known = ", ".join(["vanilla", "vanilla-again", "hf-lookup", *training_free, "default", *shipped_checkpoints()])
        raise ConfigError(f"unknown bench method {spec!r}: use one of {known}, a checkpoint folder "
                          "or a recipe .toml")
    ck = Checkpoint.open(folder)
    policy = reg.create("tree_policies", *choose_tree(ck, reg.get("heads", ck.plugin).cls,
                                                      *(tree or (None, None))))
    return Method(spec, SpeculativeEngine(target, ck.build_head(target, reg, draft_dtype), policy))
