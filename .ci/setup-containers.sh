#!/usr/bin/env bash
# Install and start the container engines used by the test suite (idempotent):
#   - Docker engine (Debian docker.io) : dockerd on the default socket /var/run/docker.sock
#   - Podman 4.3 + runc                : `podman system service` on unix://$HITHER_CI_DIR/podman.sock
# and write .ci/env.sh (source it afterwards). Nothing is exported into the caller's shell.
# State, logs and PID files live in ${HITHER_CI_DIR:-/var/tmp/hither-ci}.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

D="$HITHER_CI_DIR"
T0=$(date +%s)

# ---------------------------------------------------------------- packages
# docker.io: engine 20.10; debootstrap: test images; podman+runc (crun fails on this hybrid
# cgroup host); containernetworking-plugins: podman's default bridge network;
# squashfs-tools: apptainer SIF builds; curl: socket pings.
apt_install docker.io debootstrap podman runc containernetworking-plugins squashfs-tools \
    curl ca-certificates

if ! python3 -c 'import docker' 2>/dev/null || ! command -v uv >/dev/null; then
    log "pip install docker uv"
    retry timeout 300 python3 -m pip install -q --disable-pip-version-check docker uv \
        >>"$D/log/pip.log" 2>&1 || { show_log "$D/log/pip.log"; die "pip install failed"; }
    if command -v pyenv >/dev/null; then pyenv rehash || true; fi
fi

# ---------------------------------------------------------------- dockerd
docker_up() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if docker_up; then
    log "dockerd already answers (server $(docker version --format '{{.Server.Version}}'))"
else
    command -v dockerd >/dev/null || die "dockerd not found after installing docker.io"
    # A dockerd of ours that is alive but does not answer is stuck: restart it.
    if pid_alive "$D/dockerd.pid"; then
        warn "dockerd (pid $(cat "$D/dockerd.pid")) is running but not answering; restarting it"
        kill "$(cat "$D/dockerd.pid")" || true
        wait_for "! kill -0 $(cat "$D/dockerd.pid")" 20 || kill -9 "$(cat "$D/dockerd.pid")" || true
    fi
    start_daemon dockerd dockerd
    if ! wait_for "timeout 5 docker version --format '{{.Server.Version}}'" 60; then
        show_log "$D/log/dockerd.log"
        die "dockerd did not come up within 60 s"
    fi
    log "dockerd up (pid $(cat "$D/dockerd.pid"), server $(docker version --format '{{.Server.Version}}'))"
fi

# ---------------------------------------------------------------- podman
# Settings verified on this host (see .ci/README.md): overlay storage in the work dir,
# runc, cgroupfs, ulimits within root's hard limits (no CAP_SYS_RESOURCE here).
P="$D/podman"
mkdir -p "$P/root" "$P/run"
cat >"$P/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$P/root"
runroot = "$P/run"
EOF
cat >"$P/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$P/containers.conf" CONTAINERS_STORAGE_CONF="$P/storage.conf"
SOCK="$D/podman.sock"
podman_up() { timeout 5 curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
if pid_alive "$D/podman.pid" && podman_up; then
    log "podman service already answers on $SOCK"
else
    if pid_alive "$D/podman.pid"; then
        warn "podman service (pid $(cat "$D/podman.pid")) not answering; restarting it"
        kill "$(cat "$D/podman.pid")" || true
        wait_for "! kill -0 $(cat "$D/podman.pid")" 20 || kill -9 "$(cat "$D/podman.pid")" || true
    fi
    rm -f "$SOCK"
    start_daemon podman podman system service --time=0 "unix://$SOCK"
    if ! wait_for "curl -sf --unix-socket '$SOCK' http://d/_ping" 30; then
        show_log "$D/log/podman.log"
        die "podman service did not answer on $SOCK within 30 s"
    fi
    log "podman service up (pid $(cat "$D/podman.pid"), $(podman --version))"
fi

# ---------------------------------------------------------------- env.sh
env_set HITHER_CI_DIR "$D"
env_set CONTAINERS_CONF "$CONTAINERS_CONF"
env_set CONTAINERS_STORAGE_CONF "$CONTAINERS_STORAGE_CONF"
env_set HITHER_PODMAN_SOCKET "unix://$SOCK"
env_set HITHER_TEST_IMAGE "local/py3numpy:bookworm"
env_set HITHER_TEST_IMAGE_ALT "local/py3numpy:alt"
env_set HITHER_TEST_IMAGE_NONUMPY "local/py3:bookworm"
env_has HITHER_APPTAINER || env_set HITHER_APPTAINER ""
log "setup-containers done in $(( $(date +%s) - T0 )) s; wrote $CI_ENV_FILE"
