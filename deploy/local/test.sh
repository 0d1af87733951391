#!/usr/bin/env bash
# The project's test command: start the local stack, then run the workspace tests.
#
#   deploy/local/test.sh [ARGS...]
#
# Runs `cargo nextest run --workspace --locked ARGS...` (plain `cargo test` when
# cargo-nextest is missing or AUDIT_TEST_RUNNER=cargo), then, when no ARGS are
# given, the doc tests (`cargo test --doc`) and the deployment manifests'
# validation (deploy/k8s/validate.sh). The stack stays up afterwards.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$HERE/env.sh"
cd "$AUDIT_REPO_ROOT"

now() { date +%s; }
log() { printf '[test] %s\n' "$*"; }

t0=$(now)
"$HERE/stack.sh" up
t_stack=$(($(now) - t0))

out_dir="$AUDIT_STACK_DIR/logs"
mkdir -p "$out_dir"
out="$out_dir/test-output.log"
: >"$out"

runner=cargo
if [ "${AUDIT_TEST_RUNNER:-nextest}" = nextest ] && cargo nextest --version >/dev/null 2>&1; then
  runner=nextest
fi

# The whole workspace, unless the arguments pick packages themselves.
scope=(--workspace)
for a in "$@"; do
  case "$a" in
    -p* | --package | --package=* | --workspace | --all) scope=() ;;
  esac
done

rc=0
t1=$(now)
# The crash tests run the real worker binaries as processes (kill -9, SIGSTOP): build them,
# together with the tests so that both see the same unified features (with `--bins`
# alone, dev-dependencies' features differ and the test build compiles half the
# dependency graph a second time: twice the time and the disk).
log "cargo build --workspace --bins --tests --locked"
cargo build --workspace --bins --tests --locked 2>&1 | tee -a "$out" || rc=$?
if [ "$rc" -ne 0 ]; then
  log "build failed; not running the tests"
elif [ "$runner" = nextest ]; then
  log "cargo nextest run ${scope[*]} --locked $*"
  cargo nextest run --no-fail-fast "${scope[@]}" --locked "$@" 2>&1 | tee -a "$out" || rc=$?
  if [ "$rc" -eq 0 ] && [ $# -eq 0 ] && [ "${AUDIT_TEST_DOCTESTS:-1}" = 1 ]; then
    log "cargo test --doc --workspace --locked"
    cargo test --doc --workspace --locked 2>&1 | tee -a "$out" || rc=$?
  fi
else
  log "cargo test ${scope[*]} --locked $*"
  cargo test "${scope[@]}" --locked "$@" 2>&1 | tee -a "$out" || rc=$?
fi
# The deployment manifests (deploy/k8s): Kubernetes schemas, worker options, checkov.
if [ "$rc" -eq 0 ] && [ $# -eq 0 ] && [ "${AUDIT_TEST_MANIFESTS:-1}" = 1 ]; then
  log "deploy/k8s/validate.sh"
  "$AUDIT_REPO_ROOT/deploy/k8s/validate.sh" 2>&1 | tee -a "$out" || rc=$?
fi
t_tests=$(($(now) - t1))

# Totals: nextest's "Summary ... N tests run: P passed, F failed" plus cargo
# test's "test result: ok. P passed; F failed" lines.
read -r passed failed < <(sed 's/\x1b\[[0-9;]*m//g' "$out" | awk '
  /Summary \[/ && /tests? run:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed/) p += $i
      if ($(i + 1) ~ /^failed/) f += $i
    }
  }
  /^test result: / {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed/) p += $i
      if ($(i + 1) ~ /^failed/) f += $i
    }
  }
  END { print p + 0, f + 0 }')

log "stack up ${t_stack}s, build + tests ${t_tests}s ($runner); output also in $out"
if [ "$rc" -eq 0 ]; then
  log "RESULT: PASSED"
else
  log "RESULT: FAILED (exit $rc)"
fi
if [ $((passed + failed)) -gt 0 ]; then
  echo "tests: $passed passed, $failed failed"
else
  log "no test results (build failed, or no test matched)"
fi
exit "$rc"
