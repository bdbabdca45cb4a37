#!/usr/bin/env bash
# Wheels for the manager's image, built outside it (a `docker build` here cannot reach PyPI):
# this project's wheel plus every dependency, for the Python and platform of the image's base.
#
#   scripts/build-wheels.sh BASE_IMAGE [OUT_DIR]     (OUT_DIR defaults to dist/wheels)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${1:?usage: build-wheels.sh BASE_IMAGE [OUT_DIR]}"
OUT="${2:-$ROOT/dist/wheels}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3

# The base's own Python decides which binary wheels fit (cp311 on Debian 12, cp312 on 3.12-slim).
read -r PYVER MACHINE < <(docker run --rm --entrypoint python3 "$BASE" -c \
    'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine())')
rm -rf "$OUT"
mkdir -p "$OUT"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$OUT" "$ROOT"
"$PYTHON" - "$ROOT/pyproject.toml" > "$OUT/requirements.txt" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["dependencies"]))
print("pip")  # so the image can fetch the Claude Code wheel at run time, as the host does
PY
# Some dependencies publish no wheel at all (mitmproxy's pyperclip is an sdist only), and a
# download for another platform takes wheels only: build those here first (they are pure Python,
# or they would ship wheels), so the download below finds them in $OUT (--find-links).
"$PYTHON" -m pip install --quiet --dry-run --ignore-installed --report "$OUT/resolved.json" \
    -r "$OUT/requirements.txt"
"$PYTHON" - "$OUT/resolved.json" > "$OUT/sdist-only.txt" <<'PY'
import json, sys
with open(sys.argv[1], encoding="utf-8") as handle:
    report = json.load(handle)
for item in report["install"]:
    if not item["download_info"]["url"].endswith(".whl"):
        print(f'{item["metadata"]["name"]}=={item["metadata"]["version"]}')
PY
if [[ -s "$OUT/sdist-only.txt" ]]; then
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$OUT" -r "$OUT/sdist-only.txt"
fi
rm -f "$OUT/resolved.json" "$OUT/sdist-only.txt"
"$PYTHON" -m pip download --quiet --only-binary=:all: --find-links "$OUT" --dest "$OUT" \
    --python-version "$PYVER" --implementation cp \
    --platform "manylinux_2_17_$MACHINE" --platform "manylinux2014_$MACHINE" \
    --platform "manylinux_2_28_$MACHINE" --platform "manylinux_2_5_$MACHINE" \
    --platform "manylinux1_$MACHINE" \
    -r "$OUT/requirements.txt"
echo "wheels for Python $PYVER ($MACHINE) in $OUT: $(ls "$OUT"/*.whl | wc -l)"
