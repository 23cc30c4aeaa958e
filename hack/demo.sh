#!/usr/bin/env bash
# The README's demo (`make demo`): the embedded local cluster, the MaaSJob CRD, the examples checked by the
# real API server, and the planner's split and gang placement of each example on the cluster's GPU nodes.
# The cluster keeps running afterwards; `make cluster-down` stops it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$(bash hack/ensure-venv.sh)
bin_dir=$(bash hack/build-control-plane.sh | tail -n 1)
export PATH="$bin_dir:$venv/bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
eval "$(python -m maas_devcluster up | tail -n 1)"
kubectl get nodes -L nvidia.com/gpu.product,topology.maas.dev/rack,topology.maas.dev/block

step "Installing the MaaSJob CRD (generated from the API models)"
kubectl apply --server-side --force-conflicts -f crds/maasjob.yaml
kubectl wait --for condition=Established --timeout=60s crd/maasjobs.maas.dev

step "The API server rejects an invalid MaaSJob with the rule's message"
kubectl apply -f tests/manifests/invalid/serve-without-serving.yaml 2>&1 | sed 's/^/  /' || true

step "Applying the examples"
kubectl get nodes -o yaml > "$work/nodes.yaml"
for example in examples/*.yaml; do
  grep -q '^kind: MaaSJob' "$example" && kubectl apply -f "$example"
done
kubectl get maasjobs

for example in examples/*.yaml; do
  grep -q '^kind: MaaSJob' "$example" || continue
  step "maas plan -f $example (on the cluster's nodes)"
  # Exit status 3 means "cannot be placed": the demo shows the planner's reason and carries on.
  maas plan -f "$example" --nodes "$work/nodes.yaml" -o table || echo "  (exit status $?)"
done

step "Done. The cluster is still running:"
echo "  export KUBECONFIG=$KUBECONFIG    # then: kubectl get maasjobs; make cluster-down to stop"
