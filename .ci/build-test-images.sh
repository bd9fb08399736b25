#!/usr/bin/env bash
# Build the local test images (no container registry is reachable) into Docker AND Podman.
# Idempotent: the debootstrap rootfs tarball is cached in $HITHER_CI_DIR/rootfs and images
# that already exist (and were derived from the current base) are not rebuilt.
#   local/py3numpy:bookworm  debootstrap minbase + python3 + python3-numpy (3.11.2 / 1.24.2)
#   local/py3numpy:alt       FROM the above + ENV HITHER_TEST_IMAGE_FLAVOR=alt + a file
#   local/py3:bookworm       FROM the above with numpy deleted (RUN, offline)
# Needs setup-containers.sh first (engines up, .ci/env.sh written).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -f "$CI_ENV_FILE" ]] || die "$CI_ENV_FILE missing: run .ci/setup-containers.sh first"
# shellcheck source=/dev/null
source "$CI_ENV_FILE"

D="$HITHER_CI_DIR"
T0=$(date +%s)
BASE="$HITHER_TEST_IMAGE"
ALT="$HITHER_TEST_IMAGE_ALT"
NONUMPY="$HITHER_TEST_IMAGE_NONUMPY"
IMAGES_DIR="$CI_REPO/.ci/images"
TARBALL="$D/rootfs/py3numpy-bookworm.tar"
# root's hard limits here are nofile=20000; podman/buildah would ask for more by default.
PODMAN_ULIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)

# ---------------------------------------------------------------- rootfs tarball (cached)
build_rootfs() {
    local mirror tmp
    mirror=$(debian_mirror)
    mkdir -p "$D/rootfs"
    tmp=$(mktemp -d "$D/rootfs/build.XXXXXX")
    log "debootstrap bookworm from $mirror into $tmp (about 45 s)"
    if ! timeout 1200 debootstrap --variant=minbase --include=python3,python3-numpy \
            bookworm "$tmp/rootfs" "$mirror" >"$D/log/debootstrap.log" 2>&1; then
        show_log "$D/log/debootstrap.log"
        [[ -f "$tmp/rootfs/debootstrap/debootstrap.log" ]] && show_log "$tmp/rootfs/debootstrap/debootstrap.log"
        rm -rf "$tmp"
        return 1
    fi
    rm -rf "$tmp/rootfs/var/cache/apt/archives/"*.deb "$tmp/rootfs/var/lib/apt/lists/"* \
        "$tmp/rootfs/debootstrap"
    tar -C "$tmp/rootfs" --numeric-owner -cf "$tmp/rootfs.tar" .
    mv "$tmp/rootfs.tar" "$TARBALL"
    rm -rf "$tmp"
    log "rootfs tarball: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
}
if [[ -s "$TARBALL" ]]; then
    log "reusing cached rootfs $TARBALL"
else
    rm -rf "$D/rootfs"/build.*
    retry -n 2 build_rootfs || die "debootstrap failed"
fi

# build_key BASE_ID DIR: hash of the base image ID and the build context, stored as an image
# label so that a derived image is rebuilt when either changes.
build_key() {
    { echo "$1"; (cd "$2" && find . -type f | LC_ALL=C sort | xargs sha256sum); } | sha256sum | cut -c1-16
}

# ---------------------------------------------------------------- docker
docker_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null; }
docker_label() { docker image inspect --format "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null; }

if docker_id "$BASE" >/dev/null; then
    log "docker: $BASE exists"
else
    log "docker import $BASE"
    timeout 600 docker import - "$BASE" <"$TARBALL" >/dev/null
fi
docker run --rm --network none "$BASE" python3 -c 'import numpy' \
    || die "docker: numpy does not import in $BASE"
BASE_ID_DOCKER=$(docker_id "$BASE")

docker_derive() {  # NAME DIR
    local name="$1" dir="$2" key old
    key=$(build_key "$BASE_ID_DOCKER" "$dir")
    if [[ "$(docker_label "$name" hither.build-key)" == "$key" ]]; then
        log "docker: $name exists (same base and build context)"
        return 0
    fi
    old=$(docker_id "$name" || true)
    log "docker build $name from $dir"
    # The legacy builder resolves FROM locally; BuildKit would try a registry.
    DOCKER_BUILDKIT=0 timeout 600 docker build -q --network none --pull=false \
        --label "hither.base-id=$BASE_ID_DOCKER" --label "hither.build-key=$key" -t "$name" "$dir" >"$D/log/docker-build.log" 2>&1 \
        || { show_log "$D/log/docker-build.log"; die "docker build of $name failed"; }
    # drop the superseded image (ignore failure: it may still be in use)
    if [[ -n "$old" && "$old" != "$(docker_id "$name")" ]]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
}
docker_derive "$ALT" "$IMAGES_DIR/alt"
docker_derive "$NONUMPY" "$IMAGES_DIR/nonumpy"

# ---------------------------------------------------------------- podman
podman_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null; }
podman_label() { podman image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null; }

if podman_id "$BASE" >/dev/null; then
    log "podman: $BASE exists"
else
    log "podman import $BASE"
    timeout 600 podman import -q - "$BASE" <"$TARBALL" >/dev/null
fi
podman run --rm --network none "$BASE" python3 -c 'import numpy' \
    || die "podman: numpy does not import in $BASE"
BASE_ID_PODMAN=$(podman_id "$BASE")

podman_derive() {  # NAME DIR
    local name="$1" dir="$2" key old
    key=$(build_key "$BASE_ID_PODMAN" "$dir")
    if [[ "$(podman_label "$name" hither.build-key)" == "$key" ]]; then
        log "podman: $name exists (same base and build context)"
        return 0
    fi
    old=$(podman_id "$name" || true)
    log "podman build $name from $dir"
    timeout 600 podman build -q --pull=never --network none "${PODMAN_ULIMITS[@]}" \
        --label "hither.base-id=$BASE_ID_PODMAN" --label "hither.build-key=$key" -t "$name" "$dir" >"$D/log/podman-build.log" 2>&1 \
        || { show_log "$D/log/podman-build.log"; die "podman build of $name failed"; }
    # drop the superseded image (ignore failure: it may still be in use)
    if [[ -n "$old" && "$old" != "$(podman_id "$name")" ]]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
}
podman_derive "$ALT" "$IMAGES_DIR/alt"
podman_derive "$NONUMPY" "$IMAGES_DIR/nonumpy"

# ---------------------------------------------------------------- checks + summary
for eng in docker podman; do
    "$eng" run --rm --network none "$ALT" sh -c 'test "$HITHER_TEST_IMAGE_FLAVOR" = alt && test -f /etc/hither-test-flavor' \
        || die "$eng: $ALT is not as expected"
    if "$eng" run --rm --network none "$NONUMPY" python3 -c 'import numpy; numpy.ndarray' 2>/dev/null; then
        die "$eng: numpy still importable in $NONUMPY"
    fi
done
log "images (engine, name, id):"
for name in "$BASE" "$ALT" "$NONUMPY"; do
    printf '  docker  %-26s %s\n' "$name" "$(docker_id "$name")"
    printf '  podman  %-26s %s\n' "$name" "$(podman_id "$name")"
done
log "build-test-images done in $(( $(date +%s) - T0 )) s"
