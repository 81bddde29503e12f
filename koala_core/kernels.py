"""Faster exact-dtype CPU matmuls for the frozen target: fp32 Linear layers through oneDNN.

PyTorch's default fp32 CPU matmul (MKL) costs ~1.7x more for 2 rows than for 1 and is not even
monotonic in the row count; oneDNN's inner product with the weight kept in its own layout is
nearly flat (measured on this project's 2-core machine for SmolLM2-135M: verifying 4 tokens costs
1.24x a decode step instead of 1.58x, and the decode step itself is ~7 % faster). Speculative
decoding lives on that ratio. Both kernels compute in fp32; neither reproduces the other bit for
bit, and the engine's plain decoding uses the same kernels as its verification, so "identical to
plain greedy decoding" compares like with like (tested on the real model).

The dense weight stays the module's ``weight`` (shared, untouched), so anything that reads it
(checkpoint fingerprints, draft heads reusing LM-head rows, state dicts) sees the same tensor. The
oneDNN copy doubles the memory of the Linear weights.
"""

from __future__ import annotations

import torch
from torch import nn


def onednn_available() -> bool:
    return bool(torch.backends.mkldnn.is_available())


class OneDNNLinear(nn.Module):
    """Inference-only stand-in for an fp32 CPU ``nn.Linear`` (no autograd through it)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self._packed = pack(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self._packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


def pack(weight: torch.Tensor, bias: torch.Tensor | None = None) -> tuple:
    """A (weight, bias) pair in oneDNN's own layout for :func:`packed_linear`. mkldnn tensors
    cannot be buffers of a state dict: callers keep the pair as a private attribute."""
    with torch.no_grad():
        if bias is None:
            bias = torch.zeros(weight.shape[0])
        return weight.detach().to_mkldnn(), bias.detach().float().to_mkldnn()


def packed_linear(x: torch.Tensor, packed: tuple) -> torch.Tensor:
    """``x @ weight.T + bias`` (x: (..., in)) with a :func:`pack`-ed weight."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).contiguous().to_mkldnn()
    y = torch._C._nn.mkldnn_linear(flat, *packed).to_dense()
    return y.reshape(*shape[:-1], y.shape[-1])


def use_onednn_linears(model: nn.Module) -> int:
    """Swap every fp32 CPU ``nn.Linear`` in ``model`` for :class:`OneDNNLinear`; returns how many."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if (isinstance(child, nn.Linear) and child.weight.dtype == torch.float32
                    and child.weight.device.type == "cpu"):
                setattr(module, name, OneDNNLinear(child))
                swapped += 1
    return swapped
