"""A scripted stand-in for OpenAI's Responses API, for driving the real Codex CLI.

No OpenAI endpoint is reachable from these machines, so tests point the CLI (through the
gateway) at this server. It speaks what ``codex exec`` uses: ``POST /v1/responses`` streamed as
server-sent events (``response.created``, ``response.output_item.added`` / ``.done``,
``response.output_text.delta``, ``response.completed`` with ``usage``) or answered as one JSON
body, and ``GET /v1/models``; anything else is the API's 404. Every request is recorded (its
path, headers and body), so a test can check which key reached the API and that a later turn
carries the earlier one.

What the model "does" is scripted by the newest user message that holds a directive, one a
line:

- ``FAKE say <text>`` — answer with ``<text>``;
- ``FAKE shell <command>`` — call the shell tool Codex offered with ``<command>`` (several
  lines: one call after the other, each after the previous call's output), then answer with the
  last output;
- ``FAKE status <code>`` — fail the request with that HTTP status (401, 429, 500, …);
- ``FAKE stall`` — start the stream and never finish it;
- ``FAKE tokens <n>`` — report ``n`` input tokens per request (to make a run cost money);
- ``FAKE output <n>`` — report ``n`` output tokens (default 5).

A request whose input holds no directive (Codex's own side requests) gets a short neutral text.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

DIRECTIVE = re.compile(r"^\s*FAKE (say|shell|status|stall|tokens|output)\b ?(.*)$", re.MULTILINE)
MODEL = "gpt-5-codex"


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]

    def text(self) -> str:
        """Everything the request carries (instructions, input items, tool outputs), joined."""
        return json.dumps(self.body, ensure_ascii=False)


@dataclass(frozen=True)
class Answered:
    """The usage one complete answer reported (what a gateway that meters it must count)."""

    model: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int


@dataclass
class Script:
    says: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    status: int | None = None
    stall: bool = False
    tokens: int = 12
    output: int = 5


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [
        str(part.get("text", ""))
        for part in content
        if isinstance(part, dict) and part.get("type") in {"input_text", "output_text", "text"}
    ]


def _outputs(item: dict[str, Any]) -> str | None:
    if item.get("type") not in {"function_call_output", "custom_tool_call_output"}:
        return None
    output = item.get("output")
    if isinstance(output, str):
        return output
    if isinstance(output, dict):
        return str(output.get("content", ""))
    if isinstance(output, list):
        return "".join(_texts(output))
    return ""


def script_of(items: list[Any]) -> tuple[Script | None, list[str]]:
    """The directives of the newest user message holding one, and the tool outputs after it."""
    for index in range(len(items) - 1, -1, -1):
        item = items[index]
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        blocks = [t for t in _texts(item.get("content")) if DIRECTIVE.search(t)]
        if not blocks:
            continue
        script = Script()
        for match in DIRECTIVE.finditer(blocks[-1]):
            verb, argument = match.group(1), match.group(2).strip()
            if verb == "say":
                script.says.append(argument)
            elif verb == "shell":
                script.commands.append(argument)
            elif verb == "status":
                script.status = int(argument)
            elif verb == "stall":
                script.stall = True
            elif verb == "tokens":
                script.tokens = int(argument)
            elif verb == "output":
                script.output = int(argument)
        later = items[index + 1 :]
        outputs = [o for i in later if isinstance(i, dict) for o in [_outputs(i)] if o is not None]
        return script, outputs
    return None, []


def shell_tool(tools: Any) -> tuple[str, str]:
    """The shell tool Codex offered: its name and kind (``function`` takes JSON arguments)."""
    names: dict[str, str] = {}
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                names[tool["name"]] = str(tool.get("type", "function"))
    for name in ("exec_command", "shell_command", "shell", "local_shell"):
        if name in names:
            return name, names[name]
    return "shell", "function"


def shell_arguments(name: str, command: str) -> str:
    if name == "exec_command":
        return json.dumps({"cmd": command})
    if name == "shell_command":
        return json.dumps({"command": command})
    return json.dumps({"command": ["bash", "-lc", command]})


class FakeOpenAI:
    """The server, run on its own thread and loop so that synchronous tests can use it too."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[Recorded] = []
        self.calls: list[tuple[str, str]] = []
        self.answered: list[Answered] = []
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The API's base URL, as ``WM_OPENAI_BASE_URL`` names it."""
        return f"http://{self.host}:{self.port}/v1"

    def prompts_seen(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if script_of(r.body.get("input") or [])[0]]

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._serve, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake OpenAI API did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._note])
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._other)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    # --- handlers -------------------------------------------------------------------------
    @web.middleware
    async def _note(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        with self._lock:
            self.calls.append((request.method, request.raw_path))
        return await handler(request)

    async def _other(self, request: web.Request) -> web.Response:
        return _error(404, "invalid_request_error", f"Unknown path {request.path}")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "openai"}]}
        )

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "invalid_request_error", "body is not JSON")
        with self._lock:
            self.requests.append(Recorded(request.path, body, dict(request.headers)))
        items = body.get("input")
        script, outputs = script_of(items if isinstance(items, list) else [])
        script = script or Script(says=["ok"])
        if script.status is not None:
            return _error(script.status, _kind(script.status), f"fake status {script.status}")
        model = str(body.get("model") or MODEL)
        number = next(self._ids)
        if len(outputs) < len(script.commands):
            name, kind = shell_tool(body.get("tools"))
            command = script.commands[len(outputs)]
            item: dict[str, Any] = {
                "type": "function_call",
                "id": f"fc_{number}",
                "call_id": f"call_{number}",
                "name": name,
                "arguments": shell_arguments(name, command),
                "status": "completed",
            }
            if kind == "custom":
                item = {
                    "type": "custom_tool_call",
                    "id": f"ctc_{number}",
                    "call_id": f"call_{number}",
                    "name": name,
                    "input": command,
                    "status": "completed",
                }
            text = None
        else:
            text = " ".join(script.says) if script.says else (outputs[-1] if outputs else "ok")
            item = {
                "type": "message",
                "id": f"msg_{number}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        usage = {
            "input_tokens": script.tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": script.output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": script.tokens + script.output,
        }
        response: dict[str, Any] = {
            "id": f"resp_{number}",
            "object": "response",
            "created_at": 1_700_000_000,
            "model": model,
            "status": "in_progress",
            "output": [],
        }
        if not body.get("stream"):
            done = {**response, "status": "completed", "output": [item], "usage": usage}
            self._answer(model, usage)
            return web.json_response(done)
        stream = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await stream.prepare(request)
        sequence = itertools.count()

        async def send(data: dict[str, Any]) -> None:
            data = {**data, "sequence_number": next(sequence)}
            await stream.write(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())

        await send({"type": "response.created", "response": response})
        started = {**item, "status": "in_progress"}
        if item["type"] == "message":
            started["content"] = []
        await send({"type": "response.output_item.added", "output_index": 0, "item": started})
        if script.stall:
            await asyncio.Event().wait()
        if text is not None:
            await send(
                {
                    "type": "response.output_text.delta",
                    "item_id": item["id"],
                    "output_index": 0,
                    "content_index": 0,
                    "delta": text,
                }
            )
        await send({"type": "response.output_item.done", "output_index": 0, "item": item})
        completed = {**response, "status": "completed", "output": [item], "usage": usage}
        await send({"type": "response.completed", "response": completed})
        self._answer(model, usage)
        await stream.write_eof()
        return stream

    def _answer(self, model: str, usage: dict[str, Any]) -> None:
        with self._lock:
            self.answered.append(
                Answered(model, usage["input_tokens"], 0, usage["output_tokens"], 0)
            )


def _kind(status: int) -> str:
    return {
        401: "invalid_request_error",
        403: "invalid_request_error",
        429: "insufficient_quota",
    }.get(status, "server_error")


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": kind}}, status=status
    )


if __name__ == "__main__":  # a manual run: python -m tests.support.fake_openai [port]
    import contextlib
    import sys
    import time

    fake = FakeOpenAI(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(fake.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
