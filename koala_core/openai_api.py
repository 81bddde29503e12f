"""The OpenAI wire format: request bodies checked into a :class:`CompletionRequest`, and the
response objects (``chat.completion``, ``chat.completion.chunk``, ``text_completion``, errors).

No web framework here: :mod:`koala_core.server` moves bytes, this module decides what they mean.
Every problem with a request is an :class:`APIError` with the HTTP status and the OpenAI error
``type`` / ``param`` / ``code`` a client expects.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any


class APIError(Exception):
    """A request the server refuses: HTTP ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    """One checked request: chat (``messages``) or raw completion (``prompt``)."""

    chat: bool
    model: str
    messages: list[dict] | None = None
    prompt: str | None = None
    max_tokens: int | None = None  # None: up to the model's context
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def object_id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.request_id


def _number(body: dict, key: str, default, low: float, high: float, kind=float):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and
                                                                          not isinstance(value, int)):
        raise APIError(400, f"'{key}' must be {'an integer' if kind is int else 'a number'}, "
                            f"got {value!r}", param=key)
    if not low <= value <= high:
        raise APIError(400, f"'{key}' must be between {low} and {high}, got {value}", param=key)
    return kind(value)


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                    part.get("text"), str):
                raise APIError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(400, f"messages[{i}].content must be a string or a list of text parts",
                   param=f"messages[{i}].content")


def parse_request(body: Any, chat: bool, served_models: list[str]) -> CompletionRequest:
    """Check a decoded JSON body; raise :class:`APIError` on anything a client got wrong."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required", param="model")
    if model not in served_models:
        raise APIError(404, f"the model '{model}' does not exist; this server serves "
                            f"{', '.join(served_models)}", param="model", code="model_not_found")
    n = _number(body, "n", 1, 1, 128, int)
    if n != 1:
        raise APIError(400, "only n = 1 is supported", param="n")
    messages = prompt = None
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "'messages' is required: a non-empty list of {role, content}",
                           param="messages")
        checked = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant",
                                                                 "developer"):
                raise APIError(400, f"messages[{i}] needs a role of system, user or assistant",
                               param=f"messages[{i}]")
            role = "system" if m["role"] == "developer" else m["role"]
            checked.append({"role": role, "content": _content(m, i)})
        messages = checked
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' is required: one string", param="prompt")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, None, 1, 10**9, int)
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise APIError(400, "'stop' must be a string or a list of up to 4 strings", param="stop")
    if any(not s for s in stop):
        raise APIError(400, "'stop' strings must not be empty", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", param="stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"'seed' must be an integer, got {seed!r}", param="seed")
    return CompletionRequest(
        chat=chat, model=model, messages=messages, prompt=prompt, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0), seed=seed, stop=stop, stream=stream,
        include_usage=bool(options.get("include_usage", False)))


# -- responses ---------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response(req: CompletionRequest, text: str, finish_reason: str, prompt_tokens: int,
             completion_tokens: int, stats: dict) -> dict:
    """The whole (non-streamed) answer, with koala's speculative statistics in ``koala``."""
    if req.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    return {"id": req.object_id, "object": "chat.completion" if req.chat else "text_completion",
            "created": req.created, "model": req.model, "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens), "koala": stats}


def chunk(req: CompletionRequest, text: str | None = None, finish_reason: str | None = None,
          role: bool = False, usage_: dict | None = None, stats: dict | None = None) -> dict:
    """One streamed event: a text delta, the closing one (``finish_reason``), or the usage one."""
    out = {"id": req.object_id, "object": "chat.completion.chunk" if req.chat else "text_completion",
           "created": req.created, "model": req.model}
    if usage_ is not None:
        out.update(choices=[], usage=usage_)
        if stats is not None:
            out["koala"] = stats
        return out
    if req.chat:
        delta = {"role": "assistant", "content": ""} if role else (
            {"content": text} if text is not None else {})
        out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                           "logprobs": None}]
    else:
        out["choices"] = [{"index": 0, "text": text or "", "finish_reason": finish_reason,
                           "logprobs": None}]
    if stats is not None:
        out["koala"] = stats
    return out
