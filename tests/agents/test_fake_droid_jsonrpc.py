"""The fake droid's stream-jsonrpc mode speaks exactly Factory's published protocol.

Every line the fake prints, and every request this test sends it, is validated against the
pydantic models of Factory's ``droid-sdk`` (a dev dependency, never shipped in images). The
FACTORY driver still speaks stream-json; this keeps the fake ready for the move the comparison
in docs/agents.md describes, and catches drift when the SDK's schemas change.
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
    InitializeSessionRequestParams,
    InitializeSessionResult,
    JsonRpcRequest,
    JsonRpcResponseFailure,
    JsonRpcResponseSuccess,
    LoadSessionRequestParams,
    LoadSessionResult,
    SessionNotification,
)
from droid_sdk.schemas.constants import FACTORY_PROTOCOL_VERSION
from pydantic import BaseModel

from tests.agents.helpers import FAKES

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
