"""Atomic file writes: a reader sees the old content or the new, never half of either.

A failed write (a full disk, a missing permission) leaves the old file or folder untouched and is
reported as a :class:`~koala_core.errors.WriteError` naming the path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import WriteError


@contextmanager
def _reported(path: Path):
    try:
        yield
    except OSError as exc:
        raise WriteError(f"could not write {path}: {exc.strerror or exc}; its previous contents are "
                         "unchanged (free some space or choose another location)") from exc


def write_file_atomic(path: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill(tmp_path)`` write a temporary file in the same folder, then rename it to ``path``."""
    path = Path(path)
    with _reported(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        os.close(fd)
        try:
            fill(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    write_file_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    write_bytes_atomic(path, json.dumps(data, indent=2).encode())


def write_folder_atomic(folder: Path, files: dict[str, Any] | None = None,
                        fill: Callable[[Path], None] | None = None) -> None:
    """Write ``files`` (name -> bytes | callable(path)) and whatever ``fill(tmp_folder)`` writes
    into ``folder``, replacing it atomically."""
    folder = Path(folder)
    with _reported(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        os.chmod(tmp, 0o755)
        try:
            if fill is not None:
                fill(tmp)
            for name, content in (files or {}).items():
                if callable(content):
                    content(tmp / name)
                else:
                    (tmp / name).write_bytes(content)
            old = None
            if folder.exists():
                old = folder.parent / f".{folder.name}.old-{os.getpid()}"
                os.replace(folder, old)
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
