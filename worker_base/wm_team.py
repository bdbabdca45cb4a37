#!/usr/bin/env python3
"""wm-team: the agent's way to its team's board (SPEC §12), through its own wrapper.

Standalone on purpose (the standard library only, no import of ``worker_base``): the wrapper
installs a copy of this file on the agent's ``PATH`` (``worker_base.team``) and the agent runs it
as itself, with whatever Python the worker has. It speaks to the wrapper over the Unix socket
named by ``WM_TEAM_SOCKET``: one JSON request line, one JSON response line. It holds no
credential and names no sender: the wrapper writes every entry as this worker.

Exit codes: 0 done, 1 refused or failed (the reason on stderr), 2 usage.

``wm-team notices`` prints the notices the wrapper holds for the agent and takes them (they are
not put in front of the next prompt then). ``wm-team notices --hook [EVENT]`` is the same for an
agent's hook between tool calls (Claude Code's ``PostToolUse``, configured by the wrapper's
Claude driver): it prints the hook's JSON answer, ``{"hookSpecificOutput": {"hookEventName":
EVENT, "additionalContext": <the notices>}}``, or nothing when there is nothing new. A hook must
never get in the agent's way: it ignores what the agent's CLI sends on stdin (the tool's
input and output: nothing of it is repeated), and whatever fails (no team, no wrapper, a slow
answer) it prints nothing and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

TIMEOUT = 15.0
#: A hook's whole budget with the wrapper, which answers ``notices`` from memory.
HOOK_TIMEOUT = 3.0
HOOK_EVENT = "PostToolUse"
MAX_RESPONSE = 64 * 1024 * 1024
SUN_PATH_MAX = 107
STATUS_WORDS = ("working", "blocked", "done")


class Failure(Exception):
    """A refusal or an unreachable wrapper: exit 1 with this message."""


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:2] == ["notices", "--hook"] and len(args_in) <= 3:
        return hook(args_in[2] if len(args_in) == 3 else HOOK_EVENT)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "notices" and args.hook is not None:
        return hook(args.hook)
    path = os.environ.get("WM_TEAM_SOCKET", "")
    if not os.environ.get("WM_TEAM") or not path:
        print("wm-team: this worker is in no team", file=sys.stderr)
        return 1
    try:
        response = ask(path, _request(args))
    except Failure as exc:
        print(f"wm-team: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(response, ensure_ascii=False))
        return 0 if response.get("ok") else 1
    if not response.get("ok"):
        print(f"wm-team: {response.get('error') or 'refused'}", file=sys.stderr)
        return 1
    _show(args.command, response)
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the raw answer"
    )
    parser = argparse.ArgumentParser(
        prog="wm-team",
        parents=[common],
        description="Talk to your team's board (through this worker's wrapper).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    post = commands.add_parser("post", parents=[common], help="post a message to the team")
    post.add_argument("text", nargs="+", help="the message")
    status = commands.add_parser("status", parents=[common], help="set your status")
    status.add_argument("status", choices=STATUS_WORDS)
    status.add_argument("note", nargs="*", help="what you are doing or waiting for")
    read = commands.add_parser("read", parents=[common], help="show the board's entries")
    read.add_argument("--since", metavar="ID", help="only entries after this entry id")
    commands.add_parser("who", parents=[common], help="each teammate's status")
    notices = commands.add_parser(
        "notices", parents=[common], help="what the team said that you were not told yet"
    )
    notices.add_argument(
        "--hook",
        nargs="?",
        const=HOOK_EVENT,
        metavar="EVENT",
        help="answer as an agent's hook for EVENT (default PostToolUse): its JSON, or nothing",
    )
    parser.set_defaults(json=False)
    return parser


def _request(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "post":
        return {"op": "post", "text": " ".join(args.text)}
    if args.command == "status":
        return {"op": "status", "status": args.status, "note": " ".join(args.note)}
    if args.command == "read":
        return {"op": "read", "since": args.since}
    if args.command == "notices":
        return {"op": "notices"}
    return {"op": "who"}


@contextlib.contextmanager
def _address(path: str) -> Iterator[str]:
    # Unix socket paths are limited to 107 bytes; reach a longer one through its directory.
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def hook(event: str) -> int:
    """``wm-team notices --hook EVENT``: the notices as the hook's JSON on stdout, or nothing;
    always exit 0 (see the module's doc)."""
    path = os.environ.get("WM_TEAM_SOCKET", "")
    if not os.environ.get("WM_TEAM") or not path or not event.isalpha():
        return 0
    try:
        response = ask(path, {"op": "notices"}, HOOK_TIMEOUT)
    except Failure:
        return 0
    text = response.get("text") if response.get("ok") else None
    if not isinstance(text, str) or not text.strip():
        return 0
    answer = {"hookSpecificOutput": {"hookEventName": event, "additionalContext": text.strip()}}
    sys.stdout.write(json.dumps(answer, ensure_ascii=False) + "\n")
    return 0


def ask(path: str, request: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """One request to the wrapper, its answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            with _address(path) as address:
                sock.connect(address)
            sock.sendall(json.dumps(request).encode() + b"\n")
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if chunk.endswith(b"\n") or size > MAX_RESPONSE:
                    break
    except OSError as exc:
        raise Failure(f"the team board is not reachable (the wrapper's socket: {exc})") from exc
    try:
        response = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise Failure("the wrapper's answer was not understood") from exc
    if not isinstance(response, dict):
        raise Failure("the wrapper's answer was not understood")
    return response


def _show(command: str, response: dict[str, Any]) -> None:
    if command == "post":
        print(f"posted {response.get('id', '')}")
    elif command == "status":
        print(f"status set ({response.get('id', '')})")
    elif command == "read":
        entries = response.get("entries") or []
        for entry in entries:
            print(entry_line(entry))
        if not entries:
            print("(no entries)")
        elif response.get("more"):
            last = entries[-1].get("id", "")
            print(f"(more: wm-team read --since {last})")
    elif command == "notices":
        text = str(response.get("text") or "").strip()
        print(text or "(nothing new)")
    else:
        for member in response.get("members") or []:
            print(member_line(member))


def entry_line(entry: dict[str, Any]) -> str:
    """``<id> <timestamp> <sender> <kind>: <content> — <note>`` on one line."""
    content = " ".join(str(entry.get("content", "")).split())
    note = " ".join(str(entry.get("note", "")).split())
    text = f"{content} — {note}" if note else content
    return (
        f"{entry.get('id', '')} {entry.get('timestamp', '')} {entry.get('sender', '')} "
        f"{entry.get('kind', '')}: {text}"
    )


def member_line(member: dict[str, Any]) -> str:
    name = str(member.get("worker_id", ""))
    if member.get("self"):
        name += " (you)"
    status = str(member.get("status") or "no status")
    note = " ".join(str(member.get("note") or "").split())
    seen = member.get("last_activity") or "never"
    return f"{name}: {status}" + (f" — {note}" if note else "") + f" (last activity {seen})"


if __name__ == "__main__":
    sys.exit(main())
