#!/usr/bin/env bash
# Blobserve against nginx serving the same extracted tree (sendfile on, one worker per core),
# on loopback, same run: a small file (4 KiB) and a large bundle (4 MiB) of an IDE-like
# image, loaded with wrk, servers alternating each round. Prints req/s, GiB/s, p99 latency
# and server CPU per unit, and the blobserve/nginx ratios (median over rounds). Then the
# time from the first request for an image blobserve has not prepared yet to its first byte,
# against `tar -xzf` of the same layer (what Gitpod's blobserve runs) in the same run.
#
# Usage: bench/blobserve.sh [--json FILE]
# Env: DURATION=10 (s per wrk run)  ROUNDS=3  CORES=$(nproc) (executors / nginx workers)
#      SMALL_CONNS=64  LARGE_CONNS=16  WRK_THREADS=2  COLD=5 (cold first requests)
# Needs: wrk, nginx, curl, python3, tar (apt-get install wrk nginx curl python3).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CORES="${CORES:-$(nproc)}"
SMALL_CONNS="${SMALL_CONNS:-64}"
LARGE_CONNS="${LARGE_CONNS:-16}"
WRK_THREADS="${WRK_THREADS:-2}"
COLD="${COLD:-5}"
JSON_OUT=""
[ "${1:-}" = "--json" ] && JSON_OUT="${2:?--json needs a file}"
. bench/lib.sh
bench_begin rf-blobserve wrk nginx curl python3 tar

# ---- IDE-like images: 256 small files of 4 KiB and a 4 MiB bundle under /ide/code, one
# gzip layer each, as OCI layouts (`seed` varies the bytes, so each image unpacks anew).
make_image() {  # make_image DIR SEED
  python3 - "$1" "$2" <<'PY'
import gzip, hashlib, io, json, os, random, sys, tarfile
out, seed = sys.argv[1], sys.argv[2]
rng = random.Random(seed)
def text(n):  # JavaScript-like text: compressible, as bundles are
    words = [f"function f{i}(a){{return a*{i}+{rng.randrange(1 << 30)};}}\n" for i in range(2000)]
    data = "".join(rng.choice(words) for _ in range(n // 30 + 1)).encode()
    return data[:n]
files = {f"ide/code/small/{i}.js": text(4096) for i in range(256)}
files["ide/code/out/bundle.js"] = text(4 << 20)
files["ide/code/index.html"] = b"<!doctype html><script src=out/bundle.js></script>"
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
    for name, data in sorted(files.items()):
        info = tarfile.TarInfo(name); info.size = len(data); info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
layer = gzip.compress(raw.getvalue(), mtime=0)
os.makedirs(f"{out}/blobs/sha256", exist_ok=True)
def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    open(f"{out}/blobs/sha256/{digest}", "wb").write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}
config = blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()]}}).encode())
layer_desc = blob(layer)
manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}]}).encode())
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest}]},
          open(f"{out}/index.json", "w"))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
print(layer_desc["digest"][7:])
PY
}
LAYER_HEX="$(make_image "$WORK/image" hot)"
target/release/registry-facade import "$WORK/image" bench/ide:hot --cache-dir "$WORK/cache" >/dev/null
for i in $(seq "$COLD"); do
  make_image "$WORK/cold-$i" "cold-$i" >/dev/null
  target/release/registry-facade import "$WORK/cold-$i" "bench/ide:cold-$i" --cache-dir "$WORK/cache" >/dev/null
done

# ---- blobserve on the facade
RF_PORT="$(free_port)"
BS_PORT="$(free_port)"
cat > "$WORK/facade.json" <<JSON
{"listen": "127.0.0.1:$RF_PORT", "cacheDir": "$WORK/cache", "cores": $CORES, "demoImage": false,
 "log": {"level": "warn"},
 "blobserve": {"listen": "127.0.0.1:$BS_PORT", "repos": {"bench/ide": {"workdir": "/ide/code"}}}}
JSON
target/release/registry-facade serve --config "$WORK/facade.json" 2>"$WORK/facade.log" &
RF_PID=$!
PIDS+=("$RF_PID")
wait_http "http://127.0.0.1:$RF_PORT/v2/"
BS="http://127.0.0.1:$BS_PORT/bench/ide:hot"

# ---- nginx serving the same tree, extracted with tar, at the same paths
mkdir -p "$WORK/tree"
tar -xzf "$WORK/image/blobs/sha256/$LAYER_HEX" -C "$WORK/tree"
chmod -R a+rX "$WORK/tree"
NGX_PORT="$(free_port)"
run_nginx nginx "$NGX_PORT" "" 4096 "types { text/javascript js; text/html html; }" "    listen 127.0.0.1:$NGX_PORT;
    location /bench/ide:hot/ { alias $WORK/tree/ide/code/; }"
NGX="http://127.0.0.1:$NGX_PORT/bench/ide:hot"

# Both must serve identical bytes before they are compared (the first request prepares).
for file in small/7.js out/bundle.js; do
  curl -fs "$BS/$file" | cmp -s - "$WORK/tree/ide/code/$file" || { echo "bench: wrong $file from blobserve" >&2; exit 1; }
  curl -fs "$NGX/$file" | cmp -s - "$WORK/tree/ide/code/$file" || { echo "bench: wrong $file from nginx" >&2; exit 1; }
done

RESULTS="$WORK/results.txt"
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  for object in small large; do
    for server in blobserve nginx; do
      case "$server" in
        blobserve) base="$BS"; pid=$RF_PID ;;
        nginx) base="$NGX"; pid=$NGINX_PID ;;
      esac
      if [ "$object" = small ]; then url="$base/small/7.js"; conns=$SMALL_CONNS; else url="$base/out/bundle.js"; conns=$LARGE_CONNS; fi
      printf '%s\t%s\t%s\t%s\n' "$round" "$server" "$object" "$(run_wrk "$pid" "$conns" "$url")" >> "$RESULTS"
    done
  done
done

# ---- first byte of an image not prepared yet, and tar -xzf of the same layer
COLD_RESULTS="$WORK/cold.txt"
: > "$COLD_RESULTS"
for i in $(seq "$COLD"); do
  layer="$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["manifests"][0]["digest"][7:]; print(json.load(open(f"{sys.argv[2]}/blobs/sha256/{m}"))["layers"][0]["digest"][7:])' "$WORK/cold-$i/index.json" "$WORK/cold-$i")"
  first=$(curl -fs -o /dev/null -w '%{time_starttransfer}' "http://127.0.0.1:$BS_PORT/bench/ide:cold-$i/out/bundle.js")
  again=$(curl -fs -o /dev/null -w '%{time_starttransfer}' "http://127.0.0.1:$BS_PORT/bench/ide:cold-$i/out/bundle.js")
  mkdir -p "$WORK/untar-$i"
  untar=$(python3 -c 'import subprocess,sys,time; t=time.monotonic(); subprocess.run(["tar","-xzf",sys.argv[1],"-C",sys.argv[2]],check=True); print(time.monotonic()-t)' "$WORK/cold-$i/blobs/sha256/$layer" "$WORK/untar-$i")
  printf '%s\t%s\t%s\t%s\n' "$i" "$first" "$again" "$untar" >> "$COLD_RESULTS"
done

python3 - "$RESULTS" "$COLD_RESULTS" "$CORES" "$DURATION" "$JSON_OUT" <<'PY'
import json, statistics, sys
sys.path.insert(0, "bench")
from wrk_report import wrk_row
path, cold_path, cores, duration, json_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
rows = [wrk_row(*line.rstrip("\n").split("\t"), duration) for line in open(path)]
print(f"{'round':>5} {'server':<10} {'object':<6} {'req/s':>10} {'GiB/s':>7} {'p99 ms':>8} {'cpu us/req':>10} {'cpu s/GiB':>9} {'errors':>6}")
for r in rows:
    print(f"{r['round']:>5} {r['server']:<10} {r['object']:<6} {r['rps']:>10.0f} {r['gib_s']:>7.2f} {r['p99_ms']:>8.2f} {r['cpu_us_per_req']:>10.1f} {r['cpu_s_per_gib']:>9.3f} {r['errors']:>6}")
summary = {}
for obj, key, label in [("small", "rps", "small req/s"), ("large", "gib_s", "large GiB/s"), ("small", "p99_ms", "small p99"),
                        ("large", "p99_ms", "large p99"), ("small", "cpu_us_per_req", "small CPU/req"), ("large", "cpu_s_per_gib", "large CPU/GiB")]:
    values = []
    for rnd in sorted({r["round"] for r in rows}):
        pick = {r["server"]: r[key] for r in rows if r["round"] == rnd and r["object"] == obj}
        values.append(pick["blobserve"] / pick["nginx"])
    summary[f"blobserve/nginx {label}"] = statistics.median(values)
    print(f"blobserve/nginx {label:<15} {statistics.median(values):6.2f}   (rounds: {', '.join(f'{v:.2f}' for v in values)})")
cold = [dict(zip(["image", "first_s", "again_s", "untar_s"], [int(a)] + [float(x) for x in rest]))
        for a, *rest in (l.rstrip("\n").split("\t") for l in open(cold_path))]
for c in cold:
    print(f"cold image {c['image']}: first byte {c['first_s'] * 1e3:7.1f} ms (prepared: {c['again_s'] * 1e3:5.2f} ms); tar -xzf of its layer {c['untar_s'] * 1e3:7.1f} ms")
median_first = statistics.median(c["first_s"] for c in cold)
median_untar = statistics.median(c["untar_s"] for c in cold)
summary["cold first byte ms (median)"] = median_first * 1e3
summary["tar -xzf ms (median)"] = median_untar * 1e3
summary["cold first byte / tar -xzf"] = median_first / median_untar
print(f"cold first byte median {median_first * 1e3:.1f} ms; tar -xzf median {median_untar * 1e3:.1f} ms; ratio {median_first / median_untar:.2f}")
if any(r["errors"] for r in rows):
    print("ERRORS seen: the run is not valid"); sys.exit(1)
if json_out:
    json.dump({"cores": cores, "duration_s": duration, "rows": rows, "cold": cold, "ratios": summary}, open(json_out, "w"), indent=2)
PY
