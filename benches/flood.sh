#!/usr/bin/env bash
# Established TLS connections during a flood of full TLS handshakes, with and without
# --max-handshakes: the echo latency (p50/p99) of 10 established connections while 100
# workers connect, handshake (no resumption), echo once and close, in a loop. The server
# (echo example, one thread) is pinned to CPU 0, both load generators to CPU 1.
#
#   bash benches/flood.sh            # 3 runs x 5 s per setting, medians
#   CAPS="none 1 4" bash benches/flood.sh
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${REPS:-3} secs=${SECS:-5} caps=${CAPS:-none 2}
cargo build -q --release --example echo --bench load
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
certs=$(mktemp -d)
trap 'rm -rf "$certs"' EXIT
target/release/examples/echo --addr 127.0.0.1:0 --self-signed "$certs" > /dev/null 2>&1 &
p=$!
for _ in $(seq 200); do [ -s "$certs/key.pem" ] && break; sleep 0.05; done
kill -TERM "$p"; wait "$p" || true
for rep in $(seq "$reps"); do
  for cap in $caps; do
    extra=""; [ "$cap" != none ] && extra="--max-handshakes $cap"
    log=$(mktemp)
    # shellcheck disable=SC2086
    taskset -c 0 target/release/examples/echo --threads 1 --addr 127.0.0.1:0 \
      --tls-cert "$certs/cert.pem" --tls-key "$certs/key.pem" $extra > "$log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do grep -q "listening on" "$log" && break; sleep 0.05; done
    addr=$(sed -n 's/.*listening on //p' "$log" | head -1)
    flood=$(mktemp)
    taskset -c 1 "$load" connect --addr "$addr" --conns 100 --secs "$((secs + 1))" \
      --tls-ca "$certs/ca.pem" --keep-going > "$flood" &
    fpid=$!
    sleep 0.5 # the flood is under way before measuring
    echo_line=$(taskset -c 1 "$load" echo --addr "$addr" --conns 10 --size 64 \
      --secs "$secs" --tls-ca "$certs/ca.pem" --pid "$pid")
    wait "$fpid"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    echo "max_handshakes=$cap rep=$rep $echo_line | flood: $(cat "$flood")"
    rm -f "$log" "$flood"
  done
done
