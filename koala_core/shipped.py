"""Head checkpoints shipped with koala for the default model.

They are package data of the ``koala_checkpoints`` package (the folder ``checkpoints/`` of the
source tree), so an editable install, ``pip install .`` and a wheel all find them; the environment
variable ``KOALA_CHECKPOINTS`` points koala at another folder of the same layout.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from .errors import CheckpointError


def shipped_folder() -> Path | None:
    """The folder holding the shipped checkpoints and ``default.json``, if any is installed."""
    env = os.environ.get("KOALA_CHECKPOINTS")
    if env:
        return Path(env).expanduser()
    spec = importlib.util.find_spec("koala_checkpoints")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def shipped_checkpoints() -> dict[str, Path]:
    """name -> folder of every shipped checkpoint."""
    folder = shipped_folder()
    if folder is None or not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / "koala.json").is_file()}


def default_checkpoint(model: str) -> str | None:
    """The shipped checkpoint named in ``default.json`` for the default model."""
    folder = shipped_folder()
    if model != "default" or folder is None or not (folder / "default.json").is_file():
        return None
    name = json.loads((folder / "default.json").read_text()).get("default")
    found = shipped_checkpoints().get(name)
    return str(found) if found else None


def resolve_checkpoint(spec: str) -> str:
    """A checkpoint folder from a path or a shipped head's name (``default`` included)."""
    if Path(spec).is_dir():
        return spec
    found = default_checkpoint("default") if spec == "default" else shipped_checkpoints().get(spec)
    if found is None:
        known = ", ".join(shipped_checkpoints()) or "none shipped"
        raise CheckpointError(f"no checkpoint folder {spec!r} and no shipped head of that name "
                              f"(shipped: {known})")
    return str(found)
