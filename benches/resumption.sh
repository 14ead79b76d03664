#!/usr/bin/env bash
# TLS 1.3 handshake cost on the echo example: full handshakes vs resumed sessions (tickets
# sealed with berth's keys). Each connection: connect, handshake, echo 4 bytes, close.
# The server runs pinned to CPU 0 with one executor thread, the load generator (benches/
# load.rs `connect`) on CPU 1; full and resumed runs alternate; medians of REPS runs.
# Prints server CPU µs per connection (from /proc) and connections (handshakes) per second,
# and the ratio resumed/full (goal: <= 0.4).
#
#   bash benches/resumption.sh            # 5 reps x 3 s, 4 client workers
#   REPS=3 SECS=2 WORKERS=4 bash benches/resumption.sh
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${REPS:-5} secs=${SECS:-3} workers=${WORKERS:-4}
cargo build -q --release --example echo --bench load
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
certs=$(mktemp -d)
log=$(mktemp)
cleanup() { [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$certs" "$log"; }
trap cleanup EXIT
taskset -c 0 target/release/examples/echo --threads 1 --addr 127.0.0.1:0 --self-signed "$certs" > "$log" 2>&1 &
pid=$!
for _ in $(seq 200); do grep -q "listening on" "$log" && break; sleep 0.05; done
addr=$(sed -n 's/^listening on //p' "$log" | head -1)
[ -n "$addr" ] || { echo "the echo example did not start:"; cat "$log"; exit 1; }
run() { # extra flags -> one result line
  taskset -c 1 "$load" connect --addr "$addr" --conns "$workers" --secs "$secs" \
    --pid "$pid" --tls-ca "$certs/ca.pem" "$@"
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
full_cpu=() full_rate=() res_cpu=() res_rate=()
for i in $(seq "$reps"); do
  f=$(run); r=$(run --resume)
  echo "full:    $f"; echo "resumed: $r"
  full_cpu+=("$(echo "$f" | field server_cpu_us_per_conn)"); full_rate+=("$(echo "$f" | field conn/s)")
  res_cpu+=("$(echo "$r" | field server_cpu_us_per_conn)"); res_rate+=("$(echo "$r" | field conn/s)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
fc=$(median "${full_cpu[@]}") fr=$(median "${full_rate[@]}")
rc=$(median "${res_cpu[@]}") rr=$(median "${res_rate[@]}")
echo
echo "| TLS 1.3, connect + echo + close | server CPU µs/conn | handshakes/s |"
echo "|---|---|---|"
echo "| full handshake | $fc | $fr |"
echo "| resumed (ticket) | $rc | $rr |"
awk -v r="$rc" -v f="$fc" 'BEGIN { printf "resumed/full server CPU: %.2f (goal <= 0.4)\n", r / f }'
