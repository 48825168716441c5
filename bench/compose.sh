#!/usr/bin/env bash
# Composed workspace images, same run:
#   1. a hot composed manifest from the facade vs nginx serving the same bytes as a static
#      file (plain and tuned, as in vs-nginx.sh), loaded with wrk: req/s, p99, CPU per request;
#   2. the first composition of NEW specs whose input images are already cached (the tag TTL
#      is set above the run length, so no input is re-resolved upstream meanwhile): the
#      facade's own time per composition (from its log) and what a client waits for it.
# Inputs live in docker-registry 2.8 (base: 3 layers, IDE: 1, supervisor: 1).
#
# Usage: bench/compose.sh [--json FILE]
# Env: DURATION=10 ROUNDS=3 CORES=$(nproc) SPECS=100 CONNS=64
# Needs: docker-registry, skopeo, nginx, wrk, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CORES="${CORES:-$(nproc)}"
SPECS="${SPECS:-100}"
CONNS="${CONNS:-64}"
JSON_OUT=""
[ "${1:-}" = "--json" ] && JSON_OUT="${2:?--json needs a file}"
. bench/lib.sh
bench_begin rf-compose docker-registry skopeo nginx wrk curl python3

start_reference_registry
for image in "base 1M,1M,1M 41" "ide 512K 42" "sup 256K 43"; do
  set -- $image
  target/release/rf-bench-image "$WORK/$1" --layers "$2" --seed "$3" >/dev/null
  push_layout "$WORK/$1" "$1/img:latest"
done
HOST="127.0.0.1:$REG_PORT"

RF_PORT="$(free_port)"; ADMIN_PORT="$(free_port)"
cat > "$WORK/facade.json" <<JSON
{"listen": "127.0.0.1:$RF_PORT", "adminListen": "127.0.0.1:$ADMIN_PORT", "cores": $CORES,
 "cacheDir": "$WORK/cache", "demoImage": false, "log": {"level": "info"}, "mirrorTagTtlMs": 3600000,
 "registries": {"$HOST": {"endpoint": "http://$HOST"}}}
JSON
target/release/registry-facade --config "$WORK/facade.json" 2>"$WORK/facade.log" &
RF_PID=$!
PIDS+=("$RF_PID")
wait_http "http://127.0.0.1:$RF_PORT/v2/"

spec() {  # id [content]: PUTs a spec of the three images, with a direct content layer if given
  local content="${2:-}" layer=""
  [ -n "$content" ] && layer=", \"contentLayer\": [{\"direct\": {\"content\": \"$content\"}}]"
  curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$ADMIN_PORT/admin/specs/$1" \
    -d "{\"baseRef\": \"$HOST/base/img:latest\", \"ideRef\": \"$HOST/ide/img:latest\", \"supervisorRef\": \"$HOST/sup/img:latest\"$layer}"
}
spec bench
MANIFEST_URL="http://127.0.0.1:$RF_PORT/v2/remote/bench/manifests/latest"
curl -fsS -D "$WORK/headers" -o "$WORK/composed.json" "$MANIFEST_URL"
MEDIA_TYPE=$(awk -F': ' 'tolower($1)=="content-type" {print $2}' "$WORK/headers" | tr -d '\r')
SIZE=$(stat -c %s "$WORK/composed.json")

# ---- nginx serving the composed manifest's bytes as a static file
FILES=("$WORK/composed.json" /v2/remote/bench/manifests/latest "$MEDIA_TYPE")
NGX_PORT="$(free_port)"
start_nginx nginx "$NGX_PORT" "" "" "" "${FILES[@]}"
NGX_PID=$NGINX_PID
TUNED_PORT="$(free_port)"
start_nginx nginx-tuned "$TUNED_PORT" reuseport "worker_cpu_affinity auto;" "open_file_cache max=64;" "${FILES[@]}"
TUNED_PID=$NGINX_PID
for port in "$RF_PORT" "$NGX_PORT" "$TUNED_PORT"; do
  curl -fsS "http://127.0.0.1:$port/v2/remote/bench/manifests/latest" | cmp -s - "$WORK/composed.json" || { echo "bench: port $port serves other bytes" >&2; exit 1; }
done

RESULTS="$WORK/results.txt"
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  for server in facade nginx nginx-tuned; do
    case "$server" in
      facade) port=$RF_PORT; pid=$RF_PID ;;
      nginx) port=$NGX_PORT; pid=$NGX_PID ;;
      nginx-tuned) port=$TUNED_PORT; pid=$TUNED_PID ;;
    esac
    printf '%s\t%s\tmanifest\t%s\n' "$round" "$server" "$(run_wrk "$pid" "$CONNS" "http://127.0.0.1:$port/v2/remote/bench/manifests/latest")" >> "$RESULTS"
  done
done

# ---- first compositions of new specs (inputs cached by the composition above)
FIRST="$WORK/first.txt"
: > "$FIRST"
for i in $(seq "$SPECS"); do
  content=$(python3 -c "
import base64, io, tarfile, sys
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode='w') as tar:
    data = f'workspace {sys.argv[1]}\n'.encode()
    info = tarfile.TarInfo('workspace/id'); info.size = len(data); info.mtime = 0
    tar.addfile(info, io.BytesIO(data))
print(base64.b64encode(buf.getvalue()).decode())" "$i")
  spec "ws-$i" "$content"
  curl -fsS -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$RF_PORT/v2/remote/ws-$i/manifests/latest" >> "$FIRST"
done
grep -o 'name=remote/ws-[0-9]* .*micros=[0-9]*' "$WORK/facade.log" | sed 's/.*micros=//' > "$WORK/compose_micros.txt"

python3 - "$RESULTS" "$FIRST" "$WORK/compose_micros.txt" "$SIZE" "$DURATION" "$JSON_OUT" <<'PY'
import base64, json, re, statistics, sys
results, first, micros_path, size, duration, json_out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
def seconds(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60}[unit]
rows = []
for line in open(results):
    rnd, server, obj, cpu, raw = line.rstrip("\n").split("\t")
    out = base64.b64decode(raw).decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = seconds(re.search(r"99%\s+(\S+)", out).group(1)) * 1e3
    bad = int((re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out) or [0, 0])[1])
    rows.append(dict(round=int(rnd), server=server, rps=rps, p99_ms=p99, cpu_us_per_req=float(cpu) / (rps * duration) * 1e6, errors=bad))
print(f"composed manifest: {size} bytes")
print(f"{'round':>5} {'server':<11} {'req/s':>9} {'p99 ms':>7} {'cpu us/req':>10} {'errors':>6}")
for r in rows:
    print(f"{r['round']:>5} {r['server']:<11} {r['rps']:>9.0f} {r['p99_ms']:>7.2f} {r['cpu_us_per_req']:>10.1f} {r['errors']:>6}")
ratios = {}
for peer in ["nginx", "nginx-tuned"]:
    for key, label in [("rps", "req/s"), ("p99_ms", "p99"), ("cpu_us_per_req", "CPU/req")]:
        values = []
        for rnd in sorted({r["round"] for r in rows}):
            pick = {r["server"]: r[key] for r in rows if r["round"] == rnd}
            values.append(pick["facade"] / pick[peer])
        ratios[f"facade/{peer} {label}"] = statistics.median(values)
        print(f"facade/{peer:<11} {label:<8} {statistics.median(values):6.2f}   (rounds: {', '.join(f'{v:.2f}' for v in values)})")
micros = sorted(int(x) for x in open(micros_path) if x.strip())
client = sorted(float(x) * 1e3 for x in open(first) if x.strip())
def pct(values, p):
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
print(f"first composition, server time (n={len(micros)}): p50 {pct(micros, 50)} us, p99 {pct(micros, 99)} us, max {micros[-1]} us")
print(f"first composition, client wait (n={len(client)}): p50 {pct(client, 50):.2f} ms, p99 {pct(client, 99):.2f} ms")
if any(r["errors"] for r in rows) or len(micros) != len(client):
    print("ERRORS or missing compositions: the run is not valid"); sys.exit(1)
if json_out:
    json.dump({"manifest_bytes": size, "rows": rows, "ratios": ratios,
               "compose_us": {"p50": pct(micros, 50), "p99": pct(micros, 99), "max": micros[-1]},
               "first_pull_ms": {"p50": pct(client, 50), "p99": pct(client, 99)}}, open(json_out, "w"), indent=2)
PY
