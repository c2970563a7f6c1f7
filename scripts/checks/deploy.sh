#!/usr/bin/env bash
# Checks deploy/ in well under a minute, without Docker or a cluster:
#  1. kubeconform (a Go module) validates the Kubernetes manifests, strictly, against the
#     Kubernetes 1.37 JSON schemas shipped in the PyPI package kubernetes-validate (offline);
#  2. scripts/checks/deploy_check.py runs the image's entrypoint and the manifest's duro
#     container with their exact arguments, environment and user, and checks references.
# Needs Go, the repository's .venv (scripts/test.sh makes it) and target/debug/duro.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURO_BIN="${DURO_BIN:-$PWD/target/debug/duro}"
[ -x "$DURO_BIN" ] || cargo build -q -p duro
PY=.venv/bin/python
[ -x "$PY" ] || python3 -m venv .venv
TOOLS="$PWD/target/tools"
KUBECONFORM_VERSION=v0.7.0
KUBE_SCHEMAS_VERSION=1.37.0   # kubernetes-validate release = Kubernetes schema version
if [ ! -x "$TOOLS/kubeconform-$KUBECONFORM_VERSION" ]; then
  GOBIN="$TOOLS/gobin" go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  mkdir -p "$TOOLS"
  mv "$TOOLS/gobin/kubeconform" "$TOOLS/kubeconform-$KUBECONFORM_VERSION"
fi
"$PY" -c "import kubernetes_validate" 2>/dev/null || "$PY" -m pip install --quiet "kubernetes-validate==$KUBE_SCHEMAS_VERSION"
SCHEMAS="$TOOLS/k8s-schemas-$KUBE_SCHEMAS_VERSION"
if [ ! -f "$SCHEMAS/_definitions.json" ]; then
  # Its schemas refer to "/api/_definitions.json"; kubeconform needs a file URL there.
  src="$("$PY" -c 'import kubernetes_validate, os; print(os.path.dirname(kubernetes_validate.__file__))')/kubernetes-json-schema/v$KUBE_SCHEMAS_VERSION-local-strict"
  mkdir -p "$SCHEMAS.tmp"
  for f in "$src"/*.json; do
    sed "s#\"/api/_definitions.json#\"file://$SCHEMAS/_definitions.json#g" "$f" > "$SCHEMAS.tmp/$(basename "$f")"
  done
  rm -rf "$SCHEMAS" && mv "$SCHEMAS.tmp" "$SCHEMAS"
fi
"$TOOLS/kubeconform-$KUBECONFORM_VERSION" -strict -summary \
  -schema-location "$SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" deploy/kubernetes
# In a network namespace of its own (as root) the real ports 4001/7071 are used even when
# a duro already runs on this machine.
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  DURO_DEPLOY_NETNS=1 unshare -n "$PY" scripts/checks/deploy_check.py "$DURO_BIN"
else
  "$PY" scripts/checks/deploy_check.py "$DURO_BIN"
fi
