#!/usr/bin/env bash
# A private redis-server for `make run`, reachable from the host and from worker containers.
#
#   scripts/local-redis.sh [start]   start (or reuse) it and write WM_REDIS_URL into .env
#   scripts/local-redis.sh stop      stop the one a previous `start` left running
#
# Nothing happens when WM_REDIS_URL is already configured (environment, or a line in .env that
# this script did not write): that Redis is the operator's. Ours lives in .run/: the password
# (kept across runs so .env and the append-only file stay valid), redis.conf, the AOF, pidfile
# and log. It listens on 127.0.0.1 and on the Docker bridge gateway, so containers reach it at
# the URL Settings.resolved_worker_redis_url derives (loopback host -> gateway).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$ROOT/.run"
ENV_FILE="$ROOT/.env"
MARKER="# WM_REDIS_URL below is written by scripts/local-redis.sh"
PASSWORD_FILE="$RUN_DIR/redis.password"
PORT_FILE="$RUN_DIR/redis.port"
CONF_FILE="$RUN_DIR/redis.conf"
PID_FILE="$RUN_DIR/redis.pid"
LOG_FILE="$RUN_DIR/redis.log"

say() { printf 'local-redis: %s\n' "$*" >&2; }

env_file_url() {
    [[ -f "$ENV_FILE" ]] || return 0
    sed -n 's/^[[:space:]]*\(export[[:space:]]\+\)\?WM_REDIS_URL=//p' "$ENV_FILE" | tail -n 1 |
        sed -e 's/^["'\'']//' -e 's/["'\'']$//'
}

env_file_is_ours() {
    [[ -f "$ENV_FILE" ]] && grep -qxF "$MARKER" "$ENV_FILE"
}

answers() { # URL
    # The password travels in REDISCLI_AUTH, not argv, where `ps` would show it.
    local url="$1" creds="" user="" pass="" reply
    if [[ "$url" =~ ^(rediss?://)([^@/]*)@(.*)$ ]]; then
        creds="${BASH_REMATCH[2]}"
        url="${BASH_REMATCH[1]}${BASH_REMATCH[3]}"
        if [[ "$creds" == *:* ]]; then
            user="${creds%%:*}"
            pass="${creds#*:}"
        else
            pass="$creds"
        fi
    fi
    local args=(-u "$url")
    [[ -n "$user" ]] && args+=(--user "$user")
    local envs=()
    [[ -n "$pass" ]] && envs+=("REDISCLI_AUTH=$pass")
    reply="$(env "${envs[@]}" timeout 5 redis-cli "${args[@]}" ping 2>/dev/null)" || return 1
    [[ "$reply" == "PONG" ]]
}

our_pid() { # prints the pid of our redis-server when it runs
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == redis-server* ]] ||
        return 1
    echo "$pid"
}

bridge_gateway() {
    local gw=""
    if command -v docker >/dev/null 2>&1; then
        gw="$(docker network inspect bridge \
            -f '{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}} {{end}}{{end}}' 2>/dev/null |
            awk '{print $1}')" || gw=""
    fi
    if [[ -z "$gw" ]] && command -v ip >/dev/null 2>&1; then
        gw="$(ip -4 -o addr show docker0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')"
    fi
    echo "${gw:-172.17.0.1}"
}

is_local_address() { # IP
    command -v ip >/dev/null 2>&1 || return 0
    ip -4 -o addr show | awk '{split($4, a, "/"); print a[1]}' | grep -qxF "$1"
}

port_in_use() { # PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

ensure_redis_server() {
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "sudo apt-get install redis-server"
        say "redis-server is not installed; run the command above, then retry"
        exit 1
    fi
    say "installing redis-server with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends redis-server >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends redis-server >/dev/null; }
    # The Debian package starts a system redis on 6379; ours is separate and leaves it alone.
}

write_env_file() { # URL
    local tmp
    tmp="$(mktemp "$ENV_FILE.XXXXXX")"
    chmod 600 "$tmp"
    if [[ -f "$ENV_FILE" ]]; then
        grep -vxF "$MARKER" "$ENV_FILE" | grep -v '^[[:space:]]*\(export[[:space:]]\+\)\?WM_REDIS_URL=' >"$tmp" || true
    fi
    printf '%s\nWM_REDIS_URL=%s\n' "$MARKER" "$1" >>"$tmp"
    # The key per-worker Redis passwords derive from: kept, so a restarted manager can re-create
    # its workers' ACL users after a Redis restart.
    if ! grep -q '^[[:space:]]*\(export[[:space:]]\+\)\?WM_WORKER_SECRET=' "$tmp"; then
        printf 'WM_WORKER_SECRET=%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$tmp"
    fi
    # The egress service's directory: the packaged default (/var/lib/worker-manager/egress)
    # needs root; a developer's service keeps it in the checkout.
    if [[ "$(id -u)" -ne 0 ]] && ! grep -q '^[[:space:]]*\(export[[:space:]]\+\)\?WM_EGRESS_RUN_DIR=' "$tmp"; then
        printf 'WM_EGRESS_RUN_DIR=%s\n' "$ROOT/.run/egress" >>"$tmp"
    fi
    mv "$tmp" "$ENV_FILE"
}

start() {
    if [[ -n "${WM_REDIS_URL:-}" ]]; then
        say "WM_REDIS_URL is set in the environment; not starting a local redis"
        return 0
    fi
    local url
    url="$(env_file_url)"
    if [[ -n "$url" ]] && ! env_file_is_ours; then
        say "WM_REDIS_URL is set in .env; not starting a local redis"
        return 0
    fi

    ensure_redis_server
    if [[ -n "$url" ]] && answers "$url"; then
        say "reusing the redis at ${url/\/\/*@/\/\/***@}"
        return 0
    fi

    mkdir -p "$RUN_DIR"
    chmod 700 "$RUN_DIR"
    if [[ ! -s "$PASSWORD_FILE" ]]; then
        (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$PASSWORD_FILE")
    fi
    local password port gateway binds pid
    password="$(cat "$PASSWORD_FILE")"

    if pid="$(our_pid)"; then
        # Alive but not answering with our password: a stale server from an older password.
        say "stopping unresponsive redis-server (pid $pid)"
        stop
    fi

    port="$(cat "$PORT_FILE" 2>/dev/null || true)"
    if [[ ! "$port" =~ ^[0-9]+$ ]] || port_in_use "$port"; then
        port=6379
        while port_in_use "$port"; do
            port=$((port + 1))
            ((port < 6479)) || { say "no free port in 6379-6478"; exit 1; }
        done
    fi

    gateway="$(bridge_gateway)"
    binds="127.0.0.1"
    if is_local_address "$gateway"; then
        binds="127.0.0.1 $gateway"
    else
        say "warning: Docker bridge gateway $gateway is not an address of this host;" \
            "worker containers will not reach redis"
    fi

    # The password goes in a 0600 file, not on the command line, where `ps` would show it.
    (
        umask 077
        cat >"$CONF_FILE" <<EOF
bind $binds
port $port
protected-mode yes
requirepass $password
dir $RUN_DIR
appendonly yes
appendfsync everysec
daemonize yes
pidfile $PID_FILE
logfile $LOG_FILE
EOF
    )
    echo "$port" >"$PORT_FILE"

    redis-server "$CONF_FILE"
    url="redis://:$password@127.0.0.1:$port/0"
    local deadline=$((SECONDS + 15))
    until answers "$url"; do
        if ((SECONDS >= deadline)); then
            say "redis-server did not answer within 15 s; see $LOG_FILE:"
            tail -n 20 "$LOG_FILE" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    write_env_file "$url"
    say "redis-server on 127.0.0.1:$port and $gateway:$port (pid $(cat "$PID_FILE")); WM_REDIS_URL written to .env"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        say "no local redis-server running"
        return 0
    fi
    kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "redis-server (pid $pid) did not stop within 30 s"
            exit 1
        fi
        sleep 0.1
    done
    rm -f "$PID_FILE"
    say "stopped redis-server (pid $pid)"
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 [start|stop]" >&2
    exit 2
    ;;
esac
