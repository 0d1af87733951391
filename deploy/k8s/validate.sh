#!/usr/bin/env bash
# Validates the deployment files without a cluster, Helm, kubectl or Docker:
#
#   deploy/k8s/validate.sh
#
# 1. deploy/k8s/validate.py: every manifest under deploy/k8s/{base,overlays} against the
#    Kubernetes 1.33 schemas (kubernetes-validate, strict), custom kinds against their vendored
#    CRD schemas (crd-schemas/), kustomization files for completeness, and every worker option,
#    TOML key and AUDIT_* variable of the manifests and of deploy/compose/compose.yaml against
#    the workers' Rust sources; KEDA ScaledObjects against config.yaml (groups, topics, brokers,
#    max replicas = partitions); each overlay again rendered (inline patches applied as kustomize
#    does), with the privacy overlay's key files, rules file and rules checked.
# 2. checkov on deploy/k8s (Kubernetes checks) and deploy/docker/Dockerfile. Every finding is
#    either fixed or skipped in the file itself with a reason (checkov.io/skipN annotations,
#    `# checkov:skip=` in the Dockerfile); nothing is skipped here.
#
# The tools come from PyPI, pinned, into a virtualenv that is reused across runs
# (K8S_VALIDATE_VENV, default .local/k8s-validate-venv; `.local/` is git-ignored).
# Exit status: 0 when everything passes, 1 otherwise.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${K8S_VALIDATE_VENV:-$REPO/.local/k8s-validate-venv}"
# Versions this script was last run with (2026-11-30).
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30

log() { printf '[validate] %s\n' "$*"; }

if ! "$VENV/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null \
  || ! "$VENV/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and checkov $CHECKOV_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "checkov==$CHECKOV_VERSION"
fi

log "schemas and configuration (deploy/k8s/validate.py)"
"$VENV/bin/python" "$HERE/validate.py"

cd "$REPO"
# --skip-download: no calls to Prisma Cloud, no account; the built-in checks only.
# Two runs: checkov ignores -f when -d is given.
log "checkov: deploy/k8s"
# crd-schemas/ holds upstream CRDs used as schemas only (we do not deploy them): not scanned.
"$VENV/bin/checkov" --quiet --compact --skip-download --framework kubernetes \
  -d deploy/k8s --skip-path deploy/k8s/crd-schemas
log "checkov: deploy/docker/Dockerfile"
"$VENV/bin/checkov" --quiet --compact --skip-download --framework dockerfile \
  -f deploy/docker/Dockerfile
log "OK"
