#!/usr/bin/env bash
# Soak: mixed warm and cold pulls through one facade at saturation for DURATION seconds, with
# the facade's RSS, open descriptors, cache size and the error count sampled every SAMPLE
# seconds, written as CSV and plotted (SVG).
#
#   warm: WARM_WORKERS loops pull a small hot set of images (manifest, config, layers) that
#         stays cached;
#   cold: COLD_WORKERS loops pull random images from a set larger than the cache budget
#         (cacheMaxBytes), so blobs are evicted and filled from the reference registry again
#         and again.
# Every blob is checked against its digest (sha256sum of the bytes received).
#
# The run FAILS (exit 1) if any pull fails, or if RSS or open descriptors keep growing: the
# peak of the last half of the samples must stay within RSS_SLACK_PCT % (+16 MiB) and
# FD_SLACK descriptors of the peak of the first half (after a WARMUP-second warm-up).
#
# Usage: bench/soak.sh [OUT_DIR]      (default: a new /tmp/rf-soak.* directory, kept)
# Env:   DURATION=600 SAMPLE=10 WARMUP=30 WARM_WORKERS=6 COLD_WORKERS=2 COLD_IMAGES=24
#        CACHE_MAX_MIB=64 RSS_SLACK_PCT=25 FD_SLACK=32 CORES=2
# Needs: docker-registry, skopeo, curl, jq, sha256sum, python3; gnuplot for the plot (else a
# plain SVG is written by python).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-600}"
SAMPLE="${SAMPLE:-10}"
WARMUP="${WARMUP:-30}"
WARM_WORKERS="${WARM_WORKERS:-6}"
COLD_WORKERS="${COLD_WORKERS:-2}"
COLD_IMAGES="${COLD_IMAGES:-24}"
CACHE_MAX_MIB="${CACHE_MAX_MIB:-64}"
RSS_SLACK_PCT="${RSS_SLACK_PCT:-25}"
FD_SLACK="${FD_SLACK:-32}"
CORES="${CORES:-2}"
OUT="${1:-$(mktemp -d /tmp/rf-soak.XXXXXX)}"
mkdir -p "$OUT"
. bench/lib.sh
bench_begin rf-soak-work docker-registry skopeo curl jq sha256sum python3

# ---- upstream: the reference registry with a hot set and a cold set of images
start_reference_registry
IMAGES="$WORK/images.txt"  # kind repo
: > "$IMAGES"
make_image() {  # kind seed layers
  local name="$1-$2"
  target/release/rf-bench-image "$WORK/layout-$name" --layers "$3" --plain --seed "$2" >/dev/null
  push_layout "$WORK/layout-$name" "soak/$name:latest"
  rm -rf "$WORK/layout-$name"
  echo "$1 soak/$name" >> "$IMAGES"
}
for seed in 1 2; do make_image hot "$seed" 4M,256K,16K; done
for seed in $(seq 100 $((99 + COLD_IMAGES))); do make_image cold "$seed" 6M,1M,64K; done

# ---- the facade, mirroring the registry, with a cache budget smaller than the cold set
PORT="$(free_port)"
cat > "$WORK/facade.json" <<JSON
{"listen": "127.0.0.1:$PORT", "cores": $CORES, "cacheDir": "$WORK/cache", "demoImage": false,
 "cacheMaxBytes": $((CACHE_MAX_MIB << 20)),
 "registries": {"127.0.0.1:$REG_PORT": {"endpoint": "http://127.0.0.1:$REG_PORT"}},
 "mirrors": {"up": "127.0.0.1:$REG_PORT"}, "log": {"level": "warn"}}
JSON
target/release/registry-facade --config "$WORK/facade.json" 2>"$OUT/facade.log" &
FACADE_PID=$!
PIDS+=("$FACADE_PID")
wait_http "http://127.0.0.1:$PORT/v2/"
BASE="http://127.0.0.1:$PORT/v2/mirror/up"
ACCEPT='Accept: application/vnd.oci.image.manifest.v1+json'

# One pull as a client does it: the manifest, then the config and every layer, each checked
# against its digest. Prints "ok" or "FAIL <what>".
pull() {
  local repo="$1" manifest digest got
  manifest="$(curl -sf -H "$ACCEPT" "$BASE/$repo/manifests/latest")" || { echo "FAIL manifest $repo"; return; }
  for digest in $(jq -r '.config.digest, .layers[].digest' <<<"$manifest"); do
    got="$(curl -sf "$BASE/$repo/blobs/$digest" | sha256sum | cut -d' ' -f1)" || got="curl failed"
    [ "sha256:$got" = "$digest" ] || { echo "FAIL blob $repo $digest"; return; }
  done
  echo ok
}
worker() {  # kind log
  local repos end
  mapfile -t repos < <(awk -v k="$1" '$1 == k {print $2}' "$IMAGES")
  end=$(( $(date +%s) + DURATION ))
  while [ "$(date +%s)" -lt "$end" ]; do
    echo "$(date +%s) $1 $(pull "${repos[RANDOM % ${#repos[@]}]}")" >> "$2"
  done
}
LOG="$OUT/pulls.log"
: > "$LOG"
for _ in $(seq "$WARM_WORKERS"); do worker hot "$LOG" & PIDS+=("$!"); done
for _ in $(seq "$COLD_WORKERS"); do worker cold "$LOG" & PIDS+=("$!"); done

# ---- sampling
CSV="$OUT/samples.csv"
echo "seconds,rss_kib,fds,cache_bytes,pulls,errors,upstream_blob_gets" > "$CSV"
START=$(date +%s)
while :; do
  now=$(( $(date +%s) - START ))
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$FACADE_PID/status")
  fds=$(ls "/proc/$FACADE_PID/fd" | wc -l) || true
  # Files evicted during the walk make du complain; the total is still the right order.
  cache=$(du -sb "$WORK/cache/blobs" 2>/dev/null | cut -f1) || true
  pulls=$(wc -l < "$LOG")
  errors=$(grep -c FAIL "$LOG" || true)
  gets=$(grep -c '"GET /v2/soak/[^ ]*/blobs/' "$REG_LOG" || true)
  echo "$now,$rss,$fds,${cache:-0},$pulls,$errors,$gets" >> "$CSV"
  echo "soak: t=${now}s rss=${rss}KiB fds=$fds cache=$((cache >> 20))MiB pulls=$pulls errors=$errors upstream_gets=$gets" >&2
  [ "$now" -ge "$DURATION" ] && break
  sleep "$SAMPLE"
done
wait_workers() { for pid in "${PIDS[@]}"; do [ "$pid" = "$FACADE_PID" ] || [ "$pid" = "$REG_PID" ] || wait "$pid" 2>/dev/null || true; done; }
wait_workers
kill -0 "$FACADE_PID" 2>/dev/null || { echo "soak: the facade died" >&2; exit 1; }

# ---- verdict and plot
status=0
python3 - "$CSV" "$LOG" "$OUT" "$WARMUP" "$RSS_SLACK_PCT" "$FD_SLACK" <<'PY' || status=$?
import csv, sys, json
csv_path, log_path, out, warmup, rss_slack, fd_slack = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
rows = [{k: int(v) for k, v in r.items()} for r in csv.DictReader(open(csv_path))]
lines = open(log_path).read().splitlines()
pulls = {"hot": 0, "cold": 0}
for line in lines:
    parts = line.split()
    if len(parts) >= 3 and parts[2] == "ok":
        pulls[parts[1]] += 1
failures = [l for l in lines if "FAIL" in l]
steady = [r for r in rows if r["seconds"] >= warmup]
half = len(steady) // 2
first, last = steady[:half], steady[half:]
verdict, reasons = "PASS", []
if failures:
    reasons.append(f"{len(failures)} pulls failed, e.g. {failures[0]}")
if first and last:
    rss1, rss2 = max(r["rss_kib"] for r in first), max(r["rss_kib"] for r in last)
    fd1, fd2 = max(r["fds"] for r in first), max(r["fds"] for r in last)
    if rss2 > rss1 * (1 + rss_slack / 100) + 16 * 1024:
        reasons.append(f"RSS grew: peak {rss1} KiB in the first half, {rss2} KiB in the last")
    if fd2 > fd1 + fd_slack:
        reasons.append(f"descriptors grew: peak {fd1} in the first half, {fd2} in the last")
else:
    reasons.append("too few samples to judge growth")
if reasons:
    verdict = "FAIL"
seconds = rows[-1]["seconds"] or 1
summary = {
    "verdict": verdict, "reasons": reasons, "seconds": seconds,
    "pulls_ok": pulls, "pulls_failed": len(failures),
    "pulls_per_s": round((pulls["hot"] + pulls["cold"]) / seconds, 1),
    "rss_kib": {"min": min(r["rss_kib"] for r in rows), "max": max(r["rss_kib"] for r in rows), "last": rows[-1]["rss_kib"]},
    "fds": {"min": min(r["fds"] for r in rows), "max": max(r["fds"] for r in rows), "last": rows[-1]["fds"]},
    "cache_mib_max": round(max(r["cache_bytes"] for r in rows) / 2**20, 1),
    "upstream_blob_gets": rows[-1]["upstream_blob_gets"],
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary, indent=1))

# A plain SVG (used when gnuplot is not installed): four panels over time.
panels = [("rss_kib", "RSS (MiB)", 1 / 1024), ("fds", "open fds", 1), ("cache_bytes", "cache (MiB)", 1 / 2**20), ("errors", "errors", 1)]
w, h, pad = 720, 150, 40
parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * len(panels)}" font-family="sans-serif" font-size="11">']
for i, (key, title, scale) in enumerate(panels):
    top = i * h
    values = [r[key] * scale for r in rows]
    hi = max(values + [1]) * 1.1
    pts = " ".join(f"{pad + (w - 2 * pad) * r['seconds'] / seconds:.1f},{top + h - 20 - (h - 40) * v / hi:.1f}" for r, v in zip(rows, values))
    parts.append(f'<text x="{pad}" y="{top + 14}">{title} (max {max(values):.1f}) over {seconds} s</text>')
    parts.append(f'<line x1="{pad}" y1="{top + h - 20}" x2="{w - pad}" y2="{top + h - 20}" stroke="#999"/>')
    parts.append(f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="{pts}"/>')
parts.append("</svg>")
open(f"{out}/soak-plain.svg", "w").write("\n".join(parts))
sys.exit(0 if verdict == "PASS" else 1)
PY
if command -v gnuplot >/dev/null; then
  gnuplot <<GP
set terminal svg size 900,700 dynamic
set output "$OUT/soak.svg"
set datafile separator ","
set key autotitle columnhead
set multiplot layout 4,1 title "registry-facade soak ($(git rev-parse --short HEAD))"
set xlabel "seconds"
plot "$CSV" using 1:(\$2/1024) with lines title "RSS (MiB)"
plot "$CSV" using 1:3 with lines title "open fds"
plot "$CSV" using 1:(\$4/1048576) with lines title "cache (MiB)"
set yrange [0:*]
set y2tics
plot "$CSV" using 1:6 with lines title "errors", "$CSV" using 1:5 axes x1y2 with lines title "pulls (right axis)"
unset multiplot
GP
fi
echo "soak: results in $OUT (samples.csv, pulls.log, summary.json, soak.svg)" >&2
exit "$status"
