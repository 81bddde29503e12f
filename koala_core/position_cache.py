"""A static, position-addressed KV cache for the target (the gpt-fast layout behind HF's cache API).

Each layer's keys and values live in one buffer allocated once, at the size the generation needs
(prompt + new tokens + the largest tree); slot = position. A forward writes its new rows in place
and attends over the used slots (a view, no copy); accepting a tree path gathers the path's rows in
place and moves the length back. HF's ``DynamicCache`` instead concatenates every layer's whole
cache on every step, an allocation and a copy that grow with the context.

Only :class:`~koala_core.adapter.TargetModel` uses this module (with the adapter, the only code that
touches transformers' cache classes).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class PositionLayer(DynamicLayer):
    """One decoder layer's keys/values: (B, H, capacity, hd) buffers; ``keys``/``values`` are views
    of the used slots, so everything that reads a ``DynamicLayer`` reads this one the same way."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = int(capacity)
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        B, H, _, hd = key_states.shape
        self._k = torch.empty(B, H, self.capacity, hd, dtype=key_states.dtype, device=self.device)
        self._v = torch.empty(B, H, self.capacity, value_states.shape[-1], dtype=value_states.dtype,
                              device=self.device)
        self.is_initialized = True

    def _grow(self, need: int) -> None:
        """Rare: a caller asked for more than the capacity it announced; double it."""
        extra = max(need, 2 * self.capacity) - self.capacity
        self._k = torch.cat([self._k, self._k.new_empty(*self._k.shape[:2], extra, self._k.shape[3])], 2)
        self._v = torch.cat([self._v, self._v.new_empty(*self._v.shape[:2], extra, self._v.shape[3])], 2)
        self.capacity += extra

    def _view(self) -> None:
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(end)
        self._k[:, :, self.length:end].copy_(key_states)
        self._v[:, :, self.length:end].copy_(value_states)
        self.length = end
        self._view()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def keep(self, past: int, index: torch.Tensor | None, new_len: int) -> None:
        """Slots ``index`` (absolute) move to past .. new_len - 1; later slots are dropped."""
        if index is not None:
            self._k[:, :, past:new_len] = self._k.index_select(2, index)
            self._v[:, :, past:new_len] = self._v.index_select(2, index)
        self.length = new_len
        self._view()

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch ``rows`` (a batched generation whose other rows have ended)."""
        if self.is_initialized:
            self._k, self._v = self._k.index_select(0, rows), self._v.index_select(0, rows)
            self._view()

    def crop(self, max_length: int) -> None:
        self.length = self.length + max_length if max_length < 0 else min(self.length, max_length)
        self._view()

    def reset(self) -> None:
        self.length = 0
        if self.is_initialized:
            self._view()


class PositionCache(Cache):
    """A cache of :class:`PositionLayer` s, one per decoder layer, each holding ``capacity`` slots."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        super().__init__(layers=[PositionLayer(capacity) for _ in range(num_layers)])
