"""The speculative decoding loop: one streaming generator that everything else consumes.

prefill -> [propose (head + tree policy) -> verify every tree node in one target forward ->
accept (verifier) -> keep the accepted path in the KV cache -> emit] until EOS or max tokens.
With no head the tree is the root alone and the loop is plain decoding of the same target, so
"vanilla" and speculative runs share every line of code that could make their outputs differ.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .errors import ConfigError, PromptError
from .interfaces import DraftContext, DraftHead, TreeBudget, TreePolicy, Verifier
from .sampling import Sampling, choose
from .tensors import hidden_and_aux, to_device
from .tree import Tree


@dataclass(frozen=True)
class GenerationConfig:
    """Per-call generation settings."""

    max_new_tokens: int = 128
    sampling: Sampling = field(default_factory=Sampling)
    seed: int | None = None
    max_tree_nodes: int = 64  # hard cap on drafted nodes per step, whatever the policy asks
    stop_at_eos: bool = True
    eos_token_ids: frozenset[int] | None = None  # None: the target's own end-of-sequence tokens

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_tree_nodes < 0:
            raise ConfigError(f"max_tree_nodes must be >= 0, got {self.max_tree_nodes}")


@dataclass
class Step:
    """One engine event: the tokens it emitted and how they were obtained."""

    tokens: list[int]
    drafted: int  # draft nodes in the verified tree (0 for prefill and plain decoding)
    accepted: int  # draft tokens accepted (tokens = accepted + 1 bonus, unless truncated)
    prefill: bool = False
    draft_s: float = 0.0  # head.begin + tree policy (drafting)
    verify_s: float = 0.0  # everything from the tree to the accepted tokens (includes forward_s)
    forward_s: float = 0.0  # the target's forward and logits alone


@dataclass
class GenerationResult:
    """The outcome of one generation, with the measurements the CLI and benchmarks report."""

    prompt_ids: list[int]
    token_ids: list[int]
    steps: list[Step]
    seconds: float
    prefill_s: float

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def target_forwards(self) -> int:
        """Target forwards in the decode phase (prefill excluded)."""
        return sum(1 for s in self.steps if not s.prefill)

    @property
    def decode_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.steps if not s.prefill)

    @property
    def tau(self) -> float:
        """Mean accepted length: tokens per target forward in the decode phase, bonus included."""
        return self.decode_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def decode_s(self) -> float:
        return self.seconds - self.prefill_s

    @property
    def tokens_per_s(self) -> float:
        """Decode-phase tokens per second (prefill excluded)."""
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def drafted(self) -> int:
        return sum(s.drafted for s in self.steps)

    @property
    def accepted(self) -> int:
        return sum(s.accepted for s in self.steps)

    @property
    def token_efficiency(self) -> float:
        """Accepted draft tokens / drafted tokens."""
        return self.accepted / self.drafted if self.drafted else 0.0


def default_verifier_name(sampling: Sampling) -> str:
    """The one rule for the verifier nobody named: greedy at T=0, exact rejection sampling at T>0."""
    return "greedy" if sampling.greedy else "rejection"


def check_verifier(verifier: Verifier, sampling: Sampling) -> None:
    """Refuse a verifier that is not defined at this temperature (greedy at T>0)."""
    if verifier.greedy_only and not sampling.greedy:
        name = getattr(verifier, "plugin_name", type(verifier).__name__)
        raise ConfigError(f"the {name} verifier is exact only at temperature 0; at T>0 use "
                          "'rejection' (lossless sampling) or 'typical' (lossy), or leave the "
                          "verifier unset")


class SpeculativeEngine:
    """Composes a target model with an optional draft head, tree policy and verifier."""

    def __init__(self, target, head: DraftHead | None = None, tree_policy: TreePolicy | None = None,
                 verifier: Verifier | None = None) -> None:
        """Without a tree policy a head drafts with its own ``default_tree``; without a verifier
        each generation uses :func:`default_verifier_name` for its temperature."""
        from koala_core.registry import default_registry

        self.target = target
        self.head = head
        if head is not None and tree_policy is None:
            tree_policy = default_registry().create("tree_policies", *type(head).default_tree)
        self.tree_policy = tree_policy
        self.verifier = verifier  # None: chosen per generation by the rule above
        self._defaults: dict[str, Verifier] = {}

    def verifier_for(self, sampling: Sampling) -> Verifier:
        """The verifier a generation with ``sampling`` uses (checked against its temperature)."""
        from koala_core.registry import default_registry

        if self.verifier is not None:
            check_verifier(self.verifier, sampling)
            return self.verifier
        name = default_verifier_name(sampling)
        if name not in self._defaults:
            self._defaults[name] = default_registry().create("verifiers", name)
        return self._defaults[name]

    def verifier_name(self, sampling: Sampling) -> str:
        verifier = self.verifier_for(sampling)
        return getattr(verifier, "plugin_name", type(verifier).__name__)

    def check_prompt(self, prompt_ids: list[int]) -> None:
        if len(prompt_ids) == 0:
            raise PromptError("the prompt is empty: give at least one token of text")
        limit = self.target.max_length
        if len(prompt_ids) >= limit:
            raise PromptError(f"the prompt has {len(prompt_ids)} tokens but the model's context is "
                              f"{limit}: shorten it to leave room for new tokens")

    @torch.inference_mode()
    def stream(self, prompt_ids: list[int], config: GenerationConfig = GenerationConfig()
               ) -> Iterator[Step]:
        """Yield one :class:`Step` per target forward, prefill first."""
        self.check_prompt(prompt_ids)
        target, sampling = self.target, config.sampling
        verifier = self.verifier_for(sampling)
        device = target.device
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=device)
            generator.manual_seed(config.seed if config.seed is not None else
                                  int(torch.randint(0, 2**62, (1,))))
        eos = frozenset()
        if config.stop_at_eos:
            eos = target.eos_token_ids if config.eos_token_ids is None else config.eos_token_ids
        # never run past the model's context
        max_new = min(config.max_new_tokens, target.max_length - len(prompt_ids))

        # sized for the whole generation (a static cache is allocated once); kept for inspection
        cache = self.cache = target.new_cache(len(prompt_ids) + max_new + config.max_tree_nodes + 1)
        t0 = time.perf_counter()
        aux_layers = self.head.aux_layers if self.head is not None else ()
        hidden, aux = hidden_and_aux(target.forward(torch.tensor(prompt_ids, device=device), cache,
                                                    aux_layers=aux_layers))  # (P, D), (P, n_aux * D)
        root = choose(target.logits(hidden[-1:])[0], sampling, generator)
        emitted = 1
        yield Step([root], 0, 0, prefill=True, verify_s=time.perf_counter() - t0)
        tokens = list(prompt_ids) + [root]
        unseen = hidden  # (a, D): states that entered the cache since the head last drafted
        unseen_aux = aux
        step = 0
        policy = self.tree_policy
        # a policy written before ``bonus`` joined ``observe`` keeps working
        observes_bonus = policy is not None and "bonus" in inspect.signature(policy.observe).parameters
        while emitted < max_new and root not in eos:
            room = max_new - emitted  # tokens still allowed; a step emits accepted + 1
            budget = TreeBudget(max_nodes=config.max_tree_nodes, max_depth=max(0, room - 1))
            t0 = time.perf_counter()
            if self.head is not None and budget.max_depth > 0 and policy.should_draft(step):
                ctx = DraftContext(tokens, unseen, budget, sampling, step, unseen_aux)
                if policy.drafts_with_head():
                    self.head.begin(ctx)
                    unseen = unseen_aux = None
                tree = policy.build(self.head, ctx)
            else:  # plain decoding this step (no head, no room, or the policy's choice)
                tree = Tree(root)
            shape = tree.shape()
            t1 = time.perf_counter()
            past = target.cache_length(cache)
            on = tree.on(device)  # tokens and tree tensors on the device, copied without a sync
            t_forward = time.perf_counter()
            if shape.is_chain:  # plain causal attention: no mask to build
                hidden, aux = hidden_and_aux(target.forward(on.tokens, cache, aux_layers=aux_layers))
            else:
                hidden, aux = hidden_and_aux(target.forward(
                    on.tokens, cache, positions=on.shape.depths + past,
                    tree_mask=on.shape.ancestors, aux_layers=aux_layers))
            logits = target.logits(hidden)  # (n, V)
            t_forward = time.perf_counter() - t_forward
            verdict = verifier.verify(tree, shape, logits, sampling, generator)  # waits once
            path = None if len(verdict.path) == len(tree) else to_device(verdict.path, device)
            target.keep(cache, past, verdict.path, path)
            if path is not None:
                hidden = hidden[path]  # (a, D): states of the tokens now in the cache
                aux = None if aux is None else aux[path]
            unseen = hidden if unseen is None else torch.cat([unseen, hidden])
            if aux is not None:
                unseen_aux = aux if unseen_aux is None else torch.cat([unseen_aux, aux])
            new = [tree.tokens[i] for i in verdict.path[1:]] + [verdict.bonus]
            t2 = time.perf_counter()
            if policy is not None:
                extra = {"bonus": verdict.bonus} if observes_bonus else {}
                policy.observe(tree, verdict.path, t1 - t0, t2 - t1, **extra)
            out = []
            for tok in new[:room]:
                out.append(tok)
                if tok in eos:
                    break
            emitted += len(out)
            tokens.extend(new)
            root = new[-1] if len(out) == len(new) else out[-1]
            step += 1
            yield Step(out, len(tree) - 1, len(verdict.path) - 1, draft_s=t1 - t0, verify_s=t2 - t1,
                       forward_s=t_forward)

    def generate(self, prompt_ids: list[int], config: GenerationConfig = GenerationConfig(),
                 on_step: Callable[[Step], None] | None = None) -> GenerationResult:
        """Run :meth:`stream` to the end and collect the result; ``on_step`` sees each step."""
        steps: list[Step] = []
        t0 = time.perf_counter()
        prefill_s = 0.0
        for s in self.stream(prompt_ids, config):
            steps.append(s)
            if on_step is not None:
                on_step(s)
            if s.prefill:
                prefill_s = time.perf_counter() - t0
        seconds = time.perf_counter() - t0
        ids = [t for s in steps for t in s.tokens]
        return GenerationResult(list(prompt_ids), ids, steps, seconds, prefill_s)
