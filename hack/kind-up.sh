#!/usr/bin/env bash
# A kind cluster with the operator installed by its Helm chart, for users with Docker.
# (Our CI has no Docker engine and does NOT run this script; it only passes shellcheck there.)
#
# Usage: hack/kind-up.sh     (make kind-up)
# Creates the kind cluster $KIND_CLUSTER_NAME (default maas) unless it exists, builds both images from the
# Dockerfile, loads them into the cluster, advertises $KIND_FAKE_GPUS (default 4) nvidia.com/gpu on each
# worker node so the planner can place jobs (the workers run on CPU with gloo; a real GPU node needs the
# NVIDIA device plugin instead), and installs the chart. Every kubectl and helm call names the kind context,
# so no other cluster is touched. KIND_NODE_IMAGE picks the node image (default: kind's own).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cluster=${KIND_CLUSTER_NAME:-maas}
context="kind-$cluster"
tag=${MAAS_IMAGE_TAG:-dev}
fake_gpus=${KIND_FAKE_GPUS:-4}
release=maas
namespace=maas-system

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is not on PATH" >&2; exit 1; }
done

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  say "kind cluster $cluster exists; reusing it"
else
  say "Creating kind cluster $cluster (one control-plane node, two workers)"
  node_image=()
  [[ -n "${KIND_NODE_IMAGE:-}" ]] && node_image=(--image "$KIND_NODE_IMAGE")
  kind create cluster --name "$cluster" "${node_image[@]}" --wait 120s --config - <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
YAML
fi

say "Building the images (Dockerfile targets operator and runtime, tag $tag)"
docker build --target operator -t "maas-operator:$tag" "$root"
docker build --target runtime -t "maas-runtime:$tag" "$root"

say "Loading the images into $cluster"
kind load docker-image --name "$cluster" "maas-operator:$tag" "maas-runtime:$tag"

say "Advertising $fake_gpus nvidia.com/gpu on each worker node (CPU-only stand-ins)"
for node in $(kubectl --context "$context" get nodes -l '!node-role.kubernetes.io/control-plane' -o name); do
  kubectl --context "$context" patch "$node" --subresource=status --type=json \
    -p "[{\"op\": \"add\", \"path\": \"/status/capacity/nvidia.com~1gpu\", \"value\": \"$fake_gpus\"}]"
done

say "Installing the chart (release $release in $namespace)"
# pullPolicy Never: the images exist only inside the kind nodes.
helm --kube-context "$context" upgrade --install "$release" "$root/charts/maas-operator" \
  --namespace "$namespace" --create-namespace \
  --set image.tag="$tag" --set image.pullPolicy=Never \
  --set runtime.image.tag="$tag" --set runtime.image.pullPolicy=Never \
  --wait --timeout 5m
kubectl --context "$context" -n "$namespace" rollout status "deployment/$release-maas-operator" --timeout=120s

say "Ready: kubectl --context $context get maasjobs -A"
