#!/usr/bin/env bash
# The README's demo (`make demo`): the embedded local cluster, the MaaSJob CRD, the examples checked by the
# real API server and planned on the cluster's GPU nodes, then the operator running one of them.
# Where this machine can run the real node (root, overlayfs, cgroups), the training example really trains
# there to Succeeded, and the same model serves one prediction; elsewhere the job runs on kwok's simulated
# GPU nodes to Ready, and the demo says why. Cluster and operator keep running; `make cluster-down` stops both.
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

real_node=""
if python -m maas_devcluster check-real-node >/dev/null 2>"$work/why"; then
  real_node=1
  step "Starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) and the real node"
else
  step "Starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
  echo "  kwok-only: pods are simulated, because $(sed 's/^\[dev-cluster\] error: //' "$work/why")"
fi
eval "$(python -m maas_devcluster up ${real_node:+--real-node} | tail -n 1)"
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

# The example, changed only where the real node needs it: no GPUs (gloo on CPU), its node selector, and enough
# steps (the tiny model trains ~10 steps/s here) for the workers' progress to show while they train.
demo_steps=600
on_real_node() {
  DEMO_STEPS=$demo_steps python - "$@" <<'PYTHON'
import os, sys, yaml
job = yaml.safe_load(open(sys.argv[1]))
spec = job["spec"]
spec["resources"]["gpus"] = 0
spec.setdefault("placement", {})["nodeSelector"] = {"maas.dev/real-node": "true"}
if len(sys.argv) > 2:  # a Serve job of the same model
    job["metadata"]["name"] = sys.argv[2]
    spec["mode"] = "Serve"
    spec["parallelism"] = {"replicas": 1}
    spec["serving"] = {"port": 8080}
    for train_only in ("training", "data", "checkpoint"):
        spec.pop(train_only, None)
else:
    spec["training"]["steps"] = int(os.environ["DEMO_STEPS"])
print(yaml.safe_dump(job, sort_keys=False))
PYTHON
}

if [[ -n "$real_node" ]]; then
  step "kubectl apply: $demo_example on the real node (gpus: 0, $demo_steps steps); kubectl get mj -w until Succeeded"
  on_real_node "$demo_example" >"$work/train.yaml"
  kubectl apply -f "$work/train.yaml"
  started=$SECONDS
  kubectl get maasjob "$demo_job" --watch &
  watch_pid=$!
  if ! kubectl wait --for condition=Succeeded --timeout=600s "maasjob/$demo_job" >/dev/null; then
    kill "$watch_pid" 2>/dev/null || true
    echo "  the job did not succeed; its status and the operator's log follow" >&2
    kubectl get maasjob "$demo_job" -o yaml >&2
    bash hack/local-operator.sh status >&2 || true
    exit 1
  fi
  sleep 1
  kill "$watch_pid" 2>/dev/null || true
  wait "$watch_pid" 2>/dev/null || true
  echo "  Succeeded $((SECONDS - started)) s after the apply"
  kubectl get maasjob "$demo_job" -o jsonpath='  final progress (read from the workers): step {.status.progress.step}/{.status.progress.totalSteps}, loss {.status.progress.loss}{"\n"}'
else
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
fi

step "The plan the operator made (status.plan; the whole plan is in ConfigMap $demo_job-plan)"
kubectl get maasjob "$demo_job" -o jsonpath='{range .status.plan.stages[*]}stage {.index}: {.units} on {.gpus} GPUs{"\n"}{end}'
kubectl get maasjob "$demo_job" -o jsonpath='schedule {.status.plan.schedule}, {.status.plan.microbatches} microbatches, estimated bubble {.status.plan.estimatedBubble}{"\n"}'
kubectl get pods -l "maas.dev/job=$demo_job" -o custom-columns='WORKER:.metadata.name,REPLICA:.metadata.labels.maas\.dev/replica,STAGE:.metadata.labels.maas\.dev/stage,NODE:.spec.nodeName,PHASE:.status.phase'

step "Conditions, and the story in events (kubectl describe maasjob $demo_job)"
kubectl get maasjob "$demo_job" -o jsonpath='{range .status.conditions[*]}{.type}={.status}{"\t"}({.reason}){"\t"}{.message}{"\n"}{end}' \
  | column -t -s $'\t'
kubectl describe maasjob "$demo_job" | sed -n '/^Events:/,$p'

if [[ -n "$real_node" ]]; then
  serve_job="$demo_job-serve"
  step "Serving the same model: a Serve job on the real node, and one prediction sent to its endpoint"
  on_real_node "$demo_example" "$serve_job" >"$work/serve.yaml"
  kubectl apply -f "$work/serve.yaml"
  kubectl wait --for condition=Ready --timeout=300s "maasjob/$serve_job"
  # No kube-proxy on the real node: the endpoint Service's EndpointSlice names the entry worker's address.
  address=$(kubectl get endpointslices -l "kubernetes.io/service-name=$serve_job-endpoint" \
    -o jsonpath='{.items[0].endpoints[0].addresses[0]}')
  body='{"inputs": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}'
  echo "  POST http://$address:8080/v1/predict $body"
  python - "$address" "$body" <<'PYTHON'
import sys, urllib.request
request = urllib.request.Request(
    f"http://{sys.argv[1]}:8080/v1/predict", data=sys.argv[2].encode(), headers={"Content-Type": "application/json"}
)
print("  ->", urllib.request.urlopen(request, timeout=30).read().decode())
PYTHON
fi

step "Done. The cluster and the operator are still running:"
echo "  export KUBECONFIG=$KUBECONFIG    # then: kubectl get maasjobs, kubectl get pods"
echo "  operator log: $(dirname "$KUBECONFIG")/logs/operator.log"
echo "  make cluster-down    # stops the operator and the cluster"
