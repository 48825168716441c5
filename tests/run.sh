#!/usr/bin/env bash
# Runs every test of registry-facade, after installing (Debian packages, idempotent,
# non-interactive) the real tools the tests use as peers and clients. containerd unpacks
# images with mounts, so the tests run as root (through sudo when needed).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(ca-certificates curl openssl skopeo containerd docker-registry nginx redis-server ipfs-cid)

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

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,HOME cargo test --locked "$@"
fi
exec cargo test --locked "$@"
