#!/usr/bin/env bash
# System calls per echo request, per server: where the CPU per request goes beyond user space.
# Counts the syscall tracepoints of the server process with `perf stat` (software events:
# they work on VMs without hardware counters) during a 3 s closed-loop echo on 50
# connections, and divides by the requests served.
#
#   bash benches/syscalls.sh                  # berth (smol), berth-tokio, tokio, bare
#   SERVERS="berth tokio" bash benches/syscalls.sh
#
# Needs `perf` (Debian: linux-perf) and permission to read tracepoints (root).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 1; }
servers=${SERVERS:-berth berth-tokio tokio bare}
calls="epoll_ctl epoll_wait epoll_pwait recvfrom sendto read write futex timerfd_settime"
cargo build -q --release --example echo --bench load --bench bare_smol --bench tokio_peer
bin() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
load=$(bin load)
events=$(for c in $calls; do printf 'syscalls:sys_enter_%s,' "$c"; done)
for name in $servers; do
  case $name in
    berth) cmd="target/release/examples/echo" ;;
    berth-tokio) cmd="target/release/examples/echo --runtime tokio" ;;
    tokio) cmd=$(bin tokio_peer) ;;
    bare) cmd=$(bin bare_smol) ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  log=$(mktemp)
  taskset -c 0 $cmd --threads 1 --addr 127.0.0.1:0 > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do grep -q "listening on" "$log" && break; sleep 0.05; done
  addr=$(sed -n 's/.*listening on //p' "$log")
  counts=$(mktemp)
  perf stat -x, -e "${events%,}" -p "$pid" -o "$counts" &
  perf_pid=$!
  sleep 0.3
  line=$(taskset -c 1 timeout 30 "$load" echo --addr "$addr" --conns 50 --secs 3 --pid "$pid" | tail -1)
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<< "$line")
  printf '%-12s %s\n' "$name" "$line"
  awk -F, -v n="$requests" -v name="$name" '/syscalls:/ {
      split($3, e, "sys_enter_"); if ($1 + 0 > 0) printf "%-12s   %-16s %.4f per request\n", name, e[2], $1 / n }' "$counts"
  rm -f "$log" "$counts"
done
