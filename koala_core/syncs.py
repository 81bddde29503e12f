"""Counting host reads of tensor values: each one makes the host wait for the device (a "sync").

On a GPU the engine's speed is set by how often the host waits for it, not by arithmetic, so the
verify phase is written to read device values once per step. :class:`HostReads` counts the Python
calls that read a tensor's values on the host (``item``, ``tolist``, ``int()``, ``float()``,
``bool()``, indexing with a tensor, ``numpy``, ``cpu``) while it is active, on any device, so the
rule is tested on a CPU too; on CUDA, ``torch.cuda.set_sync_debug_mode`` catches the C++ ones too.
"""

from __future__ import annotations

import contextlib
import functools

import torch

READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


class HostReads(contextlib.ContextDecorator):
    """``with HostReads() as reads: ...`` then ``reads.count`` (and ``reads.calls``, by name).
    ``reads.paused()`` excludes a region (e.g. drafting, which reads each level's proposals)."""

    def __init__(self) -> None:
        self.count = 0
        self.calls: dict[str, int] = {}
        self._active = False
        self._saved: dict[str, object] = {}

    def _wrap(self, name: str, method):
        @functools.wraps(method)
        def counted(tensor, *args, **kwargs):
            if self._active:
                self._active = False  # a read that calls another read counts once
                try:
                    self.count += 1
                    self.calls[name] = self.calls.get(name, 0) + 1
                    return method(tensor, *args, **kwargs)
                finally:
                    self._active = True
            return method(tensor, *args, **kwargs)
        return counted

    def __enter__(self) -> "HostReads":
        for name in READS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._wrap(name, self._saved[name]))
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)
        self._saved.clear()

    @contextlib.contextmanager
    def paused(self):
        was, self._active = self._active, False
        try:
            yield
        finally:
            self._active = was

    @contextlib.contextmanager
    def excluding(self, *methods: tuple[object, str], also=contextlib.nullcontext):
        """Within the block, calls of ``obj.name`` for each ``(obj, name)`` are not counted (run
        under :meth:`paused` and ``also()``); e.g. a head's ``begin`` and a policy's ``build``."""
        saved = [(obj, name, getattr(obj, name)) for obj, name in methods]
        for obj, name, original in saved:
            def uncounted(*args, _original=original, **kwargs):
                with self.paused(), also():
                    return _original(*args, **kwargs)
            setattr(obj, name, uncounted)
        try:
            yield self
        finally:
            for obj, name, original in saved:
                setattr(obj, name, original)
