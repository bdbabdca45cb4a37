"""Install wheels by unpacking them into one directory (for the manager's image).

The image is built with no access to PyPI and on bases with or without pip (the Debian base that
`worker-manager ensure-base` bootstraps has none), so it cannot `pip install`. A wheel is a zip
whose top level is already site-packages layout: unpacking every wheel built for the image's
Python into one directory on PYTHONPATH is an installation, minus the console scripts (the image
runs `python3 -m worker_manager`). Usage: install_wheels.py WHEEL_DIR TARGET_DIR
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def main(wheels: Path, target: Path) -> int:
    found = sorted(wheels.glob("*.whl"))
    if not found:
        print(f"no wheels in {wheels}", file=sys.stderr)
        return 1
    target.mkdir(parents=True, exist_ok=True)
    for wheel in found:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
        print(f"installed {wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
