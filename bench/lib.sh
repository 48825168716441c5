# Shared helpers of the bench scripts (sourced, not run). A script calls `bench_begin` first;
# the helpers then use $WORK (a temp dir) and add the processes they start to PIDS, which the
# exit trap stops.

# bench_begin NAME [-p PACKAGE]... TOOL...: exits 2 naming a missing tool, builds the release
# binaries (registry-facade, rf-bench-image and the binary of each workspace member given
# with -p, e.g. pullstorm), makes $WORK (/tmp/NAME.XXXXXX, readable by nginx's workers) and
# the PIDS array, and on exit stops every process in PIDS and removes $WORK (kept, and said
# so, when KEEP_WORK is set).
bench_begin() {
  local name="$1" tool
  shift
  local tools=(-p rf-bench-image)
  while [ "${1:-}" = -p ]; do tools+=(-p "$2"); shift 2; done
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (bench/README.md lists the packages)" >&2; exit 2; }
  done
  # Two builds: the server alone, as `cargo build --release` builds it, and then the tools. In
  # one build Cargo would unify the tools' features (pullstorm's sha2 `compress`) into the
  # server's dependencies, and the server measured would not be the one shipped.
  cargo build --release --quiet -p registry-facade
  cargo build --release --quiet "${tools[@]}"
  WORK="$(mktemp -d "/tmp/$name.XXXXXX")"
  chmod 755 "$WORK"
  PIDS=()
  trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() {  # url: waits until it answers (any status below 500)
  for _ in $(seq 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)
    [ "$code" != 000 ] && [ "$code" -lt 500 ] && return 0
    sleep 0.1
  done
  echo "bench: $1 never answered" >&2; exit 1
}

# run_nginx NAME PORT MAIN_DIRECTIVES WORKER_CONNECTIONS HTTP_DIRECTIVES SERVER_BODY
#   nginx under $WORK/NAME with the settings every peer shares (sendfile, one worker per core,
#   no access log, long keep-alive), the given extras and server block. Sets NGINX_PID.
run_nginx() {
  local n="$WORK/$1" port="$2"
  mkdir -p "$n/tmp" "$n/logs"
  cat > "$n/nginx.conf" <<NGINX
worker_processes $CORES;
$3
pid $n/nginx.pid;
error_log $n/logs/error.log warn;
daemon off;
events { worker_connections $4; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  $5
  client_body_temp_path $n/tmp; proxy_temp_path $n/tmp; fastcgi_temp_path $n/tmp;
  uwsgi_temp_path $n/tmp; scgi_temp_path $n/tmp;
  default_type application/octet-stream;
  server {
$6
  }
}
NGINX
  nginx -c "$n/nginx.conf" -p "$n" >"$n/logs/stdout" 2>&1 </dev/null &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_http "http://127.0.0.1:$port/"
}

# start_nginx NAME PORT LISTEN_FLAGS MAIN_DIRECTIVES HTTP_DIRECTIVES ROUTE_FILE URL_PATH CONTENT_TYPE...
#   Serves files at registry-shaped paths: each (FILE PATH TYPE) triple after the first five
#   arguments is copied to PATH and served with TYPE. Sets NGINX_PID.
start_nginx() {
  local name="$1" port="$2" listen_flags="$3" main="$4" http="$5"; shift 5
  local n="$WORK/$name" locations=""
  mkdir -p "$n/root"
  while [ $# -ge 3 ]; do
    mkdir -p "$n/root$(dirname "$2")"
    cp "$1" "$n/root$2"
    locations="$locations
    location = $2 { default_type $3; }"
    shift 3
  done
  chmod -R a+rX "$n/root"
  run_nginx "$name" "$port" "$main" 4096 "$http" "    listen 127.0.0.1:$port $listen_flags;
    root $n/root;$locations"
}

# CPU seconds (user+system) of a process and its children.
cpu_seconds() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat") ))
  done
  python3 -c "print($total / $(getconf CLK_TCK))"
}

# run_wrk PID CONNS URL -> "<cpu seconds>\t<wrk output, base64>"
run_wrk() {
  local before after out
  before=$(cpu_seconds "$1")
  out=$(wrk -t"${WRK_THREADS:-2}" -c"$2" -d"${DURATION}s" --timeout 30s --latency \
          -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' "$3")
  after=$(cpu_seconds "$1")
  printf '%s\t%s\n' "$(python3 -c "print($after - $before)")" "$(echo "$out" | base64 -w0)"
}

# start_reference_registry -> sets REG_PORT, REG_PID, REG_LOG (docker-registry 2.8 with its
# access log on, fresh storage under $WORK/registry).
start_reference_registry() {
  REG_PORT="$(free_port)"
  mkdir -p "$WORK/registry"
  cat > "$WORK/registry/config.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $WORK/registry/storage
http:
  addr: 127.0.0.1:$REG_PORT
YAML
  REG_LOG="$WORK/registry/log"
  docker-registry serve "$WORK/registry/config.yml" >"$REG_LOG" 2>&1 &
  REG_PID=$!
  PIDS+=("$REG_PID")
  wait_http "http://127.0.0.1:$REG_PORT/v2/"
}

# push_layout DIR REPO:TAG: an OCI layout into the reference registry, digests kept.
push_layout() {
  skopeo --insecure-policy copy -q --preserve-digests --dest-tls-verify=false "oci:$1:latest" "docker://127.0.0.1:$REG_PORT/$2"
}

# start_nginx_layout NAME PORT LAYOUT [TAG]: nginx serving an OCI image layout written by
#   `skopeo copy … oci:LAYOUT:<repo>` (one index entry per repo) at registry-shaped paths, as a
#   static-file peer for whole images: /v2/<repo>/manifests/<TAG> and /manifests/<digest> with
#   the manifest's media type and a Docker-Content-Digest header (so a HEAD resolves as on a
#   registry), /v2/<repo>/blobs/sha256:<hex> from the layout's blob files. Same settings as
#   start_nginx (sendfile, one worker per core), plus a listen backlog of 4096 and enough
#   descriptors for thousands of connections. Sets NGINX_PID.
start_nginx_layout() {
  local name="$1" port="$2" layout="$3" tag="${4:-latest}" n="$WORK/$1"
  mkdir -p "$n/tmp" "$n/logs"
  python3 - "$layout" "$tag" > "$n/manifests.conf" <<'PY'
import json, sys
layout, tag = sys.argv[1], sys.argv[2]
for m in json.load(open(f"{layout}/index.json"))["manifests"]:
    repo, digest = m["annotations"]["org.opencontainers.image.ref.name"], m["digest"]
    path = f"{layout}/blobs/{digest.replace(':', '/')}"
    for ref in (tag, digest):
        print(f"    location = /v2/{repo}/manifests/{ref} {{ alias {path}; default_type {m['mediaType']}; "
              f"add_header Docker-Content-Digest {digest}; }}")
PY
  chmod -R a+rX "$layout"
  # shellcheck disable=SC2016 # nginx's own $1, not the shell's
  run_nginx "$name" "$port" "worker_rlimit_nofile 65536;" 16384 "" "    listen 127.0.0.1:$port backlog=4096;
    location ~ \"^/v2/.+/blobs/sha256:([0-9a-f]{64})\$\" {
      alias $layout/blobs/sha256/"'$1'";
      add_header Docker-Content-Digest sha256:"'$1'";
    }
    include $n/manifests.conf;"
}
