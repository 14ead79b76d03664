#!/usr/bin/env bash
# The HTTP example (hyper on berth) side by side with bare hyper on tokio, interleaved:
#   berth-smol   - examples/http.rs --runtime smol --threads 1
#   berth-tokio  - examples/http.rs --runtime tokio --threads 1
#   hyper-smol   - benches/hyper_smol_peer.rs --threads 1: bare hyper on smol with smol-hyper's
#                  glue (async-net accept loop, async-executor, async-io timer): what berth on
#                  smol costs beside hyper on the same runtime
#   hyper-tokio  - benches/hyper_peer.rs --threads 1: a tokio TcpListener accept loop and
#                  hyper-util's auto builder, the peer every ratio is taken against
# Each server runs pinned to CPU 0, the load generator pinned to CPU 1, loopback only, every
# run bounded; the servers take turns (A B C A B C ...) and a fresh server starts per run.
#   HTTP/1.1: wrk -t1 -c50 -d5s http://ADDR/   (one wrk thread: on a 2-core machine a second
#             one would share the server's core)
#   HTTP/2:   h2load -t1 -c50 -m10 -D 5 http://ADDR/   (prior knowledge)
# Measured per run: requests/s (the load generator's), and the server's CPU time (utime +
# stime of all its threads, /proc/PID/stat, before and after) divided by the requests served
# (µs per request). Medians per server and ratios against hyper-tokio go to a table
# (target/bench/http-report.md), raw lines to target/bench/http-results.txt. Runs start when
# the machine is quiet, and a run during which anything else used more than a tenth of a core
# (other builds) is run again (QUIET_WAIT, MAX_OTHER, RETRIES below).
#
#   bash benches/http.sh                # 5 rounds x 5 s per protocol (~3 min)
#   bash benches/http.sh --quick        # 3 rounds x 2 s
#   REPS=7 SECS=5 SERVERS="berth-smol hyper-tokio" PROTOCOLS="h1" bash benches/http.sh
#   bash benches/http.sh syscalls       # system calls per request (strace -f -c), see below
#   NICE=-20 QUIET_WAIT=0 bash benches/http.sh   # on a machine busy with other work
#
# Syscalls mode: each server once under `strace -f -c` (all its threads) while wrk runs
# 3 s on 50 connections (then h2load likewise), the counts divided by the requests served.
# strace slows the server a lot, which batches more work per wake-up: compare the servers
# with each other, not with an untraced run. TRACER=perf counts with perf's syscall
# tracepoints instead (much less intrusive; needs perf and root).
# Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=bench reps=${REPS:-5} secs=${SECS:-5}
case "${1:-}" in
  --quick) reps=${REPS:-3} secs=${SECS:-2} ;;
  syscalls) mode=syscalls ;;
  "") ;;
  *) echo "usage: bash benches/http.sh [--quick | syscalls]" >&2; exit 2 ;;
esac
servers=${SERVERS:-berth-smol hyper-smol berth-tokio hyper-tokio}
# NICE=-20 (root) runs the server and the load generator at that priority: on a machine that
# cannot be made quiet, other work then gets little of their cores (it still gets some).
prio=""
[ -z "${NICE:-}" ] || prio="nice -n $NICE"
protocols=${PROTOCOLS:-h1 h2}
peer=hyper-tokio
for tool in wrk h2load taskset; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done

cargo build -q --release --example http --bench hyper_peer --bench hyper_smol_peer
# The newest bench binary, found as compare.sh finds its peers.
# shellcheck disable=SC2010
bin() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
out=target/bench
mkdir -p "$out"
tmp=$(mktemp -d)
pid=""
# On any exit, the server of the current run goes too.
trap '[ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
# Copies of the binaries: every run measures the same build even if target/ is rebuilt
# meanwhile (someone else's cargo build).
cp target/release/examples/http "$tmp/http"
cp "$(bin hyper_peer)" "$tmp/hyper_peer"
cp "$(bin hyper_smol_peer)" "$tmp/hyper_smol_peer"

server_cmd() {
  case $1 in
    berth-smol) echo "$tmp/http --runtime smol --threads 1 --addr 127.0.0.1:0" ;;
    berth-tokio) echo "$tmp/http --runtime tokio --threads 1 --addr 127.0.0.1:0" ;;
    hyper-smol) echo "$tmp/hyper_smol_peer --threads 1 --addr 127.0.0.1:0" ;;
    hyper-tokio) echo "$tmp/hyper_peer --threads 1 --addr 127.0.0.1:0" ;;
    *) echo "unknown server $1" >&2; exit 2 ;;
  esac
}
start() { # name -> sets pid, addr
  local log=$tmp/server.log
  # Emptied here: the child's own truncation may come after the first look below, which
  # would then find the previous server's address.
  : > "$log"
  # shellcheck disable=SC2046
  $prio taskset -c 0 $(server_cmd "$1") > "$log" 2>&1 &
  pid=$!
  addr=""
  for _ in $(seq 600); do # up to 30 s: other builds may be loading the machine
    addr=$(sed -n 's/.*listening on //p' "$log" | head -1)
    [ -z "$addr" ] || break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$addr" ] || { echo "$1 did not start: $(cat "$log")" >&2; exit 1; }
  # One request first: the server answers (and the first connection is not measured). A
  # failure is reported, then retried a few times before giving up.
  local try rc
  for try in 1 2 3 4 5; do
    rc=0; curl -sSf -m 5 "http://$addr/" > /dev/null 2> "$tmp/curl" || rc=$?
    [ "$rc" != 0 ] || return 0
    echo "warning: $1 (pid $pid, $addr): GET / attempt $try failed: $(cat "$tmp/curl")" \
      "($(ss -s | sed -n 's/^TCP: *//p'))" >&2
    sleep 1
  done
  echo "$1 does not answer GET /: $(cat "$log")" >&2
  exit 1
}
stop() {
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}
# Server CPU time (user + system, every thread) in microseconds.
cpu_us() {
  local tck; tck=$(getconf CLK_TCK)
  # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
  sed 's/^.*) //' "/proc/$1/stat" | awk -v t="$tck" '{ printf "%.0f\n", ($12 + $13) * 1000000 / t }'
}
# Machine-wide busy CPU time in microseconds (all cores, from /proc/stat).
busy_us() {
  awk -v t="$(getconf CLK_TCK)" '/^cpu / { printf "%.0f\n", ($2 + $3 + $4 + $7 + $8 + $9) * 1000000 / t }' /proc/stat
}
# CPU time of the children this shell has reaped (the load generator), in microseconds;
# `times` runs in this shell (a command substitution would be a fresh subshell).
children_us() {
  times > "$tmp/times"
  tail -1 "$tmp/times" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } printf "%.0f\n", s * 1000000 }'
}
# Waits (up to QUIET_WAIT seconds, default 300) until nothing else uses more than a tenth of
# a core, so concurrent builds do not disturb the run; warns and goes on after that.
quiet() {
  local waited=0 b0 b1
  while :; do
    b0=$(busy_us); sleep 0.5; b1=$(busy_us)
    [ $((b1 - b0)) -gt 50000 ] || return 0
    if [ "$waited" -ge "${QUIET_WAIT:-300}" ]; then
      echo "warning: the machine is busy ($(((b1 - b0) / 5000))% of a core), measuring anyway" >&2
      return 0
    fi
    sleep 2; waited=$((waited + 2))
  done
}
load() { # protocol duration-seconds -> load generator output
  case $1 in
    h1) $prio taskset -c 1 wrk -t1 -c50 -d"$2"s "http://$addr/" ;;
    h2) $prio taskset -c 1 h2load -t1 -c50 -m10 -D "$2" "http://$addr/" ;;
  esac
}
requests_of() { # protocol file -> requests completed (2xx)
  case $1 in
    h1) sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$2" ;;
    h2) sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$2" ;;
  esac
}
errors_of() { # protocol file -> a note when anything failed
  case $1 in
    h1) grep -E 'Socket errors|Non-2xx' "$2" | tr -s ' ' | tr '\n' ';' || true ;;
    h2) awk '/^requests:/ && ($10 + $12 + $14) > 0 { print }' "$2" ;;
  esac
}
label() { case $1 in h1) echo "HTTP/1.1 wrk -t1 -c50 -d${secs}s" ;; h2) echo "HTTP/2 h2load -t1 -c50 -m10 -D ${secs}" ;; esac; }

source_rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src examples 2>/dev/null || echo ' + uncommitted changes')"
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"

if [ "$mode" = syscalls ]; then
  tracer=${TRACER:-strace}
  secs=${SECS:-3}
  calls="recvfrom read writev sendto write epoll_ctl epoll_wait epoll_pwait futex"
  if [ "$tracer" = strace ] && ! command -v strace >/dev/null; then
    apt-get install -y strace > /dev/null
  fi
  if [ "$tracer" = perf ]; then
    command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 1; }
  fi
  results=$out/http-syscalls.txt
  : > "$results"
  for proto in $protocols; do
    for name in $servers; do
      start "$name"
      counts=$tmp/counts
      if [ "$tracer" = strace ]; then
        strace -f -c -p "$pid" -o "$counts" -e trace="${calls// /,}" 2> /dev/null &
      else
        events=$(for c in $calls; do printf 'syscalls:sys_enter_%s,' "$c"; done)
        perf stat -x, -e "${events%,}" -p "$pid" -o "$counts" &
      fi
      tracer_pid=$!
      sleep 0.5 # attached to every thread
      load "$proto" "$secs" > "$tmp/load"
      kill -INT "$tracer_pid"; wait "$tracer_pid" 2>/dev/null || true
      stop
      n=$(requests_of "$proto" "$tmp/load")
      [ "${n:-0}" -gt 0 ] || { echo "$name: no requests: $(cat "$tmp/load")" >&2; exit 1; }
      # "name proto requests=N call=calls/request ..." (errors, e.g. EAGAIN, in brackets)
      line="$name $proto requests=$n"
      if [ "$tracer" = strace ]; then
        line+=$(awk -v n="$n" -v want="$calls" '
          BEGIN { split(want, w, " "); for (i in w) keep[w[i]] = 1 }
          $NF in keep && $4 ~ /^[0-9]+$/ {
            e = (NF == 6) ? $5 : 0
            printf " %s=%.3f", $NF, $4 / n; if (e > 0) printf "[err=%.3f]", e / n }' "$counts")
      else
        line+=$(awk -F, -v n="$n" '/syscalls:/ && $1 + 0 > 0 {
            split($3, e, "sys_enter_"); printf " %s=%.3f", e[2], $1 / n }' "$counts")
      fi
      echo "$line" | tee -a "$results"
    done
  done
  {
    echo "Machine: $machine; source: $source_rev"
    echo "Command: bash benches/http.sh syscalls  (TRACER=$tracer; one ${secs}s run per server; wrk -t1 -c50 / h2load -t1 -c50 -m10; server on CPU 0, load on CPU 1)"
    echo
    if [ "$tracer" = strace ]; then
      echo "System calls per request (all server threads; [err=] the failed ones, e.g. EAGAIN):"
    else
      echo "System calls per request (all server threads; perf counts calls, not failures):"
    fi
    echo
    for proto in $protocols; do
      label "$proto"
      echo
      echo "| server | requests | recvfrom | epoll_ctl | epoll_wait | writev | sendto | read | write | futex |"
      echo "|---|---|---|---|---|---|---|---|---|---|"
      awk -v proto="$proto" '$2 == proto {
          delete v; for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = substr($i, length(kv[1]) + 2) }
          printf "| %s | %s", $1, v["requests"]
          split("recvfrom epoll_ctl epoll_wait writev sendto read write futex", cs, " ")
          for (j = 1; j <= 8; j++) {
            c = cs[j]; x = (c in v) ? v[c] : "0"
            if (c == "epoll_wait" && ("epoll_pwait" in v)) x = x " (+pwait " v["epoll_pwait"] ")"
            printf " | %s", x
          }
          print " |" }' "$results"
      echo
    done
  } | tee "$out/http-syscalls.md"
  exit 0
fi

measure() { # name proto rep -> sets line, disturbed (0|1)
  local name=$1 proto=$2 rep=$3 c0 c1 b0 b1 l0 l1 t0 t1 other n errs rps
  quiet
  start "$name"
  # The wall-clock interval encloses the CPU samples.
  t0=$(date +%s%N)
  children_us > "$tmp/l0"
  c0=$(cpu_us "$pid") b0=$(busy_us) l0=$(cat "$tmp/l0")
  load "$proto" "$secs" > "$tmp/load"
  b1=$(busy_us) c1=$(cpu_us "$pid")
  children_us > "$tmp/l1"
  l1=$(cat "$tmp/l1")
  t1=$(date +%s%N)
  stop
  # CPU used by anything but the server and the load generator: noise.
  other=$(((b1 - b0) - (c1 - c0) - (l1 - l0)))
  n=$(requests_of "$proto" "$tmp/load")
  [ "${n:-0}" -gt 0 ] || { echo "$name: no requests: $(cat "$tmp/load")" >&2; exit 1; }
  errs=$(errors_of "$proto" "$tmp/load")
  # requests/s over the load generator's own run time (wrk: Requests/sec; h2load: req/s).
  case $proto in
    h1) rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$tmp/load") ;;
    h2) rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$tmp/load") ;;
  esac
  line=$(awk -v name="$name" -v proto="$proto" -v rep="$rep" -v rps="$rps" -v n="$n" \
    -v cpu="$((c1 - c0))" -v wall="$(((t1 - t0) / 1000))" -v other="$other" -v lg="$((l1 - l0))" \
    'BEGIN { printf "%s %s rep=%d rps=%.0f requests=%.0f cpu_us=%.0f us_per_req=%.3f util=%.2f load_util=%.2f other=%.2f",
             name, proto, rep, rps, n, cpu, cpu / n, cpu / wall, lg / wall, (other > 0 ? other : 0) / wall }')
  [ -z "$errs" ] || line+=" errors: $errs"
  # Disturbed: something else used more than MAX_OTHER (default 0.10) of a core on average.
  disturbed=$(awk -v o="$other" -v w="$(((t1 - t0) / 1000))" -v m="${MAX_OTHER:-0.10}" 'BEGIN { print (o / w > m) ? 1 : 0 }')
}

results=$out/http-results.txt
: > "$results"
for proto in $protocols; do
  for rep in $(seq "$reps"); do
    for name in $servers; do
      # A run disturbed by other work on the machine is thrown away and run again (up to
      # RETRIES times, default 3; the last attempt counts whatever happens).
      for attempt in $(seq "${RETRIES:-3}"); do
        measure "$name" "$proto" "$rep"
        if [ "$disturbed" = 0 ] || [ "$attempt" -ge "${RETRIES:-3}" ]; then break; fi
        echo "($line: disturbed, run again)" >&2
      done
      echo "$line" | tee -a "$results"
    done
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { # server proto key -> values, one per line
  awk -v s="$1" -v p="$2" -v k="$3=" '$1 == s && $2 == p { for (i = 3; i <= NF; i++) if (index($i, k) == 1) print substr($i, length(k) + 1) }' "$results"
}
{
  echo "Machine: $machine; source: $source_rev"
  echo "Command: ${PROTOCOLS:+PROTOCOLS=\"$PROTOCOLS\" }${SERVERS:+SERVERS=\"$SERVERS\" }${NICE:+NICE=$NICE }bash benches/http.sh $*  (medians of $reps interleaved runs, ${secs}s each; server pinned to CPU 0 with one executor thread, load generator pinned to CPU 1 with one thread: wrk -t2 would share the server's core on 2 cores)"
  echo
  for proto in $protocols; do
    label "$proto"
    echo
    echo "| server | requests/s | × $peer | server CPU µs/request | × $peer | server CPU use | load generator CPU | other CPU (noise) |"
    echo "|---|---|---|---|---|---|---|---|"
    peer_rps=$(field "$peer" "$proto" rps | median)
    peer_us=$(field "$peer" "$proto" us_per_req | median)
    for name in $servers; do
      rps=$(field "$name" "$proto" rps | median)
      us=$(field "$name" "$proto" us_per_req | median)
      util=$(field "$name" "$proto" util | median)
      lutil=$(field "$name" "$proto" load_util | median)
      other=$(field "$name" "$proto" other | sort -g | tail -1)
      awk -v n="$name" -v r="$rps" -v u="$us" -v pr="${peer_rps:-0}" -v pu="${peer_us:-0}" \
        -v c="$util" -v l="$lutil" -v o="$other" \
        'BEGIN { printf "| %s | %.0f | %s | %.2f | %s | %.0f%% | %.0f%% | max %.0f%% |\n", n, r,
                 (pr > 0 ? sprintf("%.3f", r / pr) : "-"), u, (pu > 0 ? sprintf("%.3f", u / pu) : "-"),
                 c * 100, l * 100, o * 100 }'
    done
    echo
  done
  echo "× $peer: requests/s higher is better; CPU µs per request lower is better (targets: <= 1.05 on tokio,"
  echo "<= 1.10 on smol). CPU use in % of one core over the run; other CPU: anything but the server and"
  echo "the load generator, the worst run kept (runs above ${MAX_OTHER:-0.10} of a core were run again, up to ${RETRIES:-3} attempts)."
} | tee "$out/http-report.md"
