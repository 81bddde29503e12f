"""A koala head inside plain transformers ``model.generate(...)``, through transformers' own
``custom_generate`` extension point (a callable that replaces the decoding loop after
``generate`` has prepared its inputs and settings)::

    from koala_core.hf import KoalaDecoding

    out = model.generate(**inputs, max_new_tokens=64, do_sample=False,
                         custom_generate=KoalaDecoding(checkpoint="hydra-k1"))

At T=0 the output equals plain ``generate()`` token for token (tested on the real model). What it
supports: one sequence (batch size 1, no padding), greedy or sampling with temperature / top-k /
top-p, ``max_new_tokens`` / ``max_length``, ``eos_token_id``, and ``return_dict_in_generate``
(sequences only). Not a ``streamer``: transformers 5.17-5.24 does not hand it to a
``custom_generate`` callable (use ``koala generate`` or ``SpeculativeEngine.stream`` to stream). Anything else that changes the distribution
(repetition penalty, bad words, logit biases, ...) or asks for per-token scores is refused with a
clear error rather than silently ignored.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

_SAMPLING_WARPERS = {"TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"}
_STOPPING = {"MaxLengthCriteria", "EosTokenCriteria", "MaxTimeCriteria"}


class KoalaDecoding:
    """A ``custom_generate`` callable that decodes speculatively with a koala head.

    ``checkpoint``: a head checkpoint folder or a shipped head's name (``default`` included);
    or ``head`` + ``head_options`` for a training-free plugin (e.g. ``lookup``). ``tree`` /
    ``tree_options`` / ``verifier`` as on the command line (default: the checkpoint's tree, the
    head's own default, and greedy at T=0 / rejection sampling at T>0); ``draft_dtype`` as
    :func:`koala_core.kernels.draft_dtype`.
    """

    def __init__(self, checkpoint: str | None = None, head: str | None = None,
                 head_options: dict | None = None, tree: str | None = None,
                 tree_options: dict | None = None, verifier: str | None = None,
                 registry=None, draft_dtype: str = "auto") -> None:
        from .checkpoint import Checkpoint
        from .registry import default_registry
        from .shipped import resolve_checkpoint

        if (checkpoint is None) == (head is None):
            raise ConfigError("KoalaDecoding needs exactly one of checkpoint= or head=")
        self.registry = registry or default_registry()
        self.checkpoint = Checkpoint.open(resolve_checkpoint(checkpoint)) if checkpoint else None
        self.head_name, self.head_options = head, dict(head_options or {})
        self.tree, self.tree_options, self.verifier = tree, dict(tree_options or {}), verifier
        self.draft_dtype = draft_dtype
        self._engines: dict[int, object] = {}  # id(model) -> engine

    def engine_for(self, model):
        """The speculative engine over ``model`` (built once per model object)."""
        from .adapter import TargetModel
        from .compose import choose_tree, make_drafter
        from .engine import SpeculativeEngine

        if id(model) not in self._engines:
            reg = self.registry
            target = TargetModel(model, tokenizer=None, name=type(model).__name__)
            head_cls = reg.get("heads", self.checkpoint.plugin if self.checkpoint else self.head_name).cls
            policy = reg.create("tree_policies", *choose_tree(self.checkpoint, head_cls, self.tree,
                                                              self.tree_options))
            drafter = make_drafter(target, self.head_name, self.head_options, self.checkpoint, reg,
                                   self.draft_dtype)
            verifier = reg.create("verifiers", self.verifier) if self.verifier else None
            self._engines[id(model)] = SpeculativeEngine(target, drafter, policy, verifier)
        return self._engines[id(model)]

    def __call__(self, model, input_ids, logits_processor, stopping_criteria, generation_config,
                 synced_gpus=False, streamer=None, **model_kwargs):
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        from .engine import GenerationConfig

        if input_ids.shape[0] != 1:
            raise ConfigError(f"koala decodes one sequence at a time; got a batch of "
                              f"{input_ids.shape[0]} (loop over the prompts)")
        mask = model_kwargs.get("attention_mask")
        if mask is not None and not bool(mask.all()):
            raise ConfigError("koala decoding does not support padded inputs")
        for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
            if getattr(generation_config, name, False):
                raise ConfigError(f"koala decoding does not return per-token outputs ({name})")
        config = GenerationConfig(
            max_new_tokens=max(1, generation_config.max_length - input_ids.shape[1]),
            sampling=sampling_of(logits_processor, generation_config), stop_at_eos=True,
            eos_token_ids=eos_of(generation_config))
        unsupported = sorted({type(c).__name__ for c in stopping_criteria} - _STOPPING)
        if unsupported:
            raise ConfigError(f"koala decoding does not run these stopping criteria: {unsupported}")
        engine = self.engine_for(model)
        new: list[int] = []
        for step in engine.stream(input_ids[0].tolist(), config):
            new += step.tokens
            if streamer is not None:
                streamer.put(torch.tensor(step.tokens))
        if streamer is not None:
            streamer.end()
        sequences = torch.cat([input_ids, torch.tensor([new], dtype=input_ids.dtype,
                                                       device=input_ids.device)], 1)
        if generation_config.return_dict_in_generate:
            return GenerateDecoderOnlyOutput(sequences=sequences)
        return sequences


def sampling_of(logits_processor, generation_config):
    """koala's Sampling from what generate prepared: greedy, or its temperature/top-k/top-p
    warpers; any other logits processor is refused (it would change the distribution)."""
    from .sampling import Sampling

    others = sorted({type(p).__name__ for p in logits_processor} - _SAMPLING_WARPERS)
    if others:
        raise ConfigError(f"koala decoding keeps the target's distribution exactly and cannot "
                          f"apply {others}; drop those generate() settings")
    if not generation_config.do_sample:
        return Sampling()
    temperature, top_k, top_p = 1.0, 0, 1.0
    for p in logits_processor:
        name = type(p).__name__
        if name == "TemperatureLogitsWarper":
            temperature = float(p.temperature)
        elif name == "TopKLogitsWarper":
            top_k = int(p.top_k)
        elif name == "TopPLogitsWarper":
            top_p = float(p.top_p)
    return Sampling(temperature, top_k, top_p)


def eos_of(generation_config) -> frozenset[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([int(eos)] if isinstance(eos, int) else (int(e) for e in eos))
