"""Turning user text into prompt token ids (chat template unless raw), and reading prompt files."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import PromptError


def encode_prompt(tokenizer, text: str, raw: bool = False) -> list[int]:
    """Token ids of ``text``, wrapped in the tokenizer's chat template unless ``raw``."""
    if not text or not text.strip():
        raise PromptError("the prompt is empty: pass some text (or '-' to read it from stdin)")
    if raw or not getattr(tokenizer, "chat_template", None):
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return encode_chat(tokenizer, [{"role": "user", "content": text}])


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation in the tokenizer's chat template, ready for the assistant."""
    if not any(m.get("content", "").strip() for m in messages):
        raise PromptError("the messages are empty: give at least one non-empty message")
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError("this model's tokenizer has no chat template; send a raw prompt")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # BatchEncoding in some versions
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def read_jsonl_prompts(path: str | Path) -> list[dict]:
    """Records with ``prompt`` (or ``turns``: the first turn is used), optional ``id``, ``category``."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file {str(path)!r} does not exist")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise PromptError(f"{path}:{n}: not valid JSON ({exc})") from None
        text = rec.get("prompt") or (rec.get("turns") or [None])[0] if isinstance(rec, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"{path}:{n}: needs a non-empty 'prompt' (or 'turns') field")
        out.append({"id": str(rec.get("id", rec.get("question_id", n))), "prompt": text,
                    "category": rec.get("category", "")})
    if not out:
        raise PromptError(f"prompt file {path} has no prompts")
    return out
