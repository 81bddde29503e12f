"""How much a bf16 teacher pass changes the training data (`koala prepare --dtype bfloat16`).

    python benchmarks/bf16_teacher.py [--conversations 40] [--skip 10000] [--max-length 1024]

Runs the target in fp32 and in bf16 over the same ShareGPT conversations (records from --skip on,
interleaved, one conversation at a time as `koala prepare` does) and reports the share of labels
(the target's argmax) that agree, on assistant positions and on all, the overlap of the top-8 sets,
the relative error of the cached hidden state, and tokens/s of each pass.
"""

import argparse
import time

import torch

from koala_core.data import assistant_mask, iter_sharegpt
from koala_core.model import load_target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=40)
    ap.add_argument("--skip", type=int, default=10_000)
    ap.add_argument("--max-length", type=int, default=1024)
    args = ap.parse_args()
    fp, bf = load_target("default"), load_target("default", dtype="bfloat16")
    tok = fp.tokenizer
    seconds = {"float32": 0.0, "bfloat16": 0.0}
    agree = agree_asst = n = n_asst = 0
    overlap = err = 0.0
    done = 0
    with torch.inference_mode():
        for index, conv in enumerate(iter_sharegpt()):
            if index < args.skip:
                continue
            if done == args.conversations:
                break
            ids = tok.apply_chat_template(conv.messages, tokenize=True, add_generation_prompt=False)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)[: args.max_length]
            mask = torch.tensor(assistant_mask(tok, conv.messages, ids), dtype=torch.bool)
            if len(ids) < 8 or not mask.any():
                continue
            x = torch.tensor(ids)
            out = {}
            for name, target in (("float32", fp), ("bfloat16", bf)):
                t0 = time.perf_counter()
                hidden = target.forward(x, target.new_cache())
                logits = target.logits(hidden).float()
                seconds[name] += time.perf_counter() - t0
                out[name] = hidden.float(), logits
            (h32, l32), (h16, l16) = out["float32"], out["bfloat16"]
            same = l32.argmax(-1) == l16.argmax(-1)
            agree += int(same.sum())
            agree_asst += int(same[mask].sum())
            n += len(ids)
            n_asst += int(mask.sum())
            t32, t16 = l32.topk(8, -1).indices, l16.topk(8, -1).indices
            overlap += float((t32.unsqueeze(-1) == t16.unsqueeze(-2)).any(-1).float().mean(-1).sum())
            err += float(((h16 - h32).norm(dim=-1) / h32.norm(dim=-1)).sum())
            done += 1
    print(f"{done} conversations, {n} tokens ({n_asst} in assistant turns)")
    print(f"labels equal: assistant positions {agree_asst / n_asst:.4f}, all {agree / n:.4f}")
    print(f"top-8 overlap {overlap / n:.4f}; hidden state relative error {err / n:.4f}")
    for name, s in seconds.items():
        print(f"{name}: {n / s:.0f} tokens/s")


if __name__ == "__main__":
    main()
