"""Heads that leave koala: EAGLE-3 heads to and from the formats serving engines load.

``speculators`` (vLLM's draft-head format, ``speculators_model_type: eagle3``): ``config.json``
with ``transformer_layer_config`` (a Llama decoder-layer config), ``draft_vocab_size``,
``eagle_aux_hidden_state_layer_ids`` and ``speculators_config`` (algorithm, proposal method,
verifier); ``model.safetensors`` with ``fc``, ``layers.N.*``, ``norm``, ``lm_head`` (the draft
vocabulary's rows) and the vocabulary maps ``d2t`` (draft id -> target id offset) and ``t2d`` (a
mask over the target vocabulary). ``sglang``: the layout of the original EAGLE-3 release
(``LlamaForCausalLMEagle3``, one ``midlayer``), which SGLang loads and ``speculators`` converts.

Only what the formats can express is written; anything else is refused with the reason, never
dropped: an EAGLE-1/2 head (its FC mixes the embedding into the residual stream), a target that is
not a plain Llama (biases, rope scaling), more than one layer in the ``sglang`` layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import Checkpoint, save_head
from .errors import CheckpointError, KoalaError
from .files import write_folder_atomic

FORMATS = ("speculators", "sglang")
SPECULATORS_VERSION = "0.9.0"  # the release whose config classes this layout follows
EAGLE_PLUGIN = "eagle"


class ExportError(KoalaError):
    """The head cannot be written in the asked format (the message says why)."""


def _layer_config(target, layers: int) -> dict:
    """The Llama decoder-layer config of the draft layers: the target's shapes, ``layers`` deep."""
    cfg = target.config
    if getattr(cfg, "model_type", "") != "llama":
        raise ExportError(f"the EAGLE-3 formats describe Llama decoder layers; this target is "
                          f"{cfg.model_type!r} (export supports Llama targets)")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ExportError("the target scales its rotary embedding; koala's draft layers use plain "
                          "RoPE, so the exported head would differ: not exported")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ExportError("the target's layers have biases, which koala's draft layers lack")
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": target.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads or cfg.num_attention_heads,
        "head_dim": cfg.hidden_size // cfg.num_attention_heads, "hidden_act": "silu",
        "max_position_embeddings": int(getattr(cfg, "max_position_embeddings", 2048)),
        "rms_norm_eps": float(getattr(cfg, "rms_norm_eps", 1e-6)),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(theta)},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
    }


def _eagle3_parts(ck: Checkpoint, target) -> tuple[dict, list[int], int, dict[str, torch.Tensor]]:
    """(head config, aux layer ids, draft vocab size, tensors in the formats' names) of an EAGLE-3
    checkpoint; refuses anything else."""
    if ck.plugin != EAGLE_PLUGIN:
        raise ExportError(f"{ck.folder} is a {ck.plugin!r} head; the EAGLE-3 formats hold EAGLE "
                          f"heads only")
    config = ck.meta["head_config"]
    aux = list(target.check_aux_layers(config.get("aux_layers", "")))
    if not aux:
        raise ExportError(
            f"{ck.folder} is an EAGLE-1/2 head (its FC reads [embedding; final feature] and feeds "
            f"both to the residual stream), which the EAGLE-3 formats cannot express; train an "
            f"EAGLE-3 head (--head-option aux_layers=eagle3 --head-option ttt_steps=3) to export")
    if int(config.get("extra_intermediate", 0) or 0):
        raise ExportError(f"{ck.folder} has narrower MLPs in its layers 2..K (extra_intermediate), "
                          f"which the EAGLE-3 formats (one intermediate_size) cannot describe")
    head = ck.build_head(target, draft_dtype="float32")  # checks the target, rebuilds the rows
    vocab_ids = head.vocab_ids.cpu()
    if not bool((vocab_ids[1:] > vocab_ids[:-1]).all()):
        raise ExportError("the draft vocabulary is not in ascending target-id order, which t2d "
                          "(a mask) implies")
    tensors = {k: v for k, v in ck.state.items() if k != "vocab_ids"}
    tensors["lm_head.weight"] = head.lm_rows.detach().cpu()  # the target's rows, as koala reads them
    n = vocab_ids.numel()
    if n != target.vocab_size:
        tensors["d2t"] = vocab_ids - torch.arange(n)
        t2d = torch.zeros(target.vocab_size, dtype=torch.bool)
        t2d[vocab_ids] = True
        tensors["t2d"] = t2d
    return config, aux, n, {k: v.contiguous() for k, v in tensors.items()}


def export_head(checkpoint: str | Path, target, out: str | Path, fmt: str = "speculators",
                verifier: str | None = None, dtype: str = "float32") -> Path:
    """Write the EAGLE-3 head of ``checkpoint`` to ``out`` in format ``fmt`` (see :data:`FORMATS`).

    ``verifier``: the target's name or path as the serving engine should find it (an HF id such as
    ``HuggingFaceTB/SmolLM2-135M-Instruct``); default: the local folder koala loaded it from.
    ``dtype``: of the written weights; ``float32`` (default) keeps the LM-head rows exactly as koala
    drafts with them in fp32, ``bfloat16`` halves the size.
    """
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ExportError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
    ck = Checkpoint.open(checkpoint)
    config, aux, n, tensors = _eagle3_parts(ck, target)
    cast = getattr(torch, dtype)
    tensors = {k: v.to(cast) if v.is_floating_point() else v for k, v in tensors.items()}
    layers = int(config.get("layers", 1))
    verifier = verifier or str(getattr(target, "folder", None) or target.name)
    layer_config = _layer_config(target, layers)
    if fmt == "speculators":
        meta = {
            "architectures": ["Eagle3Speculator"],
            "speculators_model_type": "eagle3",
            "speculators_version": SPECULATORS_VERSION,
            "transformer_layer_config": {**layer_config, "dtype": dtype},
            "draft_vocab_size": n,
            "norm_before_residual": False,
            "target_hidden_size": None,
            "eagle_aux_hidden_state_layer_ids": aux,
            "norm_before_fc": False,
            "fc_norm": False,
            "norm_output": False,
            "embed_requires_grad": False,
            "speculators_config": {
                "algorithm": "eagle3",
                "proposal_methods": [{"proposal_type": "greedy",
                                      "speculative_tokens": int(config.get("ttt_steps", 1)),
                                      "verifier_accept_k": 1, "accept_tolerance": 0.0}],
                "default_proposal_method": "greedy",
                "verifier": {"name_or_path": verifier,
                             "architectures": list(target.config.architectures or
                                                   ["LlamaForCausalLM"])},
            },
            "dtype": dtype,
        }
    else:
        if layers != 1:
            raise ExportError(f"the sglang (EAGLE-3 release) layout holds one decoder layer "
                              f"(midlayer); this head has {layers}: use --format speculators")
        meta = {**layer_config, "architectures": ["LlamaForCausalLMEagle3"],
                "num_hidden_layers": 1, "draft_vocab_size": n, "torch_dtype": dtype,
                "eagle_config": {"eagle_aux_hidden_state_layer_ids": aux},
                "rope_theta": layer_config["rope_parameters"]["rope_theta"]}
        tensors = {k.replace("layers.0.", "midlayer.", 1): v for k, v in tensors.items()}
    info = {"exported_by": "koala", "checkpoint": str(ck.folder), "format": fmt,
            "koala_plugin": ck.meta["plugin"], "target": ck.meta["target"]}
    write_folder_atomic(Path(out), {
        "config.json": json.dumps(meta, indent=2).encode(),
        "model.safetensors": lambda p: save_file(tensors, str(p), metadata={"format": "pt"}),
        "koala-export.json": json.dumps(info, indent=2).encode(),
    })
    return Path(out)


def import_head(folder: str | Path, target, out: str | Path, registry=None) -> Path:
    """Read a ``speculators`` EAGLE-3 head (or the sglang layout) made for ``target`` into a koala
    checkpoint at ``out``. Refuses what koala's EAGLE head cannot run exactly: other flags, a
    trained LM head (koala drafts through the target's frozen rows), another target."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / "config.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{folder} is not an exported head: {exc.filename} is missing") from None
    except Exception as exc:
        raise CheckpointError(f"{folder} is unreadable: {exc}") from None
    if meta.get("speculators_model_type") == "eagle3":
        layer = meta.get("transformer_layer_config") or {}
        for flag in ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output"):
            if meta.get(flag):
                raise CheckpointError(f"{folder}: {flag}=true is an EAGLE-3 variant koala's head "
                                      f"does not implement")
        if meta.get("target_hidden_size") not in (None, target.hidden_size):
            raise CheckpointError(f"{folder}: target_hidden_size {meta['target_hidden_size']} "
                                  f"differs from the target's {target.hidden_size}")
        aux = meta.get("eagle_aux_hidden_state_layer_ids")
    elif "LlamaForCausalLMEagle3" in (meta.get("architectures") or []):
        layer = meta
        aux = (meta.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        tensors = {k.replace("midlayer.", "layers.0.", 1): v for k, v in tensors.items()}
    else:
        raise CheckpointError(f"{folder} holds no EAGLE-3 head (config.json has neither "
                              f"speculators_model_type 'eagle3' nor LlamaForCausalLMEagle3)")
    if aux is None:
        aux = "eagle3"  # the formats' default choice
    if layer.get("hidden_size") != target.hidden_size or layer.get("vocab_size", target.vocab_size) \
            != target.vocab_size:
        raise CheckpointError(f"{folder} was made for another target (hidden {layer.get('hidden_size')}, "
                              f"vocab {layer.get('vocab_size')}; this one: {target.hidden_size}, "
                              f"{target.vocab_size})")
    n = int(meta.get("draft_vocab_size", target.vocab_size))
    if "d2t" in tensors:
        vocab_ids = torch.arange(n) + tensors.pop("d2t").long()
        tensors.pop("t2d", None)
    else:
        vocab_ids = torch.arange(n)
    lm_head = tensors.pop("lm_head.weight", None)
    tensors.pop("embed_tokens.weight", None)  # the target's own (koala reads the target's)
    ids = ",".join(str(int(i)) for i in aux) if not isinstance(aux, str) else aux
    options = {"layers": int(layer.get("num_hidden_layers", 1)), "aux_layers": ids,
               "draft_vocab": 0 if n == target.vocab_size else n}
    proposal = (meta.get("speculators_config") or {}).get("proposal_methods") or [{}]
    options["ttt_steps"] = int(proposal[0].get("speculative_tokens", 1))
    from .registry import default_registry

    reg = registry or default_registry()
    try:
        head = reg.create("heads", EAGLE_PLUGIN, options, target=target)
        head.set_draft_vocab(vocab_ids)
        state = {**tensors, "vocab_ids": vocab_ids}
        head.load_state_dict({k: v.to(target.dtype) if v.is_floating_point() else v
                              for k, v in state.items()}, strict=True)
    except (RuntimeError, AssertionError, KoalaError) as exc:
        raise CheckpointError(f"{folder} does not fit koala's EAGLE-3 head: {exc}") from None
    if lm_head is not None:
        rows = head.lm_rows.to(lm_head.dtype)
        if not torch.allclose(lm_head.float(), rows.float(), atol=1e-2, rtol=1e-2):
            raise CheckpointError(f"{folder} trained its own LM head; koala's heads draft through "
                                  f"the target's frozen LM-head rows, so it cannot run it exactly")
    recipe = {"imported_from": str(folder.resolve()), "format": "speculators"
              if meta.get("speculators_model_type") else "sglang"}
    return save_head(head, out, EAGLE_PLUGIN, recipe=recipe, dtype=lm_head.dtype if lm_head is not
                     None else torch.bfloat16, registry=reg)
