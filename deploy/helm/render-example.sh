#!/usr/bin/env bash
# Writes deploy/kubernetes/app-with-duro.yaml from the chart (release "orders", values
# deploy/helm/examples/orders.yaml). Usage: render-example.sh HELM [OUTPUT]
# (scripts/checks/deploy.sh fails when the committed file differs from this rendering).
set -euo pipefail
cd "$(dirname "$0")/../.."
helm_bin="$1"
out="${2:-deploy/kubernetes/app-with-duro.yaml}"
{
  cat <<'HEADER'
# An application pod with Duro as its sidecar, generated from the Helm chart deploy/helm/duro
# (do not edit; change the chart or deploy/helm/examples/orders.yaml, then run
#  bash deploy/helm/render-example.sh <helm>). The app talks to Duro over loopback (gRPC
# localhost:4001 with the API token and TLS); the HTTP port 7071 serves the management API
# (system key required), /healthz and /readyz (the probes) and /metrics. The SQLite history
# lives on a PersistentVolumeClaim; one replica per volume. Replace the Secret's values
# (e.g. `openssl rand -hex 32` each) and the TLS placeholders before applying it.
HEADER
  "$helm_bin" template orders deploy/helm/duro -f deploy/helm/examples/orders.yaml
} > "$out"
