"""Head checkpoints shipped with koala (folder ``checkpoints/`` of the source tree)."""

from __future__ import annotations

import json
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints"


def shipped_checkpoints() -> dict[str, Path]:
    """name -> folder of every shipped checkpoint."""
    if not SHIPPED.is_dir():
        return {}
    return {p.name: p for p in sorted(SHIPPED.iterdir()) if (p / "koala.json").is_file()}


def default_checkpoint(model: str) -> str | None:
    """The shipped checkpoint named in ``checkpoints/default.json`` for the default model."""
    index = SHIPPED / "default.json"
    if model != "default" or not index.is_file():
        return None
    name = json.loads(index.read_text()).get("default")
    folder = shipped_checkpoints().get(name)
    return str(folder) if folder else None
