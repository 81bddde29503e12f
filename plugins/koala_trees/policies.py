"""Tree policies: how a head's proposals are shaped into the tree the target verifies."""

from __future__ import annotations

from dataclasses import dataclass, field

from koala_core.errors import ConfigError
from koala_core.interfaces import DraftContext, DraftHead
from koala_core.tree import Tree

from .copy import CopyingPolicy, CopyOption

# Medusa-style choice lists: each entry is a path of top-k ranks from the root's child down.
PRESETS: dict[str, tuple[tuple[int, ...], ...]] = {
    "tiny": ((0,), (1,), (0, 0), (0, 0, 0)),
    "small": ((0,), (1,), (2,), (0, 0), (1, 0), (0, 1), (0, 0, 0), (0, 0, 0, 0)),
    "medium": ((0,), (1,), (2,), (3,), (0, 0), (1, 0), (0, 1), (2, 0), (0, 2), (0, 0, 0),
               (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0, 0), (0, 0, 0, 0, 0), (1, 0, 0, 0)),
    "wide": tuple((i,) for i in range(8)) + tuple((i, 0) for i in range(4))
    + ((0, 1), (0, 0, 0), (1, 0, 0), (0, 0, 0, 0)),
}


def add_children(tree: Tree, parents: list[int], cand) -> list[int]:
    """Add every proposal of ``cand`` (one row per parent) to ``tree``; returns the new nodes."""
    born = []
    tokens, logprobs = cand.tokens.tolist(), cand.logprobs.tolist()  # one read, not one per entry
    for parent, row_tokens, row_logprobs in zip(parents, tokens, logprobs):
        for token, logprob in zip(row_tokens, row_logprobs):
            if token >= 0:
                born.append(tree.add(parent, token, logprob))
    return born


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")


class ChainPolicy(CopyingPolicy):
    """A single path: the head's top-1 proposal, repeated up to ``depth`` tokens."""

    @dataclass(frozen=True)
    class Config(CopyOption):
        depth: int = field(default=5, metadata={"help": "tokens drafted per step"})

        def __post_init__(self):
            super().__post_init__()
            _check_positive(depth=self.depth)

    def build(self, head: DraftHead, ctx: DraftContext) -> Tree:
        head = self.drafter(head, ctx)
        tree = Tree(ctx.root)
        node = 0
        for _ in range(min(self.config.depth, ctx.budget.max_depth, ctx.budget.max_nodes)):
            cand = head.expand(tree, [node], 1)
            token = int(cand.tokens[0, 0])
            if token < 0:
                break
            node = tree.add(node, token, float(cand.logprobs[0, 0]))
        return tree


class StaticPolicy(CopyingPolicy):
    """A fixed tree of top-k ranks (Medusa choice lists); a preset name or explicit paths."""

    @dataclass(frozen=True)
    class Config(CopyOption):
        preset: str = field(default="small", metadata={"help": f"one of {', '.join(PRESETS)}"})
        choices: str = field(default="", metadata={
            "help": "explicit paths, e.g. '0;1;0.0;0.1' (overrides preset)"})

        def __post_init__(self):
            super().__post_init__()
            if not self.choices and self.preset not in PRESETS:
                raise ConfigError(f"unknown static tree preset {self.preset!r}; "
                                  f"choose one of {', '.join(PRESETS)}")

        @property
        def paths(self) -> tuple[tuple[int, ...], ...]:
            if not self.choices:
                return PRESETS[self.preset]
            try:
                paths = tuple(tuple(int(x) for x in p.split(".")) for p in self.choices.split(";"))
            except ValueError:
                raise ConfigError(f"bad choices {self.choices!r}: write paths of ranks like "
                                  f"'0;1;0.0'") from None
            for p in paths:
                if p[:-1] and p[:-1] not in paths:
                    raise ConfigError(f"choices: path {p} needs its parent {p[:-1]} too")
            return paths

    def __init__(self, config=None) -> None:
        super().__init__(config)
        paths = sorted(set(self.config.paths), key=lambda p: (len(p), p))
        self.levels: dict[int, list[tuple[int, ...]]] = {}
        for p in paths:
            self.levels.setdefault(len(p), []).append(p)

    def build(self, head: DraftHead, ctx: DraftContext) -> Tree:
        head = self.drafter(head, ctx)
        tree = Tree(ctx.root)
        node_of: dict[tuple[int, ...], int] = {(): 0}
        for depth in sorted(self.levels):
            if depth > ctx.budget.max_depth:
                break
            wanted = [p for p in self.levels[depth] if p[:-1] in node_of]
            parents = sorted({p[:-1] for p in wanted}, key=lambda p: node_of[p])
            if not parents:
                break
            k = max(p[-1] for p in wanted) + 1
            cand = head.expand(tree, [node_of[p] for p in parents], k)
            tokens, logprobs = cand.tokens.tolist(), cand.logprobs.tolist()
            row = {p: i for i, p in enumerate(parents)}
            for p in wanted:
                if len(tree) - 1 >= ctx.budget.max_nodes:
                    return tree
                r = row[p[:-1]]
                token = tokens[r][p[-1]]
                if token >= 0:
                    node_of[p] = tree.add(node_of[p[:-1]], token, logprobs[r][p[-1]])
        return tree


class DynamicPolicy(CopyingPolicy):
    """EAGLE-2: grow the ``top_k`` most probable frontier nodes per level, then keep the ``nodes``
    drafted nodes with the highest cumulative draft probability."""

    @dataclass(frozen=True)
    class Config(CopyOption):
        depth: int = field(default=5, metadata={"help": "levels to expand"})
        top_k: int = field(default=4, metadata={"help": "children per node and frontier width"})
        nodes: int = field(default=12, metadata={"help": "drafted nodes kept after reranking"})

        def __post_init__(self):
            super().__post_init__()
            _check_positive(depth=self.depth, top_k=self.top_k, nodes=self.nodes)

    def build(self, head: DraftHead, ctx: DraftContext) -> Tree:
        head = self.drafter(head, ctx)
        cfg = self.config
        tree = Tree(ctx.root)
        frontier = [0]
        for _ in range(min(cfg.depth, ctx.budget.max_depth)):
            born = add_children(tree, frontier, head.expand(tree, frontier, cfg.top_k))
            if not born:
                break
            born.sort(key=lambda i: -tree.scores[i])
            frontier = born[: cfg.top_k]
        budget = min(cfg.nodes, ctx.budget.max_nodes)
        # A child never scores above its parent (log-probs <= 0) and ties go to the shallower
        # node, so the best `budget` nodes are closed under ancestors.
        ranked = sorted(range(1, len(tree)), key=lambda i: (-tree.scores[i], tree.depths[i], i))
        return tree.keep(ranked[:budget])
