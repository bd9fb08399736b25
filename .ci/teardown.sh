#!/usr/bin/env bash
# Stop what the setup scripts started (PID files in $HITHER_CI_DIR); daemons that these scripts
# did not start are left alone. Never fails.
#   bash .ci/teardown.sh              # everything
#   bash .ci/teardown.sh dask s3      # only some of: dask s3 http slurm containers
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

D="$HITHER_CI_DIR"
PARTS=("$@")
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(dask s3 http slurm containers)
want() { local x; for x in "${PARTS[@]}"; do [[ "$x" == "$1" ]] && return 0; done; return 1; }

if want dask; then
    # Workers first, else they spend the scheduler's last seconds reconnecting.
    stop_pidfile dask-worker
    stop_pidfile dask-scheduler
    rm -f "$D/dask/scheduler.json"
fi
want s3 && stop_pidfile moto
want http && stop_pidfile http
if want slurm; then
    if pid_alive "$D/slurmctld.pid"; then
        # Jobs still running would outlive slurmd (slurmstepd is on its own).
        export SLURM_CONF="$D/slurm/slurm.conf"
        timeout 10 scancel --full --partition=debug >/dev/null 2>&1 || true
        wait_for "[[ -z \"\$(squeue -h -t running,completing 2>/dev/null)\" ]]" 10 || true
    fi
    for d in slurmd slurmctld slurmdbd mariadb munged; do stop_pidfile "$d"; done
fi
if want containers; then
    stop_pidfile podman
    rm -f "$D/podman.sock"
    stop_pidfile dockerd
fi
exit 0
