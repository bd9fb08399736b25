# shellcheck shell=bash
# Shared shell helpers for the CI scripts. Source it; do not execute it.
#
#   source .ci/lib.sh
#
# Defines: HITHER_CI_DIR (work dir, created), CI_REPO (repo root), CI_ENV_FILE (.ci/env.sh),
# CI_PYTHON (the interpreter of the tests: $HITHER_CI_PYTHON, else python3 on PATH),
# and the functions log, warn, die, retry, wait_for, show_log, apt_install, env_set,
# env_has, start_daemon, stop_pidfile, pid_alive, port_owner, ensure_test_extra.
# Sourcing it does not change shell options of the caller.

: "${HITHER_CI_DIR:=/var/tmp/hither-ci}"
export HITHER_CI_DIR
CI_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CI_ENV_FILE="$CI_REPO/.ci/env.sh"
mkdir -p "$HITHER_CI_DIR/log"
# Services written in Python (moto, dask, the HTTP server) run on the tests' interpreter, so
# that dask workers import the same hither and the same library versions as the tests.
CI_PYTHON="${HITHER_CI_PYTHON:-$(command -v python3 || echo python3)}"

# log MSG...: timestamped message on stderr.
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { log "WARNING: $*"; }
die() { log "ERROR: $*"; exit 1; }

# retry [-n ATTEMPTS] [-d DELAY] CMD...: run CMD until it succeeds (default 3 attempts,
# delay doubling from 2 s). Returns the last exit status.
retry() {
    local attempts=3 delay=2 n=1 rc
    while [[ $# -gt 0 ]]; do
        case "$1" in
            -n) attempts="$2"; shift 2 ;;
            -d) delay="$2"; shift 2 ;;
            *) break ;;
        esac
    done
    while true; do
        rc=0
        "$@" || rc=$?
        [[ $rc -eq 0 ]] && return 0
        if [[ $n -ge $attempts ]]; then
            log "failed after $n attempts (rc=$rc): $*"
            return "$rc"
        fi
        log "attempt $n/$attempts failed (rc=$rc), retrying in ${delay}s: $*"
        sleep "$delay"
        n=$((n + 1)); delay=$((delay * 2))
    done
}

# wait_for CMD TIMEOUT: poll the shell command string CMD (every 0.1 s) until it succeeds;
# returns 1 after TIMEOUT seconds.
wait_for() {
    local cmd="$1" timeout="${2:-60}" start
    start=$(date +%s)
    while ! bash -c "$cmd" >/dev/null 2>&1; do
        if (( $(date +%s) - start >= timeout )); then
            log "timed out after ${timeout}s waiting for: $cmd"
            return 1
        fi
        sleep 0.1
    done
}

# show_log FILE [LINES]: print the tail of a log file (for failures).
show_log() {
    local f="$1" n="${2:-40}"
    if [[ -f "$f" ]]; then
        log "---- last $n lines of $f ----"
        tail -n "$n" "$f" >&2
        log "---- end of $f ----"
    else
        log "(no log file $f)"
    fi
}

# pid_alive PIDFILE: true if PIDFILE names a running process.
pid_alive() {
    local pid
    [[ -f "$1" ]] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# start_daemon NAME CMD...: start CMD detached (own session, stdin closed), output to
# $HITHER_CI_DIR/log/NAME.log, PID to $HITHER_CI_DIR/NAME.pid.
start_daemon() {
    local name="$1"; shift
    local logf="$HITHER_CI_DIR/log/$name.log"
    local pidf="$HITHER_CI_DIR/$name.pid"
    log "starting $name: $*"
    rm -f "$pidf"
    # The inner shell records its own PID and execs the daemon (same PID), which stays right
    # even when setsid has to fork; the daemon survives the end of the calling script.
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$@" </dev/null >>"$logf" 2>&1 &
    wait_for "test -s '$pidf'" 10 || return 1
}

_CI_APT_UPDATED=
# apt_install PKG...: install the packages that are not installed yet (no recommends).
apt_install() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ -z "$_CI_APT_UPDATED" ]]; then
        retry timeout 300 apt-get update -q >>"$HITHER_CI_DIR/log/apt.log" 2>&1 \
            || { show_log "$HITHER_CI_DIR/log/apt.log"; return 1; }
        _CI_APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    retry env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q \
        --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >>"$HITHER_CI_DIR/log/apt.log" 2>&1 \
        || { show_log "$HITHER_CI_DIR/log/apt.log"; return 1; }
}

# debian_mirror: the Debian archive URL apt uses on this machine (fallback deb.debian.org);
# $HITHER_CI_DEBIAN_MIRROR overrides it.
debian_mirror() {
    local f url
    if [[ -n "${HITHER_CI_DEBIAN_MIRROR:-}" ]]; then echo "${HITHER_CI_DEBIAN_MIRROR%/}"; return 0; fi
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        # deb822: the URIs line of a stanza whose Suites mention bookworm (not -security)
        url=$(awk '
            /^[[:space:]]*$/ { if (u != "" && s ~ /(^| )bookworm( |$)/) { print u; exit } u=""; s=""; next }
            /^URIs:/ { u=$2 }
            /^Suites:/ { $1=""; s=$0" " }
            END { if (u != "" && s ~ /(^| )bookworm( |$)/) print u }' "$f" | head -n1)
        [[ -n "$url" ]] && { echo "${url%/}"; return 0; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        url=$(awk '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                               if ($(i+1) == "bookworm") { print $i; exit } }' "$f")
        [[ -n "$url" ]] && { echo "${url%/}"; return 0; }
    done
    echo "http://deb.debian.org/debian"
}

# env_set KEY VALUE: set "export KEY=VALUE" in .ci/env.sh (replacing an earlier value).
env_set() {
    local key="$1" val="$2" tmp
    [[ -f "$CI_ENV_FILE" ]] || printf '# shellcheck shell=bash\n# Written by .ci/setup-*.sh (HITHER_CI_DIR=%s). Source it: . .ci/env.sh\n' \
        "$HITHER_CI_DIR" >"$CI_ENV_FILE"
    tmp=$(mktemp "$CI_ENV_FILE.XXXXXX")
    grep -v "^export $key=" "$CI_ENV_FILE" >"$tmp" || true
    printf 'export %s=%q\n' "$key" "$val" >>"$tmp"
    mv "$tmp" "$CI_ENV_FILE"
}

# env_has KEY: true if .ci/env.sh sets KEY.
env_has() { [[ -f "$CI_ENV_FILE" ]] && grep -q "^export $1=" "$CI_ENV_FILE"; }

# stop_pidfile NAME: TERM the process in $HITHER_CI_DIR/NAME.pid and wait up to 20 s (then
# KILL); then end whatever is left of its process group (start_daemon makes each daemon a
# group leader), so no child outlives it. Removes the PID file. Never fails.
stop_pidfile() {
    local name="$1" f="$HITHER_CI_DIR/$1.pid" pid pgid
    if ! pid_alive "$f"; then
        [[ -f "$f" ]] && log "$name: not running (stale PID file)"
        rm -f "$f"
        return 0
    fi
    pid=$(cat "$f")
    pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for "! kill -0 $pid" 20; then
        warn "$name (pid $pid) did not stop, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for "! kill -0 $pid" 5 || true
    fi
    if [[ "$pgid" == "$pid" ]] && pgrep -g "$pgid" >/dev/null 2>&1; then
        log "$name: ending the rest of its process group ($(pgrep -g "$pgid" | tr '\n' ' '))"
        kill -TERM -- "-$pgid" 2>/dev/null || true
        wait_for "! pgrep -g $pgid" 10 || kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
    rm -f "$f"
}

# port_owner PORT: print the PID listening on TCP 127.0.0.1:PORT (or on all addresses);
# returns 1 if nothing listens there.
port_owner() {
    local out
    out=$(ss -Hltnp "sport = :$1" 2>/dev/null) || return 1
    [[ -n "$out" ]] || return 1
    grep -o 'pid=[0-9]*' <<<"$out" | head -n1 | cut -d= -f2
    return 0
}

# ensure_test_extra MODULE...: unless CI_PYTHON finds every (top-level) MODULE, pip-install this
# checkout with its test extra into CI_PYTHON (the same versions the README command installs).
ensure_test_extra() {
    local find='import importlib.util as u, sys; m = [a for a in sys.argv[1:] if u.find_spec(a) is None]; print(*m); sys.exit(bool(m))'
    local missing
    missing=$("$CI_PYTHON" -c "$find" "$@" 2>&1) && return 0
    log "$CI_PYTHON lacks $missing: pip install -e '${CI_REPO}[test]'"
    retry timeout 900 "$CI_PYTHON" -m pip install -q --disable-pip-version-check -e "${CI_REPO}[test]" \
        >>"$HITHER_CI_DIR/log/pip.log" 2>&1 || { show_log "$HITHER_CI_DIR/log/pip.log"; return 1; }
    if command -v pyenv >/dev/null; then pyenv rehash >/dev/null 2>&1 || true; fi
    missing=$("$CI_PYTHON" -c "$find" "$@" 2>&1) || { log "still missing after pip install: $missing"; return 1; }
}

# now_ms: milliseconds since the epoch. elapsed T0_MS: the time since T0_MS, as "12.3 s".
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
elapsed() { local ms=$(( $(now_ms) - $1 )); printf '%d.%d s' $((ms / 1000)) $(((ms % 1000) / 100)); }
