"""Head checkpoints: a folder with ``model.safetensors`` and ``koala.json``, written atomically.

``koala.json`` records the format version, the plugin (name, package, version), the head config,
the training recipe and data summary, validation metrics, and the target's identity (architecture,
sizes, LM-head fingerprint). Loading refuses a checkpoint made for another model. Never pickle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .errors import CheckpointError, ConfigError, PluginError
from .files import write_folder_atomic

FORMAT = 1
WEIGHTS, META = "model.safetensors", "koala.json"
REQUIRED = ("format", "plugin", "head_config", "target")


# The tree a head drafts best with, unless the user picks one (recorded in koala.json).
DEFAULT_TREE = {"medusa": ("static", {"preset": "small"}), "hydra": ("static", {"preset": "small"}),
                "eagle": ("dynamic", {})}


def save_head(head, folder: str | Path, plugin: str, recipe: dict | None = None,
              metrics: dict | None = None, dtype: torch.dtype = torch.bfloat16,
              tree: tuple[str, dict] | None = None) -> Path:
    """Save a trainable head's weights (cast to ``dtype``) and metadata."""
    from safetensors.torch import save_file

    from .registry import default_registry

    info = default_registry().get("heads", plugin)
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in head.state_dict().items()}
    meta = {
        "format": FORMAT,
        "plugin": {"name": plugin, "package": info.package, "version": info.version},
        "head_config": dataclasses.asdict(head.config),
        "draft_vocab_size": int(head.vocab_ids.numel()),
        "dtype": str(dtype).replace("torch.", ""),
        "target": head.target.identity().as_dict(),
        "inference": dict(zip(("tree", "tree_options"),
                              tree or DEFAULT_TREE.get(plugin, ("chain", {})))),
        "recipe": recipe or {},
        "metrics": metrics or {},
    }
    folder = Path(folder)
    write_folder_atomic(folder, {
        WEIGHTS: lambda p: save_file(state, str(p), metadata={"format": "pt"}),
        META: json.dumps(meta, indent=2).encode(),
    })
    return folder


def read_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist")
    for name in (WEIGHTS, META):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} is not a koala checkpoint: {name} is missing")
    try:
        meta = json.loads((folder / META).read_text())
    except ValueError as exc:
        raise CheckpointError(f"{folder / META} is corrupt: {exc}") from None
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{folder / META} lacks the field(s) {', '.join(missing)}")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{folder} has checkpoint format {meta['format']}; this koala reads "
                              f"format {FORMAT}")
    return meta


def load_head(folder: str | Path, target, registry=None):
    """Rebuild a head for ``target`` from a checkpoint, refusing one made for another model."""
    from safetensors.torch import load_file

    from .registry import default_registry

    folder = Path(folder)
    meta = read_meta(folder)
    mine = target.identity().as_dict()
    if meta["target"] != mine:
        diff = {k: (meta["target"].get(k), v) for k, v in mine.items() if meta["target"].get(k) != v}
        raise CheckpointError(
            f"{folder} was trained for another target model (checkpoint vs loaded: {diff}); "
            f"pass the --model it was made for, or train a head for this one")
    reg = registry or default_registry()
    name = meta["plugin"]["name"]
    try:
        head = reg.create("heads", name, meta["head_config"], target=target)
    except (PluginError, ConfigError) as exc:
        raise CheckpointError(f"{folder}: cannot rebuild head {name!r}: {exc}") from exc
    try:
        state = load_file(str(folder / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise CheckpointError(f"{folder / WEIGHTS} is corrupt: {exc}") from None
    state = {k: v.to(target.dtype) if v.is_floating_point() else v for k, v in state.items()}
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder / WEIGHTS} does not fit head {name!r}: {exc}") from None
    head.to(target.device).eval()
    if hasattr(head, "use_kernels"):
        head.use_kernels(getattr(target, "kernels", "torch"))
    head.checkpoint_meta = meta
    return head
