#!/usr/bin/env bash
# End to end on kind (for users with Docker; our CI has no Docker engine and does NOT run this script):
# hack/kind-up.sh, then an example MaaSJob applied and waited for, Ready and then Succeeded, with the real
# runtime image running its workers (on CPU, gloo).
#
# Usage: hack/kind-e2e.sh [EXAMPLE]     (make kind-e2e; default examples/large-model-train.yaml)
# KIND_E2E_TIMEOUT (default 15m) bounds each wait. The cluster stays up: `kind delete cluster --name maas`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cluster=${KIND_CLUSTER_NAME:-maas}
context="kind-$cluster"
example=${1:-$root/examples/large-model-train.yaml}
timeout=${KIND_E2E_TIMEOUT:-15m}

bash "$root/hack/kind-up.sh"

job=$(kubectl --context "$context" create --dry-run=client -f "$example" -o jsonpath='{.metadata.name}')
printf '\n\033[1m== %s\033[0m\n' "kubectl apply -f $example (MaaSJob $job), then wait for Ready and Succeeded"
kubectl --context "$context" apply -f "$example"

show_state() {
  echo "kind-e2e: $job did not get there; its status, pods and the operator's log follow" >&2
  kubectl --context "$context" get maasjob "$job" -o yaml >&2 || true
  kubectl --context "$context" get pods -l "maas.dev/job=$job" -o wide >&2 || true
  kubectl --context "$context" -n maas-system logs deployment/maas-maas-operator --tail=100 >&2 || true
}
for condition in Ready Succeeded; do
  if ! kubectl --context "$context" wait --for="condition=$condition" --timeout="$timeout" "maasjob/$job"; then
    show_state
    exit 1
  fi
done
kubectl --context "$context" get maasjob "$job" -o wide
echo "kind-e2e: $job succeeded"
