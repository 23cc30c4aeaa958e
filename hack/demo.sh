#!/usr/bin/env bash
# The README's demo (`make demo`): the embedded local cluster, the MaaSJob CRD, the examples checked by the
# real API server and planned on the cluster's GPU nodes, then the operator running one of them to Ready.
# Cluster and operator keep running afterwards; `make cluster-down` stops both.
# MAAS_VENV=<folder> uses that virtual environment as it is (no editable re-install into it).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${MAAS_VENV:-$(bash hack/ensure-venv.sh)}
bin_dir=$(bash hack/build-control-plane.sh | tail -n 1)
export PATH="$bin_dir:$venv/bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The job the operator runs (examples/large-model-train.yaml: 3 stages x 2 replicas, one GPU per worker).
demo_example=examples/large-model-train.yaml
demo_job=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])' \
  "$demo_example")

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
eval "$(python -m maas_devcluster up | tail -n 1)"
kubectl get nodes -L nvidia.com/gpu.product,topology.maas.dev/rack,topology.maas.dev/block

step "Installing the MaaSJob CRD (generated from the API models)"
kubectl apply --server-side --force-conflicts -f crds/maasjob.yaml
kubectl wait --for condition=Established --timeout=60s crd/maasjobs.maas.dev

step "The API server rejects an invalid MaaSJob with the rule's message"
kubectl apply -f tests/manifests/invalid/serve-without-serving.yaml 2>&1 | sed 's/^/  /' || true

step "The API server accepts every example (server-side dry run: only one of them will run)"
kubectl get nodes -o yaml > "$work/nodes.yaml"
for example in examples/*.yaml; do
  grep -q '^kind: MaaSJob' "$example" && kubectl apply --dry-run=server -f "$example"
done

for example in examples/*.yaml; do
  grep -q '^kind: MaaSJob' "$example" || continue
  step "maas plan -f $example (on the cluster's nodes)"
  # Exit status 3 means "cannot be placed": the demo shows the planner's reason and carries on.
  maas plan -f "$example" --nodes "$work/nodes.yaml" -o table || echo "  (exit status $?)"
done

step "Starting the operator (python -m maas_operator, in the background)"
bash hack/local-operator.sh start

step "kubectl apply -f $demo_example, and wait until the job is Ready"
kubectl apply -f "$demo_example"
started=$SECONDS
if ! kubectl wait --for condition=Ready --timeout=120s "maasjob/$demo_job"; then
  echo "  the job did not become Ready; its status and the operator's log follow" >&2
  kubectl get maasjob "$demo_job" -o yaml >&2
  bash hack/local-operator.sh status >&2 || true
  exit 1
fi
echo "  Ready $((SECONDS - started)) s after the apply"
kubectl get maasjobs -o wide

step "The plan the operator made (status.plan; the whole plan is in ConfigMap $demo_job-plan)"
kubectl get maasjob "$demo_job" -o jsonpath='{range .status.plan.stages[*]}stage {.index}: {.units} on {.gpus} GPUs{"\n"}{end}'
kubectl get maasjob "$demo_job" -o jsonpath='schedule {.status.plan.schedule}, {.status.plan.microbatches} microbatches, estimated bubble {.status.plan.estimatedBubble}{"\n"}'
kubectl get pods -l "maas.dev/job=$demo_job" -o custom-columns='WORKER:.metadata.name,REPLICA:.metadata.labels.maas\.dev/replica,STAGE:.metadata.labels.maas\.dev/stage,NODE:.spec.nodeName,PHASE:.status.phase'

step "Conditions, and the story in events (kubectl describe maasjob $demo_job)"
kubectl get maasjob "$demo_job" -o jsonpath='{range .status.conditions[*]}{.type}={.status}{"\t"}({.reason}){"\t"}{.message}{"\n"}{end}' \
  | column -t -s $'\t'
kubectl describe maasjob "$demo_job" | sed -n '/^Events:/,$p'

step "Done. The cluster and the operator are still running:"
echo "  export KUBECONFIG=$KUBECONFIG    # then: kubectl get maasjobs, kubectl get pods"
echo "  operator log: $(dirname "$KUBECONFIG")/logs/operator.log"
echo "  make cluster-down    # stops the operator and the cluster"
