# shellcheck shell=bash
# Endpoints of the local stack (deploy/local/stack.sh), for workers, tests and scripts.
#
#   source deploy/local/env.sh
#
# Values already set in the environment win (point the tests at another
# stack that way), except the AWS_* variables, which always mirror the S3_*
# ones so that SDKs reading AWS_* talk to the same store as the rest.
#
# The S3 keys below are TEST-ONLY credentials for the local SeaweedFS on
# 127.0.0.1: stack.sh writes them into SeaweedFS's identity config, so any
# other key is refused. They protect nothing and must never be used elsewhere.

_audit_env_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

AUDIT_REPO_ROOT="$(cd "$_audit_env_here/../.." && pwd)"
export AUDIT_REPO_ROOT
# All state (data, logs, pid files) of the local stack.
export AUDIT_STACK_DIR="${AUDIT_STACK_DIR:-$AUDIT_REPO_ROOT/.local}"

# Kafka API (tansu).
export AUDIT_KAFKA_PORT="${AUDIT_KAFKA_PORT:-9092}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:$AUDIT_KAFKA_PORT}"
export AUDIT_KAFKA_BROKERS="${AUDIT_KAFKA_BROKERS:-$KAFKA_BROKERS}"
export AUDIT_TOPIC_PREFIX="${AUDIT_TOPIC_PREFIX:-audit.}"
export AUDIT_TOPIC_PARTITIONS="${AUDIT_TOPIC_PARTITIONS:-4}"

# ClickHouse (HTTP interface; native TCP on AUDIT_CLICKHOUSE_TCP_PORT).
export AUDIT_CLICKHOUSE_HTTP_PORT="${AUDIT_CLICKHOUSE_HTTP_PORT:-8123}"
export AUDIT_CLICKHOUSE_TCP_PORT="${AUDIT_CLICKHOUSE_TCP_PORT:-9000}"
export CLICKHOUSE_URL="${CLICKHOUSE_URL:-http://127.0.0.1:$AUDIT_CLICKHOUSE_HTTP_PORT}"
export CLICKHOUSE_DATABASE="${CLICKHOUSE_DATABASE:-audit}"
export CLICKHOUSE_USER="${CLICKHOUSE_USER:-default}"
export CLICKHOUSE_PASSWORD="${CLICKHOUSE_PASSWORD:-}"
export AUDIT_CLICKHOUSE_URL="${AUDIT_CLICKHOUSE_URL:-$CLICKHOUSE_URL}"
export AUDIT_CLICKHOUSE_DATABASE="${AUDIT_CLICKHOUSE_DATABASE:-$CLICKHOUSE_DATABASE}"

# S3 (SeaweedFS, path-style addressing, plain HTTP).
export AUDIT_S3_PORT="${AUDIT_S3_PORT:-8333}"
# SeaweedFS's other listeners (weed server: master, volume server, filer; each gRPC port
# defaults to its HTTP port + 10000, as weed does). Set them all to run a second stack.
export AUDIT_S3_GRPC_PORT="${AUDIT_S3_GRPC_PORT:-$((AUDIT_S3_PORT + 10000))}"
export AUDIT_S3_MASTER_PORT="${AUDIT_S3_MASTER_PORT:-9333}"
export AUDIT_S3_MASTER_GRPC_PORT="${AUDIT_S3_MASTER_GRPC_PORT:-$((AUDIT_S3_MASTER_PORT + 10000))}"
export AUDIT_S3_VOLUME_PORT="${AUDIT_S3_VOLUME_PORT:-8080}"
export AUDIT_S3_VOLUME_GRPC_PORT="${AUDIT_S3_VOLUME_GRPC_PORT:-$((AUDIT_S3_VOLUME_PORT + 10000))}"
export AUDIT_S3_FILER_PORT="${AUDIT_S3_FILER_PORT:-8888}"
export AUDIT_S3_FILER_GRPC_PORT="${AUDIT_S3_FILER_GRPC_PORT:-$((AUDIT_S3_FILER_PORT + 10000))}"
export S3_ENDPOINT="${S3_ENDPOINT:-http://127.0.0.1:$AUDIT_S3_PORT}"
export S3_BUCKET="${S3_BUCKET:-audit-archive}"
# The privacy key store's bucket (docs/privacy.md): its own, never the archive's.
export AUDIT_SUBJECT_KEYS_BUCKET="${AUDIT_SUBJECT_KEYS_BUCKET:-audit-subject-keys}"
export S3_REGION="${S3_REGION:-us-east-1}"
export S3_ACCESS_KEY_ID="${S3_ACCESS_KEY_ID:-audit-local-test-access-key}"
export S3_SECRET_ACCESS_KEY="${S3_SECRET_ACCESS_KEY:-audit-local-test-secret-NOT-A-SECRET}"
export AUDIT_S3_ENDPOINT="${AUDIT_S3_ENDPOINT:-$S3_ENDPOINT}"
export AUDIT_S3_BUCKET="${AUDIT_S3_BUCKET:-$S3_BUCKET}"
# Names read by AWS SDKs and by object_store's AmazonS3Builder::from_env().
export AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY_ID"
export AWS_SECRET_ACCESS_KEY="$S3_SECRET_ACCESS_KEY"
export AWS_REGION="$S3_REGION"
export AWS_DEFAULT_REGION="$S3_REGION"
export AWS_ENDPOINT="$S3_ENDPOINT"
export AWS_ENDPOINT_URL="$S3_ENDPOINT"
export AWS_ALLOW_HTTP=true
export AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false
unset AWS_SESSION_TOKEN AWS_PROFILE

unset _audit_env_here
