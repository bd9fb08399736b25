#!/usr/bin/env bash
# Stop the podman service and dockerd started by setup-containers.sh (PID files in
# $HITHER_CI_DIR). Daemons that these scripts did not start are left alone. Never fails.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stop_pidfile() {  # NAME: TERM, wait up to 20 s, then KILL
    local name="$1" f="$HITHER_CI_DIR/$1.pid" pid
    if ! pid_alive "$f"; then
        log "$name: not running"
        rm -f "$f"
        return 0
    fi
    pid=$(cat "$f")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for "! kill -0 $pid" 20; then
        warn "$name (pid $pid) did not stop, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for "! kill -0 $pid" 5 || true
    fi
    rm -f "$f"
}

stop_pidfile podman
rm -f "$HITHER_CI_DIR/podman.sock"
stop_pidfile dockerd
exit 0
