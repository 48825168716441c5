#!/usr/bin/env bash
# Build stargz-grpc (main.go here: a minimal containerd-stargz-grpc) from
# Debian 12's packaged Go sources, offline, in GOPATH mode.
#
# Usage: build.sh OUT_BINARY
#
# Installs (apt-get, only what is missing, non-interactive) Debian's Go 1.19
# and golang-github-containerd-stargz-snapshotter-dev (which pulls in every
# golang-*-dev package the library needs), then builds with
#   GO111MODULE=off GOPATH=<tmp>:/usr/share/gocode GOPROXY=off GOFLAGS=
# so nothing but /usr/share/gocode and this directory is read.
#
# One package the library imports is not in Debian 12:
# k8s.io/cri-api/pkg/apis/runtime/v1alpha2 (service/resolver/cri.go uses its
# AuthConfig type only). shim/cri_api_runtime_v1alpha2.go stands in for it in
# the temporary GOPATH.
#
# Env: GOCACHE (default /var/tmp/stargz-grpc-gocache, kept between runs so a
# rebuild takes seconds; the first build takes about a minute on 2 cores).
# Prints "build: N s" on the last line.
set -euo pipefail

OUT="${1:?usage: build.sh OUT_BINARY}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
start=$(date +%s%N)

# Packages: the Go toolchain and the library (its Depends bring the rest);
# BurntSushi/toml is what main.go reads its config with.
PKGS=(golang-go golang-github-containerd-stargz-snapshotter-dev golang-github-burntsushi-toml-dev)
missing=()
for p in "${PKGS[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "build: installing ${missing[*]}" >&2
  # DPkg::Lock::Timeout: wait for another apt/dpkg instead of failing.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >&2
fi

GOBIN_="$(command -v go || echo /usr/lib/go-1.19/bin/go)"
TMP="$(mktemp -d /tmp/stargz-grpc-build.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/src/stargz-grpc" "$TMP/src/k8s.io/cri-api/pkg/apis/runtime/v1alpha2"
cp "$HERE/main.go" "$TMP/src/stargz-grpc/"
cp "$HERE/shim/cri_api_runtime_v1alpha2.go" "$TMP/src/k8s.io/cri-api/pkg/apis/runtime/v1alpha2/"

LIBVER="$(dpkg-query -W -f='${Version}' golang-github-containerd-stargz-snapshotter-dev)"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
mkdir -p "$(dirname "$OUT")"

(
  cd "$TMP/src/stargz-grpc"
  env GO111MODULE=off GOPATH="$TMP:/usr/share/gocode" GOPROXY=off GOFLAGS= GOSUMDB=off \
    GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE="${GOCACHE:-/var/tmp/stargz-grpc-gocache}" \
    "$GOBIN_" build -trimpath \
      -ldflags "-X github.com/containerd/stargz-snapshotter/version.Version=$LIBVER" \
      -o "$OUT" .
)

"$OUT" -version
end=$(date +%s%N)
echo "build: $(awk -v ns=$((end - start)) 'BEGIN{printf "%.1f", ns/1e9}') s ($("$GOBIN_" version), CGO_ENABLED=0)"
