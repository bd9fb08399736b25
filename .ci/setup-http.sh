#!/usr/bin/env bash
# A static web server on loopback for the read-only HTTP store tests (idempotent):
# RangeHTTPServer (http.server plus `Range:` support, as real web servers and Zenodo have;
# plain `python -m http.server` ignores Range and returns the whole file) on
# 127.0.0.1:$HITHER_CI_HTTP_PORT (default 15111), run by $CI_PYTHON, serving
# $HITHER_CI_DIR/http-root. That folder is world-writable with the sticky bit (like /tmp), so
# tests write their published stores into it, each under a unique name.
# Writes to .ci/env.sh: HITHER_TEST_HTTP_ROOT, HITHER_TEST_HTTP_URL (no trailing slash).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

D="$HITHER_CI_DIR"
T0=$(now_ms)
PORT="${HITHER_CI_HTTP_PORT:-15111}"
URL="http://127.0.0.1:$PORT"
ROOT="$D/http-root"
PROBE=".hither-ci-probe"

ensure_test_extra RangeHTTPServer || die "rangehttpserver could not be installed"

mkdir -p "$ROOT"
chmod 1777 "$ROOT"
printf '0123456789' >"$ROOT/$PROBE"
chmod 644 "$ROOT/$PROBE"
answers() { timeout 5 curl -sf -o /dev/null "$URL/$PROBE"; }

if pid_alive "$D/http.pid" && answers; then
    log "HTTP server already answers on $URL (pid $(cat "$D/http.pid"))"
else
    stop_pidfile http
    if owner=$(port_owner "$PORT"); then
        die "port $PORT is taken by another process (pid ${owner:-?}); set HITHER_CI_HTTP_PORT"
    fi
    # RangeHTTPServer serves its working directory.
    (cd "$ROOT" && start_daemon http "$CI_PYTHON" -m RangeHTTPServer --bind 127.0.0.1 "$PORT")
    if ! wait_for "curl -sf -o /dev/null '$URL/$PROBE'" 30; then
        show_log "$D/log/http.log"
        die "the HTTP server did not answer on $URL within 30 s"
    fi
    log "HTTP server up on $URL serving $ROOT (pid $(cat "$D/http.pid"))"
fi
# A range request must give 206 and just those bytes.
got=$(timeout 5 curl -sf -r 2-4 -w ' %{http_code}' "$URL/$PROBE") || die "GET $URL/$PROBE failed"
[[ "$got" == "234 206" ]] || die "range request to $URL/$PROBE gave '$got', expected '234 206'"

env_set HITHER_TEST_HTTP_ROOT "$ROOT"
env_set HITHER_TEST_HTTP_URL "$URL"
log "setup-http done in $(elapsed "$T0")"
