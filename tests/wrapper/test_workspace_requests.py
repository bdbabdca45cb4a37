"""``worker_base.workspace_requests``: entries in, events and ``done`` codes out (SPEC §8),
without Redis or a wrapper loop (the loop's part is in ``test_wrapper.py``)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from worker_base.config import WrapperConfig
from worker_base.events import INVALID_INPUT, WRAPPER_FAILED
from worker_base.inputs import parse_entry
from worker_base.runner import AgentRun
from worker_base.workspace import Workspace
from worker_base.workspace_requests import WorkspaceRequests

Emitted = list[tuple[str, str, str]]


def requests_in(tmp_path: Path) -> tuple[WorkspaceRequests, Emitted]:
    config = WrapperConfig(
        worker_id="w1",
        redis_url="redis://localhost:1/0",
        agent_command=("cat",),
        workdir=tmp_path,
        workspace_max_bytes=1024,
    )
    emitted: Emitted = []
    redis = cast(Redis, None)  # never reached: the workspace is no repository
    return WorkspaceRequests(config, redis, lambda *event: emitted.append(event)), emitted


async def test_read_list_and_write_answer_with_one_event_each(tmp_path: Path) -> None:
    requests, emitted = requests_in(tmp_path)
    content = base64.b64encode(b"hello").decode()
    assert requests.write(parse_entry("1-0", {"type": "write", "path": "a/b.txt",
                                              "content": content})) == 0  # fmt: skip
    assert await requests.answer(parse_entry("2-0", {"type": "read", "path": "a/b.txt"})) == 0
    assert await requests.answer(parse_entry("3-0", {"type": "list", "path": "a"})) == 0
    kinds = [(kind, input_id) for kind, _content, input_id in emitted]
    assert kinds == [("file", "1-0"), ("file", "2-0"), ("listing", "3-0")]
    assert base64.b64decode(json.loads(emitted[1][1])["content"]) == b"hello"
    # Not a repository: no summary, and nothing published.
    await requests.publish_summary("3-0")
    assert len(emitted) == 3 and requests.summary_digest == ""


async def test_refusals_and_bugs_cost_one_answer(tmp_path: Path) -> None:
    requests, emitted = requests_in(tmp_path)
    assert await requests.answer(parse_entry("1-0", {"type": "read", "path": "../x"})) == (
        INVALID_INPUT
    )
    assert requests.exec_run(parse_entry("2-0", {"type": "exec", "argv": "[]"}), _sink) == (
        INVALID_INPUT
    )

    def broken(_relative: str = ".") -> Any:
        raise RuntimeError("boom")

    requests.workspace = cast(Workspace, _Broken(requests.workspace, broken))
    assert await requests.answer(parse_entry("3-0", {"type": "list"})) == WRAPPER_FAILED
    assert [(kind, input_id) for kind, _c, input_id in emitted] == [
        ("error", "1-0"),
        ("error", "2-0"),
        ("error", "3-0"),
    ]
    assert "'..' is refused" in emitted[0][1] and "the wrapper failed (boom)" in emitted[2][1]


@pytest.mark.parametrize("timeout", ["", "2.5"])
def test_an_exec_is_a_run_of_its_own_under_its_own_timeout(tmp_path: Path, timeout: str) -> None:
    requests, emitted = requests_in(tmp_path)
    entry = parse_entry(
        "1-0", {"type": "exec", "argv": json.dumps(["true"]), "timeout_seconds": timeout}
    )
    run = requests.exec_run(entry, _sink)
    assert isinstance(run, AgentRun) and emitted == []
    assert run._config.input_timeout == (float(timeout) if timeout else None)


async def _sink(_events: Any) -> None:
    return None


class _Broken:
    def __init__(self, workspace: Any, listing: Any) -> None:
        self._workspace = workspace
        self.listing = listing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._workspace, name)
