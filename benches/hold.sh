#!/usr/bin/env bash
# Holds CONNS concurrent connections (default 100,000) on the echo example and checks the
# server is still responsive.
#
# One process may only hold `ulimit -Hn` descriptors, so the connections are spread over
# several echo processes sharing one port with SO_REUSEPORT (`echo --reuse-port`; the kernel
# spreads connections over them by hash), and over as many load processes. Every connection
# is confirmed by one echo; the servers' open sockets are counted from /proc; RSS per
# connection is the servers' total growth divided by CONNS; a fresh client's echo latency is
# measured while everything is held.
#
#   bash benches/hold.sh                 # 100,000 connections
#   CONNS=30000 bash benches/hold.sh
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${CONNS:-100000}
ulimit -n "$(ulimit -Hn)"
limit=$(ulimit -n)
# Fill each process to at most 3/4 of its descriptor limit: the hash does not split evenly.
per=$(( (limit - 100) * 3 / 4 ))
procs=$(( (conns + per - 1) / per ))
share=$(( (conns + procs - 1) / procs ))
echo "conns=$conns fd_limit=$limit processes=$procs (echo servers and load generators each)"

cargo build -q --release --example echo --bench load
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
dir=$(mktemp -d)
pids=()
cleanup() {
  exec 9>&- 2>/dev/null || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

start_server() { # addr index
  target/release/examples/echo --threads 1 --reuse-port --addr "$1" > "$dir/server$2.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do grep -q "listening on" "$dir/server$2.log" && return; sleep 0.05; done
  echo "echo server $2 did not start: $(cat "$dir/server$2.log")" >&2
  exit 1
}
start_server 127.0.0.1:0 0
addr=$(sed -n 's/.*listening on //p' "$dir/server0.log")
for i in $(seq 1 $((procs - 1))); do start_server "$addr" "$i"; done
server_pids=("${pids[@]}")

fds() { local n=0; for p in "${server_pids[@]}"; do n=$((n + $(ls /proc/"$p"/fd | wc -l))); done; echo "$n"; }
rss() { local n=0; for p in "${server_pids[@]}"; do
  n=$((n + $(awk '/^VmRSS:/ {print $2}' /proc/"$p"/status))); done; echo "$n"; }
fds_before=$(fds)
rss_before=$(rss)

mkfifo "$dir/hold"
exec 9<>"$dir/hold"
started=$(date +%s)
for i in $(seq 0 $((procs - 1))); do
  n=$(( conns - i * share < share ? conns - i * share : share ))
  "$load" idle --addr "$addr" --conns "$n" --pid "${server_pids[0]}" --hold \
    < "$dir/hold" > "$dir/load$i.log" 2>&1 9>&- &
done
# Wait (bounded) until every load process holds all of its connections.
for _ in $(seq 1200); do
  held=$(cat "$dir"/load*.log | sed -n 's/^held conns=//p' | awk '{s += $1} END {print s + 0}')
  [ "$held" -ge "$conns" ] && break
  if grep -l -i "panicked\|error" "$dir"/load*.log >/dev/null 2>&1; then
    cat "$dir"/load*.log >&2; exit 1
  fi
  sleep 0.5
done
[ "$held" -ge "$conns" ] || { echo "only $held of $conns connections held" >&2; exit 1; }
secs=$(( $(date +%s) - started ))
sleep 1 # let the servers settle their buffers
open=$(( $(fds) - fds_before ))
kib=$(( $(rss) - rss_before ))
fresh=$("$load" 9>&- echo --addr "$addr" --conns 1 --size 64 --secs 1 | sed -n 's/.*p50_us=\([0-9.]*\).*p99_us=\([0-9.]*\).*/p50_us=\1 p99_us=\2/p')
printf 'hold conns=%s confirmed_by_echo=%s server_open_sockets=%s servers=%s setup_s=%s rss_growth_kib=%s kib_per_conn=%s fresh_echo_%s\n' \
  "$conns" "$held" "$open" "$procs" "$secs" "$kib" "$(awk -v k="$kib" -v n="$conns" 'BEGIN {printf "%.2f", k / n}')" "$fresh"
