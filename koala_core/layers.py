"""A compact Llama-style decoder layer for draft heads, with a position-addressed KV cache.

Parameter names match HF Llama/Qwen2 decoder layers (``self_attn.q_proj`` ... ``mlp.down_proj``,
``input_layernorm``, ``post_attention_layernorm``), so a head's layers can start as copies of the
target's last layers. Not a copy of any HF modeling file: ~100 lines, no cache classes, no masks
beyond the one additive mask the caller passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LayerShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    rope_theta: float
    eps: float
    attention_bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def of(cls, config) -> "LayerShape":
        theta = getattr(config, "rope_theta", None)
        if theta is None:
            theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        return cls(config.hidden_size, config.intermediate_size, config.num_attention_heads,
                   config.num_key_value_heads or config.num_attention_heads, float(theta),
                   float(getattr(config, "rms_norm_eps", 1e-6)), bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)  # in fp32, as HF's
        return normed.to(x.dtype) * self.weight


@lru_cache(maxsize=16)
def _inverse_frequencies(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float):
    """cos, sin (B, 1, T, hd) of the rotary embedding at ``positions`` (B, T); one pair serves the
    queries and the keys of a layer."""
    ang = positions[..., None].float() * _inverse_frequencies(head_dim, theta, positions.device)
    ang = torch.cat([ang, ang], -1)[:, None]
    return ang.cos(), ang.sin()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, HF convention (rotate halves). x: (B, H, T, hd); cos/sin: rope_tables."""
    hd = x.shape[-1]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return (x.float() * cos + torch.cat([-x2, x1], -1).float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, s: LayerShape, in_features: int | None = None) -> None:
        super().__init__()
        self.s = s
        d = in_features or s.hidden
        self.q_proj = nn.Linear(d, s.heads * s.head_dim, bias=s.attention_bias)
        self.k_proj = nn.Linear(d, s.kv_heads * s.head_dim, bias=s.attention_bias)
        self.v_proj = nn.Linear(d, s.kv_heads * s.head_dim, bias=s.attention_bias)
        self.o_proj = nn.Linear(s.heads * s.head_dim, s.hidden, bias=False)

    def forward(self, x, positions, mask, cache: "KVCache | None" = None, layer: int = 0):
        """x: (B, T, D); positions: (B, T); mask: additive (B or 1, 1, T, S) or None (causal)."""
        B, T, _ = x.shape
        s = self.s
        q = self.q_proj(x).view(B, T, s.heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, s.kv_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, s.kv_heads, s.head_dim).transpose(1, 2)
        cos, sin = rope_tables(positions, s.head_dim, s.rope_theta)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                             enable_gqa=s.heads != s.kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, s: LayerShape) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden, s.intermediate, bias=False)
        self.up_proj = nn.Linear(s.hidden, s.intermediate, bias=False)
        self.down_proj = nn.Linear(s.intermediate, s.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm attention + SwiGLU MLP, each with a residual connection."""

    def __init__(self, s: LayerShape) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(s.hidden, s.eps)
        self.self_attn = Attention(s)
        self.post_attention_layernorm = RMSNorm(s.hidden, s.eps)
        self.mlp = MLP(s)

    def forward(self, x, positions, mask=None, cache=None, layer: int = 0):
        x = x + self.self_attn(self.input_layernorm(x), positions, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))

    def as_identity(self) -> DecoderLayer:
        """Zero both residual branches' output projections: the layer passes its input through
        (and learns from there: those projections get gradients at once, the rest after)."""
        with torch.no_grad():
            self.self_attn.o_proj.weight.zero_()
            self.mlp.down_proj.weight.zero_()
        return self


class FusedInputLayer(nn.Module):
    """EAGLE-3's first layer: its input is [embedding; feature] (2D wide); attention reads both,
    each RMS-normed on its own (``input_layernorm``, ``hidden_norm``), and the residual stream
    carries the feature alone. Names match ``speculators``' Llama EAGLE-3 layer."""

    def __init__(self, s: LayerShape) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(s.hidden, s.eps)
        self.hidden_norm = RMSNorm(s.hidden, s.eps)
        self.self_attn = Attention(s, in_features=2 * s.hidden)
        self.post_attention_layernorm = RMSNorm(s.hidden, s.eps)
        self.mlp = MLP(s)

    def forward(self, x, positions, mask=None, cache=None, layer: int = 0):
        e, g = x.chunk(2, -1)
        h = torch.cat([self.input_layernorm(e), self.hidden_norm(g)], -1)
        x = g + self.self_attn(h, positions, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class GrowingKV:
    """Keys/values kept by concatenation, any batch size: the unrolled steps of training-time test,
    where each step's rows attend to the rows of the steps before it."""

    def __init__(self) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if layer in self.k:
            k, v = torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def commit(self) -> None:
        pass


class KVCache:
    """Preallocated per-layer keys/values addressed by slot; undoing tokens is moving a length."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int, dtype, device):
        shape = (layers, 1, kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # slots in use
        self._pending = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write (1, H, T, hd) new keys/values after the used slots; returns all used + new."""
        T = k.shape[2]
        end = self.length + T
        if end > self.capacity:  # grow (rare: capacity starts at the configured max length)
            extra = max(end, 2 * self.capacity) - self.capacity
            pad = torch.zeros(self.k.shape[:3] + (extra, self.k.shape[4]), dtype=self.k.dtype,
                              device=self.k.device)
            self.k, self.v = torch.cat([self.k, pad], 3), torch.cat([self.v, pad], 3)
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        self._pending = T
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def commit(self) -> None:
        """Count the slots written by the last forward (call once after all layers ran)."""
        self.length += self._pending
        self._pending = 0
