#!/usr/bin/env bash
# An S3 endpoint on loopback for the remote-store tests (idempotent): `moto_server` (moto[server],
# from the test extra) on 127.0.0.1:$HITHER_CI_S3_PORT (default 15110), run by $CI_PYTHON.
# Data lives in the server's memory only and nothing is created here: tests create their own
# buckets (unique names: the server outlives a test session).
# Writes to .ci/env.sh: HITHER_TEST_S3_ENDPOINT, AWS_ENDPOINT_URL (same URL), dummy AWS
# credentials, AWS_DEFAULT_REGION=us-east-1, AWS_EC2_METADATA_DISABLED=true.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

D="$HITHER_CI_DIR"
T0=$(now_ms)
PORT="${HITHER_CI_S3_PORT:-15110}"
URL="http://127.0.0.1:$PORT"

ensure_test_extra moto flask boto3 s3fs || die "moto[server]/boto3/s3fs could not be installed"

# The whole S3 path a test takes: bucket, put, get, delete (boto3 with dummy credentials).
s3_check() {
    AWS_ACCESS_KEY_ID=hither AWS_SECRET_ACCESS_KEY=hither AWS_DEFAULT_REGION=us-east-1 \
    AWS_EC2_METADATA_DISABLED=true timeout 30 "$CI_PYTHON" - "$URL" <<'EOF'
import sys, uuid
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1],
                  config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}))
bucket = f"hither-ci-check-{uuid.uuid4().hex[:12]}"
s3.create_bucket(Bucket=bucket)
s3.put_object(Bucket=bucket, Key="k", Body=b"hither")
assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hither"
s3.delete_object(Bucket=bucket, Key="k")
s3.delete_bucket(Bucket=bucket)
EOF
}
answers() { timeout 5 curl -sf -o /dev/null "$URL/"; }

if pid_alive "$D/moto.pid" && answers; then
    log "moto already answers on $URL (pid $(cat "$D/moto.pid"))"
else
    stop_pidfile moto
    if owner=$(port_owner "$PORT"); then
        die "port $PORT is taken by another process (pid ${owner:-?}); set HITHER_CI_S3_PORT"
    fi
    start_daemon moto "$CI_PYTHON" -m moto.server -H 127.0.0.1 -p "$PORT"
    if ! wait_for "curl -sf -o /dev/null '$URL/'" 30; then
        show_log "$D/log/moto.log"
        die "moto_server did not answer on $URL within 30 s"
    fi
    log "moto up on $URL (pid $(cat "$D/moto.pid"))"
fi
s3_check >>"$D/log/moto-check.log" 2>&1 || { show_log "$D/log/moto-check.log"; die "S3 round trip against $URL failed"; }

env_set HITHER_TEST_S3_ENDPOINT "$URL"
env_set AWS_ENDPOINT_URL "$URL"
env_set AWS_ACCESS_KEY_ID hither-ci
env_set AWS_SECRET_ACCESS_KEY hither-ci
env_set AWS_DEFAULT_REGION us-east-1
env_set AWS_EC2_METADATA_DISABLED true
log "setup-s3 done in $(elapsed "$T0")"
