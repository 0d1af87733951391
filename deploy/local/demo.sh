#!/usr/bin/env bash
# The demo: bring up the local stack and all five workers, push a realistic audit stream
# (platform lifecycles: natural-language request → intent → policy → approval → IaC →
# deployment; several teams and users; shared trace ids; some invalid events), then show what
# landed in ClickHouse and verify the chain from both stores.
#
#   deploy/local/demo.sh [run]   (default) everything above; the workers keep running
#   deploy/local/demo.sh stop    stop the demo's workers (SIGTERM: they drain and commit)
#
# ingest also opens its front doors: the HTTP API on 127.0.0.1:19180 (bearer token
# $DEMO_TOKEN, tenant bank-eu) and the OTLP receiver (HTTP 127.0.0.1:19318, gRPC
# 127.0.0.1:19317); the demo posts two events twice with one Idempotency-Key (chained once)
# and one OTLP/JSON span, and shows their trace timeline.
#
# Options through the environment: DEMO_REQUESTS (default 200), DEMO_INVALID (default 12),
# DEMO_TOKEN (default demo-token-change-me).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$HERE/env.sh"
cd "$AUDIT_REPO_ROOT"

DEMO_DIR="$AUDIT_STACK_DIR/demo"
LOGS="$AUDIT_STACK_DIR/logs"
BIN="$AUDIT_REPO_ROOT/target/release"
WORKERS=(ingest enrich chainer sink-clickhouse sink-archive)
CHAIN_ID="audit-demo"
DEMO_TOKEN="${DEMO_TOKEN:-demo-token-change-me}"
HTTP_DOOR="127.0.0.1:19180"
OTLP_HTTP="127.0.0.1:19318"
ARCHIVE_URL="s3://$S3_BUCKET/demo"

log() { printf '\n[demo] %s\n' "$*"; }
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }

health_port() {
  case "$1" in
    ingest) echo 19101 ;; enrich) echo 19102 ;; chainer) echo 19103 ;;
    sink-clickhouse) echo 19104 ;; sink-archive) echo 19105 ;;
  esac
}

running() {
  local pid
  pid="$(cat "$DEMO_DIR/$1.pid" 2>/dev/null)" || return 1
  kill -0 "$pid" 2>/dev/null
}

stop_workers() {
  local w pid
  for w in "${WORKERS[@]}"; do
    if running "$w"; then
      pid="$(cat "$DEMO_DIR/$w.pid")"
      kill -TERM "$pid"
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && { echo "[demo] $w did not stop in 30 s; killing"; kill -KILL "$pid"; }
      echo "[demo] stopped $w"
    fi
    rm -f "$DEMO_DIR/$w.pid"
  done
}

ch() { curl -sS --fail-with-body "$CLICKHOUSE_URL/?database=$CLICKHOUSE_DATABASE" --data-binary "$1"; }

if [ "${1:-run}" = stop ]; then
  stop_workers
  exit 0
fi
[ "${1:-run}" = run ] || die "usage: $0 [run|stop]"

log "starting the local stack"
"$HERE/stack.sh" up

log "building the workers (release)"
cargo build --release --locked --bins -p ingest -p enrich -p chainer -p sink-clickhouse -p sink-archive -p auditctl -p integration-tests

mkdir -p "$DEMO_DIR" "$LOGS"
KEY="$DEMO_DIR/checkpoint-demo-1.pk8"
KEYSET="$DEMO_DIR/keyset.json"
if [ ! -f "$KEY" ]; then
  log "generating the checkpoint signing key (auditctl keygen)"
  "$BIN/auditctl" keygen --key-id demo-1 --out "$KEY" --keyset "$KEYSET"
fi

common=(--kafka-brokers "$AUDIT_KAFKA_BROKERS" --topic-prefix "$AUDIT_TOPIC_PREFIX")
args_for() {
  case "$1" in
    chainer) echo --checkpoint-key-file "$KEY" --checkpoint-key-id demo-1 --chain-id "$CHAIN_ID" \
      --checkpoint-every-events 500 --checkpoint-interval-secs 2 ;;
    sink-clickhouse) echo --clickhouse-url "$CLICKHOUSE_URL" --clickhouse-database "$CLICKHOUSE_DATABASE" --batch-max-age-ms 500 ;;
    sink-archive) echo --archive-url "$ARCHIVE_URL" --s3-endpoint "$S3_ENDPOINT" --s3-allow-http true --segment-max-age-secs 3 --retention-mode off ;;  # the local bucket has no Object Lock (docs/retention.md)
    ingest) echo --http-addr "$HTTP_DOOR" --otlp true --otlp-http-addr "$OTLP_HTTP" --otlp-grpc-addr 127.0.0.1:19317 ;;
    *) echo ;;
  esac
}

# The HTTP door's token table holds only the token's SHA-256 (here through the environment:
# the entry has a space, and only ingest reads it).
AUDIT_INGEST_HTTP_TOKENS="sha256:$(printf '%s' "$DEMO_TOKEN" | sha256sum | cut -d' ' -f1) bank-eu"
export AUDIT_INGEST_HTTP_TOKENS

log "starting the workers (logs in $LOGS/demo-*.log)"
for w in "${WORKERS[@]}"; do
  if running "$w"; then
    echo "[demo] $w already running (pid $(cat "$DEMO_DIR/$w.pid"))"
    continue
  fi
  # shellcheck disable=SC2046 # word splitting of args_for is intended (no spaces in paths used)
  nohup "$BIN/$w" "${common[@]}" --health-addr "127.0.0.1:$(health_port "$w")" $(args_for "$w") \
    >"$LOGS/demo-$w.log" 2>&1 </dev/null &
  echo $! >"$DEMO_DIR/$w.pid"
done
for w in "${WORKERS[@]}"; do
  port="$(health_port "$w")"
  for i in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    running "$w" || { tail -n 30 "$LOGS/demo-$w.log"; die "$w exited"; }
    [ "$i" -eq 240 ] && { tail -n 30 "$LOGS/demo-$w.log"; die "$w not ready after 120 s"; }
    sleep 0.5
  done
  echo "[demo] $w ready (health on 127.0.0.1:$port)"
done

before="$(ch 'SELECT count() FROM audit_events' 2>/dev/null || echo 0)"
log "publishing the demo stream"
out="$("$BIN/demo-producer" --requests "${DEMO_REQUESTS:-200}" --invalid "${DEMO_INVALID:-12}" --seed "$(date +%s)")"
echo "$out"
valid="$(sed -n 's/.*(\([0-9]*\) valid.*/\1/p' <<<"$out")"
[ -n "$valid" ] || die "could not read the number of valid events from the producer"
target=$((before + valid))
t0=$(now_ms)
for i in $(seq 1 600); do
  n="$(ch 'SELECT count() FROM audit_events' 2>/dev/null || echo 0)"
  [ "$n" -ge "$target" ] && break
  [ "$i" -eq 600 ] && die "only $n of $target events reached ClickHouse after 5 minutes (see $LOGS/demo-*.log)"
  sleep 0.5
done
ms=$(($(now_ms) - t0 + 1))
echo "[demo] $valid events through ingest → enrich → chainer → ClickHouse in ${ms} ms after the last publish ack (~$((valid * 1000 / ms)) events/s)"

log "the front doors: two events over HTTP, sent twice with one Idempotency-Key, and one OTLP span"
door_trace="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
door_span="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
key="demo-$(date +%s%N)"
body="$(python3 - "$door_trace" <<'PY'
import json, sys, datetime
t = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
ev = lambda n, a: {"eventType": "manual_change", "timestamp": t, "userId": "user-alice", "teamId": "team-payments",
                   "source": "ops_portal", "category": "change_management", "action": a,
                   "traceId": sys.argv[1], "requestId": "demo-door-%d" % n}
print(json.dumps([ev(1, "open_change_ticket"), ev(2, "close_change_ticket")]))
PY
)"
for attempt in 1 2; do
  resp="$(curl -sS -X POST "http://$HTTP_DOOR/v1/events" -H "Authorization: Bearer $DEMO_TOKEN" \
    -H 'Content-Type: application/json' -H "Idempotency-Key: $key" --data-binary "$body")"
  echo "[demo] POST /v1/events attempt $attempt: $resp"
done
now_ns="$(date +%s%N)"
span="{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{\"stringValue\":\"deploy-controller\"}}]},\"scopeSpans\":[{\"spans\":[{\"traceId\":\"$door_trace\",\"spanId\":\"$door_span\",\"name\":\"apply_change\",\"kind\":2,\"startTimeUnixNano\":\"$now_ns\",\"endTimeUnixNano\":\"$((now_ns + 5000000))\",\"attributes\":[{\"key\":\"enduser.id\",\"value\":{\"stringValue\":\"user-alice\"}}],\"status\":{\"code\":1}}]}]}]}"
echo "[demo] POST /v1/traces (OTLP/JSON): $(curl -sS -X POST "http://$OTLP_HTTP/v1/traces" \
  -H "Authorization: Bearer $DEMO_TOKEN" -H 'Content-Type: application/json' --data-binary "$span")"
for i in $(seq 1 120); do
  n="$(ch "SELECT count() FROM audit_events WHERE trace_id = '$door_trace'" 2>/dev/null || echo 0)"
  [ "$n" -ge 3 ] && break
  [ "$i" -eq 120 ] && echo "[demo] only $n of the 3 door events reached ClickHouse after 60 s"
  sleep 0.5
done
echo "[demo] the door events' trace in ClickHouse (auditctl query trace_timeline; the retried request is stored once):"
"$BIN/auditctl" query trace_timeline --param "trace_id=$door_trace" \
  --clickhouse-url "$CLICKHOUSE_URL" --clickhouse-database "$CLICKHOUSE_DATABASE" --format table || true

log "events by type (ClickHouse)"
ch "SELECT event_type, category, count() AS events, countIf(outcome != 'SUCCESS') AS not_success
    FROM audit_events GROUP BY event_type, category ORDER BY events DESC FORMAT PrettyCompact"

log "one request's timeline, by its trace id"
trace="$(ch "SELECT trace_id FROM audit_events WHERE event_type = 'deployment_completed' ORDER BY event_time_us DESC LIMIT 1")"
ch "SELECT toString(event_time) AS time, event_type, source_component AS source, actor_id, actor_name, team_name, outcome, chain_partition AS p, seq
    FROM audit_events WHERE trace_id = '$trace' ORDER BY event_time_us FORMAT PrettyCompact"

log "dead letters (ingest's rejections by reason)"
curl -s "http://127.0.0.1:$(health_port ingest)/metrics" | grep '^audit_ingest_rejected_total' || echo "(none)"

log "waiting for the archive to hold every chained event"
for i in $(seq 1 120); do
  # Exit 1 (e.g. a tail the archive has not caught up with yet) still prints the report.
  archived="$({ "$BIN/auditctl" verify --source archive --archive-url "$ARCHIVE_URL" --s3-endpoint "$S3_ENDPOINT" \
    --keys "$KEYSET" --chain-id "$CHAIN_ID" --json --quiet 2>/dev/null || true; } |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(sum(p.get("events",0) for p in r.get("partitions",[])))' 2>/dev/null)" ||
    archived=0
  archived="${archived:-0}"
  total="$(ch 'SELECT count() FROM audit_events')"
  [ "$archived" -ge "$total" ] && break
  [ "$i" -eq 120 ] && echo "[demo] the archive holds $archived of $total events after 60 s"
  sleep 0.5
done

log "verifying the chain from ClickHouse and the archive (auditctl verify --source both)"
set +e
"$BIN/auditctl" verify --source both --keys "$KEYSET" --chain-id "$CHAIN_ID" \
  --clickhouse-url "$CLICKHOUSE_URL" --clickhouse-database "$CLICKHOUSE_DATABASE" \
  --archive-url "$ARCHIVE_URL" --s3-endpoint "$S3_ENDPOINT"
rc=$?
set -e
log "the workers keep running; stop them with: deploy/local/demo.sh stop"
exit "$rc"
