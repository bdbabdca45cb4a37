"""``WM_HTTP_ADDR`` as operators write it."""

from __future__ import annotations

import pytest

from worker_manager.core.hostport import parse_host_port
from worker_manager.settings import Settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
    ],
)
def test_http_addr_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected
    assert Settings(_env_file=None, http_addr=text).http_addr == text  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "text", ["8080", ":8080", "::1:8080", "[::1]8080", "[zz]:1", "h:99999", "h:x", "h:-1"]
)
def test_http_addr_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_host_port(text)
    with pytest.raises(ValueError, match="http_addr"):
        Settings(_env_file=None, http_addr=text)  # type: ignore[call-arg]
