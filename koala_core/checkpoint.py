"""Head checkpoints: a folder with ``model.safetensors`` and ``koala.json``, written atomically.

``koala.json`` records the format version, the plugin (name, package, version), the head config,
the training recipe and data summary, validation metrics, and the target's identity (architecture,
sizes, LM-head fingerprint). Loading refuses a checkpoint made for another model. Never pickle.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError, ConfigError, PluginError
from .files import write_folder_atomic

FORMAT = 1
WEIGHTS, META = "model.safetensors", "koala.json"
REQUIRED = ("format", "plugin", "head_config", "target")


def save_head(head, folder: str | Path, plugin: str, recipe: dict | None = None,
              metrics: dict | None = None, dtype: torch.dtype = torch.bfloat16,
              tree: tuple[str, dict] | None = None, registry=None) -> Path:
    """Save a trainable head's weights (cast to ``dtype``) and metadata; ``tree`` is the tree policy
    recorded for inference (default: the head's own ``default_tree``)."""
    from safetensors.torch import save_file

    from .registry import default_registry

    info = (registry or default_registry()).get("heads", plugin)
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
                              tree or type(head).default_tree)),
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


@dataclass
class Checkpoint:
    """A head checkpoint read once: its folder, metadata and weights (as stored).

    ``Checkpoint.open`` checks everything that can be checked without a model (missing or corrupt
    files, missing fields, format version), so a bad checkpoint fails before a model loads.
    """

    folder: Path
    meta: dict
    state: dict

    @classmethod
    def open(cls, folder: str | Path) -> "Checkpoint":
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = read_meta(folder)
        try:
            state = load_file(str(folder / WEIGHTS))
        except Exception as exc:  # safetensors raises its own error type for damaged files
            raise CheckpointError(f"{folder / WEIGHTS} is corrupt: {exc}") from None
        return cls(folder, meta, state)

    @property
    def plugin(self) -> str:
        return self.meta["plugin"]["name"]

    @property
    def tree(self) -> tuple[str, dict] | None:
        """The tree policy recorded for inference, if any."""
        inference = self.meta.get("inference") or {}
        if not inference.get("tree"):
            return None
        return inference["tree"], dict(inference.get("tree_options", {}))

    def build_head(self, target, registry=None, draft_dtype: str = "auto"):
        """The head for ``target``, refusing a checkpoint made for another model, ready to draft
        in ``draft_dtype`` (see :func:`koala_core.kernels.draft_dtype`)."""
        from .registry import default_registry

        mine = target.identity().as_dict()
        if not target.made_for(self.meta["target"]):
            diff = {k: (self.meta["target"].get(k), v) for k, v in mine.items()
                    if self.meta["target"].get(k) != v}
            raise CheckpointError(
                f"{self.folder} was trained for another target model (checkpoint vs loaded: {diff}); "
                f"pass the --model it was made for, or train a head for this one")
        reg = registry or default_registry()
        try:
            head = reg.create("heads", self.plugin, self.meta["head_config"], target=target)
        except (PluginError, ConfigError) as exc:
            raise CheckpointError(f"{self.folder}: cannot rebuild head {self.plugin!r}: {exc}") from exc
        state = {k: v.to(target.dtype) if v.is_floating_point() else v for k, v in self.state.items()}
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{self.folder / WEIGHTS} does not fit head {self.plugin!r}: "
                                  f"{exc}") from None
        head.to(target.device).eval()
        if hasattr(head, "prepare_drafting"):
            from .kernels import draft_dtype as resolve

            head.prepare_drafting(resolve(target, draft_dtype))
        head.checkpoint_meta = self.meta
        return head


def load_head(folder: str | Path, target, registry=None, draft_dtype: str = "float32"):
    """Rebuild a head for ``target`` from a checkpoint folder (see :class:`Checkpoint`); by default
    in fp32, the weights as trained (engines built by koala draft in ``auto``)."""
    return Checkpoint.open(folder).build_head(target, registry, draft_dtype)
