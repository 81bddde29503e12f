"""A draft step as the engine meets it, shared by the draft-latency suite and
``draft_levels.py``: the prompt prefilled, one draft and one plain step taken, so the next draft
step (step 1) has committed state to build on; between timed draft steps, ``target_step`` runs the
target's forward that the engine would (untimed: it leaves the head's weights as cold as in
decoding) and rewinds its cache."""

from collections.abc import Callable

import torch

from koala_core.interfaces import DraftContext, TreeBudget
from koala_core.prompts import encode_prompt
from koala_core.sampling import Sampling


def second_draft_step(target, head, policy, prompt: str) -> tuple[DraftContext, Callable[[], None]]:
    """(the context of draft step 1, the untimed target step to run before each timing)."""
    budget, sampling = TreeBudget(max_nodes=64, max_depth=8), Sampling()
    tokens = encode_prompt(target.tokenizer, prompt)
    with torch.inference_mode():
        cache = target.new_cache()
        hidden = target.forward(torch.tensor(tokens), cache)
        tokens = tokens + [int(target.logits(hidden[-1:]).argmax())]
        ctx = DraftContext(tokens, hidden, budget, sampling, 0)
        head.begin(ctx)
        policy.build(head, ctx)
        hidden = target.forward(torch.tensor(tokens[-1:]), cache)  # one plain step
        tokens = tokens + [int(target.logits(hidden).argmax())]
        past = target.cache_length(cache)

    def target_step() -> None:
        with torch.inference_mode():
            target.logits(target.forward(torch.tensor(tokens[-1:]), cache))
            target.keep(cache, past, [])

    return DraftContext(tokens, hidden, budget, sampling, 1), target_step
