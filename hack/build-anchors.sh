#!/usr/bin/env bash
# Builds the scale benchmark's anchors (Kubeflow's training-operator and JobSet) from Go modules into a cache.
#
# Usage: hack/build-anchors.sh [--print-bin-dir | --print-module-dir NAME]
# Builds only what is missing or out of date; the last line printed is the folder holding the binaries.
# --print-module-dir prints the anchor's module folder in the Go module cache (downloaded if missing): the
# benchmark reads the anchor's CRDs and webhook manifests from there, so the repository holds none of them.
# A binary is keyed like the control plane's: its module's pins (comments aside), its package and link flags.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools="$here/tools"
# shellcheck source=tools/versions.env
source "$tools/versions.env"

go_version=$(go env GOVERSION 2>/dev/null || echo unknown-go)
bin_dir="${MAAS_CACHE_DIR:-$HOME/.cache/maas-operator}/anchors/${go_version}/bin"

# NAME -> the module under hack/tools, the main package, the Go module whose files (CRDs, webhooks) we read.
declare -A module=([training-operator]=training-operator [jobset]=jobset)
declare -A package=([training-operator]=github.com/kubeflow/training-operator/cmd/training-operator.v1
  [jobset]=sigs.k8s.io/jobset)
declare -A source_module=([training-operator]=github.com/kubeflow/training-operator [jobset]=sigs.k8s.io/jobset)
declare -A ldflags=([training-operator]=""
  [jobset]="-X sigs.k8s.io/jobset/pkg/version.GitVersion=${JOBSET_VERSION}")

case "${1:-}" in
--print-bin-dir)
  echo "$bin_dir"
  exit 0
  ;;
--print-module-dir)
  name=${2:?usage: --print-module-dir training-operator|jobset}
  [[ -n "${module[$name]:-}" ]] || { echo "unknown anchor '$name' (training-operator, jobset)" >&2; exit 2; }
  cd "$tools/${module[$name]}" && go mod download "${source_module[$name]}" && go list -m -f '{{.Dir}}' "${source_module[$name]}"
  exit 0
  ;;
"") ;;
*)
  echo "usage: $0 [--print-bin-dir | --print-module-dir NAME]" >&2
  exit 2
  ;;
esac

mkdir -p "$bin_dir"
export CGO_ENABLED=0

binary_key() {
  local mod=$1 pkg=$2 flags=$3
  { grep -v -E '^\s*(#|//)' "$tools/$mod/go.mod" "$tools/$mod/go.sum"; echo "$pkg $flags"; } | sha256sum | cut -c1-16
}

build() {
  local name=$1 key stamp="$bin_dir/.$1.key"
  key=$(binary_key "${module[$name]}" "${package[$name]}" "${ldflags[$name]}")
  if [[ -x "$bin_dir/$name" && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    echo "[anchors] $name: cached"
    return
  fi
  echo "[anchors] building $name from ${package[$name]} (a cold build takes about 9 minutes on 2 cores) ..."
  local started=$SECONDS
  (cd "$tools/${module[$name]}" &&
    go build -trimpath -ldflags "-s -w ${ldflags[$name]}" -o "$bin_dir/.$name.tmp" "${package[$name]}")
  mv "$bin_dir/.$name.tmp" "$bin_dir/$name"
  echo "$key" >"$stamp"
  echo "[anchors] built $name in $((SECONDS - started)) s"
}

build training-operator
build jobset
echo "$bin_dir"
