"""The agent tests run real processes under a restricted PATH.

On a developer machine ``python3`` may be a version-manager shim (pyenv) that itself needs
``PATH``; inside a worker image it is the real interpreter. Putting the directory of the running
interpreter first makes ``#!/usr/bin/env python3`` resolve to a real binary, as in the image.

``worker`` is the wrapper as the manager runs it (a real ``python -m worker_base`` with its own
Redis ACL user, ``tests/wrapper/conftest.py``), for the drivers tested through it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.wrapper.conftest import worker as worker


@pytest.fixture(autouse=True)
def real_python_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
