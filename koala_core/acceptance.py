"""Free-running acceptance: what a head's drafts are worth when the target verifies them.

Teacher-forced top-1 (``koala eval --data``) scores each depth on the *true* previous tokens and
features; at inference a head drafts on its own guesses. Here the head drafts a chain of its own
top-1 tokens every step (greedy target verification, the real engine), and acceptance is counted
per depth: ``rate[k]`` = P(draft k accepted | drafts 1..k-1 accepted). The product of the rates
gives the expected accepted length of a chain, so this is the number that predicts tau.

Deeper rates rest on fewer trials (only the steps whose earlier drafts were all accepted reach a
depth), so each rate comes with its trial count and a 95 % Wilson interval: two heads whose rates
at depth 4 differ inside those intervals have not been told apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def wilson(hits: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (``z`` = 1.96: 95 %); (0, 1) without trials."""
    if trials == 0:
        return 0.0, 1.0
    p = hits / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class ChainAcceptance:
    depth: int
    reached: list[int] = field(default_factory=list)  # steps that drafted depth k with 1..k-1 accepted
    accepted: list[int] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0

    def __post_init__(self):
        self.reached = self.reached or [0] * self.depth
        self.accepted = self.accepted or [0] * self.depth

    def add(self, drafted: int, accepted: int) -> None:
        """One verified chain: ``drafted`` tokens, the first ``accepted`` of them accepted."""
        self.steps += 1
        self.tokens += accepted + 1
        for k in range(min(drafted, self.depth)):
            if accepted >= k:
                self.reached[k] += 1
                self.accepted[k] += accepted > k

    @property
    def rates(self) -> list[float]:
        return [a / r if r else 0.0 for a, r in zip(self.accepted, self.reached)]

    @property
    def intervals(self) -> list[tuple[float, float]]:
        """95 % Wilson interval of each depth's rate."""
        return [wilson(a, r) for a, r in zip(self.accepted, self.reached)]

    @property
    def tau(self) -> float:
        """Tokens per target forward with this chain (bonus token included)."""
        return self.tokens / self.steps if self.steps else 0.0

    def as_dict(self) -> dict:
        return {"depth": self.depth, "rates": self.rates, "tau": self.tau, "steps": self.steps,
                "reached": self.reached, "intervals": [list(i) for i in self.intervals]}

    def describe(self) -> str:
        """Each depth's rate with its trials and interval, e.g. ``0.489 (1924: 0.467-0.511)``."""
        return " ".join(f"{rate:.3f} ({n}: {lo:.3f}-{hi:.3f})"
                        for rate, n, (lo, hi) in zip(self.rates, self.reached, self.intervals))


def chain_acceptance(engine, prompts: list[list[int]], depth: int = 5,
                     max_new_tokens: int = 64, progress: bool = True) -> ChainAcceptance:
    """Run ``engine`` (a head with a chain tree of ``depth``) greedily over ``prompts``."""
    from tqdm.auto import tqdm

    from .engine import GenerationConfig

    stats = ChainAcceptance(depth)
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    for ids in tqdm(prompts, desc="free-running", unit="prompt", disable=not progress):
        for step in engine.stream(ids, config):
            if not step.prefill and step.drafted:
                stats.add(step.drafted, step.accepted)
    return stats
