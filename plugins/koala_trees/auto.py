"""Tree policy ``auto``: the tree that maximises expected tokens per second on this machine, learnt
while generating, with a floor at plain decoding.

Per step it grows candidates like EAGLE-2 (the ``top_k`` best frontier nodes per level), scores
each node by the probability that the target accepts its whole path, and keeps the ``n`` best
nodes where ``n`` maximises

    expected tokens / expected seconds = (1 + sum of the n path probabilities) / (draft + verify(n + 1))

against plain decoding's 1 / verify(1). Everything on the right is measured, not assumed:

- acceptance: the head's own draft probability of a node given its parent, calibrated by what the
  verifier accepted so far (hits / trials per draft-depth and probability bucket, starting from
  "the draft probability is right"); a node's path probability is the product down its path;
- verify(n): the seconds of verifying an n-node tree, per size (a prior ratio curve, scaled by the
  measured single-token step, until that size has been measured);
- draft: the seconds of the head's last drafting steps.

A step whose best tree does not beat plain decoding by ``margin`` verifies the root alone. And
the floor: when drafting steps have recently produced fewer tokens per second than plain decoding
would (a moving average of their measured rate over ``1 / verify(1)``; say, a translation prompt
on which every draft is rejected), the policy stops drafting altogether (``should_draft`` is
False: no draft, no extra verify rows) and probes again every ``probe_every`` steps. Its choices are counted in
:meth:`AutoPolicy.summary` (printed by ``koala generate --verbose``, stored by ``koala bench``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from koala_core.errors import ConfigError
from koala_core.interfaces import DraftContext, DraftHead, TreePolicy
from koala_core.tree import Tree

BUCKETS = 10  # draft-probability buckets of the calibration table
DEPTHS = 4  # depth 4 and deeper share one row
PRIOR = 4.0  # pseudo-trials behind "the draft probability is right"
MEMORY = 400.0  # trials per cell after which old evidence fades (adapts within a generation)


def verify_ratio(n: int) -> float:
    """Prior cost of verifying n tokens relative to one (measured on this project's 2-core CPU with
    oneDNN fp32: 2 -> 1.12, 4 -> 1.18, 8 -> 1.34, 16 -> 1.64, 32 -> 2.22); replaced by
    measurements as the policy sees each size."""
    return 1.0 if n <= 1 else 1.08 + 0.036 * (n - 2)


@dataclass
class Ema:
    """An exponential moving average that starts at its first observation."""

    weight: float = 0.2
    value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.weight * (x - self.value)


class AutoPolicy(TreePolicy):
    """Trees sized from measured acceptance and costs to maximise tokens/s; plain decoding when
    drafting does not pay (probing again now and then)."""

    @dataclass(frozen=True)
    class Config:
        max_nodes: int = field(default=24, metadata={"help": "largest tree considered (root excluded)"})
        max_depth: int = field(default=6, metadata={"help": "deepest level expanded"})
        top_k: int = field(default=4, metadata={"help": "children per node and frontier width"})
        margin: float = field(default=0.03, metadata={
            "help": "drafting must beat plain decoding by this share, else it is switched off"})
        probe_every: int = field(default=12, metadata={
            "help": "plain steps between probes while drafting is switched off"})
        min_path: float = field(default=0.02, metadata={
            "help": "stop expanding when no frontier path is this likely to be accepted"})

        def __post_init__(self):
            if min(self.max_nodes, self.max_depth, self.top_k, self.probe_every) < 1:
                raise ConfigError("auto: max_nodes, max_depth, top_k and probe_every must be >= 1")
            if not 0 <= self.margin < 1 or not 0 <= self.min_path < 1:
                raise ConfigError("auto: margin and min_path must be in [0, 1)")

    def __init__(self, config=None) -> None:
        super().__init__(config)
        # calibration: (depth row, probability bucket) -> [hits, trials]
        self.table = {(d, b): [PRIOR * (b + 0.5) / BUCKETS, PRIOR]
                      for d in range(1, DEPTHS + 1) for b in range(BUCKETS)}
        self.verify = {}  # tree size (root included) -> Ema of seconds
        self.draft = Ema()
        # drafting steps' measured tokens/s over plain decoding's, from a mildly hopeful start
        self.gain = Ema(weight=0.2, value=1.2)
        self.off_until = -1  # drafting is off until this step
        self.probing = False
        self.built = False  # whether this step's tree came from build (else: a plain step)
        self.step = 0
        self.counts = {"steps": 0, "drafted_steps": 0, "plain_steps": 0, "switched_off": 0,
                       "nodes": 0, "chosen_root_only": 0}

    # -- the model of this machine and this head -----------------------------------------------
    def acceptance(self, depth: int, p: float) -> float:
        hits, trials = self.table[(min(depth, DEPTHS), min(int(p * BUCKETS), BUCKETS - 1))]
        return hits / trials

    def verify_s(self, n: int) -> float:
        """Expected seconds to verify an n-token tree (root included)."""
        if n in self.verify:
            return self.verify[n].value
        base = self.verify[1].value if 1 in self.verify else None
        if base is None:  # nothing measured yet: scale a measured size back, else unit time
            near = min(self.verify, key=lambda m: abs(m - n), default=None)
            base = self.verify[near].value / verify_ratio(near) if near else 1.0
        return base * verify_ratio(n)

    # -- TreePolicy ----------------------------------------------------------------------------
    def should_draft(self, step: int) -> bool:
        self.step = step
        if step < self.off_until:
            return False
        self.probing = self.off_until >= 0 and step == self.off_until
        return True

    def build(self, head: DraftHead, ctx: DraftContext) -> Tree:
        cfg = self.config
        self.built = True
        tree = Tree(ctx.root)
        path_p = [1.0]  # probability that the target accepts each node's whole path
        frontier = [0]
        for _ in range(min(cfg.max_depth, ctx.budget.max_depth)):
            cand = head.expand(tree, frontier, cfg.top_k)
            born = []
            for row, parent in enumerate(frontier):
                for j in range(cand.tokens.shape[1]):
                    token = int(cand.tokens[row, j])
                    if token < 0:
                        continue
                    logp = float(cand.logprobs[row, j])
                    node = tree.add(parent, token, logp)
                    path_p.append(path_p[parent] * self.acceptance(tree.depths[node], math.exp(logp)))
                    born.append(node)
            if not born:
                break
            born.sort(key=lambda i: -path_p[i])
            frontier = born[: cfg.top_k]
            if path_p[frontier[0]] < cfg.min_path:
                break
        # a child's path probability never exceeds its parent's, so the best n are a subtree
        ranked = sorted(range(1, len(tree)), key=lambda i: (-path_p[i], tree.depths[i], i))
        limit = min(cfg.max_nodes, ctx.budget.max_nodes, len(ranked))
        draft = self.draft.value if self.draft.value is not None else 0.0
        plain = 1.0 / self.verify_s(1)
        best_n, best_rate, expected = 0, plain * (1 + cfg.margin), 1.0
        for n in range(1, limit + 1):
            expected += path_p[ranked[n - 1]]
            rate = expected / (draft + self.verify_s(n + 1))
            if rate > best_rate:
                best_n, best_rate = n, rate
        if best_n == 0:  # not even the best tree pays for its verify rows: the root alone
            self.counts["chosen_root_only"] += 1
        return tree.keep(ranked[:best_n])

    def observe(self, tree: Tree, path: list[int], draft_s: float, verify_s: float) -> None:
        n = len(tree)
        self.verify.setdefault(n, Ema()).add(verify_s)
        self.counts["steps"] += 1
        built, self.built = self.built, False
        if not built:  # a plain step: nothing drafted
            self.counts["plain_steps"] += 1
            return
        self.draft.add(draft_s)
        ratio = (len(path) / (draft_s + verify_s)) * self.verify_s(1)  # over plain decoding
        if self.probing:  # fresh evidence after a pause outweighs the old average
            self.gain.value, self.probing = None, False
        self.gain.add(ratio)
        if self.gain.value < 1.0:
            self.off_until = self.step + self.config.probe_every
            self.counts["switched_off"] += 1
        if n == 1:
            return
        self.counts["drafted_steps"] += 1
        self.counts["nodes"] += n - 1
        accepted = set(path)
        for i in range(1, n):
            parent = tree.parents[i]
            if parent not in accepted:
                continue  # never tried: its parent was rejected
            p = math.exp(tree.scores[i] - tree.scores[parent])
            cell = self.table[(min(tree.depths[i], DEPTHS), min(int(p * BUCKETS), BUCKETS - 1))]
            cell[0] += i in accepted
            cell[1] += 1
            if cell[1] > MEMORY:
                cell[0] *= MEMORY / cell[1]
                cell[1] = MEMORY

    def summary(self) -> dict:
        """What the policy chose so far (for ``--verbose`` and bench results)."""
        c = self.counts
        drafted = max(c["drafted_steps"], 1)
        return {"policy": "auto", "steps": c["steps"],
                "drafting_share": round(c["drafted_steps"] / max(c["steps"], 1), 3),
                "mean_nodes": round(c["nodes"] / drafted, 2), "switched_off": c["switched_off"],
                "verify_ms": {n: round(1e3 * e.value, 1) for n, e in sorted(self.verify.items())},
                "draft_ms": None if self.draft.value is None else round(1e3 * self.draft.value, 1)}
