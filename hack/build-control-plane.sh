#!/usr/bin/env bash
# Builds the local cluster from Go modules into a versioned cache folder: the control plane (etcd, Kubernetes,
# kwok, helm) and the real node's components (kubelet, containerd, runc, CNI plugins, CoreDNS, our pause),
# and our kstatus tool for the GitOps tests.
#
# Usage: hack/build-control-plane.sh [--print-bin-dir] [NAME ...]
# Builds only what is missing or out of date (only the NAMEd binaries when some are given); the last line printed
# is the folder holding the binaries. Each binary is keyed by its own inputs: the go.mod/go.sum of its module under
# hack/tools (comments aside) and its Go sources there if any, its package, its link flags (which carry the
# version), its build tags and cgo. A version bump rebuilds exactly the binaries it touches, and adding a
# component never rebuilds the others.
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
only=("$@")

k8s_minor=${KUBERNETES_VERSION#v1.}
k8s_minor=${k8s_minor%%.*}
k8s_version_flags="-X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION}
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${k8s_minor}
  -X k8s.io/client-go/pkg/version.gitVersion=${KUBERNETES_VERSION}
  -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${k8s_minor}"

# The key of one binary: its module's pins (comments do not count: editing one must not cost a rebuild) and
# sources, its package, link flags, tags and cgo. Contents only (grep -h): the checkout's path must not count.
binary_key() {
  local module=$1 package=$2 ldflags=$3 tags=$4 cgo=$5 dir="$tools/$1"
  local pins=("$dir/go.mod")
  [[ -f "$dir/go.sum" ]] && pins+=("$dir/go.sum")
  {
    grep -h -v -E '^\s*(#|//)' "${pins[@]}"
    cat "$dir"/*.go 2>/dev/null || true
    echo "$package $ldflags"
    [[ -z "$tags$cgo" ]] || echo "tags=$tags cgo=$cgo"
  } | sha256sum | cut -c1-16
}

# cgo builds need a C compiler, and runc's seccomp tag needs libseccomp's headers: installed when we are root on
# a Debian-like system, otherwise named with the command that installs them.
require_libseccomp() {
  if pkg-config --exists libseccomp 2>/dev/null && command -v cc >/dev/null; then
    return
  fi
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "[control-plane] installing libseccomp-dev and a C compiler (runc needs them) ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libseccomp-dev gcc libc6-dev pkg-config >/dev/null
    return
  fi
  echo "[control-plane] runc needs libseccomp-dev and a C compiler: run" \
    "'sudo apt-get install -y libseccomp-dev gcc pkg-config' (or your system's equivalent) and retry" >&2
  exit 1
}

# build [--cgo] [--tags "TAG ..."] NAME MODULE_DIR PACKAGE [EXTRA_LDFLAGS]
build() {
  local cgo="" tags=""
  while [[ $1 == --* ]]; do
    case $1 in
      --cgo) cgo=1; shift ;;
      --tags) tags=$2; shift 2 ;;
      *) echo "build: unknown option $1" >&2; exit 2 ;;
    esac
  done
  local name=$1 module=$2 package=$3 extra_ldflags=${4:-}
  if ((${#only[@]})) && [[ " ${only[*]} " != *" $name "* ]]; then
    return
  fi
  local key stamp="$bin_dir/.$name.key"
  key=$(binary_key "$module" "$package" "$extra_ldflags" "$tags" "$cgo")
  if [[ -x "$bin_dir/$name" && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    echo "[control-plane] $name: cached"
    return
  fi
  [[ -z $cgo ]] || require_libseccomp
  echo "[control-plane] building $name from $package (a cold build takes minutes on 2 cores) ..."
  local started=$SECONDS
  # Build under a temporary name so an interrupted build never leaves a half-written binary behind.
  (cd "$tools/$module" && CGO_ENABLED=${cgo:-0} go build -trimpath -tags "$tags" \
    -ldflags "-s -w $extra_ldflags" -o "$bin_dir/.$name.tmp" "$package")
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
# The real node (devcluster up --real-node). Versions: hack/tools/versions.env; flags as the projects' Makefiles.
build kubelet kubelet k8s.io/kubernetes/cmd/kubelet "$k8s_version_flags"
containerd_tags="urfave_cli_no_docs no_btrfs no_devmapper no_zfs"
containerd_flags="-X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
build --tags "$containerd_tags" containerd containerd github.com/containerd/containerd/v2/cmd/containerd \
  "$containerd_flags"
build --tags "$containerd_tags" ctr containerd github.com/containerd/containerd/v2/cmd/ctr "$containerd_flags"
build --tags "$containerd_tags no_grpc" containerd-shim-runc-v2 containerd \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$containerd_flags"
# seccomp is required: containerd gives every sandbox the RuntimeDefault profile. No libpathrs (a Rust library).
build --cgo --tags "seccomp urfave_cli_no_docs" runc runc github.com/opencontainers/runc \
  "-X main.version=${RUNC_VERSION#v}"
cni_flags="-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=${CNI_PLUGINS_VERSION}"
build cni-bridge cni-plugins github.com/containernetworking/plugins/plugins/main/bridge "$cni_flags"
build cni-host-local cni-plugins github.com/containernetworking/plugins/plugins/ipam/host-local "$cni_flags"
build cni-loopback cni-plugins github.com/containernetworking/plugins/plugins/main/loopback "$cni_flags"
build coredns coredns github.com/coredns/coredns
build pause pause maas.dev/hack/tools/pause
echo "$bin_dir"
