"""Token trees: what a tree policy builds from a head's proposals and the target verifies at once.

Node 0 is the root: the token the target chose last, not yet in the KV cache. Every other node is a
drafted token whose parent comes before it. The static part of a tree (its parent list) determines
the attention mask, depths and children, computed once per shape and cached, also as tensors on
the device (:class:`ShapeTensors`) so that verification runs there without waiting on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .tensors import to_device


@dataclass(frozen=True)
class TreeShape:
    """The token-independent part of a tree, shared by every tree with the same parents."""

    parents: tuple[int, ...]  # parents[0] == -1
    depths: torch.Tensor  # (n,) long: depth of each node, root 0
    mask: torch.Tensor  # (n, n) bool: mask[i, j] = j is i or an ancestor of i
    children: tuple[tuple[int, ...], ...]  # children of each node, in insertion order

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    def path_to(self, node: int) -> list[int]:
        """Nodes from the root down to ``node``, both included."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]


@lru_cache(maxsize=256)
def tree_shape(parents: tuple[int, ...]) -> TreeShape:
    n = len(parents)
    assert n >= 1 and parents[0] == -1, parents
    depths = [0] * n
    mask = torch.eye(n, dtype=torch.bool)
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        p = parents[i]
        assert 0 <= p < i, f"node {i} has parent {p}: parents must come first"
        depths[i] = depths[p] + 1
        mask[i] |= mask[p]
        children[p].append(i)
    return TreeShape(parents, torch.tensor(depths, dtype=torch.long), mask,
                     tuple(tuple(c) for c in children))


@dataclass(frozen=True)
class ShapeTensors:
    """A :class:`TreeShape` on a device, for vectorised verification (n nodes)."""

    parents: torch.Tensor  # (n,) long, the root's parent given as 0 (the root itself)
    depths: torch.Tensor  # (n,) long
    ancestors: torch.Tensor  # (n, n) bool: j is i or an ancestor of i (the tree attention mask)
    earlier_siblings: torch.Tensor  # (n, n) bool: j has i's parent and comes before i


@lru_cache(maxsize=256)
def shape_tensors(parents: tuple[int, ...], device: torch.device) -> ShapeTensors:
    shape = tree_shape(parents)
    par = torch.tensor((0,) + parents[1:], dtype=torch.long)
    n = len(parents)
    idx = torch.arange(n)
    earlier = (par[:, None] == par[None, :]) & (idx[None, :] < idx[:, None])
    earlier[0] = False
    earlier[:, 0] = False
    return ShapeTensors(par.to(device), shape.depths.to(device), shape.mask.to(device),
                        earlier.to(device))


@dataclass(frozen=True)
class TreeTensors:
    """A tree's tokens and shape on a device (built once per tree and device)."""

    tokens: torch.Tensor  # (n,) long
    shape: ShapeTensors


class Tree:
    """A token tree under construction. Scores are cumulative draft log-probabilities."""

    def __init__(self, root_token: int) -> None:
        self.tokens: list[int] = [int(root_token)]
        self.parents: list[int] = [-1]
        self.depths: list[int] = [0]
        self.scores: list[float] = [0.0]

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, parent: int, token: int, logprob: float = 0.0) -> int:
        """Append a child of ``parent``; returns the new node's index."""
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        self.scores.append(self.scores[parent] + float(logprob))
        return len(self.tokens) - 1

    def path_tokens(self, node: int) -> list[int]:
        """Tokens from the root (included) down to ``node``."""
        out = []
        while node >= 0:
            out.append(self.tokens[node])
            node = self.parents[node]
        return out[::-1]

    def keep(self, nodes: list[int]) -> "Tree":
        """A new tree with only ``nodes`` (plus the root); they must be closed under ancestors."""
        order = sorted(set(nodes) | {0})
        remap = {old: new for new, old in enumerate(order)}
        out = Tree(self.tokens[0])
        for old in order[1:]:
            assert self.parents[old] in remap, "kept nodes must include their ancestors"
            new = out.add(remap[self.parents[old]], self.tokens[old])
            out.scores[new] = self.scores[old]
        return out

    def shape(self) -> TreeShape:
        return tree_shape(tuple(self.parents))

    def on(self, device: torch.device | str) -> TreeTensors:
        """This tree as tensors on ``device`` (one host-to-device copy of its tokens, no sync)."""
        device = torch.device(device)
        key = (device, len(self.tokens))
        cached = getattr(self, "_tensors", None)
        if cached is None or cached[0] != key:
            tensors = TreeTensors(to_device(self.tokens, device),
                                  shape_tensors(tuple(self.parents), device))
            self._tensors = cached = (key, tensors)
        return cached[1]
