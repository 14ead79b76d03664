#!/usr/bin/env bash
# berth's echo example side by side with its peers, interleaved scenario by scenario:
#   berth  - examples/echo.rs
#   bare   - benches/bare_smol.rs: bare async-net + smol (+ futures-rustls) loop, berth's floor
#   tokio  - benches/tokio_peer.rs: tokio TcpListener (+ tokio-rustls) loop
# Each server runs pinned to CPU 0 with one executor thread, the load generator on CPU 1;
# loopback only; every run is bounded. Medians of the repetitions go to a markdown table
# (target/bench/report.md) and JSON (target/bench/report.json); raw lines to results.txt.
#
#   bash benches/compare.sh            # full: 3 reps x 5 s, 10,000 idle connections (~8 min)
#   bash benches/compare.sh --quick    # 3 reps x 1 s, 5,000 idle connections (< 3 min)
#   SCENARIOS="plain tls connect idle shutdown" SERVERS="berth bare tokio" to choose; the server
#   berth-limits is berth with every admission check on (none refusing), berth-metrics
#   berth with a Prometheus recorder installed, berth-tokio berth on its tokio adapter.
#   Before/after a change: build the old echo example elsewhere (a git worktree) and run
#   BERTH_BASE=/path/to/old/target/release/examples SERVERS="berth-base berth berth-base-tokio berth-tokio"
#   (berth-base and berth-base-tokio run that binary).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3 secs=5 idle_conns=10000
if [ "${1:-}" = "--quick" ]; then secs=1 idle_conns=5000; fi
scenarios=${SCENARIOS:-plain tls connect idle shutdown}
servers=${SERVERS:-berth bare tokio}
# As many descriptors as allowed (idle scenario); the hard limit is the ceiling.
ulimit -n "$(ulimit -Hn)"

cargo build -q --release --example echo --bench load --bench bare_smol --bench tokio_peer
bin() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
load=$(bin load)
out=target/bench
mkdir -p "$out"
results=$out/results.txt
: > "$results"
certs=$(mktemp -d)
trap 'rm -rf "$certs"' EXIT
# The echo example writes a throwaway CA and a localhost certificate, then we stop it.
target/release/examples/echo --addr 127.0.0.1:0 --self-signed "$certs" > /dev/null 2>&1 &
p=$!
for _ in $(seq 200); do [ -s "$certs/key.pem" ] && break; sleep 0.05; done
kill -TERM "$p"; wait "$p" || true
tls_flags="--tls-cert $certs/cert.pem --tls-key $certs/key.pem"

server_cmd() { # name tls(0|1)
  local t=""; [ "$2" = 1 ] && t=$tls_flags
  case $1 in
    berth) echo "target/release/examples/echo --threads 1 --addr 127.0.0.1:0 $t" ;;
    # berth on its tokio adapter (and tokio's listener).
    berth-tokio) echo "target/release/examples/echo --runtime tokio --threads 1 --addr 127.0.0.1:0 $t" ;;
    # Metrics recorded and exported (Prometheus), the cost of the metrics feature.
    berth-metrics) echo "target/release/examples/echo --threads 1 --addr 127.0.0.1:0 $t --metrics-addr 127.0.0.1:0" ;;
    # Every admission check on, none refusing: the cost of the checks themselves.
    berth-limits) echo "target/release/examples/echo --threads 1 --addr 127.0.0.1:0 $t --max-per-ip 100000 --rate-per-ip 1000000/s --allow 127.0.0.0/8 --deny 10.0.0.0/8" ;;
    berth-base) echo "${BERTH_BASE:?set BERTH_BASE}/echo --threads 1 --addr 127.0.0.1:0 $t" ;;
    berth-base-tokio) echo "${BERTH_BASE:?set BERTH_BASE}/echo --runtime tokio --threads 1 --addr 127.0.0.1:0 $t" ;;
    bare) echo "$(bin bare_smol) --threads 1 --addr 127.0.0.1:0 $t" ;;
    tokio) echo "$(bin tokio_peer) --threads 1 --addr 127.0.0.1:0 $t" ;;
  esac
}
start() { # name tls -> sets pid, addr
  local log; log=$(mktemp)
  taskset -c 0 $(server_cmd "$1" "$2") > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do grep -q "listening on" "$log" && break; sleep 0.05; done
  addr=$(sed -n 's/.*listening on //p' "$log")
  [ -n "$addr" ] || { echo "$1 did not start: $(cat "$log")" >&2; exit 1; }
}
stop() { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
run() { # label tls load-args...
  local label=$1 t=$2; shift 2
  for rep in $(seq "$reps"); do
    for name in $servers; do
      start "$name" "$t"
      line="$name $label rep=$rep $(taskset -c 1 "$load" "$@" --addr "$addr" --pid "$pid")"
      stop
      echo "$line" | tee -a "$results"
    done
  done
}

for s in $scenarios; do
  case $s in
    echo50)
      run "echo-64B-50c" 0 echo --conns 50 --size 64 --secs "$secs" ;;
    plain)
      for conns in 1 50 500; do
        run "echo-64B-${conns}c" 0 echo --conns "$conns" --size 64 --secs "$secs"
      done
      run "echo-16KiB-10c" 0 echo --conns 10 --size 16384 --secs "$secs" ;;
    tls)
      run "tls13-echo-64B-50c" 1 echo --conns 50 --size 64 --secs "$secs" --tls-ca "$certs/ca.pem" ;;
    connect)
      run "connect-echo-close-50w" 0 connect --conns 50 --secs "$secs"
      run "tls13-handshake-echo-close-50w" 1 connect --conns 50 --secs "$secs" --tls-ca "$certs/ca.pem" ;;
    idle)
      for name in $servers; do
        start "$name" 0
        line="$name idle-${idle_conns}c rep=1 $(taskset -c 1 "$load" idle --addr "$addr" --conns "$idle_conns" --pid "$pid")"
        stop
        echo "$line" | tee -a "$results"
      done ;;
    shutdown)
      # Graceful shutdown with every connection open: berth only (the peers have no
      # graceful shutdown; SIGTERM just kills them).
      for rep in $(seq "$reps"); do
        start berth 0
        line="berth shutdown-${idle_conns}c rep=$rep $(taskset -c 1 "$load" idle --addr "$addr" --conns "$idle_conns" --pid "$pid" --shutdown)"
        stop
        echo "$line" | tee -a "$results"
      done ;;
  esac
done
{
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
  echo "Command: bash benches/compare.sh $*  (medians of $reps runs, ${secs}s each)"
  echo
  "$load" report "$results" --json "$out/report.json"
} | tee "$out/report.md"
