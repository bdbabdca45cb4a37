#!/usr/bin/env bash
# The production path, run for real: docker-compose brings up Redis and the manager, a worker is
# created through Redis inside the compose network and answers a prompt, then everything goes
# (`down -v`) and nothing of this project is left: no container, network or volume.
#
#   scripts/compose-test.sh            (make compose-test; tests/integration/test_compose.py)
#
# Without a registry (no redis:7, no python:3.12-slim locally and none to pull), both images and
# the workers build from the Debian base that `worker-manager ensure-base` bootstraps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LOCAL_BASE="worker-manager/base:bookworm"
have_image() {
    docker image inspect "$1" >/dev/null 2>&1 || timeout 60 docker pull -q "$1" >/dev/null 2>&1
}
pick() { if have_image "$1"; then echo "$1"; else echo "$LOCAL_BASE"; fi; }

export COMPOSE_PROJECT_NAME="wmtest$RANDOM$RANDOM"
export REDIS_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
export WM_KEY_PREFIX="$COMPOSE_PROJECT_NAME"
export WM_WORKERS_NETWORK="$COMPOSE_PROJECT_NAME-workers"
export WM_MANAGER_ID="$COMPOSE_PROJECT_NAME-manager"
export WM_HTTP_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export MANAGER_BASE_IMAGE="${MANAGER_BASE_IMAGE:-$(pick python:3.12-slim)}"
export REDIS_BASE_IMAGE="${REDIS_BASE_IMAGE:-$(pick redis:7)}"
export WM_BASE_IMAGE="${WM_BASE_IMAGE:-$(pick python:3.12-slim)}"
# The egress service's host directory (worker sockets), the same path inside both services.
export WM_EGRESS_RUN_DIR="$(mktemp -d /tmp/wm-ceg-XXXXXX)"
COMPOSE=(docker-compose --ansi never)
WHEELS="$(mktemp -d)"

log() { printf 'compose-test: %s\n' "$*" >&2; }

cleanup() {
    local rc=$?
    if ((rc != 0)); then
        log "failed; the manager's log:"
        "${COMPOSE[@]}" logs --tail 60 manager egress >&2 || true
    fi
    # Workers are the manager's containers, not compose's: remove them by their labels first.
    docker ps -aq --filter "label=worker-manager.key_prefix=$WM_KEY_PREFIX" | xargs -r docker rm -f >/dev/null
    "${COMPOSE[@]}" down -v --remove-orphans --rmi all >/dev/null 2>&1 || true
    # A worker image built by this run (a shape no other run had built) is labelled with its
    # key prefix: it goes too.
    docker images -q --filter "label=worker-manager.key_prefix=$WM_KEY_PREFIX" | sort -u |
        xargs -r docker rmi -f >/dev/null 2>&1 || true
    rm -rf "$WHEELS" dist/wheels "$WM_EGRESS_RUN_DIR"
    exit "$rc"
}
trap cleanup EXIT

log "bases: manager $MANAGER_BASE_IMAGE, redis $REDIS_BASE_IMAGE, workers $WM_BASE_IMAGE"
scripts/build-wheels.sh "$MANAGER_BASE_IMAGE" "$ROOT/dist/wheels" >&2
"${COMPOSE[@]}" up -d --build >&2

log "waiting for /readyz on 127.0.0.1:$WM_HTTP_PORT"
python3 - "$WM_HTTP_PORT" <<'PY'
import sys, time, urllib.request, urllib.error
deadline = time.monotonic() + 240
url = f"http://127.0.0.1:{sys.argv[1]}/readyz"
while True:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            if answer.status == 200:
                break
    except (urllib.error.URLError, ConnectionError, OSError):
        pass
    if time.monotonic() > deadline:
        sys.exit(f"no 200 from {url}")
    time.sleep(1)
PY

cli() { "${COMPOSE[@]}" exec -T manager python3 -m worker_manager "$@"; }
log "creating a worker through Redis inside the compose network"
created="$(cli create --agent-type CUSTOM --agent-command '["sh", "-c", "echo compose says: $(cat)"]' \
    --prompt "hello from compose" --wait --json --timeout 60)"
worker_id="$(printf '%s\n' "$created" | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["worker_id"])')"
status="$(printf '%s\n' "$created" | tail -n 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')"
[[ "$status" == "RUNNING" ]] || { log "worker $worker_id is $status"; exit 1; }
# Contained: no network of its own, only its sockets from the egress service.
mode="$(docker inspect -f '{{.HostConfig.NetworkMode}}' \
    "$(docker ps -q --filter "label=worker-manager.worker_id=$worker_id")")"
[[ "$mode" == "none" ]] || { log "worker $worker_id runs on network $mode, not none"; exit 1; }
answer="$(cli tail "$worker_id" --until-done)"
grep -q "compose says: hello from compose" <<<"$answer" || { log "no answer: $answer"; exit 1; }
cli delete "$worker_id" >&2
log "worker $worker_id was RUNNING and answered; taking everything down"

"${COMPOSE[@]}" down -v --remove-orphans --rmi all >&2
left="$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")"
left+="$(docker ps -aq --filter "label=worker-manager.key_prefix=$WM_KEY_PREFIX")"
left+="$(docker network ls -q --filter "name=$COMPOSE_PROJECT_NAME")"
left+="$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")"
[[ -z "$left" ]] || { log "left behind: $left"; exit 1; }
echo "compose-test: passed (worker $worker_id, contained, answered through the egress service)"
