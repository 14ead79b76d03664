#!/usr/bin/env bash
# TLS 1.3 handshake cost on the echo example: full handshakes vs resumed sessions (tickets
# sealed with berth's keys). Each connection: connect, handshake, echo 4 bytes, close.
# The server runs pinned to CPU 0 with one executor thread, the load generator (benches/
# load.rs `connect`) on CPU 1; full and resumed runs alternate; medians of REPS runs.
# Prints server CPU µs per connection (from /proc) and connections (handshakes) per second,
# and the ratio resumed/full (goal: <= 0.4), for an ECDSA P-256 certificate (what
# --self-signed makes) and an RSA 2048 one (made with openssl), with plain TCP (no TLS) as
# the floor.
#
#   bash benches/resumption.sh            # 5 reps x 3 s, 4 client workers
#   REPS=3 SECS=2 WORKERS=4 KEYS="ecdsa rsa" bash benches/resumption.sh
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${REPS:-5} secs=${SECS:-3} workers=${WORKERS:-4} keys=${KEYS:-ecdsa rsa}
cargo build -q --release --example echo --bench load
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
start() { # echo flags... -> sets pid, addr
  : > "$work/log"
  taskset -c 0 target/release/examples/echo --threads 1 --addr 127.0.0.1:0 "$@" > "$work/log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do grep -q "listening on" "$work/log" && break; sleep 0.05; done
  addr=$(sed -n 's/^listening on //p' "$work/log" | head -1)
  [ -n "$addr" ] || { echo "the echo example did not start:"; cat "$work/log"; exit 1; }
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=; }
run() { # extra flags -> one result line
  taskset -c 1 "$load" connect --addr "$addr" --conns "$workers" --secs "$secs" --pid "$pid" "$@"
}
field() { sed -n "s#.* $1=\([0-9.]*\).*#\1#p"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

rows=()
start
plain_cpu=() plain_rate=()
for _ in $(seq "$reps"); do
  p=$(run); echo "plain:   $p"
  plain_cpu+=("$(echo "$p" | field server_cpu_us_per_conn)"); plain_rate+=("$(echo "$p" | field conn/s)")
done
stop
rows+=("| plain TCP (no TLS), the floor | $(median "${plain_cpu[@]}") | $(median "${plain_rate[@]}") | |")

for key in $keys; do
  mkdir -p "$work/$key"
  case $key in
    ecdsa) start --self-signed "$work/$key" ;;
    rsa)   openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
             -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -keyout "$work/$key/key.pem" \
             -out "$work/$key/cert.pem" 2> /dev/null
           cp "$work/$key/cert.pem" "$work/$key/ca.pem"
           start --tls-cert "$work/$key/cert.pem" --tls-key "$work/$key/key.pem" ;;
  esac
  full_cpu=() full_rate=() res_cpu=() res_rate=()
  for _ in $(seq "$reps"); do
    f=$(run --tls-ca "$work/$key/ca.pem"); r=$(run --tls-ca "$work/$key/ca.pem" --resume)
    echo "$key full:    $f"; echo "$key resumed: $r"
    full_cpu+=("$(echo "$f" | field server_cpu_us_per_conn)"); full_rate+=("$(echo "$f" | field conn/s)")
    res_cpu+=("$(echo "$r" | field server_cpu_us_per_conn)"); res_rate+=("$(echo "$r" | field conn/s)")
  done
  stop
  fc=$(median "${full_cpu[@]}") rc=$(median "${res_cpu[@]}")
  ratio=$(awk -v r="$rc" -v f="$fc" 'BEGIN { printf "%.2f", r / f }')
  rows+=("| $key, full handshake | $fc | $(median "${full_rate[@]}") | |")
  rows+=("| $key, resumed (ticket) | $rc | $(median "${res_rate[@]}") | $ratio |")
done
echo
echo "| TLS 1.3, connect + echo + close | server CPU µs/conn | handshakes/s | resumed/full CPU |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
