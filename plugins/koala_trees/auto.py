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
- verify(n): the seconds of verifying an n-node tree: this machine's `koala cost` curve scaled to
  the measured tree steps (a line fitted to them where no curve is saved), and, for each size the
  policy has verified, pulled towards what that size measured in the loop. The curve's shape is
  a prior, not the truth: on the 2-core CPU an 8-row verify ran ~14 % slower than a 5-row one in
  the loop where the saved curve had them level. So the choice is optimistic about sizes it has
  rarely measured (``explore``: a size never verified counts up to that share cheaper), tries
  them, and keeps the ones that measure fast;
- draft: the seconds of the head's last drafting steps;
- the k-th best node: the calibration is right for the best nodes of a tree, but the nodes that
  make a tree *large* are verified because their forecast is high, and so are over-forecast (on
  the tuning prompts EAGLE's nodes past the sixth best were accepted at 0-0.6 of their forecast,
  the best ones as forecast). So each rank has its own factor, hits over forecast of the nodes
  verified at that rank, and a tree's expected tokens sum each path probability times its rank's
  factor.

The best size may be zero: a *shadow step*. Once drafted, a tree whose best nodes cannot pay for
their extra verify rows is not verified at all (the root alone goes to the target), yet it still
teaches: the target's next token says whether each depth-1 guess would have been accepted (exactly
so at T=0; at T>0 a match undercounts what rejection sampling would accept). Every depth-1 guess
that was not verified, in shadow steps and pruned ones in tree steps, is learnt this way.

The floor: once a generation has drafted for ``patience`` steps, when drafting steps have
recently produced fewer tokens per second than plain decoding
would (a moving average of their measured rate over ``1 / verify(1)``; say, a translation prompt
on which every draft is rejected), the policy stops drafting altogether (``should_draft`` is
False: no draft, no extra verify rows) and probes again every ``probe_every`` steps. Its choices are counted in
:meth:`AutoPolicy.summary` (printed by ``koala generate --verbose``, stored by ``koala bench``).

*Copy steps*: with copy proposals on (``copy=N``), the steps while drafting is switched off are not
plain: the policy drafts the chain that copying alone proposes (what followed an earlier occurrence
of the context's last N+ tokens: a dictionary lookup, the head is not run) and verifies as much of
it as pays by the same rule, none where nothing matches. An answer that starts repeating itself or
its prompt (a failing translation looping on a phrase) is then copied as prompt lookup would,
instead of decoded token by token until the next probe. Copy steps do not count as drafting
evidence for the floor; what they verify calibrates acceptance like any other node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from koala_core.errors import ConfigError
from koala_core.interfaces import DraftContext, DraftHead
from koala_core.tree import Tree

from .copy import CopyingPolicy, CopyOption
from .policies import add_children

BUCKETS = 10  # draft-probability buckets of the calibration table
DEPTHS = 4  # depth 4 and deeper share one row
PRIOR = 4.0  # pseudo-trials behind "the draft probability is right"
MEMORY = 100.0  # trials per cell after which old evidence fades (adapts within a generation)
DECAY = 0.85  # weight of the previous drafting step in the recent-gain window (~7 steps)
FIT_DECAY = 0.98  # weight of older tree steps in the verify-cost line (~50 steps)
OUTLIER = 2.0  # a measured time counts at most this many times its expected value
SIZE_DECAY = 0.95  # weight of older steps of one tree size in its measured time (~20 steps)
SIZE_PRIOR = 2.0  # pseudo-steps of the curve behind a size's measured time
RANKS = 16  # per-rank factors of the k-th best node; rank 16 and worse share one
RANK_PRIOR = 1.0  # forecast hits behind "a rank's forecast is right"
RANK_MEMORY = 30.0  # forecast hits per rank after which old evidence fades


def verify_ratio(n: int, saved: dict[int, float] | None = None) -> float:
    """Prior cost of verifying n tokens relative to one: this machine's curve saved by
    ``koala cost`` (interpolated), else the one measured on this project's 2-core CPU with oneDNN
    fp32 (2 -> 1.12, 4 -> 1.18, 8 -> 1.34, 16 -> 1.64, 32 -> 2.22). Measurements replace it as
    the policy sees trees."""
    if n <= 1:
        return 1.0
    if saved and len(saved) >= 2:
        sizes = sorted(saved)
        lo = max([m for m in sizes if m <= n], default=sizes[0])
        hi = min([m for m in sizes if m >= n], default=sizes[-1])
        if lo == hi:  # n is measured, or lies beyond the curve: extend its last slope
            a, b = (sizes[-2], sizes[-1]) if n > sizes[-1] else (lo, lo)
            if a == b:
                return saved[lo]
            return saved[b] + (n - b) * (saved[b] - saved[a]) / (b - a)
        return saved[lo] + (n - lo) * (saved[hi] - saved[lo]) / (hi - lo)
    return 1.08 + 0.036 * (n - 2)


def tally(cell: list[float], hit: bool, weight: float, memory: float) -> None:
    """Add one graded guess to a [hits, trials] cell (``weight`` trials: 1, or a forecast);
    past ``memory`` trials both shrink in proportion, so old evidence fades."""
    cell[0] += hit
    cell[1] += weight
    if cell[1] > memory:
        cell[0] *= memory / cell[1]
        cell[1] = memory


@dataclass
class Ema:
    """An exponential moving average that starts at its first observation."""

    weight: float = 0.2
    value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.weight * (x - self.value)


class AutoPolicy(CopyingPolicy):
    """Trees sized from measured acceptance and costs to maximise tokens/s; plain decoding when
    drafting does not pay (probing again now and then)."""

    @dataclass(frozen=True)
    class Config(CopyOption):
        max_nodes: int = field(default=24, metadata={"help": "largest tree considered (root excluded)"})
        max_depth: int = field(default=6, metadata={"help": "deepest level expanded"})
        top_k: int = field(default=4, metadata={"help": "children per node and frontier width"})
        floor: float = field(default=0.95, metadata={
            "help": "switch drafting off when recent drafting steps ran below this share of "
                    "plain decoding's tokens/s"})
        probe_every: int = field(default=12, metadata={
            "help": "plain steps between probes while drafting is switched off"})
        patience: int = field(default=8, metadata={
            "help": "drafting steps of a generation before the floor may switch drafting off "
                    "(a probe after a pause takes 2)"})
        verify_model: str = field(default="curve", metadata={
            "help": "curve: this machine's saved `koala cost` curve, scaled to the measured tree "
                    "steps (keeps its bumps; a line fit where no curve is saved); fit: a line "
                    "a + b n through the measured tree steps"})
        copy_steps: bool = field(default=True, metadata={
            "help": "with copy proposals on: while drafting is switched off, verify what copying "
                    "alone proposes (no head) instead of decoding plainly"})
        copy_first: bool = field(default=False, metadata={
            "help": "with copy proposals on: verify the copy chain alone (no head expansions) in a "
                    "step where its calibrated forecast per second of verifying beats the recent "
                    "drafting steps' tokens per second"})
        min_path: float = field(default=0.02, metadata={
            "help": "stop expanding when no frontier path is this likely to be accepted"})
        measured_sizes: bool = field(default=True, metadata={
            "help": "price each tree size the policy has verified by what it measured in the loop "
                    "(false, with explore=0: the cost model alone, auto before 2026-12-03)"})
        rank_factors: bool = field(default=True, metadata={
            "help": "correct each node's forecast by how nodes of its rank in the tree (the k-th "
                    "best) were accepted against their forecast (false: the calibration alone, "
                    "auto before its rank factors)"})
        scale_prior: float = field(default=6.0, metadata={
            "help": "forecast hits of prior behind the per-generation scale (hits over forecast "
                    "so far in this generation): smaller moves the trees sooner"})
        explore: float = field(default=0.1, metadata={
            "help": "optimism about the verify time of tree sizes rarely measured: a size never "
                    "verified counts this share cheaper, fading as it is measured (0: the "
                    "cost model's estimate alone)"})

        def __post_init__(self):
            super().__post_init__()
            if min(self.max_nodes, self.max_depth, self.top_k, self.probe_every, self.patience) < 1:
                raise ConfigError("auto: max_nodes, max_depth, top_k, probe_every and patience "
                                  "must be >= 1")
            if self.verify_model not in ("curve", "fit"):
                raise ConfigError(f"auto: verify_model must be 'curve' or 'fit', got "
                                  f"{self.verify_model!r}")
            if not 0 <= self.min_path < 1 or not 0 < self.floor <= 2 or not 0 <= self.explore < 1:
                raise ConfigError("auto: min_path and explore must be in [0, 1), floor in (0, 2]")
            if self.scale_prior <= 0:
                raise ConfigError("auto: scale_prior must be > 0")

    def __init__(self, config=None) -> None:
        super().__init__(config)
        # calibration: (depth row, probability bucket) -> [hits, trials]
        self.table = {(d, b): [PRIOR * (b + 0.5) / BUCKETS, PRIOR]
                      for d in range(1, DEPTHS + 1) for b in range(BUCKETS)}
        self.verify = {}  # tree size (root included) -> Ema of seconds (reported; n = 1 used)
        self.fit = [0.0] * 5  # decayed sums w, w n, w n^2, w t, w n t over tree steps (n >= 2)
        self.curve_fit = [0.0, 0.0]  # decayed sums w r t, w r^2 (r: the prior ratio of the size)
        self.sizes: dict[int, list[float]] = {}  # tree size -> decayed sums of seconds and of steps
        self.saved: dict[int, float] | None = None  # `koala cost`'s curve for the head's target
        self.draft = Ema()
        self.per_level = Ema()  # drafting seconds per expanded level
        self.levels = 0  # levels the last build expanded
        self.window = [0.0, 0.0]  # recent drafting steps: decayed sums of tokens and of seconds
        self.gen = [0.0, 0.0]  # this generation: accepted draft nodes, and the calibration's forecast
        self.evidence = 0  # drafting steps in the window since it was last reset
        self.pause = self.config.probe_every  # plain steps before the next probe (doubles on failure)
        self.off_until = 1  # the first decode step is plain: it measures verify(1)
        self.probing = False
        self.paused = False  # drafting was switched off in this generation
        self.built = False  # whether this step's tree came from build (else: a plain step)
        self.copy_only = False  # this step drafts copies alone (drafting is switched off)
        self.copied_first = False  # this step verifies the copy chain alone (copy_first)
        self.unverified: list[tuple[int, float]] = []  # depth-1 guesses built but not verified
        self.step = 0
        self.counts = {"steps": 0, "drafted_steps": 0, "shadow_steps": 0, "plain_steps": 0,
                       "copy_steps": 0, "copy_first": 0, "copied": 0, "switched_off": 0, "nodes": 0}
        self.forecast = 1.0  # tokens the chosen tree was expected to yield (1 + its path probabilities)
        self.tally = [0.0, 0.0]  # over verified trees: forecast tokens, tokens they yielded
        self.ranks = [[RANK_PRIOR, RANK_PRIOR] for _ in range(RANKS)]  # per rank: hits, forecast
        self.kept: list[tuple[int, float]] = []  # per verified node (tree order): rank, forecast

    # -- the model of this machine and this head -----------------------------------------------
    def acceptance(self, depth: int, p: float) -> float:
        hits, trials = self.table[(min(depth, DEPTHS), min(int(p * BUCKETS), BUCKETS - 1))]
        return hits / trials

    def verify_s(self, n: int) -> float:
        """Expected seconds to verify an n-token tree (root included): the model of
        :meth:`model_s`, pulled towards what this size measured in the loop where it was verified
        (``SIZE_PRIOR`` pseudo-steps of the model against the size's decayed steps)."""
        model = self.model_s(n)
        seen = self.sizes.get(n) if n > 1 and self.config.measured_sizes else None
        if seen is None:
            return model
        return (SIZE_PRIOR * model + seen[0]) / (SIZE_PRIOR + seen[1])

    def choice_s(self, n: int) -> float:
        """The verify time the choice of a size uses: :meth:`verify_s`, optimistic by up to
        ``explore`` for a size rarely verified (so that a size the model prices too high is tried,
        and kept if it measures fast; one priced too low is corrected once it is verified)."""
        steps = self.sizes[n][1] if n in self.sizes else 0.0
        return self.verify_s(n) * (1.0 - self.config.explore / math.sqrt(1.0 + steps))

    def model_s(self, n: int) -> float:
        """The verify time of an n-token tree before per-size measurements: the measured plain
        step for n = 1; for trees, this machine's saved curve scaled by one factor fitted to the
        measured tree steps (``verify_model="curve"``: oneDNN's cost is not a line in n, e.g. 2
        tokens may cost more than 4), else a straight line a + b n fitted to them (decayed least
        squares: robust to the noise of single sizes), the prior curve until two sizes are known."""
        plain = self.verify.get(1)
        if n == 1 and plain is not None:
            return plain.value
        if self.config.verify_model == "curve" and self.saved and self.curve_fit[1] > 0:
            return self.curve_fit[0] / self.curve_fit[1] * self.ratio(n)
        w, wn, wnn, wt, wnt = self.fit
        if w > 0 and wnn * w - wn * wn > 1e-9 * w * w:
            b = (wnt * w - wn * wt) / (wnn * w - wn * wn)
            a = (wt - b * wn) / w
            if b >= 0 and a + b * n > 0:  # (a fit through noisy times can cross zero)
                return a + b * n
        if plain is not None:
            return plain.value * self.ratio(n)
        return (wt / w) * self.ratio(n) / self.ratio(round(wn / w)) if w > 0 else self.ratio(n)

    def rank_factor(self, rank: int) -> float:
        """How nodes ranked ``rank`` (0: the best) in the trees verified so far were accepted
        against their forecast (1 with ``rank_factors`` off)."""
        if not self.config.rank_factors:
            return 1.0
        hits, forecast = self.ranks[min(rank, RANKS - 1)]
        return hits / forecast

    def scale(self) -> float:
        """How this generation's drafts fare against the calibration: hits over expected hits so
        far (with ``scale_prior`` forecast hits of prior), so trees shrink at once on a prompt the
        head cannot guess (a translation) and grow on one it guesses well."""
        prior = self.config.scale_prior
        return min(2.0, max(0.1, (self.gen[0] + prior) / (self.gen[1] + prior)))

    def draft_s(self, levels: int) -> float:
        """Expected seconds of a drafting step that expands ``levels`` levels."""
        if self.per_level.value is None:
            return self.draft.value or 0.0
        return self.per_level.value * levels

    def deeper_pays(self, path_p: list[float], frontier: list[int], levels: int) -> bool:
        """Whether expanding one more level can pay for itself: it adds at most the frontier's path
        probabilities in expected tokens, for one more level of drafting time and the verify rows
        of about one child per frontier node; that must beat the rate the tree reaches already."""
        if self.per_level.value is None:
            return True
        ranked = sorted(path_p[1:], reverse=True)[: self.config.max_nodes]
        n = len(ranked) + 1
        now = (1 + sum(ranked)) / (self.draft_s(levels) + self.verify_s(n))
        cost = self.per_level.value + max(0.0, self.verify_s(n + len(frontier)) - self.verify_s(n))
        return sum(path_p[i] for i in frontier) > cost * now

    def ratio(self, n: int) -> float:
        return verify_ratio(n, self.saved)

    def gain(self) -> float | None:
        """Recent drafting steps' tokens per second over plain decoding's (None: no evidence)."""
        if self.window[1] <= 0:
            return None
        return self.window[0] / self.window[1] * self.verify_s(1)

    # -- TreePolicy ----------------------------------------------------------------------------
    def should_draft(self, step: int) -> bool:
        self.step = step
        if step == 0:  # a new generation: what was learnt stays, the on/off state starts afresh
            self.window, self.evidence, self.probing = [0.0, 0.0], 0, False
            self.gen = [0.0, 0.0]
            self.pause, self.paused = self.config.probe_every, False
            self.off_until = 0 if 1 in self.verify else 1  # measure a plain step first
        # while switched off: plain steps, or copy steps where copy proposals are on
        self.copy_only = (step < self.off_until and self.paused and bool(self.config.copy)
                          and self.config.copy_steps)
        if step < self.off_until:
            return self.copy_only
        if step == self.off_until and self.paused:
            self.probing = True  # the first drafting step after a pause
        return True

    def drafts_with_head(self) -> bool:
        return not self.copy_only

    def build(self, head: DraftHead, ctx: DraftContext) -> Tree:
        cfg = self.config
        self.built = True
        if self.saved is None:
            from koala_core.costs import saved_ratios

            target = getattr(head, "target", None)
            self.saved = (saved_ratios(target) if target is not None else None) or {}
        head = self.drafter(head, ctx)
        if self.copy_only:
            return self.copy_chain(head, ctx)
        if cfg.copy_first and cfg.copy and self.window[1] > 0:
            chain = self.copy_chain(head, ctx)
            if len(chain) > 1 and (self.forecast / self.verify_s(len(chain))
                                   > self.window[0] / self.window[1]):
                self.copied_first = True
                return chain
        tree = Tree(ctx.root)
        path_p = [1.0]  # probability that the target accepts each node's whole path
        frontier = [0]
        levels = 0
        for _ in range(min(cfg.max_depth, ctx.budget.max_depth)):
            born = add_children(tree, frontier, head.expand(tree, frontier, cfg.top_k))
            for node in born:
                parent = tree.parents[node]
                p = math.exp(tree.scores[node] - tree.scores[parent])  # the draft's, given the parent
                accept = min(1.0, self.scale() * self.acceptance(tree.depths[node], p))
                path_p.append(path_p[parent] * accept)
            if not born:
                break
            born.sort(key=lambda i: -path_p[i])
            frontier = born[: cfg.top_k]
            levels += 1
            if path_p[frontier[0]] < cfg.min_path or not self.deeper_pays(path_p, frontier, levels):
                break
        self.levels = levels
        # a child's path probability never exceeds its parent's, so the best n are a subtree
        ranked = sorted(range(1, len(tree)), key=lambda i: (-path_p[i], tree.depths[i], i))
        limit = min(cfg.max_nodes, ctx.budget.max_nodes, len(ranked))
        draft = self.draft_s(levels)
        # the best size; zero (a shadow step) when no tree pays for its extra verify rows: the
        # draft is paid for already, and the target's next token still grades the depth-1 guesses.
        # When drafting does not pay at all, the floor in observe() switches it off
        best_n = self.best_size([path_p[i] for i in ranked[:limit]], draft)
        rank_of = {i: r for r, i in enumerate(ranked[:best_n])}
        kept = set(rank_of)
        self.forecast = 1.0 + sum(path_p[i] * self.rank_factor(r) for i, r in rank_of.items())
        self.kept = [(rank_of[i], path_p[i]) for i in sorted(kept)]  # the order keep() numbers them
        self.unverified = [(tree.tokens[i], math.exp(tree.scores[i])) for i in range(1, len(tree))
                           if tree.parents[i] == 0 and i not in kept]
        return tree.keep(ranked[:best_n])

    def best_size(self, ranked_p: list[float], draft: float, by_rank: bool = True) -> int:
        """How many of the candidate nodes (their path probabilities, best first) to verify: the
        n maximising (1 + their sum, each times its rank's factor where ``by_rank``) / (draft +
        verify(n + 1)), the verify times optimistic about
        sizes rarely measured (:meth:`choice_s`); zero when that tree, at its expected verify time,
        does not pay for its extra rows (the draft is paid for already)."""
        best_n, best_rate, best_expected, expected = 0, 0.0, 1.0, 1.0
        for n, p in enumerate(ranked_p, 1):
            expected += p * (self.rank_factor(n - 1) if by_rank else 1.0)
            rate = expected / (draft + self.choice_s(n + 1))
            if rate > best_rate:
                best_n, best_rate, best_expected = n, rate, expected
        plain = 1.0 / (draft + self.verify_s(1))
        if best_n and best_expected / (draft + self.verify_s(best_n + 1)) <= plain:
            return 0  # exploring sizes is no reason to verify a tree that does not pay
        return best_n

    def copy_chain(self, drafter, ctx: DraftContext) -> Tree:
        """A copy step: the chain that copy proposals alone make from the root (the head is not
        run), cut where verifying more rows stops paying (no draft time: a lookup costs ~0)."""
        cfg = self.config
        tree = Tree(ctx.root)
        path_p = [1.0]
        for _ in range(min(cfg.max_depth, ctx.budget.max_depth, ctx.budget.max_nodes)):
            found = drafter.copy_of(tree, len(tree) - 1)
            if found is None:
                break
            token, p = found
            node = tree.add(len(tree) - 1, token, math.log(p))
            # calibrated, but not scaled by how this generation's *head* fared (it switched off)
            path_p.append(path_p[-1] * min(1.0, self.acceptance(tree.depths[node], p)))
        best_n = self.best_size(path_p[1:], 0.0, by_rank=False)
        self.levels, self.unverified, self.kept = 0, [], []
        self.forecast = 1.0 + sum(path_p[1:best_n + 1])
        return tree.keep(list(range(1, best_n + 1)))

    def learn(self, depth: int, p: float, hit: bool) -> None:
        """One graded guess: a node of draft probability ``p`` (given its parent) at ``depth``."""
        cell = self.table[(min(depth, DEPTHS), min(int(p * BUCKETS), BUCKETS - 1))]
        self.gen[0] += hit
        self.gen[1] += cell[0] / cell[1]
        tally(cell, hit, 1.0, MEMORY)

    def observe(self, tree: Tree, path: list[int], draft_s: float, verify_s: float,
                bonus: int | None = None) -> None:
        n = len(tree)
        # one stalled step (a page fault, another process) must not rewrite the model of this
        # machine: a time is counted at most OUTLIER times what is expected of it
        expected = self.verify_s(n) if self.verify else 0.0
        verify_s = min(verify_s, OUTLIER * expected) if expected > 0 else verify_s
        if self.draft.value is not None:
            draft_s = min(draft_s, OUTLIER * self.draft.value)
        self.verify.setdefault(n, Ema()).add(verify_s)
        if n > 1:
            self.fit = [FIT_DECAY * v for v in self.fit]
            for i, x in enumerate((1.0, n, n * n, verify_s, n * verify_s)):
                self.fit[i] += x
            r = self.ratio(n)
            self.curve_fit = [FIT_DECAY * self.curve_fit[0] + r * verify_s,
                              FIT_DECAY * self.curve_fit[1] + r * r]
            seen = self.sizes.setdefault(n, [0.0, 0.0])
            seen[0], seen[1] = SIZE_DECAY * seen[0] + verify_s, SIZE_DECAY * seen[1] + 1.0
        self.counts["steps"] += 1
        built, self.built = self.built, False
        if not built:  # a plain step: nothing drafted
            self.counts["plain_steps"] += 1
            return
        copied_first, self.copied_first = self.copied_first, False
        if self.copy_only or copied_first:  # not the head's drafting: no floor evidence, no costs
            self.counts["copy_steps"] += 1
            self.counts["copy_first"] += copied_first
            self.counts["copied"] += len(path) - 1
            self.learn_tree(tree, path)
            return
        self.draft.add(draft_s)
        if self.levels:
            self.per_level.add(draft_s / self.levels)
        if self.probing:  # fresh evidence after a pause outweighs what came before it
            self.window, self.evidence, self.probing = [0.0, 0.0], 0, False
        self.window = [DECAY * self.window[0] + len(path), DECAY * self.window[1] + draft_s + verify_s]
        self.evidence += 1
        probe = self.paused  # drafting was switched off earlier in this generation
        gain = self.gain()
        if gain is not None and self.evidence >= (2 if probe else self.config.patience):
            if gain < self.config.floor:
                # a failed probe waits twice as long before the next one (up to 8x)
                self.pause = min(2 * self.pause, 8 * self.config.probe_every) if probe else self.pause
                self.off_until, self.paused = self.step + self.pause, True
                self.counts["switched_off"] += 1
            elif probe and self.evidence == 2:
                self.pause = self.config.probe_every  # drafting pays again
        after = tree.tokens[path[1]] if len(path) > 1 else bonus  # the target's token after the root
        unverified, self.unverified = self.unverified, []
        if after is not None:
            for token, p in unverified:
                self.learn(1, p, token == after)
        if n == 1:
            self.counts["shadow_steps"] += 1
            return
        self.counts["drafted_steps"] += 1
        self.counts["nodes"] += n - 1
        self.tally[0] += self.forecast
        self.tally[1] += len(path)
        self.learn_tree(tree, path)
        self.learn_ranks(path)

    def learn_ranks(self, path: list[int]) -> None:
        """Each verified node of the head's tree against its forecast, by its rank in the tree."""
        kept, self.kept = self.kept, []
        accepted = set(path)
        for i, (rank, p) in enumerate(kept, 1):
            tally(self.ranks[min(rank, RANKS - 1)], i in accepted, p, RANK_MEMORY)

    def learn_tree(self, tree: Tree, path: list[int]) -> None:
        """Grade every verified node whose parent was accepted (the others were never tried)."""
        accepted = set(path)
        for i in range(1, len(tree)):
            parent = tree.parents[i]
            if parent not in accepted:
                continue
            self.learn(tree.depths[i], math.exp(tree.scores[i] - tree.scores[parent]), i in accepted)

    def summary(self) -> dict:
        """What the policy chose so far (for ``--verbose`` and bench results)."""
        c = self.counts
        drafted = max(c["drafted_steps"], 1)
        return {"policy": "auto", "steps": c["steps"],
                "drafting_share": round(c["drafted_steps"] / max(c["steps"], 1), 3),
                "shadow_share": round(c["shadow_steps"] / max(c["steps"], 1), 3),
                "copy_share": round(c["copy_steps"] / max(c["steps"], 1), 3),
                "copied_tokens": c["copied"],  # accepted in copy steps
                "copy_first_share": round(c["copy_first"] / max(c["steps"], 1), 3),
                "mean_nodes": round(c["nodes"] / drafted, 2), "switched_off": c["switched_off"],
                # tokens per verified tree: what the calibration forecast against what came
                "forecast_tau": round(self.tally[0] / drafted, 3),
                "tau_of_trees": round(self.tally[1] / drafted, 3),
                "recent_gain": None if self.gain() is None else round(self.gain(), 3),
                "verify_ms": {n: round(1e3 * e.value, 1) for n, e in sorted(self.verify.items())},
                "draft_ms": None if self.draft.value is None else round(1e3 * self.draft.value, 1)}
