#!/usr/bin/env bash
# Checks deploy/ in about a minute (once helm and kubeconform are built), without Docker or a
# cluster:
#  1. the Helm chart deploy/helm/duro: `helm lint --strict`, rendered with the example values
#     (must equal the committed deploy/kubernetes/app-with-duro.yaml, which is generated from
#     it), the defaults, every deploy/helm/duro/ci/*-values.yaml and the shared-PostgreSQL
#     example deploy/helm/examples/postgres-shared.yaml; values Duro would refuse (a link key
#     under 16 bytes, a bad task hub) or that cannot work (two replicas on one SQLite file)
#     must fail to render;
#  2. kubeconform (a Go module) validates the manifests and every rendering, strictly, against
#     the Kubernetes 1.37 JSON schemas shipped in the PyPI package kubernetes-validate (offline);
#  3. scripts/checks/deploy_check.py runs the image's entrypoint and each rendering's duro
#     container with their exact arguments, environment (the rendered secrets) and user,
#     answers the HTTP probes, and checks references.
# Needs Go, the repository's .venv (scripts/test.sh makes it) and target/debug/duro. Helm is
# built from its Go module once (about 6 minutes on 2 cores) and kept in target/tools.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURO_BIN="${DURO_BIN:-$PWD/target/debug/duro}"
[ -x "$DURO_BIN" ] || cargo build -q -p duro
PY=.venv/bin/python
[ -x "$PY" ] || python3 -m venv .venv
TOOLS="$PWD/target/tools"
KUBECONFORM_VERSION=v0.7.0
HELM_VERSION=v4.3.2
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
if [ ! -x "$TOOLS/helm-$HELM_VERSION" ]; then
  GOBIN="$TOOLS/gobin" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  mkdir -p "$TOOLS"
  mv "$TOOLS/gobin/helm" "$TOOLS/helm-$HELM_VERSION"
fi
HELM="$TOOLS/helm-$HELM_VERSION"
CHART=deploy/helm/duro
RENDERED="$TOOLS/helm-rendered"
rm -rf "$RENDERED" && mkdir -p "$RENDERED"
"$HELM" lint --strict "$CHART" -f deploy/helm/examples/orders.yaml
bash deploy/helm/render-example.sh "$HELM" "$RENDERED/app-with-duro.yaml"
if ! diff -u deploy/kubernetes/app-with-duro.yaml "$RENDERED/app-with-duro.yaml"; then
  echo "deploy/kubernetes/app-with-duro.yaml is not what the chart renders: run bash deploy/helm/render-example.sh $HELM" >&2
  exit 1
fi
"$HELM" template defaults "$CHART" > "$RENDERED/defaults.yaml"
# The PostgreSQL renderings go to postgres/: deploy_check.py runs them against the test server
# (DURO_TEST_PG_URL), every replica at once on one task hub, outside the private network namespace.
mkdir -p "$RENDERED/postgres"
for values in "$CHART"/ci/*-values.yaml; do
  name="$(basename "$values" -values.yaml)"
  out="$RENDERED/$name.yaml"
  case "$name" in postgres*) out="$RENDERED/postgres/$name.yaml" ;; esac
  "$HELM" lint --strict "$CHART" -f "$values"
  "$HELM" template "ci-$name" "$CHART" -f "$values" > "$out"
done
"$HELM" lint --strict "$CHART" -f deploy/helm/examples/postgres-shared.yaml
"$HELM" template orders "$CHART" -f deploy/helm/examples/postgres-shared.yaml > "$RENDERED/postgres/postgres-shared.yaml"
refuse() { # refuse WHY HELM-ARGS...: the chart must not render these values
  local why=$1
  shift
  if "$HELM" template refused "$CHART" "$@" > /dev/null 2>&1; then
    echo "the chart rendered $why" >&2
    exit 1
  fi
}
refuse "a link key shorter than Duro's minimum (16 bytes)" --set secrets.linkKeys=too-short
refuse "two replicas on one SQLite file" --set replicas=2
refuse "PostgreSQL without a URL or Secret" --set storage.backend=postgres
refuse "a task hub Duro refuses" --set storage.backend=postgres --set storage.postgres.url=postgres://h/db \
  --set storage.postgres.taskHub=Bad-Hub
refuse "an unknown storage backend" --set storage.backend=mysql
"$TOOLS/kubeconform-$KUBECONFORM_VERSION" -strict -summary \
  -schema-location "$SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" deploy/kubernetes "$RENDERED"
# In a network namespace of its own (as root) the real ports 4001/7071 are used even when
# a duro already runs on this machine.
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  DURO_DEPLOY_NETNS=1 unshare -n "$PY" scripts/checks/deploy_check.py "$DURO_BIN" "$RENDERED"/*.yaml
else
  "$PY" scripts/checks/deploy_check.py "$DURO_BIN" "$RENDERED"/*.yaml
fi
if [ -n "${DURO_TEST_PG_URL:-}" ]; then
  DURO_DEPLOY_PG_URL="$DURO_TEST_PG_URL" "$PY" scripts/checks/deploy_check.py "$DURO_BIN" "$RENDERED"/postgres/*.yaml
else
  echo "deploy: DURO_TEST_PG_URL is not set (scripts/pg.sh starts a server): the PostgreSQL renderings were not run" >&2
  exit 1
fi
