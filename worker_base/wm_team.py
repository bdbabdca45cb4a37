#!/usr/bin/env python3
"""wm-team: the agent's way to its team's board (SPEC §12), through its own wrapper.

Standalone on purpose (the standard library only, no import of ``worker_base``): the wrapper
installs a copy of this file on the agent's ``PATH`` (``worker_base.team``) and the agent runs it
as itself, with whatever Python the worker has. It speaks to the wrapper over the Unix socket
named by ``WM_TEAM_SOCKET``: one JSON request line, one JSON response line. It holds no
credential and names no sender: the wrapper writes every entry as this worker.

It starts in a few milliseconds, because an agent runs it in its loop and its hook runs it
between tool calls: it imports only C modules at start (``_socket``, ``_json``: not ``socket``,
``json``, ``argparse`` or ``typing``, whose imports cost more than the rest of a post), parses
its few arguments itself and builds its one-line request by hand; ``json`` is imported only to
print an answer with ``--json``.

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

import _json
import _socket
import os
import sys

TIMEOUT = 15.0
#: A hook's whole budget with the wrapper, which answers ``notices`` from memory.
HOOK_TIMEOUT = 3.0
HOOK_EVENT = "PostToolUse"
MAX_RESPONSE = 64 * 1024 * 1024
SUN_PATH_MAX = 107
STATUS_WORDS = ("working", "blocked", "done")
COMMANDS = ("post", "status", "read", "who", "notices")

USAGE = """usage: wm-team [--json] COMMAND ...

Talk to your team's board (through this worker's wrapper).

  wm-team post TEXT...                           post a message to the team
  wm-team status working|blocked|done [NOTE...]  set your status
  wm-team read [--since ID]                      show the board's entries
  wm-team who                                    each teammate's status
  wm-team notices [--hook [EVENT]]               what the team said that you were not told yet

  --json   print the wrapper's raw answer
"""

Request = dict[str, "str | None"]
Answer = dict[str, object]


class Failure(Exception):
    """A refusal or an unreachable wrapper: exit 1 with this message."""


class Usage(Exception):
    """Arguments that are not a command: exit 2 with this message and the usage."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:2] == ["notices", "--hook"] and len(args) <= 3:
        return hook(args[2] if len(args) == 3 else HOOK_EVENT)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    try:
        command, request, hook_event = parse(args)
    except Usage as exc:
        sys.stderr.write(f"wm-team: {exc}\n{USAGE}")
        return 2
    if hook_event is not None:
        return hook(hook_event)
    path = os.environ.get("WM_TEAM_SOCKET", "")
    if not os.environ.get("WM_TEAM") or not path:
        sys.stderr.write("wm-team: this worker is in no team\n")
        return 1
    try:
        response = ask(path, request)
    except Failure as exc:
        sys.stderr.write(f"wm-team: {exc}\n")
        return 1
    if as_json:
        import json  # only here: printing an answer is not the hot path

        print(json.dumps(response, ensure_ascii=False))
        return 0 if response.get("ok") else 1
    if not response.get("ok"):
        sys.stderr.write(f"wm-team: {response.get('error') or 'refused'}\n")
        return 1
    show(command, response)
    return 0


def parse(args: list[str]) -> tuple[str, Request, str | None]:
    """The command, its request, and the hook's event for ``notices --hook``."""
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        raise Usage(f"unknown command {command!r} (one of {', '.join(COMMANDS)})")
    if command == "post":
        if not rest:
            raise Usage("post needs the text to post")
        return command, {"op": "post", "text": " ".join(rest)}, None
    if command == "status":
        if not rest or rest[0] not in STATUS_WORDS:
            raise Usage(f"status needs one of {', '.join(STATUS_WORDS)}")
        return command, {"op": "status", "status": rest[0], "note": " ".join(rest[1:])}, None
    if command == "read":
        since = None
        if rest[:1] == ["--since"] and len(rest) == 2:
            since = rest[1]
        elif len(rest) == 1 and rest[0].startswith("--since="):
            since = rest[0].partition("=")[2]
        elif rest:
            raise Usage("read takes only --since ID")
        return command, {"op": "read", "since": since}, None
    if command == "notices":
        if rest[:1] == ["--hook"] and len(rest) <= 2:
            return command, {"op": "notices"}, rest[1] if len(rest) == 2 else HOOK_EVENT
        if rest:
            raise Usage("notices takes only --hook [EVENT]")
        return command, {"op": "notices"}, None
    if rest:
        raise Usage("who takes no arguments")
    return command, {"op": "who"}, None


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
    additional = _json.encode_basestring(text.strip())
    sys.stdout.write(
        f'{{"hookSpecificOutput": {{"hookEventName": "{event}", '
        f'"additionalContext": {additional}}}}}\n'
    )
    return 0


def encode(request: Request) -> bytes:
    """The request as one JSON line (strings and nulls only: no ``json`` needed)."""
    items = (
        f"{_json.encode_basestring_ascii(key)}: "
        + ("null" if value is None else _json.encode_basestring_ascii(value))
        for key, value in request.items()
    )
    return ("{" + ", ".join(items) + "}\n").encode()


class _Decoding:
    """What the C scanner of ``_json`` reads its settings from (as ``json.JSONDecoder``)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


def decode(data: bytes) -> Answer:
    text = data.decode("utf-8", "replace").strip()
    try:
        # typeshed types the context as a scanner; at run time it is any object with these.
        value, end = _json.make_scanner(_Decoding())(text, 0)  # type: ignore[arg-type]
    except (StopIteration, ValueError) as exc:
        raise Failure("the wrapper's answer was not understood") from exc
    if end != len(text) or not isinstance(value, dict):
        raise Failure("the wrapper's answer was not understood")
    return value


def ask(path: str, request: Request, timeout: float = TIMEOUT) -> Answer:
    """One request to the wrapper, its answer."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    fd = -1
    try:
        sock.settimeout(timeout)
        address = path
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            # Unix socket paths are limited to 107 bytes; reach a longer one by its directory.
            directory, name = os.path.split(path)
            fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY)
            address = f"/proc/self/fd/{fd}/{name}"
        sock.connect(address)
        sock.sendall(encode(request))
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
    finally:
        sock.close()
        if fd >= 0:
            os.close(fd)
    return decode(b"".join(chunks))


def show(command: str, response: Answer) -> None:
    if command == "post":
        print(f"posted {response.get('id', '')}")
    elif command == "status":
        print(f"status set ({response.get('id', '')})")
    elif command == "read":
        entries = [e for e in _list(response.get("entries")) if isinstance(e, dict)]
        for entry in entries:
            print(entry_line(entry))
        if not entries:
            print("(no entries)")
        elif response.get("more"):
            print(f"(more: wm-team read --since {entries[-1].get('id', '')})")
    elif command == "notices":
        text = str(response.get("text") or "").strip()
        print(text or "(nothing new)")
    else:
        for member in _list(response.get("members")):
            if isinstance(member, dict):
                print(member_line(member))


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def entry_line(entry: dict[str, object]) -> str:
    """``<id> <timestamp> <sender> <kind>: <content> — <note>`` on one line."""
    content = " ".join(str(entry.get("content", "")).split())
    note = " ".join(str(entry.get("note", "")).split())
    text = f"{content} — {note}" if note else content
    return (
        f"{entry.get('id', '')} {entry.get('timestamp', '')} {entry.get('sender', '')} "
        f"{entry.get('kind', '')}: {text}"
    )


def member_line(member: dict[str, object]) -> str:
    name = str(member.get("worker_id", ""))
    if member.get("self"):
        name += " (you)"
    status = str(member.get("status") or "no status")
    note = " ".join(str(member.get("note") or "").split())
    seen = member.get("last_activity") or "never"
    changed = _list(member.get("changed"))
    files = f"; changed {', '.join(str(p) for p in changed)}" if changed else ""
    return f"{name}: {status}" + (f" — {note}" if note else "") + f" (last activity {seen}{files})"


if __name__ == "__main__":
    sys.exit(main())
