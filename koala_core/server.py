"""``koala serve``: an OpenAI-compatible HTTP API (Starlette + uvicorn) over one speculative engine.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream``
as server-sent events), ``GET /metrics`` (Prometheus text) and ``GET /health``. Requests are
checked by :mod:`koala_core.openai_api` and run one at a time, in arrival order, by
:class:`~koala_core.worker.EngineWorker`. Every error is an OpenAI-style JSON body with a 4xx/5xx
status; nothing a client sends can stop the server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass

from .openai_api import APIError, chunk, parse_request, response, usage
from .worker import EngineWorker, Job


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one server (the CLI derives its options from these defaults)."""

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = "koala"
    api_key: str | None = None
    max_queue: int = 16  # requests waiting for the engine; one more is a 429
    timeout: float = 600.0  # seconds a request may wait and run in all


def create_app(worker: EngineWorker, config: ServeConfig = ServeConfig()):
    """The ASGI application serving ``worker``'s engine."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    started = int(time.time())

    def error(exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    def authorised(request: Request) -> bool:
        if not config.api_key:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {config.api_key}".encode())

    async def models(request: Request):
        if not authorised(request):
            return error(unauthorised())
        return JSONResponse({"object": "list", "data": [
            {"id": config.served_model_name, "object": "model", "created": started,
             "owned_by": "koala"}]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": config.served_model_name,
                             "waiting": worker.waiting})

    async def metrics(request: Request):
        return PlainTextResponse(worker.metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def completions(request: Request, chat: bool):
        if not authorised(request):
            return error(unauthorised())
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = APIError(400, "the request body is not valid JSON")
        try:
            if isinstance(body, APIError):
                raise body
            req = parse_request(body, chat, [config.served_model_name])
        except APIError as exc:  # refused before it reached the engine
            worker.metrics.add("requests", label="invalid")
            return error(exc)
        job = Job(req, asyncio.get_running_loop(), time.monotonic() + config.timeout)
        try:
            worker.submit(job)
            first = await next_event(job, request)  # ("start", prompt tokens) once it runs
        except APIError as exc:
            return error(exc)
        if first is None:  # the client left while waiting
            return error(APIError(499, "client closed the request"))
        prompt_tokens = first[1]
        if req.stream:
            return StreamingResponse(sse(job, req, prompt_tokens, request),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        parts = []
        try:
            while (event := await next_event(job, request)) is not None:
                if event[0] == "text":
                    parts.append(event[1])
                elif event[0] == "done":
                    _, finish, completion_tokens, stats = event
                    return JSONResponse(response(req, "".join(parts), finish, prompt_tokens,
                                                 completion_tokens, stats))
        except APIError as exc:
            return error(exc)
        return error(APIError(499, "client closed the request"))

    async def next_event(job: Job, request: Request):
        """The job's next event; None if the client disconnected (the job is then cancelled);
        an ``error`` event is raised as its APIError."""
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return None
                continue
            if event[0] == "error":
                raise event[1]
            return event

    async def sse(job: Job, req, prompt_tokens: int, request: Request):
        def data(obj) -> str:
            return f"data: {json.dumps(obj)}\n\n"

        try:
            if req.chat:
                yield data(chunk(req, role=True))
            while (event := await next_event(job, request)) is not None:
                if event[0] == "text":
                    yield data(chunk(req, text=event[1]))
                elif event[0] == "done":
                    _, finish, completion_tokens, stats = event
                    yield data(chunk(req, finish_reason=finish,
                                     stats=None if req.include_usage else stats))
                    if req.include_usage:
                        yield data(chunk(req, usage_=usage(prompt_tokens, completion_tokens),
                                         stats=stats))
                    yield "data: [DONE]\n\n"
                    return
        except APIError as exc:  # e.g. the timeout, after the stream began
            yield data(exc.body())
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # a client that left mid-stream frees the engine at the next step

    async def chat_completions(request: Request):
        return await completions(request, chat=True)

    async def text_completions(request: Request):
        return await completions(request, chat=False)

    async def not_found(request: Request, exc):
        return error(APIError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    async def bad_method(request: Request, exc):
        return error(APIError(405, f"{request.method} is not allowed on {request.url.path}"))

    return Starlette(routes=[
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", text_completions, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ], exception_handlers={404: not_found, 405: bad_method})


def unauthorised() -> APIError:
    return APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                    type="authentication_error", code="invalid_api_key")


def serve(engine, config: ServeConfig = ServeConfig()) -> None:
    """Run the server until interrupted (blocking)."""
    import uvicorn

    app = create_app(EngineWorker(engine, max_queue=config.max_queue), config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
