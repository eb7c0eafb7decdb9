#!/usr/bin/env bash
# Builds the binaries the Kubernetes tests run (test/kubeenv, deploy/kubernetes)
# from the Go module proxy, once, into a cache keyed by version:
#
#   <cache>/kube-<version>/{kube-apiserver,kube-controller-manager,kubectl}
#   <cache>/etcd-<version>/etcd
#
# <cache> is $TIDEGATE_KUBE_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/tidegate-kube.
# The versions are the ones the modules next to this script require
# (kube/go.mod: k8s.io/kubernetes; etcd/go.mod: go.etcd.io/etcd/server/v3);
# change them there. A cold build takes about 11 minutes on 2 cores
# (kube-apiserver is most of it), a warm one nothing. Each directory is
# filled in a temporary directory and renamed, so a cut build leaves no
# half-filled cache behind.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PATH="/usr/local/go/bin:${PATH}"
# The tool modules have complete go.sum files: nothing is resolved anew.
export GOFLAGS=-mod=readonly

root="${TIDEGATE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tidegate-kube}"
kube_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/kube/go.mod")"
etcd_version="$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$here/etcd/go.mod")"
if [ -z "$kube_version" ] || [ -z "$etcd_version" ]; then
  echo "build.sh: cannot read the versions from $here/kube/go.mod and $here/etcd/go.mod" >&2
  exit 1
fi
mkdir -p "$root"

# build DIR MODULE_DIR LDFLAGS "BINARY..." PACKAGE... builds the packages
# into DIR unless DIR already holds every BINARY.
build() {
  local dir="$1" mod="$2" ldflags="$3" bins="$4"
  shift 4
  local missing=0 b
  for b in $bins; do [ -f "$dir/$b" ] && [ -x "$dir/$b" ] || missing=1; done
  if [ "$missing" = 0 ]; then
    echo "build.sh: $dir is cached"
    return
  fi
  local tmp
  tmp="$(mktemp -d "$root/.build.XXXXXX")"
  chmod 755 "$tmp"
  echo "build.sh: building $* into $dir (cold: minutes)"
  local start=$SECONDS
  (cd "$mod" && go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/" "$@")
  rm -rf "$dir"
  mv "$tmp" "$dir"
  echo "build.sh: $dir built in $((SECONDS - start))s"
}

minor="${kube_version#v1.}"
minor="${minor%%.*}"
cb=k8s.io/component-base/version
build "$root/kube-$kube_version" "$here/kube" \
  "-X $cb.gitVersion=$kube_version -X $cb.gitMajor=1 -X $cb.gitMinor=$minor -X $cb.gitTreeState=clean" \
  "kube-apiserver kube-controller-manager kubectl" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
# The etcd module's main package is "."; go build names its binary after
# the module path's last element, etcd.
build "$root/etcd-$etcd_version" "$here/etcd" "" etcd .
"$root/kube-$kube_version/kube-apiserver" --version
"$root/etcd-$etcd_version/etcd" --version | head -n 1
