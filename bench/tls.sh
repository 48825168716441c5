#!/usr/bin/env bash
# registry-facade against nginx, both over TLS with the same certificate and the same number
# of cores, in one run: manifest req/s and blob GiB/s over HTTPS/1.1 (wrk), then one h2
# connection against one HTTP/1.1 connection moving a 64 MiB blob (h2load with the windows
# containerd's Go client opens: 4 MiB per stream, 1 GiB per connection), over TLS and over
# plain h2c. Prints each figure and the facade/nginx and h2/HTTP-1.1 ratios (median of rounds).
# One connection is one server core's work: those runs go to servers of one core (a facade
# with `cores: 1`, nginx with one worker) pinned to the first CPU, and h2load is pinned to the
# second, so neither protocol's figure depends on whether client and server shared a core.
#
# Usage: bench/tls.sh [--json FILE]
# Env: DURATION=10 (s per wrk run)  ROUNDS=4 (even: each server goes first as often)  CORES=$(nproc)  MANIFEST_CONNS=64  BLOB_CONNS=16
#      H2_REQUESTS=20 (64 MiB downloads per one-connection run)  WRK_THREADS=2
# Needs: wrk, h2load (nghttp2-client), nginx, openssl, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-4}"
CORES="${CORES:-$(nproc)}"
MANIFEST_CONNS="${MANIFEST_CONNS:-64}"
BLOB_CONNS="${BLOB_CONNS:-16}"
H2_REQUESTS="${H2_REQUESTS:-20}"
WRK_THREADS="${WRK_THREADS:-2}"
JSON_OUT=""
[ "${1:-}" = "--json" ] && JSON_OUT="${2:?--json needs a file}"
. bench/lib.sh
bench_begin rf-bench-tls wrk h2load nginx openssl curl python3

# ---- one certificate for both servers: a private CA and a P-256 server key (what an
# operator's ACME or internal CA commonly issues)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/ca.key" -out "$WORK/ca.crt" \
  -days 2 -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/server.key" -out "$WORK/server.csr" -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$WORK/ext.cnf"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial -out "$WORK/server.crt" \
  -days 2 -extfile "$WORK/ext.cnf" 2>/dev/null
chmod a+r "$WORK"/*.key

# ---- the image: a 64 MiB layer and four small ones (manifest ~1 KiB)
target/release/rf-bench-image "$WORK/image" --layers 64M,1K,1K,1K,1K --plain > "$WORK/image.json"
read -r MDIGEST BDIGEST < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["manifest"]["digest"], j["largest_layer"]["digest"])' "$WORK/image.json")
REPO=bench/img
target/release/registry-facade import "$WORK/image" "$REPO:latest" --cache-dir "$WORK/cache" >/dev/null

wait_https() {  # url
  for _ in $(seq 100); do
    [ "$(curl -s --cacert "$WORK/ca.crt" -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
    sleep 0.1
  done
  echo "bench: $1 never answered" >&2; exit 1
}

# ---- registry-facade over TLS, and a second one on plain HTTP for h2c
RF_PORT="$(free_port)"
cat > "$WORK/facade.json" <<JSON
{"listen": "127.0.0.1:$RF_PORT", "cores": $CORES, "cacheDir": "$WORK/cache", "demoImage": false,
 "tls": {"cert": "$WORK/server.crt", "key": "$WORK/server.key"}, "log": {"level": "warn"}}
JSON
target/release/registry-facade serve --config "$WORK/facade.json" 2>"$WORK/facade.log" &
RF_PID=$!
PIDS+=("$RF_PID")
wait_https "https://127.0.0.1:$RF_PORT/v2/"
# ---- for one connection: a facade of one core (its first CPU) over TLS and one on plain
# HTTP for h2c; h2load then runs on the second CPU (see the header)
ONE_PORT="$(free_port)"
sed -e "s/127.0.0.1:$RF_PORT/127.0.0.1:$ONE_PORT/" -e "s/\"cores\": $CORES/\"cores\": 1/" "$WORK/facade.json" > "$WORK/one.json"
target/release/registry-facade serve --config "$WORK/one.json" 2>"$WORK/one.log" &
PIDS+=("$!")
wait_https "https://127.0.0.1:$ONE_PORT/v2/"
PLAIN_PORT="$(free_port)"
RUST_LOG=warn target/release/registry-facade serve --listen "127.0.0.1:$PLAIN_PORT" --cache-dir "$WORK/cache" --cores 1 2>"$WORK/plain.log" &
PLAIN_PID=$!
PIDS+=("$PLAIN_PID")
wait_http "http://127.0.0.1:$PLAIN_PORT/v2/"
CLIENT_CPU=()
[ "$(nproc)" -ge 2 ] && CLIENT_CPU=(taskset -c 1)

# ---- nginx with TLS (1.2 and 1.3, session cache, h2 by ALPN), same files, same cores
NGX_PORT="$(free_port)"
FILES=("$WORK/image/blobs/sha256/${MDIGEST#sha256:}" "/v2/$REPO/manifests/$MDIGEST" application/vnd.oci.image.manifest.v1+json
       "$WORK/image/blobs/sha256/${BDIGEST#sha256:}" "/v2/$REPO/blobs/$BDIGEST" application/octet-stream)
start_nginx nginx-tls "$NGX_PORT" "ssl http2 reuseport" "" \
  "ssl_certificate $WORK/server.crt; ssl_certificate_key $WORK/server.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:rf:10m;" \
  "${FILES[@]}"
NGX_PID=$NGINX_PID
wait_https "https://127.0.0.1:$NGX_PORT/v2/$REPO/manifests/$MDIGEST"
NGX_ONE_PORT="$(free_port)"
CORES=1 start_nginx nginx-one "$NGX_ONE_PORT" "ssl http2" "worker_cpu_affinity 1;" \
  "ssl_certificate $WORK/server.crt; ssl_certificate_key $WORK/server.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:rf1:10m;" \
  "${FILES[@]}"
wait_https "https://127.0.0.1:$NGX_ONE_PORT/v2/$REPO/manifests/$MDIGEST"

for base in "https://127.0.0.1:$RF_PORT" "https://127.0.0.1:$NGX_PORT" "https://127.0.0.1:$ONE_PORT" "https://127.0.0.1:$NGX_ONE_PORT" "http://127.0.0.1:$PLAIN_PORT"; do
  curl -fs --cacert "$WORK/ca.crt" "$base/v2/$REPO/blobs/$BDIGEST" | cmp -s - "${FILES[3]}" || { echo "bench: wrong blob from $base" >&2; exit 1; }
done

# h2load over one connection: "<protocol>\t<MB/s>\t<failed requests>"
one_connection() {  # label url [--h1]
  local out
  out=$("${CLIENT_CPU[@]}" h2load -c1 -m1 -n "$H2_REQUESTS" -w 22 -W 30 "${@:3}" "$2" 2>&1)
  printf '%s\t%s\t%s\n' "$1" \
    "$(echo "$out" | sed -n 's/.*finished in [^,]*, [^,]*, \([0-9.]*\)\([KMG]\)B\/s.*/\1 \2/p' | awk '{m=$1; if($2=="K")m/=1024; if($2=="G")m*=1024; print m}')" \
    "$(echo "$out" | sed -n 's/^requests: .* \([0-9]*\) failed.*/\1/p')"
}

export SSL_CERT_FILE="$WORK/ca.crt"
RESULTS="$WORK/results.txt"
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  # The two runs of a ratio go back to back, since this machine's speed drifts by up to 10%
  # within a minute; which server goes first alternates by round, so neither always gets
  # the later (or earlier) minute.
  order="facade nginx"
  [ $((round % 2)) -eq 0 ] && order="nginx facade"
  for object in manifest blob; do
    for server in $order; do
      case "$server" in
        facade) base="https://127.0.0.1:$RF_PORT/v2/$REPO"; pid=$RF_PID ;;
        nginx) base="https://127.0.0.1:$NGX_PORT/v2/$REPO"; pid=$NGX_PID ;;
      esac
      case "$object" in
        manifest) url="$base/manifests/$MDIGEST"; conns=$MANIFEST_CONNS ;;
        blob) url="$base/blobs/$BDIGEST"; conns=$BLOB_CONNS ;;
      esac
      printf '%s\twrk\t%s\t%s\t%s\n' "$round" "$server" "$object" "$(run_wrk "$pid" "$conns" "$url")" >> "$RESULTS"
    done
  done
  for setup in "tls https://127.0.0.1:$ONE_PORT" "h2c http://127.0.0.1:$PLAIN_PORT" "nginx-tls https://127.0.0.1:$NGX_ONE_PORT"; do
    read -r label base <<<"$setup"
    printf '%s\tone\t%s\t%s\n' "$round" "$label" "$(one_connection h2 "$base/v2/$REPO/blobs/$BDIGEST")" >> "$RESULTS"
    printf '%s\tone\t%s\t%s\n' "$round" "$label" "$(one_connection http/1.1 "$base/v2/$REPO/blobs/$BDIGEST" --h1)" >> "$RESULTS"
  done
done

python3 - "$RESULTS" "$CORES" "$DURATION" "$JSON_OUT" <<'PY'
import json, statistics, sys
sys.path.insert(0, "bench")
from wrk_report import wrk_row
path, cores, duration, json_out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
wrk, one, bad = [], [], 0
for line in open(path):
    fields = line.rstrip("\n").split("\t")
    if fields[1] == "wrk":
        rnd, _, server, obj, cpu, raw = fields
        row = wrk_row(rnd, server, obj, cpu, raw, duration)
        bad += row["errors"]
        wrk.append(row)
    else:
        rnd, _, label, proto, mbs, failed = fields
        bad += int(failed or 0)
        one.append(dict(round=int(rnd), setup=label, protocol=proto, mib_s=float(mbs or 0)))
print(f"{'round':>5} {'server':<7} {'object':<9} {'req/s':>9} {'GiB/s':>7} {'cpu s':>6}")
for r in wrk:
    print(f"{r['round']:>5} {r['server']:<7} {r['object']:<9} {r['rps']:>9.0f} {r['gib_s']:>7.2f} {r['cpu_s']:>6.1f}")
print(f"\none connection, {len(one) and '64 MiB'} blob:")
for r in one:
    print(f"{r['round']:>5} {r['setup']:<10} {r['protocol']:<9} {r['mib_s']:>8.0f} MiB/s")
summary = {}
def median_ratio(pick_a, pick_b):
    values = []
    for rnd in sorted({r["round"] for r in wrk + one}):
        a, b = pick_a(rnd), pick_b(rnd)
        if a and b:
            values.append(a / b)
    return (statistics.median(values) if values else float("nan")), values
def wrk_value(server, obj, key):
    return lambda rnd: next(r[key] for r in wrk if r["round"] == rnd and r["server"] == server and r["object"] == obj)
def one_value(setup, proto):
    return lambda rnd: next(r["mib_s"] for r in one if r["round"] == rnd and r["setup"] == setup and r["protocol"] == proto)
for name, a, b in [
    ("facade/nginx TLS manifest req/s", wrk_value("facade", "manifest", "rps"), wrk_value("nginx", "manifest", "rps")),
    ("facade/nginx TLS blob GiB/s", wrk_value("facade", "blob", "gib_s"), wrk_value("nginx", "blob", "gib_s")),
    ("facade h2/http1.1 one connection, TLS", one_value("tls", "h2"), one_value("tls", "http/1.1")),
    ("facade h2/http1.1 one connection, h2c", one_value("h2c", "h2"), one_value("h2c", "http/1.1")),
    ("nginx h2/http1.1 one connection, TLS", one_value("nginx-tls", "h2"), one_value("nginx-tls", "http/1.1")),
    ("facade/nginx h2 one connection, TLS", one_value("tls", "h2"), one_value("nginx-tls", "h2")),
]:
    median, values = median_ratio(a, b)
    summary[name] = median
    print(f"{name:<40} {median:6.2f}   (rounds: {', '.join(f'{v:.2f}' for v in values)})")
if bad:
    print(f"ERRORS seen ({bad}): the run is not valid"); sys.exit(1)
if json_out:
    json.dump({"cores": cores, "duration_s": duration, "wrk": wrk, "one_connection": one, "ratios": summary}, open(json_out, "w"), indent=2)
PY
