#!/usr/bin/env bash
# Two real local users of one group, for the group-shared store tests (idempotent; root):
#   group `lab`, users `labA` and `labB` (own primary group, member of `lab`, no home directory;
#   setpriv keeps the caller's environment, so tests set HOME and XDG_* for them).
# Tests run code as them with `setpriv --reuid=labA --regid=labA --init-groups -- ...`.
# Both users must be able to run the tests' interpreter and read the checkout: a directory on
# the way that they cannot enter (e.g. /root, mode 700, holding pyenv) gets an ACL entry
# `group:lab:--x` (traverse only; nothing becomes listable or readable).
# $HITHER_CI_DIR/lab-tmp (mode 1777) is a place both users can reach for the tests' shared
# folders (pytest's tmp_path is private to root).
# Writes to .ci/env.sh: HITHER_TEST_USERS="labA labB", HITHER_TEST_GROUP=lab,
# HITHER_TEST_SHARED_TMP.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

D="$HITHER_CI_DIR"
T0=$(now_ms)
GROUP=lab
USERS=(labA labB)
SHARED_TMP="$D/lab-tmp"

[[ $(id -u) -eq 0 ]] || die "setup-users.sh must run as root"
command -v setpriv >/dev/null || apt_install util-linux || die "setpriv (util-linux) missing"

getent group "$GROUP" >/dev/null || { log "groupadd $GROUP"; groupadd "$GROUP"; }
for u in "${USERS[@]}"; do
    if ! getent passwd "$u" >/dev/null; then
        log "useradd $u (group $GROUP)"
        useradd -M -U -G "$GROUP" -s /bin/sh "$u"
    elif ! id -nG "$u" | tr ' ' '\n' | grep -qx "$GROUP"; then
        log "adding $u to $GROUP"
        usermod -a -G "$GROUP" "$u"
    fi
done

mkdir -p "$SHARED_TMP"
chmod 1777 "$SHARED_TMP"

as_user() { local u="$1"; shift; setpriv --reuid="$u" --regid="$u" --init-groups -- "$@"; }

# grant_traverse PATH: give group lab traverse (x) on every ancestor directory of PATH that
# a lab user cannot enter.
grant_traverse() {
    local p="$1" dir acc=""
    IFS=/ read -ra parts <<<"${p#/}"
    for dir in "${parts[@]}"; do
        acc="$acc/$dir"
        [[ -d "$acc" ]] || break
        if ! as_user "${USERS[0]}" test -x "$acc" 2>/dev/null; then
            command -v setfacl >/dev/null || apt_install acl || die "setfacl (acl) missing"
            log "setfacl -m g:$GROUP:x $acc (so $GROUP members can reach $p)"
            setfacl -m "g:$GROUP:x" "$acc"
        fi
    done
}

# Tests start the users' processes with sys.executable (a venv's python is a symlink).
PYEXE=$("$CI_PYTHON" -c 'import sys; print(sys.executable)')
PYREAL=$(readlink -f "$PYEXE")
for p in "$PYEXE" "$PYREAL" "$CI_REPO" "$SHARED_TMP"; do grant_traverse "$p"; done

# Each user runs the interpreter, reads the checkout, has group lab, and writes in lab-tmp.
for u in "${USERS[@]}"; do
    out=$(as_user "$u" "$PYEXE" -c '
import grp, os, sys, tempfile
assert sys.argv[1] in [grp.getgrgid(g).gr_name for g in os.getgroups()], "not in group"
open(os.path.join(sys.argv[2], "pyproject.toml")).close()
fd, path = tempfile.mkstemp(dir=sys.argv[3]); os.close(fd); os.unlink(path)
print("ok")' "$GROUP" "$CI_REPO" "$SHARED_TMP" 2>&1) || die "user $u cannot run $PYEXE or read $CI_REPO: $out"
done

env_set HITHER_TEST_USERS "${USERS[*]}"
env_set HITHER_TEST_GROUP "$GROUP"
env_set HITHER_TEST_SHARED_TMP "$SHARED_TMP"
log "setup-users done in $(elapsed "$T0")"
