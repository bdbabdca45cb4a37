"""Looking inside a worker container as an attacker would, with ``docker exec``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: Run inside a container: where ``bytes.fromhex(argv[1])`` occurs in any file outside
#: ``/proc``, ``/sys`` and ``/dev``. The value travels in argv, hex-encoded, so the search
#: itself puts it into no environment and no file.
SCANNER = r"""
import json, os, sys
needle = bytes.fromhex(sys.argv[1])
found = []
for root, dirs, files in os.walk("/", onerror=lambda _e: None):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for name in files:
        path = os.path.join(root, name)
        try:
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                tail = b""
                while chunk := handle.read(1 << 20):
                    if needle in tail + chunk:
                        found.append(path)
                        break
                    tail = chunk[-len(needle):]
        except OSError:
            pass
print(json.dumps(found))
"""


def found_inside(container: Any, value: str) -> list[str]:
    """Where ``value`` is in a process environment or a file of the container (``/proc``,
    ``/sys`` and ``/dev`` aside): empty when nowhere.

    Files are searched with ``docker exec``, as root and as the agent's user (root in a worker
    holds no capability to read another user's files, so each sees its own). Environments are
    read from the host's ``/proc`` (this test runs as root there): in the container even root
    may not read them, the wrapper's least of all (it is not dumpable)."""
    assert os.geteuid() == 0, "reading a container's process environments needs root"
    found: list[str] = []
    for pid in _host_pids(container):
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes()
        except FileNotFoundError:
            continue  # it ended since the listing
        if value.encode() in environment:
            found.append(f"the environment of process {pid}")
    for user in ("0", "1000"):
        code, out = container.exec_run(["python3", "-c", SCANNER, value.encode().hex()], user=user)
        assert code == 0, out
        found += json.loads(out.decode().strip().splitlines()[-1])
    return sorted(set(found))


def _host_pids(container: Any) -> list[int]:
    """The host PIDs of every process of the container (``docker top``)."""
    top = container.top()
    column = top["Titles"].index("PID")
    pids = [int(row[column]) for row in top["Processes"]]
    assert pids, "the container has no process"
    return pids
