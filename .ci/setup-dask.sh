#!/usr/bin/env bash
# A Dask cluster on loopback, started with its CLI as a user would (idempotent):
#   dask scheduler on 127.0.0.1, a free port, no dashboard, scheduler file
#   $HITHER_CI_DIR/dask/scheduler.json; one `dask worker` with 2 worker processes of 1 thread.
# Both run on $CI_PYTHON, so the workers import the hither installed there: install the
# checkout first (`pip install -e ".[test]"`, done here if dask is missing). A cluster started
# by another interpreter is restarted.
# The workers get the environment of .ci/env.sh as written by the setup steps before this one
# (HITHER_APPTAINER, the Podman socket, PATH...), so that their jobs reach the same runtimes
# as the tests; a cluster started with other values of those variables is restarted.
# Writes to .ci/env.sh: HITHER_TEST_DASK_SCHEDULER_FILE.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

D="$HITHER_CI_DIR"
T0=$(now_ms)
K="$D/dask"
SF="$K/scheduler.json"
NWORKERS=2

ensure_test_extra distributed || die "dask[distributed] could not be installed"
"$CI_PYTHON" -c 'import hither' >/dev/null 2>&1 \
    || warn "$CI_PYTHON cannot import hither: the dask workers will not run hither jobs (pip install -e . first)"
mkdir -p "$K"
if [[ -f "$CI_ENV_FILE" ]]; then
    # shellcheck disable=SC1090
    source "$CI_ENV_FILE"
    HITHER_CI_DIR="$D"  # this run's, whatever the file says
fi
RUNTIME_ENV=""
for v in HITHER_APPTAINER HITHER_PODMAN_SOCKET CONTAINERS_CONF CONTAINERS_STORAGE_CONF; do
    RUNTIME_ENV+=" $v=${!v:-}"
done
ENV_ID="$("$CI_PYTHON" -c 'import sys; from importlib.metadata import version; print(sys.executable, version("distributed"))') $CI_REPO$RUNTIME_ENV"

# ready N: the scheduler in $SF answers within 5 s and has N workers within 30 s.
ready() {
    timeout 40 "$CI_PYTHON" - "$SF" "$1" <<'EOF'
import sys
from distributed import Client
with Client(scheduler_file=sys.argv[1], timeout=5, set_as_default=False) as c:
    c.wait_for_workers(int(sys.argv[2]), timeout=30)
    assert c.submit(sum, [1, 2], pure=False).result(timeout=10) == 3
EOF
}

if pid_alive "$D/dask-scheduler.pid" && pid_alive "$D/dask-worker.pid" \
        && [[ "$(cat "$K/env-id" 2>/dev/null)" == "$ENV_ID" ]] && ready "$NWORKERS" >/dev/null 2>&1; then
    log "dask cluster already up ($SF, $NWORKERS workers)"
else
    if pid_alive "$D/dask-scheduler.pid" && [[ "$(cat "$K/env-id" 2>/dev/null)" != "$ENV_ID" ]]; then
        log "dask cluster runs another environment ($(cat "$K/env-id" 2>/dev/null)); restarting it"
    fi
    # Workers before the scheduler, else they spend their time reconnecting.
    stop_pidfile dask-worker
    stop_pidfile dask-scheduler
    rm -f "$SF"
    rm -rf "$K/work"
    mkdir -p "$K/work"
    (cd "$K" && start_daemon dask-scheduler "$CI_PYTHON" -m distributed.cli.dask_scheduler \
        --host 127.0.0.1 --port 0 --no-dashboard --scheduler-file "$SF")
    if ! wait_for "test -s '$SF'" 60; then
        show_log "$D/log/dask-scheduler.log"
        die "the dask scheduler wrote no scheduler file within 60 s"
    fi
    (cd "$K" && start_daemon dask-worker "$CI_PYTHON" -m distributed.cli.dask_worker \
        --scheduler-file "$SF" --host 127.0.0.1 --nworkers "$NWORKERS" --nthreads 1 \
        --no-dashboard --local-directory "$K/work" --name ci)
    if ! ready "$NWORKERS" >>"$D/log/dask-check.log" 2>&1; then
        show_log "$D/log/dask-check.log"
        show_log "$D/log/dask-scheduler.log" 20
        show_log "$D/log/dask-worker.log"
        die "the dask cluster did not get $NWORKERS workers"
    fi
    echo "$ENV_ID" >"$K/env-id"
    log "dask cluster up: scheduler pid $(cat "$D/dask-scheduler.pid"), worker pid $(cat "$D/dask-worker.pid"), $SF"
fi

env_set HITHER_TEST_DASK_SCHEDULER_FILE "$SF"
log "setup-dask done in $(elapsed "$T0")"
