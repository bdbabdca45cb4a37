"""The agent tests run real processes under a restricted PATH.

On a developer machine ``python3`` may be a version-manager shim (pyenv) that itself needs
``PATH``; inside a worker image it is the real interpreter. Putting the directory of the running
interpreter first makes ``#!/usr/bin/env python3`` resolve to a real binary, as in the image.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def real_python_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
