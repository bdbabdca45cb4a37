"""The fake droid's stream-jsonrpc mode speaks exactly Factory's published protocol.

Every line the fake prints, and every request this test sends it, is validated against the
pydantic models of Factory's ``droid-sdk`` (a dev dependency, never shipped in images), and so
is every line the FACTORY driver writes (its requests and its answers to droid's requests),
which the wrapper cannot check at run time (it speaks the protocol with the standard library).
This catches drift on either side when the SDK's schemas change.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from droid_sdk.schemas import (
    AddUserMessageRequestParams,
    AddUserMessageResult,
    AskUserRequest,
    AskUserResult,
    InitializeSessionRequestParams,
    InitializeSessionResult,
    JsonRpcRequest,
    JsonRpcResponseFailure,
    JsonRpcResponseSuccess,
    LoadSessionRequestParams,
    LoadSessionResult,
    RequestPermissionRequest,
    RequestPermissionResult,
    SessionNotification,
)
from droid_sdk.schemas.constants import FACTORY_PROTOCOL_VERSION
from pydantic import BaseModel

from tests.agents.helpers import FAKES, FakeConfig
from worker_base.agents import droid_rpc
from worker_base.agents.base import Event
from worker_base.agents.factory import FactoryDriver

ARGV = [
    str(FAKES / "droid"),
    "exec",
    "--input-format",
    "stream-jsonrpc",
    "--output-format",
    "stream-jsonrpc",
]
PARAMS: dict[str, type[BaseModel]] = {
    "droid.initialize_session": InitializeSessionRequestParams,
    "droid.load_session": LoadSessionRequestParams,
    "droid.add_user_message": AddUserMessageRequestParams,
}
RESULTS: dict[str, type[BaseModel]] = {
    "droid.initialize_session": InitializeSessionResult,
    "droid.load_session": LoadSessionResult,
    "droid.add_user_message": AddUserMessageResult,
}


def request(method: str, params: dict[str, Any]) -> dict[str, Any]:
    envelope = {
        "jsonrpc": "2.0",
        "factoryApiVersion": "1.0.0",
        "factoryProtocolVersion": FACTORY_PROTOCOL_VERSION,
        "type": "request",
        "id": str(uuid.uuid4()),
        "method": method,
        "params": params,
    }
    exact(JsonRpcRequest, envelope)
    exact(PARAMS[method], params)
    return envelope


def exact(model: type[BaseModel], obj: dict[str, Any]) -> Any:
    """``obj`` as ``model``, and nothing else: every key is the schema's own spelling (the models
    also accept snake_case names and unknown keys, which the real droid would not send)."""
    value = model.model_validate(obj)
    assert value.model_dump(mode="json", by_alias=True, exclude_unset=True) == obj
    assert_no_extras(value)
    return value


def assert_no_extras(value: object) -> None:
    if isinstance(value, BaseModel):
        assert not value.model_extra, f"{type(value).__name__}: unknown keys {value.model_extra}"
        for name in type(value).model_fields:
            assert_no_extras(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            assert_no_extras(item)
    elif hasattr(value, "root"):
        assert_no_extras(value.root)


def converse(home: Path, *requests: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Runs the fake on ``requests``; returns (responses, notifications), each validated."""
    stdin = "".join(json.dumps(r) + "\n" for r in requests)
    done = subprocess.run(
        ARGV, input=stdin, capture_output=True, text=True, timeout=60, env=env(home), check=False
    )
    assert done.returncode == 0, done.stderr
    methods = {r["id"]: r["method"] for r in requests}
    responses: list[Any] = []
    notifications: list[Any] = []
    for line in done.stdout.splitlines():
        obj = json.loads(line)
        if obj["type"] == "notification":
            notifications.append(exact(SessionNotification, obj).params.notification)
        elif "error" in obj:
            responses.append(exact(JsonRpcResponseFailure, obj))
        else:
            exact(RESULTS[methods[obj["id"]]], obj["result"])
            responses.append(exact(JsonRpcResponseSuccess, obj))
    return responses, notifications


def env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin"}


def test_a_session_across_two_processes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = request("droid.initialize_session", {"machineId": "m", "cwd": str(tmp_path)})
    first = request("droid.add_user_message", {"text": "RUN: echo hello-jsonrpc"})
    responses, notes = converse(home, init, first)
    assert [r.id for r in responses] == [init["id"], first["id"]]
    session_id = responses[0].result["sessionId"]
    types = [n.type.value for n in notes]
    assert types == [
        "create_message",
        "create_message",
        "tool_call",
        "tool_result",
        "create_message",
        "agent_turn_completed",
    ]
    assert "hello-jsonrpc" in notes[3].content
    assert notes[3].is_error is False
    assert notes[-1].reason.value == "completed"

    load = request("droid.load_session", {"sessionId": session_id})
    second = request("droid.add_user_message", {"text": "again"})
    responses, notes = converse(home, load, second)
    assert all(isinstance(r, JsonRpcResponseSuccess) for r in responses)
    assert "turn 2 of session " + session_id in notes[1].message.content[0].text
    assert notes[-1].cumulative_token_usage.input_tokens == 200


def test_unknown_session_and_failures(tmp_path: Path) -> None:
    home = tmp_path / "home"
    load = request("droid.load_session", {"sessionId": "gone"})
    responses, notes = converse(home, load)
    assert isinstance(responses[0], JsonRpcResponseFailure)
    assert responses[0].error.code == -32004
    assert notes == []

    init = request("droid.initialize_session", {"machineId": "m", "cwd": str(tmp_path)})
    fail = request("droid.add_user_message", {"text": "FAIL now"})
    _, notes = converse(home, init, fail)
    assert [n.type.value for n in notes] == ["create_message", "error", "agent_turn_completed"]
    assert notes[-1].reason.value == "error"


DROID_REQUESTS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "droid.request_permission": (RequestPermissionRequest, RequestPermissionResult),
    "droid.ask_user": (AskUserRequest, AskUserResult),
}


class Conversation:
    """The FACTORY driver against the fake, every line both ways checked against the SDK."""

    def __init__(self, tmp_path: Path, allowed: list[str] | None = None) -> None:
        (tmp_path / "work").mkdir(exist_ok=True)
        self.config = FakeConfig(tmp_path / "state", tmp_path / "work", allowed_commands=allowed)
        self.home = tmp_path / "home"
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._methods: dict[str, str] = {}
        self._asked: dict[str, str] = {}

    @property
    def closed(self) -> bool:
        return self._proc is None or self._proc.stdin is None or self._proc.stdin.closed

    def send(self, line: str) -> None:
        obj = json.loads(line)
        if obj["type"] == "request":
            exact(JsonRpcRequest, obj)
            exact(PARAMS[obj["method"]], obj["params"])
            self._methods[obj["id"]] = obj["method"]
        elif "error" in obj:
            exact(JsonRpcResponseFailure, obj)
        else:
            exact(JsonRpcResponseSuccess, obj)
            exact(DROID_REQUESTS[self._asked[obj["id"]]][1], obj["result"])
        self.sent.append(obj)
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def close(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()

    def run(self, prompt: str) -> tuple[int, list[Event]]:
        driver = FactoryDriver(self.config, executable=str(FAKES / "droid"), home=self.home)
        invocation = driver.invocation(prompt)
        self._proc = subprocess.Popen(
            invocation.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env(self.home),
            cwd=self.config.workdir,
        )
        driver.converse(self)
        events: list[Event] = []
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.check(json.loads(line))
            events += driver.on_stdout(line.rstrip("\n"))
        code = self._proc.wait(timeout=60)
        return code, events + driver.on_exit(code)

    def check(self, obj: dict[str, Any]) -> None:
        self.received.append(obj)
        if obj["type"] == "notification":
            exact(SessionNotification, obj)
        elif obj["type"] == "request":
            exact(DROID_REQUESTS[obj["method"]][0], obj)
            self._asked[obj["id"]] = obj["method"]
        elif "error" in obj:
            exact(JsonRpcResponseFailure, obj)
        else:
            exact(JsonRpcResponseSuccess, obj)
            exact(RESULTS[self._methods[obj["id"]]], obj["result"])


def test_the_drivers_lines_are_the_sdks(tmp_path: Path) -> None:
    talk = Conversation(tmp_path, allowed=["echo"])
    code, events = talk.run("PERMIT: echo allowed-by-list\nASK: Proceed?")
    assert code == 0
    assert [obj["method"] for obj in talk.sent if obj["type"] == "request"] == [
        "droid.initialize_session",
        "droid.add_user_message",
    ]
    answers = [obj["result"] for obj in talk.sent if obj["type"] == "response"]
    assert answers == [{"cancelled": True, "answers": []}, {"selectedOption": "proceed_once"}]
    assert [e.type for e in events].count("error") == 1  # the question nobody could answer

    code, events = talk.run("PERMIT: touch nope")  # load_session, then a refused command
    assert code == 0
    assert [obj["method"] for obj in talk.sent if obj["type"] == "request"][2] == (
        "droid.load_session"
    )
    assert talk.sent[-1]["result"] == {"selectedOption": "cancel"}
    resolved = [
        obj["params"]["notification"]
        for obj in talk.received
        if obj["type"] == "notification"
        and obj["params"]["notification"]["type"] == "permission_resolved"
    ]
    assert [n["selectedOption"] for n in resolved] == ["proceed_once", "cancel"]
    assert "refused: `touch nope`" in next(e.content for e in events if e.type == "error")


def test_the_drivers_refusal_of_an_unknown_request_is_the_sdks() -> None:
    line = droid_rpc.error_response("r-1", droid_rpc.METHOD_NOT_FOUND, "Method not found: x")
    exact(JsonRpcResponseFailure, json.loads(line))
