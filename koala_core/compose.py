"""Building an engine from plugin names and options (what the CLI and recipes call)."""

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
                 registry: Registry | None = None):
    """A :class:`~koala_core.engine.SpeculativeEngine`; every name and option is checked before
    the model loads, so a typo fails in milliseconds."""
    from .engine import SpeculativeEngine
    from .model import load_target

    from .shipped import default_checkpoint

    reg = registry or default_registry()
    if head == "default" and checkpoint is None:
        checkpoint = default_checkpoint(model)
        head = None if checkpoint else "lookup"
    if head in (None, "", "none", "default"):
        head = None
    verifier = verifier or ("greedy" if sampling.greedy else "rejection")
    if verifier == "greedy" and not sampling.greedy:
        raise ConfigError("the greedy verifier needs --temperature 0; use 'rejection' (lossless "
                          "sampling) or 'typical' (lossy) at T>0")
    if head is not None:  # fail on a bad head name or option before the model loads
        build_config(reg.get("heads", head).cls, head_options or {}, where=f"head {head!r}")
    elif head_options:
        raise ConfigError("head options given without a head")
    if checkpoint is not None:
        from .checkpoint import read_meta

        read_meta(checkpoint)  # a missing or corrupt checkpoint fails before the model loads
        if head_options:
            raise ConfigError("head options come from the checkpoint; drop --head-option")
    tree_policy = reg.create("tree_policies", *tree_for(checkpoint, tree, tree_options))
    ver = reg.create("verifiers", verifier, verifier_options)
    target = load_target(model, device=device, dtype=dtype, kernels=kernels)
    return SpeculativeEngine(target, make_drafter(target, head, head_options, checkpoint, reg),
                             tree_policy, ver)


def tree_for(checkpoint: str | None, tree: str | None, tree_options: dict | None) -> tuple[str, dict]:
    """The tree policy to draft with: the one given, else the checkpoint's own, else chain.

    Options given on top of a checkpoint's tree refine it."""
    if tree is None and checkpoint is not None:
        from .checkpoint import read_meta

        inference = read_meta(checkpoint).get("inference", {})
        return inference.get("tree", "chain"), {**inference.get("tree_options", {}), **(tree_options or {})}
    return tree or "chain", dict(tree_options or {})


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
            "sampling": Sampling(recipe.temperature)}


def make_drafter(target, head: str | None, head_options: dict | None, checkpoint: str | None,
                 registry: Registry):
    """A head from a checkpoint folder, a plugin name, or None."""
    if checkpoint is not None:
        from .checkpoint import load_head

        return load_head(checkpoint, target, registry)
    if head is not None:
        return registry.create("heads", head, head_options, target=target).to(target.device)
    return None


def build_method(spec: str, target, registry: Registry | None = None):
    """A bench method from its name: vanilla, lookup, hf-lookup, default, or a checkpoint folder."""
    from pathlib import Path

    from .bench import Method
    from .engine import SpeculativeEngine
    from .shipped import default_checkpoint, shipped_checkpoints

    reg = registry or default_registry()
    if spec.endswith(".toml"):
        from .recipe import load_recipe

        args = recipe_engine_args(load_recipe(spec, reg))
        if args["model"] != "default" and args["model"] != target.name:
            raise ConfigError(f"recipe {spec} is for model {args['model']!r}; bench runs {target.name!r}")
        policy = reg.create("tree_policies", *tree_for(args["checkpoint"], args["tree"],
                                                         args["tree_options"]))
        verifier = reg.create("verifiers", args["verifier"] or "greedy", args["verifier_options"])
        drafter = make_drafter(target, args["head"], args["head_options"], args["checkpoint"], reg)
        return Method(Path(spec).stem, SpeculativeEngine(target, drafter, policy, verifier),
                      lossy=verifier.lossy)
    if spec == "vanilla":
        return Method(spec, SpeculativeEngine(target, verifier=reg.create("verifiers", "rejection")))
    if spec == "hf-lookup":
        return Method(spec, hf_target=target)
    if spec == "lookup":
        return Method(spec, SpeculativeEngine(target, make_drafter(target, "lookup", None, None, reg)))
    folder = default_checkpoint("default") if spec == "default" else None
    if spec == "default" and folder is None:
        raise ConfigError("no shipped default checkpoint in this installation")
    folder = folder or (shipped_checkpoints().get(spec) or spec)
    if not (Path(folder) / "koala.json").is_file():
        known = ", ".join(["vanilla", "lookup", "hf-lookup", "default", *shipped_checkpoints()])
        raise ConfigError(f"unknown bench method {spec!r}: use one of {known}, or a checkpoint folder")
    policy = reg.create("tree_policies", *tree_for(str(folder), None, None))
    return Method(spec, SpeculativeEngine(target, make_drafter(target, None, None, str(folder), reg),
                                          policy))
