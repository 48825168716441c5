#!/usr/bin/env bash
# Cold pull-through against the reference registry, same run:
#   1. a 256 MiB blob pulled directly from docker-registry vs through a fresh (cold) facade;
#   2. 64 concurrent cold pulls of that blob through a fresh facade vs one cold pull, and how
#      many times the facade fetched it upstream (from the registry's access log); then the same
#      64 clients again on the now warm facade, which separates what the cold fill costs under
#      concurrency from the cost of delivering 64 copies at all.
# Each round uses a new facade cache; curl discards the bytes after counting them.
#
# Usage: bench/pull-through.sh [--json FILE]
# Env: ROUNDS=3  BLOB_MIB=256  CONCURRENT=64
# Needs: docker-registry, skopeo, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
BLOB_MIB="${BLOB_MIB:-256}"
CONCURRENT="${CONCURRENT:-64}"
JSON_OUT=""
[ "${1:-}" = "--json" ] && JSON_OUT="${2:?--json needs a file}"
. bench/lib.sh
bench_begin rf-pull docker-registry skopeo curl python3

# ---- the reference registry, with its access log, holding one image with one big layer
start_reference_registry
target/release/rf-bench-image "$WORK/image" --layers "${BLOB_MIB}M" --plain --seed 3 > "$WORK/image.json"
BLOB="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["largest_layer"]["digest"])' "$WORK/image.json")"
push_layout "$WORK/image" bench/big:latest
DIRECT_URL="http://127.0.0.1:$REG_PORT/v2/bench/big/blobs/$BLOB"

start_facade() {  # name -> sets FACADE_URL and FACADE_PID
  local dir="$WORK/$1" port
  port="$(free_port)"
  mkdir -p "$dir"
  cat > "$dir/config.json" <<JSON
{"listen": "127.0.0.1:$port", "cacheDir": "$dir/cache", "demoImage": false,
 "registries": {"127.0.0.1:$REG_PORT": {"endpoint": "http://127.0.0.1:$REG_PORT"}},
 "mirrors": {"up": "127.0.0.1:$REG_PORT"}, "log": {"level": "warn"}}
JSON
  target/release/registry-facade --config "$dir/config.json" 2>"$dir/log" &
  FACADE_PID=$!
  PIDS+=("$FACADE_PID")
  wait_http "http://127.0.0.1:$port/v2/"
  FACADE_URL="http://127.0.0.1:$port/v2/mirror/up/bench/big/blobs/$BLOB"
}
stop_facade() { kill "$FACADE_PID"; wait "$FACADE_PID" 2>/dev/null || true; }
upstream_gets() { grep -c "\"GET /v2/bench/big/blobs/$BLOB" "$REG_LOG" || true; }
pull() {  # url -> seconds; fails unless all bytes came
  local out
  out=$(curl -fsS -o /dev/null -w '%{time_total} %{size_download}' "$1")
  [ "${out#* }" = "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['largest_layer']['size'])" "$WORK/image.json")" ] || { echo "bench: short body from $1" >&2; exit 1; }
  echo "${out% *}"
}
now() { date +%s.%N; }

RESULTS="$WORK/results.txt"
: > "$RESULTS"
pull "$DIRECT_URL" >/dev/null   # warm the registry's page cache: both sides read it hot
for round in $(seq "$ROUNDS"); do
  direct=$(pull "$DIRECT_URL")
  start_facade "cold-$round"
  before=$(upstream_gets)
  cold=$(pull "$FACADE_URL")
  stop_facade
  start_facade "storm-$round"
  before_storm=$(upstream_gets)
  t0=$(now)
  seq "$CONCURRENT" | xargs -P "$CONCURRENT" -I{} sh -c "curl -fsS -o /dev/null '$FACADE_URL'" 
  t1=$(now)
  fetches=$(( $(upstream_gets) - before_storm ))
  seq "$CONCURRENT" | xargs -P "$CONCURRENT" -I{} sh -c "curl -fsS -o /dev/null '$FACADE_URL'"
  t2=$(now)
  stop_facade
  printf '%s %s %s %s %s %s %s\n' "$round" "$direct" "$cold" "$(python3 -c "print($t1 - $t0)")" "$fetches" "$(( before_storm - before ))" "$(python3 -c "print($t2 - $t1)")" >> "$RESULTS"
done

python3 - "$RESULTS" "$BLOB_MIB" "$CONCURRENT" "$JSON_OUT" <<'PY'
import json, statistics, sys
path, mib, concurrent, json_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = []
for line in open(path):
    rnd, direct, cold, storm, fetches, cold_fetches, warm = line.split()
    rows.append(dict(round=int(rnd), direct_s=float(direct), cold_s=float(cold), storm_s=float(storm),
                     storm_upstream_gets=int(fetches), cold_upstream_gets=int(cold_fetches), warm_storm_s=float(warm)))
print(f"{'round':>5} {'direct s':>9} {'cold s':>8} {f'{concurrent}x cold s':>12} {f'{concurrent}x warm s':>12} {'upstream GETs':>14}")
for r in rows:
    print(f"{r['round']:>5} {r['direct_s']:>9.3f} {r['cold_s']:>8.3f} {r['storm_s']:>12.3f} {r['warm_storm_s']:>12.3f} {r['storm_upstream_gets']:>14}")
cold_ratio = statistics.median(r["cold_s"] / r["direct_s"] for r in rows)
storm_ratio = statistics.median(r["storm_s"] / r["cold_s"] for r in rows)
storm_warm_ratio = statistics.median(r["storm_s"] / r["warm_storm_s"] for r in rows)
print(f"cold pull-through / direct ({mib} MiB):          {cold_ratio:.2f}")
print(f"{concurrent} concurrent cold / one cold pull:           {storm_ratio:.2f}")
print(f"{concurrent} concurrent cold / {concurrent} concurrent warm:     {storm_warm_ratio:.2f}")
print(f"upstream GETs per {concurrent}-client storm:              {sorted({r['storm_upstream_gets'] for r in rows})}")
if json_out:
    json.dump({"blob_mib": mib, "concurrent": concurrent, "rows": rows, "cold_over_direct": cold_ratio,
               "storm_over_cold": storm_ratio, "storm_cold_over_warm": storm_warm_ratio}, open(json_out, "w"), indent=2)
PY
