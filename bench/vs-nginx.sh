#!/usr/bin/env bash
# registry-facade against nginx (sendfile on, one worker per core; and a tuned variant) on
# loopback, same run:
# one ~1 KiB manifest and one 16 MiB blob, loaded with wrk, servers alternating each round.
# Prints req/s, GiB/s, p99 latency and server CPU per unit for each, and the facade/nginx
# ratios (median over rounds).
#
# Usage: bench/vs-nginx.sh [--json FILE]
# Env: DURATION=10 (s per wrk run)  ROUNDS=3  CORES=$(nproc) (executors / nginx workers)
#      MANIFEST_CONNS=64  BLOB_CONNS=16  WRK_THREADS=2
# Needs: wrk, nginx, curl, python3 (apt-get install wrk nginx curl python3).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CORES="${CORES:-$(nproc)}"
MANIFEST_CONNS="${MANIFEST_CONNS:-64}"
BLOB_CONNS="${BLOB_CONNS:-16}"
WRK_THREADS="${WRK_THREADS:-2}"
JSON_OUT=""
[ "${1:-}" = "--json" ] && JSON_OUT="${2:?--json needs a file}"
. bench/lib.sh
bench_begin rf-bench wrk nginx curl python3

# ---- the image: a 16 MiB layer and four small ones (manifest ~1 KiB)
target/release/rf-bench-image "$WORK/image" --layers 16M,1K,1K,1K,1K --plain > "$WORK/image.json"
read -r MDIGEST BDIGEST < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["manifest"]["digest"], j["largest_layer"]["digest"])' "$WORK/image.json")
REPO=bench/img
target/release/registry-facade import "$WORK/image" "$REPO:latest" --cache-dir "$WORK/cache" >/dev/null

# ---- registry-facade
RF_PORT="$(free_port)"
RUST_LOG=warn target/release/registry-facade serve --listen "127.0.0.1:$RF_PORT" --cache-dir "$WORK/cache" --cores "$CORES" 2>"$WORK/facade.log" &
RF_PID=$!
PIDS+=("$RF_PID")
wait_http "http://127.0.0.1:$RF_PORT/v2/"

# ---- nginx serving the same files at registry-shaped paths, in two configurations:
#   nginx       sendfile on, one worker per core: the peer the issue's targets name
#   nginx-tuned the same plus SO_REUSEPORT, worker CPU affinity and open_file_cache
MANIFEST_FILE="$WORK/image/blobs/sha256/${MDIGEST#sha256:}"
BLOB_FILE="$WORK/image/blobs/sha256/${BDIGEST#sha256:}"
FILES=("$MANIFEST_FILE" "/v2/$REPO/manifests/$MDIGEST" application/vnd.oci.image.manifest.v1+json
       "$BLOB_FILE" "/v2/$REPO/blobs/$BDIGEST" application/octet-stream)
NGX_PORT="$(free_port)"
start_nginx nginx "$NGX_PORT" "" "" "" "${FILES[@]}"
NGX_PID=$NGINX_PID
TUNED_PORT="$(free_port)"
start_nginx nginx-tuned "$TUNED_PORT" reuseport "worker_cpu_affinity auto;" "open_file_cache max=64;" "${FILES[@]}"
TUNED_PID=$NGINX_PID

# Both must serve identical bytes before they are compared.
for url in "http://127.0.0.1:$RF_PORT/v2/$REPO" "http://127.0.0.1:$NGX_PORT/v2/$REPO" "http://127.0.0.1:$TUNED_PORT/v2/$REPO"; do
  curl -fs "$url/manifests/$MDIGEST" | cmp -s - "$WORK/image/blobs/sha256/${MDIGEST#sha256:}" || { echo "bench: wrong manifest from $url" >&2; exit 1; }
  curl -fs "$url/blobs/$BDIGEST" | cmp -s - "$WORK/image/blobs/sha256/${BDIGEST#sha256:}" || { echo "bench: wrong blob from $url" >&2; exit 1; }
done

RESULTS="$WORK/results.txt"
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  for object in manifest blob; do
    for server in facade nginx nginx-tuned; do
      case "$server" in
        facade) base="http://127.0.0.1:$RF_PORT/v2/$REPO"; pid=$RF_PID ;;
        nginx) base="http://127.0.0.1:$NGX_PORT/v2/$REPO"; pid=$NGX_PID ;;
        nginx-tuned) base="http://127.0.0.1:$TUNED_PORT/v2/$REPO"; pid=$TUNED_PID ;;
      esac
      if [ "$object" = manifest ]; then url="$base/manifests/$MDIGEST"; conns=$MANIFEST_CONNS; else url="$base/blobs/$BDIGEST"; conns=$BLOB_CONNS; fi
      printf '%s\t%s\t%s\t%s\n' "$round" "$server" "$object" "$(run_wrk "$pid" "$conns" "$url")" >> "$RESULTS"
    done
  done
done

python3 - "$RESULTS" "$CORES" "$DURATION" "$JSON_OUT" <<'PY'
import json, statistics, sys
sys.path.insert(0, "bench")
from wrk_report import wrk_row
path, cores, duration, json_out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows = [wrk_row(*line.rstrip("\n").split("\t"), duration) for line in open(path)]
print(f"{'round':>5} {'server':<11} {'object':<9} {'req/s':>10} {'GiB/s':>7} {'p99 ms':>8} {'cpu us/req':>10} {'cpu s/GiB':>9} {'errors':>6}")
for r in rows:
    print(f"{r['round']:>5} {r['server']:<11} {r['object']:<9} {r['rps']:>10.0f} {r['gib_s']:>7.2f} {r['p99_ms']:>8.2f} {r['cpu_us_per_req']:>10.1f} {r['cpu_s_per_gib']:>9.3f} {r['errors']:>6}")
def ratio(obj, key, peer):
    values = []
    for rnd in sorted({r["round"] for r in rows}):
        pick = {r["server"]: r[key] for r in rows if r["round"] == rnd and r["object"] == obj}
        values.append(pick["facade"] / pick[peer])
    return statistics.median(values), values
summary = {}
for peer in ["nginx", "nginx-tuned"]:
    for obj, key, label in [("manifest", "rps", "manifest req/s"), ("blob", "gib_s", "blob GiB/s"),
                            ("manifest", "p99_ms", "manifest p99"), ("blob", "p99_ms", "blob p99"),
                            ("manifest", "cpu_us_per_req", "manifest CPU/req"), ("blob", "cpu_s_per_gib", "blob CPU/GiB")]:
        median, values = ratio(obj, key, peer)
        summary[f"facade/{peer} {label}"] = median
        print(f"facade/{peer:<11} {label:<17} {median:6.2f}   (rounds: {', '.join(f'{v:.2f}' for v in values)})")
if any(r["errors"] for r in rows):
    print("ERRORS seen: the run is not valid"); sys.exit(1)
if json_out:
    json.dump({"cores": cores, "duration_s": duration, "rows": rows, "ratios": summary}, open(json_out, "w"), indent=2)
PY
