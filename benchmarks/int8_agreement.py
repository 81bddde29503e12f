"""How often a shipped head's top-1 draft in each draft dtype agrees with its fp32 self, per depth
(EAGLE: depth 1), on the target's own greedy continuations of MT-bench prompts (teacher-forced:
every head reads the target's true states and tokens). Shows what quantising activations costs
a draft, and what the calibrated smoothing of int8-dynamic gives back
(``int8-dynamic-unsmoothed``: the same kernel with one scale per call and no smoothing, what
int8-dynamic was before its calibration).

    python benchmarks/int8_agreement.py [--checkpoint checkpoints/hydra-k1 --prompts 12 --tokens 40]
"""

import argparse

import torch

from koala_core import kernels
from koala_core.bench import select_prompts
from koala_core.calibration import calibration_batch, input_ranges
from koala_core.checkpoint import load_head
from koala_core.model import load_target
from koala_core.prompts import encode_prompt


@torch.inference_mode()
def continuations(target, texts: list[str], tokens: int):
    """Per prompt: the target's states at each generated position and the tokens after them."""
    out = []
    for text in texts:
        ids = encode_prompt(target.tokenizer, text)
        cache = target.new_cache()
        h = target.forward(torch.tensor(ids), cache)
        states, new = [h[-1:]], []
        for _ in range(tokens):
            new.append(int(target.logits(states[-1]).argmax()))
            states.append(target.forward(torch.tensor(new[-1:]), cache))
        out.append((torch.cat(states[:-1]), torch.tensor(new)))
    return out


@torch.inference_mode()
def top1(head, data, depth: int) -> torch.Tensor:
    """The head's top-1 draft at ``depth`` from every position: Hydra / Medusa head k reads the
    state and the k true tokens after it; EAGLE (depth 1 only) reads [emb(next token); state] with
    causal attention over the rows before, as committed rows are read in decoding."""
    picks = []
    for h, ids in data:
        n = len(ids) - depth + 1
        if hasattr(head, "head"):
            path = torch.stack([ids[i:i + n] for i in range(depth)], -1)
            feats = head.head(depth, h[:n].to(head.lm_rows.dtype), path)
        else:
            out = head.run(h[None].to(head.lm_rows.dtype), ids[None], torch.arange(len(ids))[None])
            feats = head.readout(out[0])
        picks.append(head.project(feats).float().argmax(-1))
    return torch.cat(picks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="checkpoints/hydra-k1")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--offset", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--depths", type=int, default=3)
    args = ap.parse_args()
    target = load_target("default")
    texts = [p["prompt"] for p in select_prompts("mtbench", args.offset, args.prompts)]
    data = continuations(target, texts, args.tokens)
    ref = load_head(args.checkpoint, target, draft_dtype="float32")
    plain = load_head(args.checkpoint, target, draft_dtype="bfloat16").float()  # nn.Linear layers
    ranges, rows = input_ranges(plain, calibration_batch(target, plain.aux_layers))
    names = {module: name for name, module in plain.named_modules()}
    spread = {names[m]: r.max() / r.median() for m, r in ranges.items()}
    if rows is not None:
        spread["LM-head rows"] = rows.max() / rows.median()
    print("largest input channel over the median one, per layer (calibration text): "
          + ", ".join(f"{n} {float(x):.0f}x" for n, x in spread.items()))
    depths = range(1, (args.depths if hasattr(ref, "head") else 1) + 1)  # EAGLE: depth 1
    base = {d: top1(ref, data, d) for d in depths}
    kinds = ["bfloat16", "int8"] + (["int8-dynamic", "int8-dynamic-unsmoothed"]
                                    if kernels.dynamic_int8_available() else [])
    print(f"{args.checkpoint}: top-1 agreement with fp32 drafting, {len(base[1])} positions")
    for kind in kinds:
        head = load_head(args.checkpoint, target, draft_dtype=kind.replace("-unsmoothed", ""))
        if kind.endswith("-unsmoothed"):  # the same kernel without the calibrated smoothing
            for m in head.modules():
                if isinstance(m, kernels.DynamicInt8Linear):
                    m._packed = kernels.DynamicInt8Weight(lambda m=m: m.weight, lambda m=m: m.bias)
            head._packed_rows = kernels.DynamicInt8Weight(lambda: head.lm_rows)
        agree = {d: (top1(head, data, d) == base[d]).float().mean().item() for d in base}
        print(f"  {kind:<24} " + "  ".join(f"depth {d}: {a:.3f}" for d, a in agree.items()))


if __name__ == "__main__":
    main()
