"""`koala serve` as a real server on 127.0.0.1, driven by the official `openai` client.

Most tests serve a tiny random model (fast); one serves the real default model. Every request goes
to this machine's loopback address only, and every loop is bounded.
"""

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from conftest import tiny_model, tiny_tokenizer  # noqa: E402

PROMPTS = ["t5 t6 t7 t5 t6", "t9 t10 t11 t9 t10 t11", "t20 t21 t22", "t30 t31 t30 t31 t30"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`koala serve ARGS` in a subprocess, stopped when the fixture ends."""

    def __init__(self, *args: str, timeout: float = 120) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "koala_core.cli", "serve", "--port",
                                      str(self.port), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"koala serve exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("koala serve did not come up")

    def client(self, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"),
                             max_retries=0, timeout=60, **kw)

    def post(self, path: str, body, **kw):
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return httpx.post(self.url + path, content=data, timeout=60, **kw)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(tiny_folder):
    srv = Server("--model", str(tiny_folder), "--head", "lookup", "--max-queue", "8")
    yield srv
    srv.stop()


def chat(client, prompt, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 24)
    return client.chat.completions.create(model="koala", messages=[{"role": "user", "content": prompt}],
                                          **kw)


def generate_cli(model, prompt, *extra):
    """What `koala generate --json` answers for the same prompt and head."""
    from click.testing import CliRunner

    from koala_core.cli import main

    result = CliRunner().invoke(main, ["generate", "--model", str(model), "--json", *extra, prompt])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list().data] == ["koala"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_chat_equals_koala_generate_streaming_or_not(server, tiny_folder):
    client = server.client()
    for prompt in PROMPTS[:2]:
        want = generate_cli(tiny_folder, prompt, "--head", "lookup", "--max-new-tokens", "24")
        got = chat(client, prompt)
        assert got.choices[0].message.content == want["text"]
        assert got.choices[0].finish_reason == "length"
        assert got.usage.completion_tokens == 24 and got.usage.prompt_tokens > 0
        assert got.usage.total_tokens == got.usage.prompt_tokens + 24
        assert got.model_extra["koala"]["tau"] > 1.0  # lookup drafts were accepted
        stream = chat(client, prompt, stream=True, stream_options={"include_usage": True})
        deltas, finish, usage = [], None, None
        for event in stream:
            if event.usage is not None:
                usage = event.usage
            for choice in event.choices:
                deltas.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        assert "".join(deltas) == want["text"] and finish == "length"
        assert usage.completion_tokens == 24


def test_completions_raw_prompt(server, tiny_folder):
    client = server.client()
    want = generate_cli(tiny_folder, PROMPTS[2], "--head", "lookup", "--raw", "--max-new-tokens", "16")
    got = client.completions.create(model="koala", prompt=PROMPTS[2], max_tokens=16, temperature=0)
    assert got.choices[0].text == want["text"] and got.object == "text_completion"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="koala", prompt=PROMPTS[2], max_tokens=16, temperature=0, stream=True) if c.choices)
    assert streamed == want["text"]


def test_stop_sequences(server):
    client = server.client()
    full = chat(client, PROMPTS[1], max_tokens=40).choices[0].message.content
    words = full.split(" ")
    stop = " ".join(words[3:5])  # a string from the middle of the answer
    got = chat(client, PROMPTS[1], max_tokens=40, stop=[stop, "never-there"])
    assert got.choices[0].finish_reason == "stop"
    assert got.choices[0].message.content == full[: full.index(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(
        client, PROMPTS[1], max_tokens=40, stop=stop, stream=True) if c.choices)
    assert streamed == full[: full.index(stop)]


def test_seed_reproduces_sampling(server):
    client = server.client()
    a = chat(client, PROMPTS[0], temperature=0.9, seed=7, max_tokens=20).choices[0].message.content
    b = chat(client, PROMPTS[0], temperature=0.9, seed=7, max_tokens=20).choices[0].message.content
    assert a == b


def test_concurrent_requests_are_each_answered_as_alone(server):
    client = server.client()
    alone = {p: chat(client, p).choices[0].message.content for p in PROMPTS}
    got: dict[str, str] = {}

    def ask(p):
        got[p] = chat(server.client(), p).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == alone


def test_a_client_leaving_mid_stream_frees_the_engine(server):
    before = metric(server, 'koala_requests_total{outcome="cancelled"}')
    body = {"model": "koala", "messages": [{"role": "user", "content": PROMPTS[0]}], "stream": True,
            "max_tokens": 200, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # one event, then hang up
    got = chat(server.client(), PROMPTS[2], max_tokens=8)  # the engine is free again
    assert got.usage.completion_tokens == 8
    deadline = time.monotonic() + 10
    while metric(server, 'koala_requests_total{outcome="cancelled"}') == before:
        assert time.monotonic() < deadline, "the abandoned stream was not cancelled"
        time.sleep(0.1)


def metric(server, name) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_the_speculation(server):
    chat(server.client(), PROMPTS[0])
    assert metric(server, "koala_accepted_tokens_total") > 0
    assert metric(server, "koala_drafted_tokens_total") >= metric(server, "koala_accepted_tokens_total")
    assert metric(server, 'koala_accepted_depth_total{depth="1"}') > 0
    assert metric(server, 'koala_requests_total{outcome="ok"}') > 0


BAD = [
    ("/v1/chat/completions", "{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", {"model": "koala"}, 400, "'messages' is required"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
     404, "does not exist"),
    ("/v1/chat/completions", {"model": "koala", "messages": [{"role": "user",
                                                              "content": "t5 " * 400}]},
     400, "context"),
    ("/v1/chat/completions", {"model": "koala", "n": 2, "messages": [{"role": "user", "content": "hi"}]},
     400, "n = 1"),
    ("/v1/chat/completions", {"model": "koala", "max_tokens": -1,
                              "messages": [{"role": "user", "content": "hi"}]}, 400, "max_tokens"),
    ("/v1/chat/completions", {"model": "koala", "temperature": "hot",
                              "messages": [{"role": "user", "content": "hi"}]}, 400, "temperature"),
    ("/v1/chat/completions", {"model": "koala", "messages": [{"role": "user", "content": ""}]},
     400, "empty"),
    ("/v1/completions", {"model": "koala"}, 400, "'prompt' is required"),
    ("/v1/nothing", {}, 404, "no route"),
]


@pytest.mark.parametrize("path,body,status,needle", BAD)
def test_bad_requests_get_openai_errors_and_the_server_stays_up(server, path, body, status, needle):
    r = server.post(path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["type"]
    assert chat(server.client(), PROMPTS[2], max_tokens=4).usage.completion_tokens == 4


def test_the_openai_client_sees_bad_requests_as_its_own_errors(server):
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="nope", messages=[{"role": "user",
                                                                         "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="n = 1"):
        chat(server.client(), "hi", n=2)


def test_api_key(tiny_folder):
    srv = Server("--model", str(tiny_folder), "--head", "none", "--api-key", "s3cret")
    try:
        with pytest.raises(openai.AuthenticationError):
            chat(srv.client(api_key="wrong"), PROMPTS[0], max_tokens=4)
        assert chat(srv.client(api_key="s3cret"), PROMPTS[0], max_tokens=4).usage.completion_tokens == 4
        assert httpx.get(srv.url + "/v1/models").status_code == 401
    finally:
        srv.stop()


@pytest.mark.slow
def test_the_real_model_serves_what_koala_generate_says():
    # a fixed tree: the default head's `auto` sizes trees from measured times, so its tau (not its
    # text) may differ between two runs
    tree = ("--tree", "static", "--tree-option", "preset=tiny", "--tree-option", "copy=3")
    srv = Server(*tree, timeout=300)
    try:
        prompt = "Name three rivers in Europe."
        want = generate_cli("default", prompt, "--max-new-tokens", "40", *tree)
        got = chat(srv.client(), prompt, max_tokens=40)
        assert got.choices[0].message.content == want["text"]
        assert got.model_extra["koala"]["tau"] == pytest.approx(want["tau"], abs=1e-3)
    finally:
        srv.stop()


def test_worker_queue_limit_and_timeout():
    """In-process: a full queue answers 429; a request past its deadline answers 504."""
    import asyncio

    from koala_core.openai_api import APIError, CompletionRequest
    from koala_core.worker import EngineWorker, Job

    release = threading.Event()

    class SlowEngine:  # holds the worker on its first job until released
        class target:
            max_length = 64
            eos_token_ids = frozenset()
            tokenizer = tiny_tokenizer()

        def verifier_for(self, sampling):
            return None

        def stream(self, ids, config):
            release.wait(10)
            yield from ()

    async def scenario():
        loop = asyncio.get_running_loop()
        worker = EngineWorker(SlowEngine(), max_queue=1)
        worker._encode = lambda req: [1, 2, 3]
        req = CompletionRequest(chat=False, model="koala", prompt="x", max_tokens=4)
        running = Job(req, loop, time.monotonic() + 60)
        worker.submit(running)
        assert (await running.events.get())[0] == "start"
        late = Job(req, loop, time.monotonic() - 1)  # already past its deadline
        worker.submit(late)
        with pytest.raises(APIError) as full:
            worker.submit(Job(req, loop, time.monotonic() + 60))
        assert full.value.status == 429
        release.set()
        assert (await running.events.get())[0] == "done"
        kind, err = await late.events.get()
        assert kind == "error" and err.status == 504
        assert worker.metrics.value("requests", "rejected") == 1

    asyncio.run(scenario())


def test_serve_is_documented():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "koala serve" in readme and "curl" in readme and "from openai import OpenAI" in readme
