"""Building an engine from plugin names and options (what the CLI and recipes call)."""

from __future__ import annotations

from typing import Any

from .config import build_config
from .errors import ConfigError
from .registry import Registry, default_registry
from .sampling import Sampling


def build_engine(model: str = "default", head: str | None = "default", checkpoint: str | None = None,
                 head_options: dict[str, Any] | None = None, tree: str = "chain",
                 tree_options: dict[str, Any] | None = None, verifier: str | None = None,
                 verifier_options: dict[str, Any] | None = None, sampling: Sampling = Sampling(),
                 device: str = "cpu", dtype: str = "float32", registry: Registry | None = None):
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
    tree_policy = reg.create("tree_policies", tree, tree_options)
    ver = reg.create("verifiers", verifier, verifier_options)
    target = load_target(model, device=device, dtype=dtype)
    drafter = None
    if checkpoint is not None:
        from .checkpoint import load_head

        if head_options:
            raise ConfigError("head options come from the checkpoint; drop --head-option")
        drafter = load_head(checkpoint, target, reg)
    elif head is not None:
        drafter = reg.create("heads", head, head_options, target=target).to(target.device)
    return SpeculativeEngine(target, drafter, tree_policy if drafter else None, ver)
