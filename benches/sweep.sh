#!/usr/bin/env bash
# A fresh client's connect + echo latency while the idle scanner sweeps many idle
# connections, against the same with none held: what accepts and closes pay for the sweeps.
#
# The echo example runs with an idle timeout of one hour, so the scanner ticks every second
# (the tick is an eighth of the timeout, at most 1 s: see src/idle.rs) and reaps nothing
# during the run. For each scenario a new server is started; `load idle --hold` opens IDLE
# connections (confirmed by one echo each, then silent) and keeps them; `load fresh` then
# loops one client at a time (connect, one 64-byte echo, close) for SECS seconds and prints
# p50/p99/p99.9/max of that exchange.
#
#   bash benches/sweep.sh                        # IDLE=18000 SECS=20 REPS=3
#   ECHO=/path/to/old/target/release/examples/echo bash benches/sweep.sh   # another build
set -euo pipefail
cd "$(dirname "$0")/.."
idle=${IDLE:-18000}
secs=${SECS:-20}
reps=${REPS:-3}
threads=${THREADS:-2}
# 18,000 descriptors in each of the server and the holder: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)"

cargo build -q --release --example echo --bench load
echo_bin=${ECHO:-target/release/examples/echo}
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
dir=$(mktemp -d)
server=
holder=
cleanup() {
  exec 9>&- 2>/dev/null || true
  [ -n "$holder" ] && kill -TERM "$holder" 2>/dev/null || true
  [ -n "$server" ] && kill -TERM "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

run() { # idle-connections rep
  "$echo_bin" --threads "$threads" --idle-timeout 1h --addr 127.0.0.1:0 > "$dir/server.log" 2>&1 &
  server=$!
  for _ in $(seq 200); do grep -q "listening on" "$dir/server.log" && break; sleep 0.05; done
  addr=$(sed -n 's/.*listening on //p' "$dir/server.log")
  [ -n "$addr" ] || { echo "echo did not start: $(cat "$dir/server.log")" >&2; exit 1; }
  if [ "$1" -gt 0 ]; then
    rm -f "$dir/hold"; mkfifo "$dir/hold"
    exec 9<>"$dir/hold"
    "$load" idle --addr "$addr" --conns "$1" --pid "$server" --hold < "$dir/hold" > "$dir/load.log" 2>&1 9>&- &
    holder=$!
    for _ in $(seq 1200); do
      grep -qs "^held" "$dir/load.log" && break
      kill -0 "$holder" 2>/dev/null || { cat "$dir/load.log" >&2; exit 1; }
      sleep 0.25
    done
    grep -q "^held" "$dir/load.log" || { echo "connections not held" >&2; exit 1; }
    sleep 2 # a couple of sweeps over all of them before measuring
  fi
  printf 'idle=%s rep=%s ' "$1" "$2"
  "$load" fresh --addr "$addr" --secs "$secs" 9>&-
  if [ -n "$holder" ]; then exec 9>&-; kill -TERM "$holder" 2>/dev/null || true; wait "$holder" 2>/dev/null || true; holder=; fi
  kill -TERM "$server"; wait "$server" 2>/dev/null || true; server=
}

for rep in $(seq "$reps"); do
  run 0 "$rep"
  run "$idle" "$rep"
done
