"""Which egress service code runs: the package version plus a digest of the service's source.

The service outlives the managers that start it (by design: a manager restart must cut no worker
off), so after an upgrade the host may still run the old service. ``/healthz`` reports this
string and a manager whose own differs says so in its log, naming the way to restart it.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from worker_manager import __version__


@cache
def service_version() -> str:
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"
