#!/usr/bin/env bash
# Side-by-side: berth's echo example vs the bare async-net + smol loop, interleaved.
#   bash benches/compare.sh [REPS] [SECS]
# Server pinned to CPU 0, load generator to CPU 1; loopback only; every run bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
secs=${2:-5}
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build -q --release --example echo --bench load --bench bare_smol
bin() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
load=$(bin load)
declare -A server=(
  [berth]="target/release/examples/echo --threads 1 --addr 127.0.0.1:0"
  [bare-smol]="$(bin bare_smol) --threads 1 --addr 127.0.0.1:0"
)

start() { # name -> sets pid, addr
  local out; out=$(mktemp)
  taskset -c 0 ${server[$1]} > "$out" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.05; done
  addr=$(sed -n 's/.*listening on //p' "$out")
  [ -n "$addr" ] || { echo "$1 did not start: $(cat "$out")" >&2; exit 1; }
}
stop() { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }

for conns in 1 50 500; do
  for rep in $(seq "$reps"); do
    for name in berth bare-smol; do
      start "$name"
      echo "$name rep=$rep $(taskset -c 1 "$load" echo --addr "$addr" --conns "$conns" --size 64 --secs "$secs" --pid "$pid")"
      stop
    done
  done
done
for name in berth bare-smol; do
  start "$name"
  echo "$name $(taskset -c 1 "$load" idle --addr "$addr" --conns "${IDLE_CONNS:-10000}" --pid "$pid")"
  stop
done
