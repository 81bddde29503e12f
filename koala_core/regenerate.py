"""On-policy training data: the target answers the prompts itself.

``koala prepare --regenerate`` keeps the first user turn of each conversation, lets the target
answer it (batched greedy decoding, left-padded rows; a row leaves the batch when it ends), and
takes the hidden states, labels and top-k of every token from the generating passes themselves:
the prompt's from the prefill, the answer's from the decode steps, so no second pass runs.
"""

from __future__ import annotations

import torch


def summarise(logits: torch.Tensor, topk: int) -> dict[str, torch.Tensor]:
    """Labels (the argmax) and, with ``topk``, the top-k log-probs of (n, V) logits."""
    out = {"labels": logits.argmax(-1)}
    if topk:
        top = torch.log_softmax(logits.float(), -1).topk(topk, -1)
        out["topk_ids"], out["topk_logp"] = top.indices, top.values
    return out


@torch.inference_mode()
def answer_batch(target, prompts: list[list[int]], max_new: list[int], aux_layers=(),
                 topk: int = 0) -> list[dict[str, torch.Tensor]]:
    """Greedy answers to ``prompts`` (token ids, each in the chat template ready for the assistant),
    at most ``max_new[b]`` tokens each, as training records: the prompt and the answer without its
    last token (never fed to the target), with what the target computed at each position."""
    dev, eos = target.device, target.eos_token_ids
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long, device=dev)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p, device=dev)
        mask[b, width - len(p):] = 1
    # preallocated: HF's DynamicCache would copy the whole batch's cache at every step
    cache = target.new_cache(width + max(max_new), kind="static")
    out = target.forward_rows(ids, mask, cache, aux_layers)
    hidden, aux = out if aux_layers else (out, None)
    rows = []
    for b, p in enumerate(prompts):
        keep = slice(width - len(p), width)
        row = {"hidden": [hidden[b, keep]], "tokens": list(p)}
        if aux is not None:
            row["aux"] = [aux[b, keep]]
        for k, v in summarise(target.logits(hidden[b, keep]), topk).items():
            row[k] = [v]
        rows.append(row)
    live = list(range(len(prompts)))
    nxt = torch.stack([rows[b]["labels"][0][-1] for b in live])
    while True:
        ended = []
        for i, (b, t) in enumerate(zip(live, nxt.tolist())):
            row = rows[b]
            row["tokens"].append(t)
            if t in eos or len(row["tokens"]) - len(prompts[b]) >= max_new[b]:
                ended.append(i)
        if ended:
            stay = [i for i in range(len(live)) if i not in ended]
            if not stay:
                break
            index = torch.tensor(stay, device=dev)
            target.select_rows(cache, index)
            mask, nxt = mask.index_select(0, index), nxt.index_select(0, index)
            live = [live[i] for i in stay]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = target.forward_rows(nxt[:, None], mask, cache, aux_layers)
        hidden, aux = out if aux_layers else (out, None)
        hidden = hidden[:, 0]
        aux = aux[:, 0] if aux is not None else None
        step = summarise(target.logits(hidden), topk)
        for i, b in enumerate(live):
            rows[b]["hidden"].append(hidden[i:i + 1])
            if aux is not None:
                rows[b]["aux"].append(aux[i:i + 1])
            for k, v in step.items():
                rows[b][k].append(v[i:i + 1])
        nxt = step["labels"]
    records = []
    for b, row in enumerate(rows):
        n_prompt, n = len(prompts[b]), len(row["tokens"]) - 1  # the last answer token is not fed
        rec = {"input_ids": torch.tensor(row["tokens"][:n], dtype=torch.int32),
               "hidden": torch.cat(row["hidden"]).to("cpu", torch.float16),
               "labels": torch.cat(row["labels"]).to("cpu", torch.int32),
               "loss_mask": (torch.arange(n) >= n_prompt - 1).to(torch.uint8)}
        if "aux" in row:
            rec["aux"] = torch.cat(row["aux"]).to("cpu", torch.bfloat16)
        if topk:
            rec["topk_ids"] = torch.cat(row["topk_ids"]).to("cpu", torch.int32)
            rec["topk_logp"] = torch.cat(row["topk_logp"]).to("cpu", torch.float16)
        records.append(rec)
    return records
