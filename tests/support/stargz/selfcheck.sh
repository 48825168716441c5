#!/usr/bin/env bash
# End-to-end self-check of lazy pulling with containerd's stargz snapshotter,
# all on loopback, in a temp dir, as root:
#
#   docker-registry (access log on)  <--  skopeo push of a test image
#   stargz-grpc (built by build.sh)  <--  containerd [proxy_plugins.stargz]
#   ctr pull + ctr-remote convert --estargz --oci + ctr push  (image :esgz)
#   ctr image rm (content store emptied)
#   ctr-remote image rpull          (lazy: layers are not downloaded)
#   a read-only view on the stargz snapshotter, mounted on the host; read
#   files, compare their bytes with the layout, count the bytes served
#   (ctr 1.6's `image mount` ignores --snapshotter, hence the view)
#
# Usage: selfcheck.sh [http|tls|all]      (default http)
#   http  registry on plain HTTP; the snapshotter uses the library's default
#         resolver, which talks plain HTTP to 127.0.0.1:PORT by itself.
#   tls   registry on HTTPS with a private test CA; containerd, ctr and the
#         snapshotter all read one certs.d directory (hosts.toml with ca=).
# Env: STARGZ_GRPC=path (use this binary, skip build.sh), KEEP=1 (keep the
#      temp dir), ESTARGZ_CHUNK=N (ctr-remote --estargz-chunk-size).
# Exit 0 only if every check passed; prints "selfcheck: N passed, 0 failed".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
MODES="${1:-http}"
[ "$MODES" = all ] && MODES="http tls"

[ "$(id -u)" = 0 ] || { echo "selfcheck: run as root (containerd and FUSE mounts)" >&2; exit 2; }
[ -e /dev/fuse ] || { echo "selfcheck: /dev/fuse is missing" >&2; exit 2; }

ms() { echo $(( $(date +%s%N) / 1000000 )); }
T0=$(ms)

# ---- packages (idempotent) ----------------------------------------------
PKGS=(containerd docker-registry skopeo stargz-snapshotter fuse3 curl python3 openssl)
missing=()
for p in "${PKGS[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "selfcheck: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi

WORK="$(mktemp -d /tmp/stargz-selfcheck.XXXXXX)"
PIDS=()          # every process we start, stopped in reverse order
MOUNTED=()       # mount points we made
VIEWS=()         # stargz view snapshots we made
PASS=0; FAIL=0

cleanup() {
  local rc=$?
  set +e
  for m in "${MOUNTED[@]}"; do
    mountpoint -q "$m" && umount "$m"
  done
  for v in "${VIEWS[@]}"; do
    [ -n "${CTR_SOCK:-}" ] && ctr -a "$CTR_SOCK" snapshot --snapshotter stargz rm "$v" >/dev/null 2>&1
  done
  # containerd first, then the snapshotter (SIGTERM: it unmounts its FUSE
  # mounts on the way out), then the registry.
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  # Anything still mounted under WORK (deepest first).
  awk -v w="$WORK" '$2 ~ "^"w {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    echo "selfcheck: leftover mount $m, unmounting" >&2
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  if [ "${KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
    echo "selfcheck: logs kept in $WORK" >&2
    # keep logs, drop the bulky stores
    rm -rf "$WORK"/*/ctrd/root "$WORK"/*/sgz/root "$WORK"/*/reg/storage 2>/dev/null
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok()   { PASS=$((PASS+1)); echo "  PASS $*"; }
bad()  { FAIL=$((FAIL+1)); echo "  FAIL $*"; }
step() { echo "[$(( ($(ms) - T0) ))ms] $*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for SECONDS PID CMD...
  local deadline=$(( $(date +%s) + $1 )) pid=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# ---- the snapshotter binary ---------------------------------------------
if [ -n "${STARGZ_GRPC:-}" ]; then
  SGZ_BIN="$STARGZ_GRPC"
else
  SGZ_BIN="$WORK/stargz-grpc"
  step "building stargz-grpc"
  "$HERE/build.sh" "$SGZ_BIN"
fi
echo "versions: $(containerd --version | cut -d' ' -f2-); $(ctr-remote --version); $("$SGZ_BIN" -version);" \
  "docker-registry $(dpkg-query -W -f='${Version}' docker-registry); skopeo $(dpkg-query -W -f='${Version}' skopeo);" \
  "stargz-snapshotter (ctr-remote) $(dpkg-query -W -f='${Version}' stargz-snapshotter)"

# ---- the test image (an OCI layout), made once ---------------------------
step "making the test image"
cargo build -q --release --manifest-path "$REPO/Cargo.toml" -p rf-bench-image
"$REPO/target/release/rf-bench-image" "$WORK/layout" --layers 64K,2M --seed 7 --file-prefix base >/dev/null
# Expected bytes of each layer's file, straight from the layout.
python3 - "$WORK/layout" > "$WORK/expected.txt" <<'EOF'
import hashlib, json, os, sys, tarfile
d = sys.argv[1]
blob = lambda dg: os.path.join(d, "blobs", *dg.split(":"))
idx = json.load(open(os.path.join(d, "index.json")))
man = json.load(open(blob(idx["manifests"][0]["digest"])))
for l in man["layers"]:
    with tarfile.open(blob(l["digest"]), "r:*") as t:
        for m in t.getmembers():
            if m.isfile():
                data = t.extractfile(m).read()
                print(m.name, len(data), hashlib.sha256(data).hexdigest())
EOF
cat "$WORK/expected.txt" | sed 's/^/  layout file: /'

run_mode() {
  local mode=$1 D="$WORK/$1"
  mkdir -p "$D/reg" "$D/ctrd" "$D/sgz" "$D/certs.d"
  local RP; RP=$(free_port)
  local HOST="127.0.0.1:$RP"
  local SCHEME=http TLSYAML="" CURLCA=() SKOPEO_TLS=(--dest-tls-verify=false) CTR_REG=(--plain-http) SGZ_HOSTS=()
  echo
  echo "=== mode $mode: registry $HOST ==="

  if [ "$mode" = tls ]; then
    # A private CA and a server cert for 127.0.0.1 (TOOLING.md recipe).
    ( cd "$D" &&
      openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj '/CN=test-ca' \
        -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' &&
      openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' &&
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > ext.cnf &&
      openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext.cnf
    ) >/dev/null 2>&1
    SCHEME=https
    TLSYAML=$(printf '  tls:\n    certificate: %s\n    key: %s\n' "$D/server.crt" "$D/server.key")
    CURLCA=(--cacert "$D/ca.crt")
    mkdir -p "$D/skopeo-certs" && cp "$D/ca.crt" "$D/skopeo-certs/"
    SKOPEO_TLS=(--dest-cert-dir "$D/skopeo-certs")
    # One certs.d for containerd/ctr/ctr-remote and the snapshotter.
    mkdir -p "$D/certs.d/$HOST"
    cat > "$D/certs.d/$HOST/hosts.toml" <<EOF
server = "https://$HOST"
[host."https://$HOST"]
  capabilities = ["pull", "resolve", "push"]
  ca = "$D/ca.crt"
EOF
    CTR_REG=(--hosts-dir "$D/certs.d")
    SGZ_HOSTS=(-hosts-dir "$D/certs.d")
  fi

  # ---- registry (docker-registry 2.8, access log on) ----
  cat > "$D/reg/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $D/reg/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $HOST
  secret: selfcheck
$TLSYAML
EOF
  setsid docker-registry serve "$D/reg/config.yml" > "$D/reg/registry.log" 2>&1 < /dev/null &
  local REG_PID=$!; PIDS+=("$REG_PID")
  wait_for 15 "$REG_PID" curl -fs "${CURLCA[@]}" "$SCHEME://$HOST/v2/" || { cat "$D/reg/registry.log"; bad "registry did not start"; return 1; }
  step "registry up (pid $REG_PID)"

  local REF="$HOST/test/base:latest" ESGZ="$HOST/test/base:esgz"
  skopeo copy -q "${SKOPEO_TLS[@]}" "oci:$WORK/layout:latest" "docker://$REF"
  step "pushed $REF with skopeo"

  # ---- stargz snapshotter ----
  # noprefetch/no_background_fetch: nothing is fetched unless a file is read,
  # so the bytes counted below are the lazy ones.
  cat > "$D/sgz/config.toml" <<EOF
noprefetch = true
no_background_fetch = true
no_prometheus = true
EOF
  SGZ_SOCK="$D/sgz/stargz.sock"
  setsid "$SGZ_BIN" -root "$D/sgz/root" -address "$SGZ_SOCK" -config "$D/sgz/config.toml" \
    -log-level info -trace-registry "${SGZ_HOSTS[@]}" > "$D/sgz/stargz.log" 2>&1 < /dev/null &
  local SGZ_PID=$!; PIDS+=("$SGZ_PID")
  wait_for 15 "$SGZ_PID" test -S "$SGZ_SOCK" || { cat "$D/sgz/stargz.log"; bad "stargz-grpc did not start"; return 1; }
  step "stargz-grpc up (pid $SGZ_PID)"

  # ---- containerd with the proxy snapshotter ----
  CTR_SOCK="$D/ctrd/containerd.sock"
  cat > "$D/ctrd/config.toml" <<EOF
version = 2
root = "$D/ctrd/root"
state = "$D/ctrd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$D/ctrd/containerd.sock.ttrpc"
[debug]
  address = "$D/ctrd/debug.sock"
[proxy_plugins.stargz]
  type = "snapshot"
  address = "$SGZ_SOCK"
EOF
  setsid containerd --config "$D/ctrd/config.toml" > "$D/ctrd/containerd.log" 2>&1 < /dev/null &
  local CTRD_PID=$!; PIDS+=("$CTRD_PID")
  wait_for 30 "$CTRD_PID" ctr -a "$CTR_SOCK" version || { tail -50 "$D/ctrd/containerd.log"; bad "containerd did not start"; return 1; }
  ctr -a "$CTR_SOCK" plugins ls | grep -E 'snapshotter\.v1 +(stargz|overlayfs) ' | sed 's/^/  /'
  step "containerd up (pid $CTRD_PID)"

  local C=(ctr -a "$CTR_SOCK")
  local CR=(ctr-remote -a "$CTR_SOCK")

  # ---- convert to eStargz and push ----
  "${C[@]}" image pull "${CTR_REG[@]}" "$REF" > "$D/pull.txt"
  local chunk=(); [ -n "${ESTARGZ_CHUNK:-}" ] && chunk=(--estargz-chunk-size "$ESTARGZ_CHUNK")
  "${CR[@]}" image convert --estargz --oci "${chunk[@]}" "$REF" "$ESGZ" > "$D/convert.txt"
  "${C[@]}" image push "${CTR_REG[@]}" "$ESGZ" > "$D/push.txt"
  step "converted to eStargz and pushed $ESGZ"
  "${C[@]}" image rm --sync "$REF" "$ESGZ" >/dev/null
  local left; left=$("${C[@]}" content ls -q | wc -l)
  [ "$left" = 0 ] && ok "content store empty after image rm ($left blobs)" || bad "content store still holds $left blobs"

  # The converted manifest, from the registry.
  curl -fs "${CURLCA[@]}" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$SCHEME://$HOST/v2/test/base/manifests/esgz" > "$D/esgz-manifest.json"
  python3 - "$D/esgz-manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
for i, l in enumerate(m["layers"]):
    print("  esgz layer %d: %s %s size=%d toc=%s" % (i, l["mediaType"], l["digest"][:19], l["size"],
          l.get("annotations", {}).get("containerd.io/snapshot/stargz/toc.digest", "-")[:19]))
EOF

  # ---- lazy pull ----
  local LOGMARK; LOGMARK=$(wc -l < "$D/reg/registry.log")
  local t; t=$(ms)
  "${CR[@]}" image rpull "${CTR_REG[@]}" "$ESGZ" > "$D/rpull.txt" 2>&1 || { cat "$D/rpull.txt"; tail -30 "$D/sgz/stargz.log"; bad "rpull failed"; return 1; }
  local RPULL_MS=$(( $(ms) - t ))
  sed 's/^/  rpull: /' "$D/rpull.txt" | tail -5
  step "rpull done in ${RPULL_MS} ms"
  "${C[@]}" snapshot --snapshotter stargz ls | sed 's/^/  snapshot: /'

  # What containerd's content store holds now (manifest and config only).
  "${C[@]}" content ls > "$D/content-after-rpull.txt"
  cut -f1,2 "$D/content-after-rpull.txt" | sed 's/^/  content: /'
  "${C[@]}" content ls -q > "$D/content-digests.txt"

  report_bytes() { # report_bytes LABEL -> per-layer bytes served since LOGMARK
    tail -n +"$((LOGMARK + 1))" "$D/reg/registry.log" > "$D/access-$1.log"
    python3 - "$D/esgz-manifest.json" "$D/access-$1.log" "$1" <<'EOF'
import json, re, sys
man = json.load(open(sys.argv[1]))
lines = open(sys.argv[2], errors="replace").read().splitlines()
# combined log format: "METHOD PATH PROTO" STATUS BYTES
pat = re.compile(r'"(GET|HEAD) (\S+) [^"]*" (\d{3}) (\d+|-)')
for i, l in enumerate(man["layers"]):
    reqs = []
    for ln in lines:
        m = pat.search(ln)
        if m and m.group(2).endswith("/blobs/" + l["digest"]):
            reqs.append((m.group(1), int(m.group(3)), 0 if m.group(4) == "-" else int(m.group(4))))
    got = sum(r[2] for r in reqs)
    print("%s layer%d %d %d %s" % (sys.argv[3], i, got, l["size"],
          " ".join("%s/%d/%d" % r for r in reqs)))
EOF
  }
  report_bytes rpull > "$D/bytes-rpull.txt"
  while read -r label layer got size reqs; do
    pct=$(awk -v g="$got" -v s="$size" 'BEGIN{printf "%.1f", 100*g/s}')
    echo "  after rpull: $layer served $got of $size bytes ($pct%); requests: $reqs"
    if [ "$got" -lt "$size" ]; then ok "$layer not fully downloaded by rpull"; else bad "$layer fully downloaded by rpull"; fi
  done < "$D/bytes-rpull.txt"
  local ldig
  for ldig in $(python3 -c 'import json,sys; print(" ".join(l["digest"] for l in json.load(open(sys.argv[1]))["layers"]))' "$D/esgz-manifest.json"); do
    if grep -qx "$ldig" "$D/content-digests.txt"; then bad "layer ${ldig:0:19} is in containerd's content store"; else ok "layer ${ldig:0:19} not in containerd's content store"; fi
  done

  # ---- mount and read ----
  # containerd 1.6's `ctr image mount` ignores --snapshotter (it reads a global
  # flag that does not exist; fixed upstream by containerd PR #6713, not in
  # 1.6.20) and would unpack into overlayfs, which needs the layer blobs. So:
  # a read-only view of the image's top chain ID on the stargz snapshotter,
  # mounted with the command ctr prints.
  local MNT="$D/mnt"; mkdir -p "$MNT"
  local CHAIN
  CHAIN=$(curl -fs "${CURLCA[@]}" "$SCHEME://$HOST/v2/test/base/blobs/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["digest"])' "$D/esgz-manifest.json")" |
    python3 -c '
import hashlib, json, sys
chain = None
for d in json.load(sys.stdin)["rootfs"]["diff_ids"]:
    chain = d if chain is None else "sha256:" + hashlib.sha256((chain + " " + d).encode()).hexdigest()
print(chain)')
  "${C[@]}" snapshot --snapshotter stargz view --target "$MNT" selfcheck-view "$CHAIN" > "$D/mount-cmd.txt"
  VIEWS+=("selfcheck-view")
  echo "  top chain ID $CHAIN; $(sed "s|$D|\$D|g" "$D/mount-cmd.txt")"
  # the printed line is: mount -t overlay overlay TARGET -o lowerdir=...
  read -r -a MOUNT_CMD < "$D/mount-cmd.txt"
  [ "${MOUNT_CMD[0]}" = mount ] || { bad "unexpected mount command: $(cat "$D/mount-cmd.txt")"; return 1; }
  "${MOUNT_CMD[@]}"
  MOUNTED+=("$MNT")
  step "mounted the stargz view of $ESGZ at $MNT"
  grep -E " $D/(mnt|sgz)" /proc/self/mounts | awk '{print "  mount: "$3" "$2}' | sed "s|$D|\$D|g"
  ls -la "$MNT" "$MNT"/base* | sed 's/^/  ls: /'

  # Read the small layer's file whole; then the first 4 KiB of the big one.
  local f0 f1 n0 n1 h0 h1
  read -r f0 n0 h0 < <(sed -n 1p "$WORK/expected.txt")
  read -r f1 n1 h1 < <(sed -n 2p "$WORK/expected.txt")
  local got0; got0=$(sha256sum < "$MNT/$f0" | cut -d' ' -f1)
  [ "$got0" = "$h0" ] && ok "$f0 read from the lazy rootfs: $n0 bytes, sha256 $got0 matches the layout" \
                       || bad "$f0 sha256 $got0, expected $h0"
  report_bytes read0 > "$D/bytes-read0.txt"
  while read -r label layer got size reqs; do
    pct=$(awk -v g="$got" -v s="$size" 'BEGIN{printf "%.1f", 100*g/s}')
    echo "  after reading $f0: $layer served $got of $size bytes ($pct%) since rpull; requests: $reqs"
  done < "$D/bytes-read0.txt"
  read -r _ _ got size _ < <(sed -n 2p "$D/bytes-read0.txt")
  [ "$got" -lt "$size" ] && ok "layer1 still not downloaded after reading $f0 ($got of $size bytes)" \
                         || bad "layer1 downloaded by reading $f0"

  local want1 got1
  want1=$(python3 - "$WORK/layout" "$f1" <<'EOF2'
import hashlib, json, os, sys, tarfile
d, name = sys.argv[1], sys.argv[2]
blob = lambda dg: os.path.join(d, "blobs", *dg.split(":"))
man = json.load(open(blob(json.load(open(os.path.join(d, "index.json")))["manifests"][0]["digest"])))
for l in man["layers"]:
    with tarfile.open(blob(l["digest"]), "r:*") as t:
        try:
            print(hashlib.sha256(t.extractfile(name).read(4096)).hexdigest())
        except KeyError:
            pass
EOF2
)
  got1=$(head -c 4096 "$MNT/$f1" | sha256sum | cut -d' ' -f1)
  [ "$got1" = "$want1" ] && ok "first 4096 bytes of $f1 match the layout" || bad "first 4096 bytes of $f1: $got1, expected $want1"
  report_bytes read1 > "$D/bytes-read1.txt"
  read -r _ _ got size reqs < <(sed -n 2p "$D/bytes-read1.txt")
  echo "  after reading 4 KiB of $f1: layer1 served $got of $size bytes since rpull; requests: $reqs"
  # Library 0.12 (estargz/estargz.go, fileReader.ReadAt) reads up to 2 MiB of
  # compressed bytes from the missed chunk to the file's end, whatever the
  # eStargz chunk size, and fs/remote aligns ranges to blob.chunk_size
  # (50000 bytes by default).
  echo "  (a cache miss reads min(2 MiB, rest of the file) compressed, in 50000-byte-aligned ranges)"

  echo "  snapshotter's registry requests (from -trace-registry):"
  grep '"registry request' "$D/sgz/stargz.log" | python3 -c '
import json, sys
for ln in sys.stdin:
    e = json.loads(ln)
    u = e["url"]; head, dg = u.rsplit("/", 1)
    print("    %s %s/%s range=%r -> %s len=%s %s" % (e["method"], head.split("/v2/")[0], dg[:19], e.get("range", ""),
          e.get("status"), e.get("content_length"), e.get("content_range", "")))'

  umount "$MNT" && MOUNTED=()
  "${C[@]}" snapshot --snapshotter stargz rm selfcheck-view && VIEWS=()
  if mountpoint -q "$MNT"; then bad "$MNT still mounted"; else ok "view unmounted and removed"; fi
  echo "  mode $mode: rpull ${RPULL_MS} ms"
}

for mode in $MODES; do
  case "$mode" in
    http|tls) run_mode "$mode" ;;
    *) echo "selfcheck: unknown mode $mode" >&2; exit 2 ;;
  esac
  # stop this mode's processes before the next one
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    kill -TERM "${PIDS[i]}" 2>/dev/null
    for _ in $(seq 100); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${PIDS[i]}" 2>/dev/null || true
    wait "${PIDS[i]}" 2>/dev/null || true
  done
  PIDS=()
  left=$(awk -v w="$WORK" '$2 ~ "^"w {print $2}' /proc/self/mounts | wc -l)
  [ "$left" = 0 ] && ok "no mounts left under the temp dir after stopping ($mode)" || bad "$left mounts left under $WORK ($mode)"
done

echo "selfcheck: total $(( ($(ms) - T0) )) ms"
echo "selfcheck: $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
