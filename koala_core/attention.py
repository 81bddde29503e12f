"""Grouped-query attention under a tree mask without copying the keys and values.

transformers' ``sdpa`` attention repeats every key/value head once per query head of its group
(``repeat_kv``) whenever an attention mask is given, because some GPU kernels fall back to slow
math under a mask with grouped heads. Verification always passes a mask (the tree's), so on a CPU
every verify step copied the whole KV cache of every layer: SmolLM2-135M (9 query heads on 3 KV
heads) on a 2-core AVX2 EPYC spent ~10 ms a step in that copy and ran its attention 2x slower than
with torch's grouped-query SDPA (``enable_gqa=True``), which on a CPU gives the same result bit
for bit (``tests/test_tree_attention.py``; ``python benchmarks/verify_paths.py`` measures both).

:func:`use_grouped_sdpa` registers ``koala_sdpa``: that path for masked multi-token attention on a
CPU, transformers' own ``sdpa`` for everything else (single-token decoding, which transformers
already runs on the key/value heads; GPUs; position biases; soft caps). Only
:class:`~koala_core.adapter.TargetModel` calls it.
"""

from __future__ import annotations

import torch

NAME = "koala_sdpa"


def grouped_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0,
                 scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """An ``AttentionInterface`` function: ``sdpa`` with the key/value heads left grouped."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if (attention_mask is None or query.shape[2] == 1 or groups == 1 or query.device.type != "cpu"
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
            or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _register() -> bool:
    """Register :data:`NAME` with transformers (its attention function and sdpa's mask builder);
    False where this transformers has no such interfaces."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:
        return False
    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, grouped_sdpa)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return True


def use_grouped_sdpa(model) -> bool:
    """Switch a model that runs transformers' ``sdpa`` to :data:`NAME` (the same results; other
    attention implementations are left alone). Returns whether it switched."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not _register():
        return False
    try:
        model.set_attn_implementation(NAME)
    except (AttributeError, ValueError):
        return False
    return getattr(model.config, "_attn_implementation", None) == NAME
