#!/usr/bin/env bash
# One node's containerd with the stargz snapshotter beside it as its proxy plugin `stargz`,
# for bench/pullstorm.sh's lazy scenario (tests/support/stargz/README.md has the set-up):
#
#   lazy-node.sh DIR start|stop|restart
#
# restart stops both, unmounts what is left under DIR and wipes their state before starting
# again: a fresh node, so nothing a previous storm fetched, unpacked or cached is reused.
# Sockets: DIR/containerd.sock and DIR/stargz.sock. The snapshotter runs with
# noprefetch and no_background_fetch: it fetches what is read and nothing else, so the bytes
# a storm moves are the bytes its workspaces needed. Env: STARGZ_GRPC (the daemon's binary,
# from tests/support/stargz/ensure.sh).
set -euo pipefail
DIR="${1:?usage: lazy-node.sh DIR start|stop|restart}"
ACTION="${2:?usage: lazy-node.sh DIR start|stop|restart}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

stop_pid() {  # name: SIGTERM the process of DIR/<name>.pid, SIGKILL after 10 s
  local file="$DIR/$1.pid" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

wait_for() {  # seconds what command...: polls the command until it succeeds
  local deadline=$(( $(date +%s) + $1 )) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "lazy-node: $what did not come up" >&2; exit 1; }
    sleep 0.05
  done
}

stop() {
  # containerd first, then the snapshotter (on SIGTERM it unmounts its FUSE mounts).
  stop_pid containerd
  stop_pid stargz
  awk -v d="$DIR/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

start() {
  : "${STARGZ_GRPC:?set STARGZ_GRPC to the stargz-grpc binary}"
  rm -rf "$DIR/ctrd" "$DIR/sgz" "$DIR/stargz.sock" "$DIR/containerd.sock"
  mkdir -p "$DIR/ctrd" "$DIR/sgz"
  printf 'noprefetch = true\nno_background_fetch = true\nno_prometheus = true\n' > "$DIR/sgz/config.toml"
  setsid "$STARGZ_GRPC" -root "$DIR/sgz/root" -address "$DIR/stargz.sock" -config "$DIR/sgz/config.toml" \
    -log-level warn >>"$DIR/stargz.log" 2>&1 </dev/null &
  echo $! > "$DIR/stargz.pid"
  wait_for 30 stargz-grpc test -S "$DIR/stargz.sock"
  cat > "$DIR/ctrd/config.toml" <<TOML
version = 2
root = "$DIR/ctrd/root"
state = "$DIR/ctrd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$DIR/containerd.sock"
[ttrpc]
  address = "$DIR/containerd.sock.ttrpc"
[debug]
  address = "$DIR/debug.sock"
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
[proxy_plugins.stargz]
  type = "snapshot"
  address = "$DIR/stargz.sock"
TOML
  setsid containerd --config "$DIR/ctrd/config.toml" >>"$DIR/containerd.log" 2>&1 </dev/null &
  echo $! > "$DIR/containerd.pid"
  wait_for 30 containerd ctr -a "$DIR/containerd.sock" version
  # `plugins ls` says ok even with nobody on the socket: ask the snapshotter something.
  wait_for 30 "the stargz proxy plugin" ctr -a "$DIR/containerd.sock" snapshots --snapshotter stargz ls
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  *) echo "lazy-node: unknown action $ACTION" >&2; exit 2 ;;
esac
