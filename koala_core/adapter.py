"""The one module that touches transformers internals: cache objects, masks, hidden states.

:class:`TargetModel` wraps any HF causal LM that accepts a 4-D additive attention mask and exposes
``get_decoder()`` / ``get_output_embeddings()`` (Llama, Qwen2, Mistral, ...). Everything else in
koala talks to the target through it. Works with transformers 5.17 through 5.24.

Sliding-window attention (Mistral, Qwen2 with ``use_sliding_window``): the KV cache keeps every
token (slot = position, so accepting a tree path is a gather and a crop), and the window is applied
by the mask instead: HF builds it for plain causal steps, koala adds it to its tree masks (one mask
per layer type when a model mixes full and sliding layers).

Two helpers hold what it hands to transformers: ``position_cache.py`` (its static KV cache) and
``attention.py`` (grouped-query attention under a tree mask without repeating the keys/values).
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

import torch

from .errors import ModelError
from .tensors import additive_mask


# The target's KV cache during generation: ``static`` (preallocated, position-addressed, edited in
# place) or ``dynamic`` (HF's DynamicCache); ``auto`` takes static on the devices below. On this
# project's 2-core CPU both measured the same (within noise, 300 and 1800-token contexts), so the
# CPU keeps HF's cache; on a GPU the static one avoids an allocation per layer and step.
CACHE_KINDS = ("auto", "static", "dynamic")
STATIC_BY_DEFAULT = ("cuda",)


@dataclass(frozen=True)
class TargetIdentity:
    """What a head checkpoint records about the model it was made for."""

    architecture: str
    hidden_size: int
    vocab_size: int
    lm_head_fingerprint: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class TargetModel:
    """A frozen target LM: forward over tokens at explicit positions, logits, KV-cache editing."""

    def __init__(self, model, tokenizer, name: str = "model") -> None:
        try:
            self.decoder = model.get_decoder()
            self.lm_head = model.get_output_embeddings()
            self.embed_tokens = model.get_input_embeddings()
        except (AttributeError, NotImplementedError) as exc:
            raise ModelError(f"{type(model).__name__} is not a supported causal LM "
                             f"(needs a decoder and an output embedding): {exc}") from exc
        if self.decoder is None or self.lm_head is None:
            raise ModelError(f"{type(model).__name__} is not a supported causal LM")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.kernels = "torch"  # load_target sets "onednn" when it swaps the Linear kernels
        self.cache_kind = "auto"  # see new_cache
        self.folder = None  # load_target sets the HF folder the model came from
        self.config = model.config
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._identity: TargetIdentity | None = None
        window = getattr(self.config, "sliding_window", None)
        types = getattr(self.config, "layer_types", None) or []
        if window and types and "sliding_attention" not in types:
            window = None  # e.g. Qwen2 with use_sliding_window=False
        self.sliding_window: int | None = int(window) if window else None
        # a model mixing full and sliding layers takes one mask per layer type
        self._mixed_layers = bool(window) and "full_attention" in types
        from .attention import use_grouped_sdpa

        use_grouped_sdpa(model)  # same results; a verify step no longer copies the KV cache
        self.attention = getattr(self.config, "_attn_implementation", None) or "eager"

    # -- facts ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.weight.shape[0])

    @property
    def max_length(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 2048))

    @property
    def eos_token_ids(self) -> frozenset[int]:
        ids = set()
        gen = getattr(self.model, "generation_config", None)
        for source in (getattr(gen, "eos_token_id", None), getattr(self.config, "eos_token_id", None),
                       getattr(self.tokenizer, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        return frozenset(ids)

    def _lm_head_sample(self) -> torch.Tensor:
        w = self.lm_head.weight.detach()
        return w[:: max(1, w.shape[0] // 512)].to("cpu")

    def identity(self) -> TargetIdentity:
        """Architecture, sizes and a fingerprint of the LM head (cheap: a strided sample of rows),
        the same for the model loaded in fp32 or bf16 (the sample is hashed as bf16)."""
        if self._identity is None:
            sample = self._lm_head_sample().to(torch.bfloat16).view(torch.int16).contiguous()
            digest = hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:32]
            arch = (self.config.architectures or [type(self.model).__name__])[0]
            self._identity = TargetIdentity(arch, self.hidden_size, self.vocab_size, digest)
        return self._identity

    def made_for(self, recorded: dict) -> bool:
        """Whether a recorded identity (a checkpoint's or a data folder's) is this model's. Also
        accepts the fingerprint earlier koala versions wrote (fp32 values rounded to 4 decimals), which
        matches the model loaded in fp32 only."""
        mine = self.identity().as_dict()
        if recorded == mine:
            return True
        if {**recorded, "lm_head_fingerprint": mine["lm_head_fingerprint"]} != mine:
            return False
        sample = self._lm_head_sample().float().contiguous()
        legacy = hashlib.sha256(sample.numpy().round(4).tobytes()).hexdigest()[:32]
        return recorded.get("lm_head_fingerprint") == legacy

    # -- forward -------------------------------------------------------------------------------
    def new_cache(self, capacity: int | None = None, kind: str | None = None):
        """An empty cache that keeps every token (also for sliding-window layers: see above).

        ``capacity``: the most tokens it will hold. Given, and with ``cache_kind`` ``static`` (or
        ``auto``: see :data:`CACHE_KINDS`), the cache is static and position-addressed
        (:class:`~koala_core.position_cache.PositionCache`: allocated once, edited in place);
        otherwise HF's ``DynamicCache``. ``kind`` overrides ``cache_kind`` for this cache."""
        kind = kind or self.cache_kind
        if kind not in CACHE_KINDS:
            raise ModelError(f"unknown cache kind {kind!r}; choose one of {', '.join(CACHE_KINDS)}")
        if kind == "auto":
            kind = "static" if self.device.type in STATIC_BY_DEFAULT else "dynamic"
        if capacity is not None and kind == "static":
            from .position_cache import PositionCache

            return PositionCache(self.num_layers, capacity)
        from transformers import DynamicCache

        return DynamicCache()

    @staticmethod
    def cache_length(cache) -> int:
        return int(cache.get_seq_length())

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, cache, positions: torch.Tensor | None = None,
                tree_mask: torch.Tensor | None = None, aux_layers: tuple[int, ...] = ()):
        """Run the decoder over new tokens and append their keys/values to ``cache``.

        input_ids: (n,) new tokens; positions: (n,) their position ids (default: past_len + arange);
        tree_mask: (n, n) bool, ``tree_mask[i, j]`` = node i may attend to node j (default causal).
        Returns the final-norm hidden states (n, D); with ``aux_layers`` (see :meth:`check_aux_layers`)
        a pair: those and the inputs of the listed decoder layers side by side, (n, len(ids) * D).
        """
        n = input_ids.shape[0]
        past = self.cache_length(cache)
        if positions is None:
            positions = torch.arange(past, past + n, device=input_ids.device)
        mask = None
        if tree_mask is not None:
            mask = self.tree_attention_mask(tree_mask, past, positions)
        out = self.decoder(input_ids=input_ids[None], position_ids=positions[None],
                           attention_mask=mask, use_cache=True, output_hidden_states=bool(aux_layers),
                           **{self._cache_kw: cache})
        hidden = out.last_hidden_state[0]  # (n, D)
        if not aux_layers:
            return hidden
        # hidden_states[i] is the input of decoder layer i (0: the embeddings)
        return hidden, torch.cat([out.hidden_states[i][0] for i in aux_layers], -1)

    @torch.inference_mode()
    def forward_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache,
                     aux_layers: tuple[int, ...] = ()):
        """A batch of left-padded rows: ``input_ids`` (B, n) new tokens, ``attention_mask`` (B,
        past + n) with 0 on padding. Position ids count real tokens only. Returns the final-norm
        hidden states (B, n, D), or with ``aux_layers`` a pair as :meth:`forward` does."""
        n = input_ids.shape[1]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -n:]
        out = self.decoder(input_ids=input_ids, position_ids=positions, attention_mask=attention_mask,
                           use_cache=True, output_hidden_states=bool(aux_layers),
                           **{self._cache_kw: cache})
        hidden = out.last_hidden_state
        if not aux_layers:
            return hidden
        return hidden, torch.cat([out.hidden_states[i] for i in aux_layers], -1)

    @torch.inference_mode()
    def select_rows(self, cache, rows: torch.Tensor) -> None:
        """Keep only batch ``rows`` of ``cache`` (finished rows leave a batched generation)."""
        from .position_cache import PositionLayer

        for layer in self._layers(cache):
            if isinstance(layer, PositionLayer):
                layer.select_rows(rows)
            elif getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(0, rows)
                layer.values = layer.values.index_select(0, rows)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def check_aux_layers(self, ids) -> tuple[int, ...]:
        """Auxiliary layer ids (EAGLE-3's feature fusion), each the index of a decoder layer whose
        *input* is taken (0 = the embeddings, ``num_layers - 1`` = the last layer's input; the
        convention of vLLM and ``speculators``). ``ids``: a sequence, a string ``"2,15,27"``, ``""``
        (none) or ``"eagle3"`` (EAGLE-3's choice: 2, num_layers // 2, num_layers - 3)."""
        if isinstance(ids, str):
            spec = ids.strip()
            if spec == "eagle3":
                ids = (2, self.num_layers // 2, self.num_layers - 3)
            else:
                try:
                    ids = [int(x) for x in spec.split(",") if x.strip()]
                except ValueError:
                    raise ModelError(f"aux layers {spec!r}: give layer ids like '2,15,27' or "
                                     f"'eagle3'") from None
        ids = tuple(int(i) for i in ids)
        if len(set(ids)) != len(ids) or any(not 0 <= i < self.num_layers for i in ids):
            raise ModelError(f"aux layers {list(ids)} must be distinct layer ids in "
                             f"0..{self.num_layers - 1} (this model has {self.num_layers} layers)")
        return ids

    def tree_attention_mask(self, tree_mask: torch.Tensor, past: int, positions: torch.Tensor):
        """The additive (1, 1, n, past + n) mask of a tree forward: every node sees the cache and,
        inside the tree, itself and its ancestors; with a sliding window, only keys less than the
        window behind its own position (a dict per layer type when the model mixes both)."""
        n = tree_mask.shape[0]
        allow = torch.cat([torch.ones(n, past, dtype=torch.bool, device=self.device),
                           tree_mask.to(self.device)], 1)  # (n, past + n)
        full = additive_mask(allow, self.dtype)
        if self.sliding_window is None:
            return full
        key_pos = torch.cat([torch.arange(past, device=self.device), positions.to(self.device)])
        near = positions.to(self.device)[:, None] - key_pos[None, :] < self.sliding_window
        sliding = additive_mask(allow & near, self.dtype)
        if self._mixed_layers:
            return {"full_attention": full, "sliding_attention": sliding}
        return sliding

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(n, D) hidden states -> (n, V) float32 logits through the target's LM head."""
        return self.lm_head(hidden).float()

    # -- cache editing -------------------------------------------------------------------------
    @staticmethod
    def _layers(cache):
        layers = getattr(cache, "layers", None)
        assert layers is not None, "this transformers version has no cache.layers API"
        return layers

    @torch.inference_mode()
    def keep(self, cache, past: int, nodes: list[int], index: torch.Tensor | None = None) -> None:
        """Keep only tree ``nodes`` (offsets from ``past``, root first) after the first ``past`` tokens.

        Their keys/values move to slots past .. past+len(nodes)-1; everything after is dropped.
        ``index``: ``nodes`` already on the device (saves a copy).
        """
        new_len = past + len(nodes)
        contiguous = nodes == list(range(len(nodes)))
        if contiguous:
            index = None
        elif index is None:
            index = torch.tensor(nodes, device=self.device)
        if index is not None:
            index = index + past
        from .position_cache import PositionLayer

        for layer in self._layers(cache):
            if isinstance(layer, PositionLayer):  # edits itself in place
                layer.keep(past, index, new_len)
                continue
            if getattr(layer, "is_sliding", False):  # its slots are not positions: cannot be edited
                raise ModelError("koala needs a cache that keeps every token; this one drops tokens "
                                 "outside the sliding window (use TargetModel.new_cache())")
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            if index is not None:
                layer.keys[:, :, past:new_len] = layer.keys.index_select(2, index)
                layer.values[:, :, past:new_len] = layer.values.index_select(2, index)
            layer.keys = layer.keys[:, :, :new_len]
            layer.values = layer.values[:, :, :new_len]

    def cache_tensors(self, cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) per layer, each (B, kv_heads, T, head_dim): for tests and inspection."""
        return [(layer.keys, layer.values) for layer in self._layers(cache)]
