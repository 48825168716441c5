#!/usr/bin/env bash
# Shows the node settings registry-facade depends on, the value recommended for each, and
# (with --apply) sets the ones below it. By default it only reads. tuning/README.md says why
# each value is what it is and how to check its effect.
set -euo pipefail

usage() {
  cat <<'TXT'
usage: tuning/tune-node.sh [--apply [--persist] [--irq-cpus LIST]] [--iface IF] [--facade-cpus LIST]

  (no option)        show every knob: current value, recommended value, and whether it is ok
  --apply            set the sysctls that are below the recommendation (root only); each change
                     is printed as "set KEY: OLD -> NEW". Running it again changes nothing.
  --persist          with --apply: also write /etc/sysctl.d/60-registry-facade.conf, so the
                     values survive a reboot (rewritten only when its content would change)
  --irq-cpus LIST    with --apply: send the interrupts of IF to these CPUs (e.g. 0-1), so they
                     stay off the facade's cores
  --iface IF         the NIC that carries pulls (default: the interface of the default route)
  --facade-cpus LIST the CPUs the facade runs on, for the advice (default: those of a running
                     registry-facade process)
TXT
}

apply=false persist=false iface="" irq_cpus="" facade_cpus=""
while [ $# -gt 0 ]; do
  case "$1" in
    --apply) apply=true ;;
    --persist) persist=true ;;
    --iface) iface=${2:?--iface needs an interface name}; shift ;;
    --irq-cpus) irq_cpus=${2:?--irq-cpus needs a CPU list}; shift ;;
    --facade-cpus) facade_cpus=${2:?--facade-cpus needs a CPU list}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "tune-node.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if { $persist || [ -n "$irq_cpus" ]; } && ! $apply; then
  echo "tune-node.sh: --persist and --irq-cpus only act with --apply" >&2
  exit 2
fi
if $apply && [ "$(id -u)" -ne 0 ]; then
  echo "tune-node.sh: --apply changes kernel settings and needs root" >&2
  exit 1
fi
cpu_list_re='^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$'
for list in "$irq_cpus" "$facade_cpus"; do
  if [ -n "$list" ] && ! [[ $list =~ $cpu_list_re ]]; then
    echo "tune-node.sh: \`$list\` is not a CPU list (e.g. 0-1,4)" >&2
    exit 2
  fi
done

PERSIST_FILE=/etc/sysctl.d/60-registry-facade.conf
# What the systemd unit (docs/registry-facade.service) sets; fs.nr_open must not be below it.
LIMIT_NOFILE=1048576

# Each knob: "key|rule argument|why". Rules:
#   min N        an integer of at least N (larger values are left alone)
#   max3 N       a "min default max" triple whose max is at least N (min and default kept)
#   exact V      exactly V
#   ports N      a port range "LOW HIGH" of at least N ports
KNOBS=(
  "net.core.somaxconn|min 4096|caps every listen backlog; the facade asks 1024 per executor"
  "net.ipv4.tcp_max_syn_backlog|min 4096|half-open connections per listener when syncookies are off"
  "net.ipv4.tcp_syncookies|exact 1|a burst beyond the SYN queue gets cookies instead of drops"
  "net.core.netdev_max_backlog|min 16384|packets a CPU queues from the NIC before dropping"
  "fs.file-max|min 2097152|open files on the node; the facade alone may hold LimitNOFILE"
  "fs.nr_open|min $LIMIT_NOFILE|the most a process may open: must allow LimitNOFILE"
  "vm.max_map_count|min 1048576|mappings per process: one per blob the facade has served"
  "net.ipv4.ip_local_port_range|ports 28232|ephemeral ports for upstream connections"
  "net.ipv4.tcp_tw_reuse|exact 1|reuse TIME_WAIT ports for new upstream connections"
  "net.ipv4.tcp_slow_start_after_idle|exact 0|pooled upstream connections keep their window"
  "net.ipv4.tcp_rmem|max3 16777216|receive window for blob downloads from far registries"
  "net.ipv4.tcp_wmem|max3 16777216|send buffer for blobs to remote clients"
)

# The value of a sysctl with whitespace collapsed, or empty if this kernel has no such key.
read_sysctl() {
  sysctl -n "$1" 2>/dev/null | tr -s '[:blank:]' ' ' || true
}

# The value to set for a knob, or empty when the current one is fine.
wanted() {
  local rule=$1 arg=$2 current=$3
  case "$rule" in
    min) [ "$current" -ge "$arg" ] || echo "$arg" ;;
    exact) [ "$current" = "$arg" ] || echo "$arg" ;;
    max3)
      local low def high
      read -r low def high <<<"$current"
      [ "$high" -ge "$arg" ] || echo "$low $def $arg" ;;
    ports)
      local low high
      read -r low high <<<"$current"
      [ $((high - low + 1)) -ge "$arg" ] || echo "32768 60999" ;;
  esac
}

# A CPU list (0-2,5) as the sorted CPUs it names (0 1 2 5), to compare lists however written.
expand_cpus() {
  local part
  local -a parts
  IFS=',' read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then seq "${part%-*}" "${part#*-}"; else echo "$part"; fi
  done | sort -nu | tr '\n' ' '
}

recommended_text() {
  case "$1" in
    min) echo ">= $2" ;;
    exact) echo "$2" ;;
    max3) echo "max >= $2" ;;
    ports) echo ">= $2 ports" ;;
  esac
}

echo "== sysctls"
printf '%-36s %-26s %-20s %-6s %s\n' KEY CURRENT RECOMMENDED STATUS WHY
changes=()
persisted=()
for knob in "${KNOBS[@]}"; do
  IFS='|' read -r key rule_arg why <<<"$knob"
  read -r rule arg <<<"$rule_arg"
  current=$(read_sysctl "$key")
  if [ -z "$current" ]; then
    printf '%-36s %-26s %-20s %-6s %s\n' "$key" "(absent)" "$(recommended_text "$rule" "$arg")" "n/a" "$why"
    continue
  fi
  target=$(wanted "$rule" "$arg" "$current")
  status=ok
  if [ -n "$target" ]; then
    status=LOW
    changes+=("$key|$current|$target")
  fi
  persisted+=("$key = ${target:-$current}")
  printf '%-36s %-26s %-20s %-6s %s\n' "$key" "$current" "$(recommended_text "$rule" "$arg")" "$status" "$why"
done

if $apply; then
  for change in "${changes[@]}"; do
    IFS='|' read -r key old new <<<"$change"
    if sysctl -q -w "$key=$new" >/dev/null; then
      echo "set $key: $old -> $new"
    else
      echo "could not set $key (read-only here, e.g. in a container or network namespace)" >&2
    fi
  done
  [ ${#changes[@]} -gt 0 ] || echo "every sysctl is at or above its recommendation; nothing to set"
  if $persist; then
    content="# Written by registry-facade's tuning/tune-node.sh; see tuning/README.md.
$(printf '%s\n' "${persisted[@]}")"
    if [ -f "$PERSIST_FILE" ] && [ "$(cat "$PERSIST_FILE")" = "$content" ]; then
      echo "$PERSIST_FILE is up to date"
    else
      mkdir -p "$(dirname "$PERSIST_FILE")"
      printf '%s\n' "$content" > "$PERSIST_FILE.tmp"
      mv "$PERSIST_FILE.tmp" "$PERSIST_FILE"
      echo "wrote $PERSIST_FILE (applied at boot by systemd-sysctl, or now with: sysctl -p $PERSIST_FILE)"
    fi
  fi
elif [ ${#changes[@]} -gt 0 ]; then
  echo "-> ${#changes[@]} below the recommendation; run with --apply (and --persist) as root to set them"
fi

# The facade process, if one runs: its limits and CPUs are what count.
facade_pid=$(pgrep -o -x registry-facade 2>/dev/null || true)

echo
echo "== process limits"
if [ -n "$facade_pid" ]; then
  echo "registry-facade runs as pid $facade_pid:"
  grep -E '^Max (locked memory|open files)' "/proc/$facade_pid/limits" | sed 's/^/  /'
else
  echo "no registry-facade process runs; limits of this shell, as a hint:"
  echo "  locked memory (KiB): soft $(ulimit -Sl), hard $(ulimit -Hl)    open files: soft $(ulimit -Sn), hard $(ulimit -Hn)"
fi
if command -v systemctl >/dev/null && systemctl cat registry-facade.service >/dev/null 2>&1; then
  echo "  unit: $(systemctl show registry-facade.service -p LimitMEMLOCK -p LimitNOFILE | tr '\n' ' ')"
fi
cat <<'TXT'
  recommended: locked memory unlimited (glommio needs >= 512 KiB to start, plus 1 MiB of io_uring
  buffers per executor for a non-root user), open files 1048576. The systemd unit sets both
  (LimitMEMLOCK=infinity, LimitNOFILE=1048576); Docker: --ulimit memlock=-1:-1. This script
  changes no process limit: /etc/security/limits.d applies to login sessions, not services.
TXT

echo
echo "== CPUs"
online=$(cat /sys/devices/system/cpu/online)
nodes=$(find /sys/devices/system/node -maxdepth 1 -name 'node[0-9]*' 2>/dev/null | wc -l || true)
echo "online CPUs: $online    NUMA nodes: ${nodes:-1}"
if [ -z "$facade_cpus" ] && [ -n "$facade_pid" ]; then
  facade_cpus=$(awk '/^Cpus_allowed_list/ {print $2}' "/proc/$facade_pid/status")
  echo "registry-facade (pid $facade_pid) may run on CPUs $facade_cpus: one pinned executor each"
fi
cat <<'TXT'
  The facade runs one executor pinned to each CPU of its affinity mask. Give it CPUs of its
  own: CPUAffinity=2-5 in the unit, or taskset -c 2-5 registry-facade serve ... Keep NIC
  interrupts and other busy work on the remaining CPUs (the NIC's NUMA node first).
TXT

# The NIC: the interface of the default route unless one was named.
if [ -z "$iface" ]; then
  iface=$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}' || true)
fi
echo
echo "== NIC interrupts"
if [ -z "$iface" ] || [ ! -e "/sys/class/net/$iface" ]; then
  echo "no NIC found (no default route); name one with --iface"
  if [ -n "$irq_cpus" ]; then exit 1; fi
  exit 0
fi
device=$(readlink -f "/sys/class/net/$iface/device" 2>/dev/null || true)
numa=$(cat "/sys/class/net/$iface/device/numa_node" 2>/dev/null || true)
case "$numa" in ""|-1) numa="none (one node, or not reported)" ;; esac
echo "interface $iface, device ${device:-virtual}, NUMA node $numa"

# IRQs of the device: its MSI vectors (those of the PCI parent for virtio), else lines of
# /proc/interrupts that name the interface.
irqs=()
if [ -n "$device" ]; then
  for dir in "$device/msi_irqs" "$device/../msi_irqs"; do
    if [ -d "$dir" ]; then
      mapfile -t irqs < <(find "$dir" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n)
      break
    fi
  done
fi
if [ ${#irqs[@]} -eq 0 ]; then
  mapfile -t irqs < <(awk -v ifc="$iface" '$NF ~ ("^" ifc "([-@:]|$)") {sub(":", "", $1); print $1}' /proc/interrupts)
fi
if [ ${#irqs[@]} -eq 0 ]; then
  echo "no interrupts found for $iface (a virtual interface?)"
else
  printf '  %-6s %-14s %s\n' IRQ CPUS NAME
  for irq in "${irqs[@]}"; do
    [ -e "/proc/irq/$irq/smp_affinity_list" ] || continue
    name=$(awk -v irq="$irq:" '$1 == irq {print $NF}' /proc/interrupts)
    printf '  %-6s %-14s %s\n' "$irq" "$(cat "/proc/irq/$irq/smp_affinity_list")" "$name"
  done
fi
if pgrep -x irqbalance >/dev/null 2>&1; then
  echo "  irqbalance runs and will move these again: ban the facade's CPUs in /etc/default/irqbalance"
  echo "  (IRQBALANCE_BANNED_CPULIST=<facade CPUs>) or stop it."
fi
if [ -n "$facade_cpus" ] && [ -z "$irq_cpus" ]; then
  echo "  to keep them off the facade's CPUs ($facade_cpus): --apply --irq-cpus <the other CPUs>"
fi

if [ -n "$irq_cpus" ]; then
  irq_changed=false
  for irq in "${irqs[@]}"; do
    file=/proc/irq/$irq/smp_affinity_list
    [ -e "$file" ] || continue
    old=$(cat "$file")
    if [ "$(expand_cpus "$old")" = "$(expand_cpus "$irq_cpus")" ]; then
      continue
    fi
    if (echo "$irq_cpus" > "$file") 2>/dev/null; then
      echo "set IRQ $irq affinity: $old -> $(cat "$file")"
      irq_changed=true
    else
      echo "IRQ $irq: the kernel manages its affinity (or refused $irq_cpus); left at $old" >&2
    fi
  done
  if $irq_changed; then
    echo "IRQ affinity does not survive a reboot: run this again at boot (or configure irqbalance)."
  else
    echo "the interrupts of $iface already go to CPUs $irq_cpus"
  fi
fi
