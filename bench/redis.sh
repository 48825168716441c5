#!/usr/bin/env bash
# What Redis costs a `remote/<id>` manifest, same run, same inputs (docker-registry 2.8 holds
# the base, IDE and supervisor images; every facade has them cached before timing starts):
#   1. hot: wrk on one composed manifest, facade with specs in memory vs facade with specs in
#      Redis; Redis's own command counters are read before and after, to show the hot path
#      never reaches Redis (only the background revalidation, one GET per spec per 5 s);
#   2. cold: the first GET of SPECS new specs, one after another on one keep-alive connection:
#      memory (spec PUT through the admin API) vs Redis (spec SET in Redis, as an orchestrator
#      does; the facade reads it, composes, and writes the composition back) vs a second Redis
#      node asked for the same specs afterwards (it reads the composition, composes nothing).
#
# Usage: bench/redis.sh [--json FILE]
# Env: DURATION=10 ROUNDS=3 CORES=$(nproc) SPECS=200 CONNS=64
# Needs: docker-registry, skopeo, redis-server, redis-cli, wrk, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CORES="${CORES:-$(nproc)}"
SPECS="${SPECS:-200}"
CONNS="${CONNS:-64}"
JSON_OUT=""
[ "${1:-}" = "--json" ] && JSON_OUT="${2:?--json needs a file}"
. bench/lib.sh
bench_begin rf-redis docker-registry skopeo redis-server redis-cli wrk curl python3

start_reference_registry
for image in "base 1M,1M,1M 41" "ide 512K 42" "sup 256K 43"; do
  set -- $image
  target/release/rf-bench-image "$WORK/$1" --layers "$2" --seed "$3" >/dev/null
  push_layout "$WORK/$1" "$1/img:latest"
done
HOST="127.0.0.1:$REG_PORT"

REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# start_facade NAME [REDIS_JSON]: sets PORT_<NAME>, ADMIN_<NAME>, PID_<NAME>
start_facade() {
  local name="$1" redis="${2:-}" port admin
  port="$(free_port)"; admin="$(free_port)"
  cat > "$WORK/$name.json" <<JSON
{"listen": "127.0.0.1:$port", "adminListen": "127.0.0.1:$admin", "cores": $CORES,
 "cacheDir": "$WORK/cache-$name", "demoImage": false, "log": {"level": "warn"}, "mirrorTagTtlMs": 3600000,
 "registries": {"$HOST": {"endpoint": "http://$HOST"}} $redis}
JSON
  target/release/registry-facade --config "$WORK/$name.json" 2>"$WORK/$name.log" &
  PIDS+=("$!")
  printf -v "PORT_$name" %s "$port"; printf -v "ADMIN_$name" %s "$admin"; printf -v "PID_$name" %s "$!"
  wait_http "http://127.0.0.1:$port/v2/"
}
REDIS_JSON=", \"redis\": {\"url\": \"redis://127.0.0.1:$REDIS_PORT\"}"
start_facade memory
start_facade redis "$REDIS_JSON"
start_facade peer "$REDIS_JSON"

spec_json() {  # id -> a spec of the three images plus a content layer unique to id
  python3 - "$1" "$HOST" <<'PY'
import base64, io, json, sys, tarfile
ident, host = sys.argv[1], sys.argv[2]
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    data = f"workspace {ident}\n".encode()
    info = tarfile.TarInfo("workspace/id"); info.size = len(data); info.mtime = 0
    tar.addfile(info, io.BytesIO(data))
print(json.dumps({"baseRef": f"{host}/base/img:latest", "ideRef": f"{host}/ide/img:latest",
                  "supervisorRef": f"{host}/sup/img:latest",
                  "contentLayer": [{"direct": {"content": base64.b64encode(buf.getvalue()).decode()}}]}))
PY
}
put_memory() { curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$ADMIN_memory/admin/specs/$1" --data-binary "$2"; }
put_redis() { rcli set "rf:spec:$1" "$2" >/dev/null; }

# ---- warm every facade's input images with one spec each, then the hot run
SPEC="$(spec_json hot)"
put_memory hot "$SPEC"
put_redis hot "$SPEC"
for name in memory redis peer; do
  port_var="PORT_$name"
  curl -fsS -o "$WORK/hot-$name.json" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://127.0.0.1:${!port_var}/v2/remote/hot/manifests/latest"
done
cmp -s "$WORK/hot-memory.json" "$WORK/hot-redis.json" || { echo "bench: memory and Redis facades compose different manifests" >&2; exit 1; }

# Commands other than the facades' health probes (PING, once a second each) and INFO itself.
redis_calls() { rcli info commandstats | awk -F'[:=,]' '/^cmdstat_/ && $1 !~ /ping|info/ {n += $3} END {print n + 0}'; }
RESULTS="$WORK/results.txt"
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  for name in memory redis; do
    port_var="PORT_$name"; pid_var="PID_$name"
    before=$(redis_calls)
    row=$(run_wrk "${!pid_var}" "$CONNS" "http://127.0.0.1:${!port_var}/v2/remote/hot/manifests/latest")
    after=$(redis_calls)
    printf '%s\t%s\t%s\t%s\n' "$round" "$name" "$row" "$(( after - before ))" >> "$RESULTS"
  done
done

# ---- cold: new specs, first GET each
for i in $(seq "$SPECS"); do
  body="$(spec_json "cold-$i")"
  put_memory "cold-$i" "$body"
  put_redis "cold-$i" "$body"
done
python3 - "$SPECS" "$PORT_memory" "$PORT_redis" "$PORT_peer" "$WORK/cold.json" <<'PY'
import http.client, json, sys, time
specs, ports, out = int(sys.argv[1]), dict(memory=sys.argv[2], redis=sys.argv[3], peer=sys.argv[4]), sys.argv[5]
accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
times, digests = {}, {}
for name in ["memory", "redis", "peer"]:
    conn = http.client.HTTPConnection("127.0.0.1", int(ports[name]))
    conn.request("GET", "/v2/", headers=accept); conn.getresponse().read()
    times[name], digests[name] = [], []
    for i in range(1, specs + 1):
        start = time.perf_counter()
        conn.request("GET", f"/v2/remote/cold-{i}/manifests/latest", headers=accept)
        response = conn.getresponse(); response.read()
        times[name].append((time.perf_counter() - start) * 1e3)
        if response.status != 200:
            sys.exit(f"{name}: cold-{i} answered {response.status}")
        digests[name].append(response.getheader("Docker-Content-Digest"))
if not (digests["memory"] == digests["redis"] == digests["peer"]):
    sys.exit("the three facades serve different digests for the same specs")
json.dump(times, open(out, "w"))
PY

python3 - "$RESULTS" "$WORK/cold.json" "$DURATION" "$JSON_OUT" <<'PY'
import base64, json, re, statistics, sys
results, cold_path, duration, json_out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
def seconds(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60}[unit]
rows = []
for line in open(results):
    rnd, name, cpu, raw, calls = line.rstrip("\n").split("\t")
    out = base64.b64decode(raw).decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = seconds(re.search(r"99%\s+(\S+)", out).group(1)) * 1e3
    bad = int((re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out) or [0, 0])[1])
    rows.append(dict(round=int(rnd), facade=name, rps=rps, p99_ms=p99, requests=requests,
                     redis_calls=int(calls), cpu_us_per_req=float(cpu) / (rps * duration) * 1e6, errors=bad))
print("hot composed manifest (wrk):")
print(f"{'round':>5} {'specs in':<8} {'req/s':>9} {'p99 ms':>7} {'cpu us/req':>10} {'requests':>9} {'redis calls':>11}")
for r in rows:
    print(f"{r['round']:>5} {r['facade']:<8} {r['rps']:>9.0f} {r['p99_ms']:>7.2f} {r['cpu_us_per_req']:>10.1f} {r['requests']:>9} {r['redis_calls']:>11}")
ratio = statistics.median(
    [next(r["rps"] for r in rows if r["round"] == n and r["facade"] == "redis") /
     next(r["rps"] for r in rows if r["round"] == n and r["facade"] == "memory") for n in sorted({r["round"] for r in rows})])
print(f"redis/memory req/s (median of rounds): {ratio:.3f}")
cold = json.load(open(cold_path))
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
summary = {name: {"p50_ms": pct(v, 50), "p90_ms": pct(v, 90), "p99_ms": pct(v, 99), "max_ms": max(v)} for name, v in cold.items()}
print(f"cold first GET of {len(cold['memory'])} new specs (ms):")
for name, label in [("memory", "memory (composes)"), ("redis", "Redis (reads spec, composes, writes)"), ("peer", "Redis peer (reads composition)")]:
    s = summary[name]
    print(f"  {label:<38} p50 {s['p50_ms']:.3f}  p90 {s['p90_ms']:.3f}  p99 {s['p99_ms']:.3f}  max {s['max_ms']:.3f}")
extra = summary["redis"]["p50_ms"] - summary["memory"]["p50_ms"]
print(f"Redis adds {extra:.3f} ms at p50 to a cold manifest (target < 1 ms)")
if any(r["errors"] for r in rows):
    print("ERRORS: the run is not valid"); sys.exit(1)
if json_out:
    json.dump({"hot": rows, "hot_rps_ratio_redis_over_memory": ratio, "cold": summary,
               "cold_extra_p50_ms": extra}, open(json_out, "w"), indent=2)
PY
