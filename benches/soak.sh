#!/usr/bin/env bash
# Soak test of the echo example: leaks (memory, descriptors, processes, connections) and
# failed clients over a long run of connection churn, TLS handshakes, idle clients cut by
# the idle timeout, a zero-downtime upgrade (SIGHUP) every minute and a certificate reload
# every minute. Run on demand, never in CI:
#
#   bash benches/soak.sh                  # 30 minutes
#   DURATION=2m bash benches/soak.sh      # a quick run (also: 90s, 1h, or plain seconds)
#
# Servers: echo applies TLS to every TCP listener it has, so plain and TLS are two echo
# processes (each upgraded every minute):
#   tls:   echo --addr 127.0.0.1:0 --self-signed DIR --tls-watch 1s --idle-timeout 30s
#               --metrics-addr 127.0.0.1:M1
#   plain: echo --addr 127.0.0.1:0 --idle-timeout 30s --metrics-addr 127.0.0.1:M2
# DIR is filled beforehand with a CA and a leaf made by openssl (echo's --self-signed reuses
# existing files); each reload writes a fresh leaf signed by the same CA over DIR/cert.pem
# and DIR/key.pem (write to a temporary file, then rename), and counts once a TLS client is
# served the new certificate.
#
# Clients (benches/soak_client.py, asyncio): CHURN_RATE connect+echo+close per second on the
# plain server (default 100), TLS_RATE connect+full handshake+echo+close per second on the
# TLS server (default 5), IDLE_PLAIN + IDLE_TLS idle connections (default 150 + 50) held and
# replaced whenever the server closes them (idle timeout, drain of an upgrade).
#
# Every SAMPLE_EVERY s (10) one CSV row: the current TLS server's pid, RSS (VmRSS), open
# descriptors and berth_connections_active (from /metrics), the same for the plain server
# (plain_*), the client counters, upgrades and reloads done and failed, and echo_procs (echo
# processes still alive: 2 unless an old generation lingers). Upgrades run at t = 65, 125, ...
# s (UPGRADE_EVERY), reloads at t = 35, 95, ... s (RELOAD_EVERY). At the end it prints the
# start / middle / end samples, whether RSS, descriptors, connections and processes stayed
# flat (median of the first minute after WARMUP s against the last minute), the failures,
# and exits non-zero if anything grew or failed.
#
# Settings (environment): DURATION, CHURN_RATE, TLS_RATE, IDLE_PLAIN, IDLE_TLS,
# UPGRADE_EVERY and RELOAD_EVERY (seconds; 0 turns it off), SAMPLE_EVERY, WARMUP.
#
# Output: target/soak/<date>/ (soak.csv, server and client logs). Every process it starts
# is tracked by pid and stopped at the end, on Ctrl-C too; a watchdog stops the servers if
# this script dies or overruns.
set -uo pipefail
cd "$(dirname "$0")/.."

secs_of() { # 30m, 90s, 1h, 120 -> seconds
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;; *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo $(( ${1%s} )) ;; *) echo $(( $1 )) ;;
  esac
}
dur=$(secs_of "${DURATION:-30m}") || { echo "bad DURATION=$DURATION" >&2; exit 2; }
churn_rate=${CHURN_RATE:-100} tls_rate=${TLS_RATE:-5}
idle_plain=${IDLE_PLAIN:-150} idle_tls=${IDLE_TLS:-50}
upgrade_every=${UPGRADE_EVERY:-60} reload_every=${RELOAD_EVERY:-60}
sample_every=${SAMPLE_EVERY:-10} warmup=${WARMUP:-120} idle_timeout=30

die() { echo "soak: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S) t=$(( $(date +%s) - ${t0:-$(date +%s)} ))s] $*"; }

run=target/soak/$(date +%Y%m%d-%H%M%S)
mkdir -p "$run/tls" "$run/pairs" || die "cannot create $run"
run=$(cd "$run" && pwd)
csv=$run/soak.csv
echo "soak: duration=${dur}s churn=${churn_rate}/s tls=${tls_rate}/s idle=${idle_plain}+${idle_tls}" \
  "upgrade_every=${upgrade_every}s reload_every=${reload_every}s output=$run"

timeout --foreground 3600 cargo build -q --release --example echo || die "build failed"
# A private copy: an upgrade re-executes the program path, and other builds may replace
# target/release/examples/echo meanwhile.
bin=$run/echo
cp target/release/examples/echo "$bin" || die "cannot copy the echo binary"

# --- certificates: one CA, a fresh leaf per reload ----------------------------------------
ossl() { timeout --foreground 60 openssl "$@" 2>>"$run/openssl.log"; }
cat > "$run/ca.ext" <<'EOF'
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
cat > "$run/leaf.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$run/ca.key" || die "openssl failed"
ossl req -new -key "$run/ca.key" -subj "/CN=berth soak CA" -out "$run/ca.csr" &&
  ossl x509 -req -in "$run/ca.csr" -signkey "$run/ca.key" -days 3 -extfile "$run/ca.ext" \
    -out "$run/ca.pem" || die "cannot make the CA (see $run/openssl.log)"
pair=0
new_pair() { # -> $run/pairs/$pair/{cert,key}.pem, a fresh key and certificate from the CA
  pair=$((pair + 1))
  local d=$run/pairs/$pair
  mkdir -p "$d"
  ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/key.pem" &&
    ossl req -new -key "$d/key.pem" -subj "/CN=localhost/OU=soak pair $pair" -out "$d/csr" &&
    ossl x509 -req -in "$d/csr" -CA "$run/ca.pem" -CAkey "$run/ca.key" \
      -set_serial "0x$(ossl rand -hex 12)" -days 3 -extfile "$run/leaf.ext" -out "$d/cert.pem"
}
fingerprint() { ossl x509 -in "$1" -outform DER | sha256sum | cut -d' ' -f1; }
new_pair || die "cannot make a certificate (see $run/openssl.log)"
cp "$run/ca.pem" "$run/tls/ca.pem"
cp "$run/pairs/$pair/cert.pem" "$run/tls/cert.pem"
cp "$run/pairs/$pair/key.pem" "$run/tls/key.pem"

free_port() { timeout --foreground 10 python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
m_tls=$(free_port) && m_plain=$(free_port) || die "no free port"

# --- process tracking and cleanup ---------------------------------------------------------
: > "$run/pids"
declare -A cur=() port=() metrics=()
client=""
watchdog=""
alive() { [[ $(readlink "/proc/$1/exe" 2>/dev/null) == "$bin" ]]; } # ours, not a zombie
kill_tracked() { # signal: every echo process ever started that is still ours and alive
  local p
  while read -r p; do alive "$p" && kill "-$1" "$p" 2>/dev/null; done < "$run/pids"
  return 0
}
kill_client() { # the client's `timeout` (which passes the signal on), if still ours
  local c
  c=$(cat "$run/client.pid" 2>/dev/null)
  [ -n "$c" ] && [ "$(cat "/proc/$c/comm" 2>/dev/null)" = timeout ] && kill -TERM "$c" 2>/dev/null
  return 0
}
live_count() { local p n=0; while read -r p; do alive "$p" && n=$((n + 1)); done < "$run/pids"; echo "$n"; }
cleaned=""
cleanup() {
  [ -n "$cleaned" ] && return
  cleaned=1
  kill_client
  kill_tracked TERM
  for _ in $(seq 150); do [ "$(live_count)" -eq 0 ] && break; sleep 0.1; done
  if [ "$(live_count)" -ne 0 ]; then
    echo "soak: $(live_count) echo process(es) still running 15 s after SIGTERM: killing" >&2
    kill_tracked KILL
  fi
  [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
  wait 2>/dev/null
  return 0
}
interrupted=""
trap 'interrupted=1' INT TERM
trap cleanup EXIT

start_echo() { # name args...: starts it, waits for "listening on", sets cur[name], port[name]
  local name=$1
  shift
  "$bin" "$@" >> "$run/$name.out" 2>> "$run/$name.err" &
  local pid=$!
  echo "$pid" >> "$run/pids"
  for _ in $(seq 300); do grep -q "listening on" "$run/$name.out" && break; sleep 0.1; done
  grep -q "listening on" "$run/$name.out" || die "$name echo did not start: $(cat "$run/$name.err")"
  cur[$name]=$pid
  port[$name]=$(sed -n 's/.*listening on //p' "$run/$name.out" | head -1)
  log "$name echo pid $pid listening on ${port[$name]}"
}
start_echo tls --addr 127.0.0.1:0 --self-signed "$run/tls" --tls-watch 1s \
  --idle-timeout ${idle_timeout}s --metrics-addr "127.0.0.1:$m_tls"
start_echo plain --addr 127.0.0.1:0 --idle-timeout ${idle_timeout}s \
  --metrics-addr "127.0.0.1:$m_plain"
metrics[tls]=$m_tls
metrics[plain]=$m_plain

# The watchdog: stops every echo process if this script dies (even SIGKILL) or overruns.
t0=$(date +%s)
main=$$
(
  trap - INT TERM EXIT
  deadline=$((t0 + dur + 900))
  while sleep 5; do
    if ! kill -0 "$main" 2>/dev/null; then
      kill_client; kill_tracked TERM; sleep 12; kill_tracked KILL; exit 0
    fi
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "soak: watchdog: overran, stopping" >&2
      kill -TERM "$main"; sleep 30; kill_tracked KILL; exit 0
    fi
  done
) &
watchdog=$!

status=$run/client.status
# It would stop 30 s after the deadline: the last sample is taken while it still runs.
timeout $((dur + 120)) python3 benches/soak_client.py load \
  --plain "${port[plain]}" --tls "${port[tls]}" --ca "$run/tls/ca.pem" --secs "$((dur + 30))" \
  --status "$status" --churn-rate "$churn_rate" --tls-rate "$tls_rate" \
  --idle-plain "$idle_plain" --idle-tls "$idle_tls" --idle-timeout "$idle_timeout" \
  > "$run/client.out" 2> "$run/client.err" &
client=$!
echo "$client" > "$run/client.pid"
for _ in $(seq 100); do [ -s "$status" ] && break; sleep 0.1; done
[ -s "$status" ] || die "client did not start: $(cat "$run/client.err")"

# --- upgrades, reloads, samples -----------------------------------------------------------
declare -A upgrades=([tls]=0 [plain]=0)
upgrade_failed=0 reloads=0 reload_failed=0 lingering=0
pending_cert="" pending_since=0
declare -A draining=() # old pid -> when it was told to upgrade

count() { grep -c "$1" "$2" 2>/dev/null || true; }
client_stat() { # key [status line]: one counter from the client's status (read once per use)
  local line=${2-$(cat "$status" 2>/dev/null)}
  sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<< "$line"
}

upgrade() { # name
  local name=$1 old=${cur[$1]} out=$run/$1.out err=$run/$1.err new=""
  local n0 f0 l0
  n0=$(count '^upgrade: process' "$out") f0=$(count 'upgrade failed' "$err")
  l0=$(count 'listening on' "$out")
  kill -HUP "$old" 2>/dev/null || { log "$name: cannot signal pid $old"; upgrade_failed=$((upgrade_failed + 1)); return; }
  for _ in $(seq 300); do # 30 s
    if [ "$(count '^upgrade: process' "$out")" -gt "$n0" ]; then
      new=$(grep '^upgrade: process' "$out" | tail -1 | awk '{print $3}')
      break
    fi
    [ "$(count 'upgrade failed' "$err")" -gt "$f0" ] && break
    sleep 0.1
  done
  if [ -z "$new" ] || ! alive "$new"; then
    upgrade_failed=$((upgrade_failed + 1))
    log "$name: upgrade of pid $old FAILED: $(tail -3 "$err" | tr '\n' ' ')"
    [ -n "$new" ] && echo "$new" >> "$run/pids"
    return
  fi
  echo "$new" >> "$run/pids"
  draining[$old]=$(date +%s)
  cur[$name]=$new
  upgrades[$name]=$((upgrades[$name] + 1))
  # The new process announces its listener (same port: the socket was handed over).
  for _ in $(seq 100); do [ "$(count 'listening on' "$out")" -gt "$l0" ] && break; sleep 0.1; done
  local now_port
  now_port=$(sed -n 's/.*listening on //p' "$out" | tail -1)
  [ "$now_port" = "${port[$name]}" ] || log "$name: new pid $new listens on '$now_port', not ${port[$name]}"
}

check_draining() { # old generations must exit (drain timeout is 10 s)
  local p
  for p in "${!draining[@]}"; do
    if ! alive "$p"; then
      unset "draining[$p]"
    elif [ $(( $(date +%s) - draining[$p] )) -gt 40 ]; then
      lingering=$((lingering + 1))
      log "old pid $p still alive 40 s after its upgrade"
      unset "draining[$p]"
    fi
  done
}

reload() {
  if ! new_pair; then
    reload_failed=$((reload_failed + 1)); log "reload: cannot make a certificate"; return
  fi
  local d=$run/pairs/$pair
  cp "$d/cert.pem" "$run/tls/.cert.pem.tmp" && mv -f "$run/tls/.cert.pem.tmp" "$run/tls/cert.pem"
  cp "$d/key.pem" "$run/tls/.key.pem.tmp" && mv -f "$run/tls/.key.pem.tmp" "$run/tls/key.pem"
  pending_cert=$(fingerprint "$d/cert.pem")
  pending_since=$(date +%s)
}

check_reload() {
  [ -z "$pending_cert" ] && return
  if [ "$(client_stat tls_cert)" = "$pending_cert" ]; then
    reloads=$((reloads + 1)); pending_cert=""
  elif [ $(( $(date +%s) - pending_since )) -gt 20 ]; then
    reload_failed=$((reload_failed + 1)); pending_cert=""
    log "reload $pair: clients still see the old certificate 20 s later: $(tail -2 "$run/tls.err" | tr '\n' ' ')"
  fi
}

proc_stats() { # pid -> "rss,fds" (empty fields once it is gone)
  alive "$1" || { echo ","; return; }
  local rss fds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null)
  fds=$(ls "/proc/$1/fd" 2>/dev/null | wc -l)
  echo "${rss:-},${fds:-}"
}
active() { # metrics port -> berth_connections_active
  timeout --foreground 5 curl -s --max-time 3 "http://127.0.0.1:$1/metrics" |
    awk '$1 == "berth_connections_active" {printf "%d", $2; found = 1} END {if (!found) printf ""}'
}

echo "time,pid,rss_kib,fds,open_conns,churn_ok,churn_failed,tls_ok,tls_failed,upgrades,reloads,plain_pid,plain_rss_kib,plain_fds,plain_open_conns,idle_open,idle_replaced,idle_failed,idle_overdue,plain_upgrades,upgrade_failed,reload_failed,echo_procs" > "$csv"
sample() {
  local t=$(( $(date +%s) - t0 )) ts ps tc pc st k
  IFS=, read -r -a ts <<< "$(proc_stats "${cur[tls]}")"
  IFS=, read -r -a ps <<< "$(proc_stats "${cur[plain]}")"
  tc=$(active "${metrics[tls]}") pc=$(active "${metrics[plain]}")
  st=$(cat "$status" 2>/dev/null)
  declare -A c=()
  for k in churn_ok churn_failed tls_ok tls_failed idle_open idle_replaced idle_failed idle_overdue; do
    c[$k]=$(client_stat "$k" "$st")
  done
  local row="$t,${cur[tls]},${ts[0]:-},${ts[1]:-},$tc"
  row+=",${c[churn_ok]},${c[churn_failed]},${c[tls_ok]},${c[tls_failed]}"
  row+=",${upgrades[tls]},$reloads,${cur[plain]},${ps[0]:-},${ps[1]:-},$pc"
  row+=",${c[idle_open]},${c[idle_replaced]},${c[idle_failed]},${c[idle_overdue]}"
  row+=",${upgrades[plain]},$upgrade_failed,$reload_failed,$(live_count)"
  echo "$row" >> "$csv"
  log "sample tls[pid=${cur[tls]} rss=${ts[0]:-?}KiB fds=${ts[1]:-?} conns=${tc:-?}]" \
    "plain[pid=${cur[plain]} rss=${ps[0]:-?}KiB fds=${ps[1]:-?} conns=${pc:-?}]" \
    "churn=${c[churn_ok]}/${c[churn_failed]} tls=${c[tls_ok]}/${c[tls_failed]} idle=${c[idle_open]}" \
    "upgrades=${upgrades[tls]}+${upgrades[plain]} reloads=$reloads failed(up/reload)=$upgrade_failed/$reload_failed"
}

end=$((t0 + dur))
next_sample=$t0 next_upgrade=$((t0 + upgrade_every + 5)) next_reload=$((t0 + reload_every / 2 + 5))
while :; do
  now=$(date +%s)
  [ "$now" -ge "$end" ] || [ -n "$interrupted" ] && break
  if ! kill -0 "$client" 2>/dev/null; then log "the client exited early: $(tail -3 "$run/client.err")"; break; fi
  if [ "$now" -ge "$next_sample" ]; then sample; next_sample=$((next_sample + sample_every)); fi
  if [ "$upgrade_every" -gt 0 ] && [ "$now" -ge "$next_upgrade" ]; then
    upgrade tls; upgrade plain
    log "upgraded: tls pid ${cur[tls]}, plain pid ${cur[plain]}"
    next_upgrade=$((next_upgrade + upgrade_every))
  fi
  if [ "$reload_every" -gt 0 ] && [ "$now" -ge "$next_reload" ]; then
    reload; next_reload=$((next_reload + reload_every))
  fi
  check_reload
  check_draining
  sleep 0.5
done
if [ -n "$interrupted" ]; then
  # Ctrl-C reaches the servers too (they drain at once): no final sample.
  log "interrupted: stopping early (the servers got the signal too; failures from here on are expected)"
else
  for _ in $(seq 40); do [ -z "$pending_cert" ] && break; check_reload; sleep 0.5; done
  sample
fi
cleanup
echo "--- servers"
echo "tls:   $(count '^upgrade: process' "$run/tls.out") upgrade lines; last: $(tail -1 "$run/tls.out")"
echo "plain: $(count '^upgrade: process' "$run/plain.out") upgrade lines; last: $(tail -1 "$run/plain.out")"
for s in tls plain; do
  n=$(grep -vc 'wrote a throwaway CA' "$run/$s.err" || true)
  [ "$n" -gt 0 ] && { echo "$s stderr ($n lines, first 5):"; grep -v 'wrote a throwaway CA' "$run/$s.err" | head -5; }
done
[ "$lingering" -gt 0 ] && echo "old generations still alive 40 s after their upgrade: $lingering"
if [ -s "$run/client.err" ]; then
  echo "client failures logged ($(wc -l < "$run/client.err") lines, first 10):"; head -10 "$run/client.err"
fi
echo "--- summary ($csv)"
timeout --foreground 60 python3 benches/soak_client.py summary "$csv" --warmup "$warmup"
verdict=$?
[ "$lingering" -gt 0 ] && verdict=1
if [ -n "$interrupted" ]; then echo "(interrupted run: $csv covers it up to the signal)"; exit 130; fi
exit "$verdict"
