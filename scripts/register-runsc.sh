#!/usr/bin/env bash
# Register gVisor (Debian's runsc) with the Docker Engine as the runtime "runsc", without
# restarting the daemon: a `runtimes` entry in /etc/docker/daemon.json (every other key kept),
# then SIGHUP, which makes dockerd reload its runtimes. Idempotent.
#
# runtimeArgs: --network=host (gVisor's own network stack fails on this kernel: "cannot run
# with network enabled in root network namespace"; with it the sandbox uses the kernel's stack
# inside the container's own network namespace, so Docker networking still applies) and
# --host-uds=open (a contained worker's Unix sockets are bind-mounted from the host).
set -euo pipefail

config=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
runsc=$(command -v runsc) || { echo "runsc is not installed (apt-get install runsc)" >&2; exit 1; }

python3 - "$config" "$runsc" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        config = json.load(f)
except FileNotFoundError:
    config = {}
wanted = {"path": runsc, "runtimeArgs": ["--network=host", "--host-uds=open"]}
if config.get("runtimes", {}).get("runsc") == wanted:
    sys.exit(0)
config.setdefault("runtimes", {})["runsc"] = wanted
os.makedirs(os.path.dirname(path), exist_ok=True)
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(config, f, indent=2)
os.replace(tmp, path)
PY

pid=$(pidof dockerd || true)
[[ -n "$pid" ]] || { echo "dockerd is not running" >&2; exit 1; }
kill -HUP $pid
for _ in $(seq 1 100); do
    if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; then
        echo "runsc registered"
        exit 0
    fi
    sleep 0.1
done
echo "dockerd did not load the runsc runtime" >&2
exit 1
