"""The README's examples, run as written (a user copies them)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def example(marker: str) -> str:
    """The python block after ``<!-- <marker> -->`` in the README."""
    found = re.search(rf"<!-- {marker} -->\n```python\n(.*?)\n```", README.read_text(), re.DOTALL)
    assert found, f"the README lost its {marker}"
    return found.group(1)


async def run_example(marker: str, directory: Path, env: dict[str, str]) -> str:
    """Run one README example with ``env`` added to this process's; its output (it must
    succeed within five minutes)."""
    script = directory / f"{marker}.py"
    script.write_text(example(marker))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(300):
        output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, text
    return text
