"""The interfaces every koala component implements. Plugins subclass these.

Each component class has a frozen dataclass ``Config`` (its options, each with one default) and is
built as ``cls(config, **resources)``. Shapes: T = sequence length, n = tree nodes, a = tokens that
entered the KV cache in the last target forward, D = target hidden size, V = (draft) vocabulary.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from .config import NoConfig
from .sampling import Sampling
from .tree import Tree, TreeShape

if TYPE_CHECKING:
    from .adapter import TargetModel


@dataclass(frozen=True)
class TreeBudget:
    """Hard limits the engine puts on one tree: node count (root excluded) and depth."""

    max_nodes: int
    max_depth: int


@dataclass
class DraftContext:
    """Everything a drafter may use for one decode step, given from the first version on.

    tokens: every token so far (prompt + generated), ending with the root, the target's last choice
        whose keys/values are not yet in the cache.
    hidden: (a, D) the target's final hidden states of the ``a`` tokens that entered the KV cache
        since the head last drafted (the prompt after prefill; root + accepted drafts after a
        verify; several steps' worth when the tree policy skipped drafting). The last row is the
        state that predicted the root.
    budget: the tree limits for this step.
    sampling: the sampling settings of this generation.
    step: 0 right after prefill, then 1, 2, ...
    aux: (a, len(aux_layers) * D) the inputs of the decoder layers the head lists in its
        ``aux_layers`` (EAGLE-3's fused features), row for row with ``hidden``; None if it lists none.
    """

    tokens: list[int]
    hidden: torch.Tensor | None
    budget: TreeBudget
    sampling: Sampling = field(default_factory=Sampling)
    step: int = 0
    aux: torch.Tensor | None = None

    @property
    def root(self) -> int:
        return self.tokens[-1]


@dataclass(frozen=True)
class Candidates:
    """Top-k proposals for the children of m tree nodes: tokens (m, k) long, logprobs (m, k) float.

    A missing proposal has token -1 and logprob -inf.
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor


class DraftHead(nn.Module, abc.ABC):
    """Proposes likely next tokens for the nodes of a tree.

    The engine calls :meth:`begin` once per decode step, then the tree policy calls :meth:`expand`
    for the nodes it wants to grow (parents before children). Proposals are deterministic given the
    context: the verifier treats each proposed child as a fixed candidate, which keeps rejection
    sampling exact whatever the head proposes.
    """

    Config: ClassVar[type] = NoConfig
    #: the tree policy (name, options) this head drafts with unless a checkpoint or the user names one
    default_tree: ClassVar[tuple[str, dict]] = ("chain", {})
    #: the supervised loss ``koala train`` uses for this head unless told otherwise ("" = untrainable)
    default_loss: ClassVar[str] = ""
    #: True for a head that needs no training: ``--head default`` falls back to it when no trained
    #: head exists for the model (the first such head by name)
    fallback: ClassVar[bool] = False

    def __init__(self, config=None, target: TargetModel | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else type(self).Config()
        self.target = target

    @property
    def aux_layers(self) -> tuple[int, ...]:
        """Decoder layers whose inputs the engine hands over in ``DraftContext.aux`` (none here)."""
        return ()

    def begin(self, ctx: DraftContext) -> None:
        """Observe a new decode step (update any private state such as a draft KV cache)."""
        self.ctx = ctx

    @abc.abstractmethod
    def expand(self, tree: Tree, nodes: list[int], k: int) -> Candidates:
        """Top-``k`` proposals for the next token after each of ``nodes`` of ``tree``."""


class TreePolicy(abc.ABC):
    """Decides which proposals form the candidate tree of one step."""

    Config: ClassVar[type] = NoConfig

    def __init__(self, config=None) -> None:
        self.config = config if config is not None else type(self).Config()

    @abc.abstractmethod
    def build(self, head: DraftHead, ctx: DraftContext) -> Tree:
        """A tree rooted at ``ctx.root`` within ``ctx.budget``."""

    def should_draft(self, step: int) -> bool:
        """Whether to draft at all at decode step ``step``; False makes it a plain decoding step
        (the head's ``begin`` is skipped too, and sees the skipped states at its next call)."""
        return True

    def drafts_with_head(self) -> bool:
        """Whether the step :meth:`should_draft` just allowed needs the head. False: the policy
        drafts from the context alone this step (copies of earlier text, say) and never calls the
        head, so the engine skips the head's ``begin`` (it sees the skipped states at its next
        call)."""
        return True

    def observe(self, tree: Tree, path: list[int], draft_s: float, verify_s: float,
                bonus: int | None = None) -> None:
        """Learn from the step just verified: the tree, the accepted ``path`` (node indices, root
        first), the seconds spent drafting (begin + build) and verifying (target forward,
        verifier, cache update), and ``bonus``: the target's own token after the accepted path
        (so the target's token after the root is ``tree.tokens[path[1]]``, or ``bonus`` when the
        path is the root alone). Called after every decode step, drafted or not."""


@dataclass(frozen=True)
class Verdict:
    """What the verifier accepted: tree nodes from the root down (root first), and the bonus token."""

    path: list[int]
    bonus: int


class Verifier(abc.ABC):
    """Decides how much of a tree the target accepts, and the target's own next token."""

    Config: ClassVar[type] = NoConfig
    lossy: ClassVar[bool] = False  # True: the output distribution differs from the target's
    greedy_only: ClassVar[bool] = False  # True: defined at T=0 only (the engine refuses it at T>0)

    def __init__(self, config=None) -> None:
        self.config = config if config is not None else type(self).Config()

    @abc.abstractmethod
    def verify(self, tree: Tree, shape: TreeShape, logits: torch.Tensor, sampling: Sampling,
               generator: torch.Generator | None) -> Verdict:
        """logits: (n, V) the target's logits at every tree node."""


@dataclass
class DepthOutput:
    """A head's predictions for one draft depth over N training positions, with their targets.

    logits: (N, Vd) over the draft vocabulary; labels: (N,) the target's token as a draft-vocabulary
    index (-1 where it lies outside the draft vocabulary); weight: (N,) 1 for positions that count;
    context: (N, D) the target hidden state the prediction was made from;
    features / target_features: (N, D) the head's feature for that position (the input of the LM
    head) and the target's own (f_{t+k}); None for heads without features;
    topk_ids / topk_logp: (N, k) the target's top-k as draft indices (-1 outside) and log-probs.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor
    context: torch.Tensor
    features: torch.Tensor | None = None
    target_features: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_logp: torch.Tensor | None = None


class Loss(nn.Module, abc.ABC):
    """A supervised objective for a draft head: forward(out: DepthOutput) -> scalar."""

    Config: ClassVar[type] = NoConfig

    def __init__(self, config=None) -> None:
        super().__init__()
        self.config = config if config is not None else type(self).Config()

    @abc.abstractmethod
    def forward(self, out: DepthOutput) -> torch.Tensor: ...


class Discriminator(nn.Module, abc.ABC):
    """Tells the target's outputs (real) from a draft head's (fake), given the context.

    samples(out) picks what it compares from one depth's :class:`DepthOutput` (the fake side keeps
    its graph to the head); forward(context (N, D), sample (N, F)) -> (N,) real-vs-fake scores.
    context_dim is the target's hidden size; topk the number of target log-probs in the data.
    """

    Config: ClassVar[type] = NoConfig

    def __init__(self, config=None, context_dim: int = 0, topk: int = 0) -> None:
        super().__init__()
        self.config = config if config is not None else type(self).Config()

    @abc.abstractmethod
    def samples(self, out: DepthOutput) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abc.abstractmethod
    def forward(self, context: torch.Tensor, sample: torch.Tensor) -> torch.Tensor: ...


class AdversarialLoss(abc.ABC):
    """The game between head and discriminator: one loss per player from (N,) scores and (N,)
    position weights, plus an optional penalty on the discriminator (e.g. a gradient penalty)."""

    Config: ClassVar[type] = NoConfig

    def __init__(self, config=None) -> None:
        self.config = config if config is not None else type(self).Config()

    @abc.abstractmethod
    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor,
                           weight: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def generator_loss(self, fake: torch.Tensor, weight: torch.Tensor) -> torch.Tensor: ...

    def penalty(self, discriminator: Discriminator, context: torch.Tensor, real: torch.Tensor,
                fake: torch.Tensor, weight: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Extra discriminator loss; draw any randomness from ``generator`` (resumable runs)."""
        return real.new_zeros(())
