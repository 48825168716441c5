#!/usr/bin/env bash
# Builds stargz-grpc into <target>/stargz-grpc/stargz-grpc unless it is there and newer than
# every file of tests/support/stargz (the path and rule tests/support/stargz.rs uses; it holds
# the same lock). Prints the binary's path; the build's own lines go to stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$TARGET/stargz-grpc/stargz-grpc"
mkdir -p "$(dirname "$OUT")"
exec 9>"$(dirname "$OUT")/build.lock"
flock 9
if [ ! -x "$OUT" ] || [ -n "$(find "$HERE" -type f -newer "$OUT" -print -quit)" ]; then
  "$HERE/build.sh" "$OUT" >&2
fi
echo "$OUT"
