"""One engine serving many requests: a worker thread takes jobs from a bounded queue in arrival
order (the model is not thread-safe) and streams each job's events back to the asyncio side.

A job's events: ``("start", prompt_tokens)`` once its prompt is encoded and fits, then
``("text", delta)`` as text becomes final (held back while it could still be the start of a stop
string or half a character), then ``("done", finish_reason, completion_tokens, stats)``, or
``("error", APIError)`` at any point. A job whose client went away (``cancel()``) or that passed
its deadline stops at the next engine step and frees the engine.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from .errors import KoalaError
from .openai_api import APIError, CompletionRequest


@dataclass
class Job:
    request: CompletionRequest
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() after which the job is given up
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, *event) -> None:
        """Hand an event to the asyncio side (safe from the worker thread)."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Metrics:
    """Server-wide counters, exported in the Prometheus text format."""

    COUNTERS = {
        "requests": "Requests answered, by outcome.",
        "prompt_tokens": "Prompt tokens of answered requests.",
        "completion_tokens": "Tokens generated.",
        "target_forwards": "Target forwards in the decode phase.",
        "drafts": "Decode steps that verified a drafted tree.",
        "drafted_tokens": "Draft tokens verified.",
        "accepted_tokens": "Draft tokens accepted.",
        "accepted_depth": "Draft steps whose accepted path reached each depth.",
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Counter] = {name: Counter() for name in self.COUNTERS}

    def add(self, name: str, value: int = 1, label: str = "") -> None:
        with self._lock:
            self._values[name][label] += value

    def value(self, name: str, label: str = "") -> int:
        with self._lock:
            return self._values[name][label]

    def render(self) -> str:
        labels = {"requests": "outcome", "accepted_depth": "depth"}
        lines = []
        with self._lock:
            for name, help_ in self.COUNTERS.items():
                metric = f"koala_{name}_total"
                lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} counter"]
                values = self._values[name] or Counter({"": 0} if name not in labels else {})
                for label, v in sorted(values.items(), key=lambda kv: str(kv[0])):
                    tag = f'{{{labels[name]}="{label}"}}' if name in labels else ""
                    lines.append(f"{metric}{tag} {v}")
        return "\n".join(lines) + "\n"


class TextStream:
    """Incremental detokenisation with stop strings: ``push(tokens)`` returns the new final text
    and whether a stop string ended it."""

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.tokens: list[int] = []
        self.sent = 0  # characters of the text already handed out

    def push(self, tokens: list[int], last: bool = False) -> tuple[str, bool]:
        self.tokens.extend(tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        hits = [i for i in (text.find(s, max(0, self.sent - self.hold)) for s in self.stop) if i >= 0]
        if hits:
            end = min(hits)
            out, self.sent = text[self.sent:end], max(self.sent, end)
            return out, True
        end = len(text) if last else len(text) - self.hold
        if not last and text.endswith("\ufffd"):  # half a multi-byte character
            end = min(end, len(text) - 1)
        if end <= self.sent:
            return "", False
        out, self.sent = text[self.sent:end], end
        return out, False


class EngineWorker:
    """Runs jobs one at a time on a :class:`~koala_core.engine.SpeculativeEngine`."""

    def __init__(self, engine, max_queue: int = 16, metrics: Metrics | None = None) -> None:
        self.engine, self.metrics = engine, metrics or Metrics()
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._serve, name="koala-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self.queue.qsize()

    def submit(self, job: Job) -> None:
        """Queue a job; a full queue is a 429 for the client."""
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            self.metrics.add("requests", label="rejected")
            raise APIError(429, f"the server is busy ({self.queue.maxsize} requests waiting); "
                                "retry shortly", type="rate_limit_error", code="queue_full") from None

    def _serve(self) -> None:
        while True:
            job = self.queue.get()
            try:
                outcome = self._run(job)
            except APIError as exc:
                job.emit("error", exc)
                outcome = "invalid" if exc.status < 500 else "error"
            except Exception as exc:  # never let one request kill the server
                job.emit("error", APIError(500, f"generation failed: {exc}", type="server_error"))
                outcome = "error"
            self.metrics.add("requests", label=outcome)

    def _encode(self, req: CompletionRequest) -> list[int]:
        from .prompts import encode_chat, encode_prompt

        tok = self.engine.target.tokenizer
        try:
            ids = encode_chat(tok, req.messages) if req.chat else encode_prompt(tok, req.prompt,
                                                                               raw=True)
        except KoalaError as exc:
            raise APIError(400, str(exc), param="messages" if req.chat else "prompt") from None
        limit = self.engine.target.max_length
        if len(ids) >= limit:
            raise APIError(400, f"the prompt has {len(ids)} tokens but the model's context is "
                                f"{limit}; shorten it", param="messages" if req.chat else "prompt",
                           code="context_length_exceeded")
        return ids

    def _run(self, job: Job) -> str:
        from .engine import GenerationConfig
        from .sampling import Sampling

        req = job.request
        if job.cancelled:
            return "cancelled"
        if time.monotonic() > job.deadline:
            raise APIError(504, "the request timed out while waiting for the engine",
                           type="timeout_error")
        ids = self._encode(req)
        room = self.engine.target.max_length - len(ids)
        config = GenerationConfig(max_new_tokens=min(req.max_tokens or room, room),
                                  sampling=Sampling(req.temperature, 0, req.top_p), seed=req.seed)
        try:
            self.engine.verifier_for(config.sampling)
        except KoalaError as exc:
            raise APIError(400, str(exc), param="temperature") from None
        job.emit("start", len(ids))
        tally = Tally(prompt=len(ids))
        steps = self.engine.stream(ids, config)
        try:
            finish = self._generate(job, steps, TextStream(self.engine.target.tokenizer, req.stop),
                                    tally)
        finally:
            steps.close()  # frees the engine at once, however the job ended
            for name in ("prompt", "completion", "forwards", "drafted", "accepted"):
                self.metrics.add(Tally.METRIC[name], getattr(tally, name))
        if finish == "cancelled":
            return finish
        job.emit("done", finish, tally.completion, tally.stats())
        return "ok"

    def _generate(self, job: Job, steps, text: TextStream, tally: "Tally") -> str:
        """Drive the engine for one job; returns the finish reason (or ``cancelled``)."""
        eos = self.engine.target.eos_token_ids
        for step in steps:
            if job.cancelled:
                return "cancelled"
            if time.monotonic() > job.deadline:
                raise APIError(504, "the request timed out during generation", type="timeout_error")
            tally.completion += len(step.tokens)
            if not step.prefill:
                tally.forwards += 1
                tally.drafted += step.drafted
                tally.accepted += step.accepted
                if step.drafted:
                    self.metrics.add("drafts")
                    for depth in range(1, step.accepted + 1):
                        self.metrics.add("accepted_depth", label=str(depth))
            ended = step.tokens[-1] in eos
            delta, stopped = text.push(step.tokens, last=ended)
            if delta:
                job.emit("text", delta)
            if stopped or ended:
                return "stop"
        delta, stopped = text.push([], last=True)
        if delta:
            job.emit("text", delta)
        return "stop" if stopped else "length"


@dataclass
class Tally:
    """What one request cost and drafted."""

    METRIC = {"prompt": "prompt_tokens", "completion": "completion_tokens",
              "forwards": "target_forwards", "drafted": "drafted_tokens",
              "accepted": "accepted_tokens"}

    prompt: int = 0
    completion: int = 0
    forwards: int = 0
    drafted: int = 0
    accepted: int = 0

    def stats(self) -> dict:
        """koala's extension field of a response (tau counts the bonus token, as everywhere)."""
        decode = self.completion - 1  # the first token comes from the prefill
        return {"tau": round(decode / self.forwards, 4) if self.forwards else 0.0,
                "target_forwards": self.forwards, "drafted_tokens": self.drafted,
                "accepted_tokens": self.accepted}
