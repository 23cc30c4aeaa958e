#!/usr/bin/env bash
# Builds the local control plane (etcd, Kubernetes, kwok, helm) and our kstatus tool from Go modules into a
# versioned cache folder.
#
# Usage: hack/build-control-plane.sh [--print-bin-dir]
# Builds only what is missing or out of date; the last line printed is the folder holding the binaries.
# Each binary is keyed by its own inputs: the go.mod/go.sum of its module under hack/tools (comments aside), its
# package and its link flags (which carry the version). A version bump rebuilds exactly the binaries it touches,
# and adding a component never rebuilds the others.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools="$here/tools"
# shellcheck source=tools/versions.env
source "$tools/versions.env"

# The folder changes only with the Go toolchain (a new Go may produce different binaries from the same inputs).
go_version=$(go env GOVERSION 2>/dev/null || echo unknown-go)
bin_dir="${MAAS_CACHE_DIR:-$HOME/.cache/maas-operator}/control-plane/${go_version}/bin"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "$bin_dir"
  exit 0
fi

mkdir -p "$bin_dir"
export CGO_ENABLED=0

k8s_minor=${KUBERNETES_VERSION#v1.}
k8s_minor=${k8s_minor%%.*}
k8s_version_flags="-X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION}
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${k8s_minor}
  -X k8s.io/client-go/pkg/version.gitVersion=${KUBERNETES_VERSION}
  -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${k8s_minor}"

# The key of one binary: its module's pins (comments do not count: editing one must not cost a rebuild),
# our own Go sources in the module folder if it has any (kstatus), its package and its link flags. Never the
# checkout's path (grep -h), so every clone and worktree shares the cached binaries.
binary_key() {
  local module=$1 package=$2 ldflags=$3
  {
    grep -h -v -E '^\s*(#|//)' "$tools/$module/go.mod" "$tools/$module/go.sum"
    find "$tools/$module" -maxdepth 1 -name '*.go' -print0 | sort -z | xargs -0 -r cat
    echo "$package $ldflags"
  } | sha256sum | cut -c1-16
}

# build NAME MODULE_DIR PACKAGE [EXTRA_LDFLAGS]
build() {
  local name=$1 module=$2 package=$3 extra_ldflags=${4:-}
  local key stamp="$bin_dir/.$name.key"
  key=$(binary_key "$module" "$package" "$extra_ldflags")
  if [[ -x "$bin_dir/$name" && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    echo "[control-plane] $name: cached"
    return
  fi
  echo "[control-plane] building $name from $package (a cold build takes minutes on 2 cores) ..."
  local started=$SECONDS
  # Build under a temporary name so an interrupted build never leaves a half-written binary behind.
  (cd "$tools/$module" && go build -trimpath -ldflags "-s -w $extra_ldflags" -o "$bin_dir/.$name.tmp" "$package")
  mv "$bin_dir/.$name.tmp" "$bin_dir/$name"
  echo "$key" >"$stamp"
  echo "[control-plane] built $name in $((SECONDS - started)) s"
}

build etcd etcd go.etcd.io/etcd/server/v3
build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}"
build kube-apiserver kubernetes k8s.io/kubernetes/cmd/kube-apiserver "$k8s_version_flags"
build kube-controller-manager kubernetes k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_version_flags"
build kube-scheduler kubernetes k8s.io/kubernetes/cmd/kube-scheduler "$k8s_version_flags"
build kubectl kubernetes k8s.io/kubernetes/cmd/kubectl "$k8s_version_flags"
build helm helm helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
# Not part of the control plane: our small command around Flux's kstatus library, for the GitOps tests.
build kstatus kstatus maas.dev/hack/tools/kstatus "-X main.cliUtilsVersion=${CLI_UTILS_VERSION}"
echo "$bin_dir"
