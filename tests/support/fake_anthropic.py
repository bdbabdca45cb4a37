"""A scripted stand-in for the Anthropic Messages API, for driving the real Claude Code CLI.

No real endpoint is reachable from these machines, so the tests point ``ANTHROPIC_BASE_URL`` at
this server. It speaks what the CLI uses: ``POST /v1/messages`` (``?beta=true``), streamed as
server-sent events (``message_start``, ``content_block_start``/``_delta``/``_stop``,
``message_delta``, ``message_stop``) or as one JSON body, ``count_tokens`` and the model list;
anything else is the API's 404. Every call is noted in :attr:`FakeAnthropic.calls`.

What the model "does" is scripted by the prompt itself, one directive per line, so a test reads
as what it asks for:

- ``FAKE say <text>`` — answer with ``<text>``;
- ``FAKE bash <command>`` — call the Bash tool with ``<command>`` (several lines: one call after
  the other, each after the previous tool result), then answer with the last tool result;
- ``FAKE status <code>`` — fail the request with that HTTP status (401, 500, …);
- ``FAKE stall`` — start the stream and never finish it;
- ``FAKE tokens <n>`` — report ``n`` input tokens per request, to make a run cost money;
- ``FAKE output <n>`` — report ``n`` output tokens in the answer's final count (default 5);
- ``FAKE searches <n>`` — report ``n`` web searches (``usage.server_tool_use``) in the final
  count, as an answer that used the API's server tools would;
- ``FAKE size <n> [at-once]`` — answer with ``n`` bytes of text, streamed as many small text
  deltas, several events a write, each batch encoded just before it is written (as an API
  produces as it goes), or with ``at-once`` all encoded before the first byte (the stream then
  goes at the speed of the socket), for throughput measurements;
- ``FAKE gate <name>`` — stream the answer up to its ``message_delta``, then wait until the test
  calls :meth:`FakeAnthropic.open_gate` with ``name`` (to see what arrives before the end); with
  ``FAKE size``, wait after the first write instead (most of the text is still to come).

A request whose conversation holds no directive (the CLI's own side requests, e.g. a title or a
command-prefix check) is answered with a short neutral text. Every request is recorded, so a test
can check what the CLI sent (e.g. that a resumed session carries the earlier turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

DIRECTIVE = re.compile(
    r"^\s*FAKE (say|bash|status|stall|tokens|output|searches|size|gate)\b ?(.*)$", re.MULTILINE
)
MODEL = "claude-sonnet-4-5-20250929"
_MODEL_INFO = {
    "type": "model",
    "id": MODEL,
    "display_name": "Claude Sonnet 4.5",
    "created_at": "2025-09-29T00:00:00Z",
}


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    #: The body's bytes as they arrived.
    raw: bytes = b""

    def text(self) -> str:
        """Every text the request carries (system prompt, messages, tool results), joined."""
        return json.dumps(self.body, ensure_ascii=False)


@dataclass(frozen=True)
class Answered:
    """The usage one complete answer reported (what a gateway that meters it must count)."""

    model: str
    input_tokens: int
    output_tokens: int


@dataclass
class Script:
    says: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    status: int | None = None
    stall: bool = False
    tokens: int = 12
    output: int = 5
    searches: int = 0
    size: int | None = None
    at_once: bool = False
    gate: str | None = None


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    texts = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            texts.append(str(block.get("text", "")))
    return texts


def _tool_results(content: Any) -> list[str]:
    results: list[str] = []
    if not isinstance(content, list):
        return results
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                results.append("".join(_texts(inner)))
            else:
                results.append(str(inner or ""))
    return results


def script_of(messages: list[dict[str, Any]]) -> tuple[Script | None, int, str]:
    """The directives of the newest prompt, how many tool results followed it, the last one."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") != "user":
            continue
        # The newest prompt only: after failed turns the CLI sends consecutive prompts merged
        # into one user message, each its own text block.
        blocks = [t for t in _texts(message.get("content")) if DIRECTIVE.search(t)]
        if not blocks:
            continue
        found = list(DIRECTIVE.finditer(blocks[-1]))
        script = Script()
        for verb, argument in ((m.group(1), m.group(2).strip()) for m in found):
            if verb == "say":
                script.says.append(argument)
            elif verb == "bash":
                script.commands.append(argument)
            elif verb == "status":
                script.status = int(argument)
            elif verb == "stall":
                script.stall = True
            elif verb == "tokens":
                script.tokens = int(argument)
            elif verb == "output":
                script.output = int(argument)
            elif verb == "searches":
                script.searches = int(argument)
            elif verb == "size":
                count, _, mode = argument.partition(" ")
                script.size = int(count)
                script.at_once = mode.strip() == "at-once"
            elif verb == "gate":
                script.gate = argument
        later = messages[index + 1 :]
        results = [r for m in later if m.get("role") == "user" for r in _tool_results(m["content"])]
        return script, len(results), results[-1] if results else ""
    return None, 0, ""


class FakeAnthropic:
    """The server, run on its own thread and loop so that synchronous tests can use it too."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[Recorded] = []
        #: Every request that reached the fake, as ``(method, path with query)``, in order.
        self.calls: list[tuple[str, str]] = []
        #: One per answer that reached its end (``message_stop`` or a whole JSON body).
        self.answered: list[Answered] = []
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._gates: dict[str, asyncio.Event] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def prompts_seen(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if script_of(r.body.get("messages", []))[0]]

    def open_gate(self, name: str) -> None:
        """Let the streams waiting at ``FAKE gate <name>`` (now or later) finish."""
        assert self._loop is not None, "the fake is not running"
        self._loop.call_soon_threadsafe(lambda: self._gate(name).set())

    def _gate(self, name: str) -> asyncio.Event:
        """Only on the fake's own loop, so that no lock is needed."""
        return self._gates.setdefault(name, asyncio.Event())

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> FakeAnthropic:
        self._thread = threading.Thread(target=self._serve, name="fake-anthropic", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake Anthropic API did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._note])
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model_id}", self._model)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._ready.set()
        await self._stop.wait()
        await self._runner.cleanup()

    # --- handlers -------------------------------------------------------------------------
    @web.middleware
    async def _note(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        with self._lock:
            self.calls.append((request.method, request.raw_path))
        return await handler(request)

    async def _other(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"type": "error", "error": {"type": "not_found_error"}}, status=404
        )

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"data": [_MODEL_INFO], "has_more": False, "first_id": MODEL, "last_id": MODEL}
        )

    async def _model(self, request: web.Request) -> web.Response:
        if request.match_info["model_id"] != MODEL:
            return await self._other(request)
        return web.json_response(_MODEL_INFO)

    async def _count_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"input_tokens": 12})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self.requests.append(Recorded(request.path_qs, body, headers, raw))
        messages = body.get("messages") or []
        script, step, last_result = script_of(messages)
        tokens = script.tokens if script else 12
        output = script.output if script else 5
        final: dict[str, Any] = {"output_tokens": output}
        if script is not None and script.searches:
            final["server_tool_use"] = {"web_search_requests": script.searches}
        if script is not None and script.status is not None:
            kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
                script.status, "api_error"
            )
            return web.json_response(
                {"type": "error", "error": {"type": kind, "message": f"fake {script.status}"}},
                status=script.status,
            )
        blocks: list[dict[str, Any]]
        if script is None:
            blocks = [{"type": "text", "text": "ok"}]
        elif step < len(script.commands):
            blocks = [
                {"type": "text", "text": f"Running `{script.commands[step]}`."},
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{next(self._ids):06d}",
                    "name": "Bash",
                    "input": {"command": script.commands[step], "description": "scripted"},
                },
            ]
        elif script.size is not None:
            blocks = [{"type": "text", "text": _filler(script.size)}]
        else:
            text = " ".join(script.says) if script.says else f"last result: {last_result}"
            blocks = [{"type": "text", "text": text}]
        stop_reason = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
        message: dict[str, Any] = {
            "id": f"msg_fake{next(self._ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model") or MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": tokens, "output_tokens": 1},
        }
        answered = Answered(str(message["model"]), tokens, output)
        if not body.get("stream"):
            message.update(content=blocks, stop_reason=stop_reason)
            message["usage"] = {"input_tokens": tokens, **final}
            with self._lock:
                self.answered.append(answered)
            return web.json_response(message)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        events: Iterable[bytes]
        if script is not None and script.size is not None:
            events = _events(message, blocks, stop_reason, SIZE_DELTA, final)
            for n, write in enumerate(_batches(list(events) if script.at_once else events)):
                if n == 1 and script.gate is not None:
                    await self._gate(script.gate).wait()
                await response.write(write)
        else:
            events = list(_events(message, blocks, stop_reason, None, final))
            if script is not None and script.gate is not None:
                for event in events[:-1]:
                    await response.write(event)
                await self._gate(script.gate).wait()
                events = events[-1:]
            for event in events:
                await response.write(event)
        if script is not None and script.stall:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await asyncio.sleep(3600)
            return response
        await response.write(_sse("message_stop", {"type": "message_stop"}))
        await response.write_eof()
        with self._lock:
            self.answered.append(answered)
        return response


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


#: ``FAKE size``: the text of one delta (about what the API sends a delta) and of one write.
SIZE_DELTA = 96
SIZE_WRITE = 64 * 1024


def _filler(size: int) -> str:
    line = "All work and no play makes Jack a dull boy. "
    return (line * (size // len(line) + 1))[:size]


def _batches(events: Iterable[bytes]) -> Iterator[bytes]:
    """Events joined up to ``SIZE_WRITE`` bytes a write: one write per event would make the
    fake, not what is measured against it, the bottleneck of a large answer."""
    batch: list[bytes] = []
    size = 0
    for event in events:
        batch.append(event)
        size += len(event)
        if size >= SIZE_WRITE:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def _events(
    message: dict[str, Any],
    blocks: list[dict[str, Any]],
    stop_reason: str,
    step: int | None,
    final: dict[str, Any] | None = None,
) -> Iterator[bytes]:
    """The stream of one answer; ``step``: split each text into deltas of that many chars;
    ``final``: the usage its ``message_delta`` reports (5 output tokens unless given)."""
    yield _sse("message_start", {"type": "message_start", "message": message})
    for index, block in enumerate(blocks):
        start: dict[str, Any]
        deltas: list[dict[str, Any]]
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            text = block["text"]
            parts = [text[i : i + step] for i in range(0, len(text), step)] if step else [text]
            deltas = [{"type": "text_delta", "text": part} for part in parts or [""]]
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block["input"])}]
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
        for delta in deltas:
            yield _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": final or {"output_tokens": 5},
        },
    )


if __name__ == "__main__":  # a manual run: python -m tests.support.fake_anthropic [port]
    import sys
    import time

    fake = FakeAnthropic(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(fake.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
