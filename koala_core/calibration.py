"""What a draft head's layers read, measured once on a fixed text: the per-channel input ranges that
int8 activations need.

Quantising a layer's input to 8 bits with one scale per call (fbgemm's dynamic int8 linear) fails
where a few channels are far larger than the rest: a target's hidden states carry channels ~50x
their median, so the others keep 2-3 bits (the default head's top-1 draft then agreed with its
fp32 self on 79 % of positions, against 96 % for weight-only int8;
``benchmarks/int8_agreement.py``). SmoothQuant (Xiao et al. 2023) moves that range into the
weights: ``x W^T = (x / s) (W s)^T`` with ``s_c = sqrt(max|x_c| / max|W_c|)``, exact in real
arithmetic, and both factors quantise well (96 % again). The ranges come
from the head's own training forward over the target's states of a fixed multi-domain text, so
every head plugin is calibrated alike, the same way on every load (drafts do not depend on what
was generated before).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from .heads import NeuralHead, TrainBatch
from .prompts import encode_prompt
from .tensors import hidden_and_aux

# a user turn and the start of an answer: prose, a list, arithmetic, code, other languages
CALIBRATION_PROMPT = ("Explain how a bicycle stays upright, then solve 12 * 7 + 5 and translate "
                      "'good morning' into French, German and Spanish.")
CALIBRATION_ANSWER = (
    "A bicycle stays upright because its wheels act like gyroscopes and, more importantly, the "
    "rider steers into the direction of a fall.\n\n1. Steering: small turns bring the wheels back "
    "under the centre of mass.\n2. Trail: the front wheel touches the ground behind the steering "
    "axis.\n\nArithmetic: 12 * 7 = 84, and 84 + 5 = 89.\n\n```python\ndef total(xs):\n    return "
    "sum(x * 7 for x in xs) + 5\n```\n\nFrench: Bonjour. German: Guten Morgen. Spanish: Buenos "
    "días. 中文：早上好。")
SKIP = 8  # the first positions of a sequence carry outsized states that drafting never reads


_BATCHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # target -> {aux layers: batch}


def calibration_batch(target, aux_layers: tuple[int, ...] = ()) -> TrainBatch:
    """The target's states over the calibration conversation, as a one-row training batch (the
    first :data:`SKIP` positions dropped: the rows kept follow some context, as drafting rows do).
    One target forward over ~200 tokens (~0.5 s on a 2-core CPU), made once per target and aux
    layers: heads loaded side by side (a bench) share it."""
    batches = _BATCHES.setdefault(target, {})
    if tuple(aux_layers) not in batches:
        batches[tuple(aux_layers)] = _target_states(target, tuple(aux_layers))
    return batches[tuple(aux_layers)]


@torch.no_grad()
def _target_states(target, aux_layers: tuple[int, ...]) -> TrainBatch:
    tok = target.tokenizer
    ids = encode_prompt(tok, CALIBRATION_PROMPT)
    ids = ids + list(tok(CALIBRATION_ANSWER, add_special_tokens=False)["input_ids"])
    ids = ids[: target.max_length]
    hidden, aux = hidden_and_aux(target.forward(torch.tensor(ids, device=target.device),
                                                target.new_cache(), aux_layers=aux_layers))
    labels = target.logits(hidden).argmax(-1)
    keep = slice(SKIP if len(ids) > SKIP + 2 else 0, None)
    row = torch.tensor(ids, device=target.device)[keep][None]
    return TrainBatch(row, hidden[keep][None].float(), labels[keep][None],
                      torch.ones_like(row, dtype=torch.uint8),
                      aux=None if aux is None else aux[keep][None].float())


@torch.no_grad()
def input_ranges(head: NeuralHead,
                 batch: TrainBatch) -> tuple[dict[nn.Linear, torch.Tensor], torch.Tensor | None]:
    """Per input channel, the largest |input| each of ``head``'s Linear layers and its LM-head rows
    (``project``) saw in the head's training forward over ``batch`` (fp32, eval mode)."""
    seen: dict[nn.Module, torch.Tensor] = {}

    def record(key, x: torch.Tensor) -> None:
        amax = x.detach().float().reshape(-1, x.shape[-1]).abs().amax(0)
        seen[key] = amax if key not in seen else torch.maximum(seen[key], amax)

    hooks = [m.register_forward_pre_hook(lambda mod, args: record(mod, args[0]))
             for m in head.modules() if isinstance(m, nn.Linear)]
    project = head.project

    def recording_project(features: torch.Tensor) -> torch.Tensor:
        record("lm_rows", features)
        return project(features)

    head.project = recording_project
    was_training = head.training
    head.eval()
    try:
        head(batch)
    finally:
        del head.project  # the class's method again
        for h in hooks:
            h.remove()
        head.train(was_training)
    rows = seen.pop("lm_rows", None)
    return seen, rows


def smoothing(input_range: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor | None:
    """SmoothQuant's per-channel factor (alpha = 1/2) for a weight (out, in) whose inputs reached
    ``input_range`` (in,): divide the inputs by it, multiply the weight's columns by it."""
    if input_range is None:
        return None
    w = weight.detach().float().abs().amax(0).clamp_min(1e-5)
    return (input_range.clamp_min(1e-5) / w).sqrt().clamp(1e-3, 1e3)
