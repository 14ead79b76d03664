#!/usr/bin/env bash
# Side-by-side: berth's echo example vs the bare async-net + smol (+ futures-rustls) loop,
# interleaved A B A B, server pinned to CPU 0, load generator to CPU 1, loopback only.
#   bash benches/compare.sh [REPS] [SECS]
#   SCENARIOS="plain tls connect idle" (default: all)   IDLE_CONNS=10000
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
secs=${2:-5}
scenarios=${SCENARIOS:-plain tls connect idle}
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build -q --release --example echo --bench load --bench bare_smol
bin() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
load=$(bin load)
bare=$(bin bare_smol)
certs=$(mktemp -d)
# The echo example writes a throwaway CA and a localhost certificate, then we stop it.
target/release/examples/echo --addr 127.0.0.1:0 --self-signed "$certs" > /dev/null 2>&1 &
p=$!
for _ in $(seq 100); do [ -s "$certs/key.pem" ] && break; sleep 0.05; done
kill -TERM "$p"; wait "$p" || true
tls_flags="--tls-cert $certs/cert.pem --tls-key $certs/key.pem"

server_cmd() { # name tls(0|1)
  local t=""; [ "$2" = 1 ] && t=$tls_flags
  case $1 in
    berth) echo "target/release/examples/echo --threads 1 --addr 127.0.0.1:0 $t" ;;
    bare) echo "$bare --threads 1 --addr 127.0.0.1:0 $t" ;;
  esac
}
start() { # name tls -> sets pid, addr
  local out; out=$(mktemp)
  taskset -c 0 $(server_cmd "$1" "$2") > "$out" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.05; done
  addr=$(sed -n 's/.*listening on //p' "$out")
  [ -n "$addr" ] || { echo "$1 did not start: $(cat "$out")" >&2; exit 1; }
}
stop() { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
run() { # label tls load-args...
  local label=$1 t=$2; shift 2
  for rep in $(seq "$reps"); do
    for name in berth bare; do
      start "$name" "$t"
      echo "$name $label rep=$rep $(taskset -c 1 "$load" "$@" --addr "$addr" --pid "$pid")"
      stop
    done
  done
}

for s in $scenarios; do
  case $s in
    plain)
      for conns in 1 50 500; do
        run "plain-echo" 0 echo --conns "$conns" --size 64 --secs "$secs"
      done
      run "plain-16k" 0 echo --conns 10 --size 16384 --secs "$secs" ;;
    tls)
      run "tls13-echo" 1 echo --conns 50 --size 64 --secs "$secs" --tls-ca "$certs/ca.pem" ;;
    connect)
      run "plain-connect" 0 connect --conns 50 --secs "$secs"
      run "tls13-connect" 1 connect --conns 50 --secs "$secs" --tls-ca "$certs/ca.pem" ;;
    idle)
      for name in berth bare; do
        start "$name" 0
        echo "$name idle $(taskset -c 1 "$load" idle --addr "$addr" --conns "${IDLE_CONNS:-10000}" --pid "$pid")"
        stop
      done ;;
  esac
done
rm -rf "$certs"
