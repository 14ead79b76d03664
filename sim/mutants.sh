#!/usr/bin/env bash
# Mutation score of berth's simulation suite (berth-sim): applies known bugs to a scratch
# copy of the repository, one at a time, runs `cargo test -p berth-sim` on each, and prints
# which the suite caught ("caught N of M").
#
#   sim/mutants.sh                      # every mutant (21; the last 9 need the campaign's limits)
#   MUTANTS=no-linger,stale-generation sim/mutants.sh
#   sim/mutants.sh --list               # names and descriptions
#   sim/mutants.sh --check              # only checks that every mutant applies and builds
#
# The working tree is never touched: the repository (as it is on disk, without target/ and
# .git/) is copied to a temporary directory, and each mutant patches that copy's src/ and
# restores it afterwards. Builds share one target directory (CARGO_TARGET_DIR, default
# /tmp/berth-mutants-target), so each mutant recompiles only berth and berth-sim. Give the
# script a target directory of its own: the last mutant's build of berth stays in it, and
# cargo may take it as up to date for a checkout whose sources are older. turmoil
# and tokio are compiled with optimizations there (MUTANTS_OPT=0 turns that off): the suite
# runs several times faster and tests the same thing. BERTH_SIM_FAIL_FAST=1 makes the
# campaign stop at its first failing seed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/berth-mutants-target}
export BERTH_SIM_FAIL_FAST=1
unset BERTH_SIM_SEED BERTH_SIM_SEEDS BERTH_SIM_TRACE
CARGO_FLAGS=()
if [[ ${MUTANTS_OPT:-1} != 0 ]]; then
    CARGO_FLAGS+=(--config 'profile.dev.package.turmoil.opt-level=2'
        --config 'profile.dev.package.tokio.opt-level=2')
fi

# name | file(s) | what the bug is | perl substitution(s), one per file, separated by " ;; "
MUTANTS_TABLE=$(cat <<'EOF'
no-linger|src/conn/close.rs|Conn's Drop never lingers: a handler that returns while its peer still sends closes at once (and the kernel resets the connection)|s/if !linger\.is_zero\(\)/if false \&\& !linger.is_zero()/
idle-sweep-late|src/idle.rs|the idle sweep reaps one tick late (compares with timeout + tick)|s/now\.saturating_sub\(last\) >= timeout_ns/now.saturating_sub(last) >= timeout_ns + tick.as_nanos() as u64/
stale-generation|src/pool.rs|a slot's state and close ignore the generation: a stale ConnHandle sees and closes the slot's next connection|s/if word >> STATE_BITS != generation \{/if false {/; s/pack\(generation, SlotState::Open\),(\s*)pack\(generation, state\)/pack(self.generation(), SlotState::Open),$1pack(self.generation(), state)/
proxy-over-read|src/proxy.rs|the PROXY header reader drops the bytes it read past the header|s/let rest = buf\.split_off\(len\.min\(buf\.len\(\)\)\);/let rest = { buf.split_off(len.min(buf.len())); Vec::new() };/
rejected-not-counted|src/core.rs|a connection rejected after it was counted (bad PROXY header) is not taken off the open count|s/(fn report_rejected\(.*?self\.counters\.add\(Count::Rejected\);)\s*self\.count_down\(\);/$1/s
idle-close-not-counted|src/core.rs|a connection closed by the idle timeout is not taken off the open count|s/(fn report_closed\(.*?)self\.count_down\(\);/$1if reason != CloseReason::IdleTimeout { self.count_down(); }/s
tls-failure-no-closed|src/lifecycle.rs|a failed TLS handshake leaves the count but reports no Closed event|s/Phase::Failed\(reason\) => \*reason,/Phase::Failed(CloseReason::TlsFailed) => return self.core.report_abandoned(),\n            Phase::Failed(reason) => *reason,/
drain-no-wake|src/core.rs|starting the drain does not wake handlers waiting in Conn::readable|s/(fn start_draining\(&self\) \{.*?)\n\s*self\.pool\.for_each_open\(\|slot, _\| slot\.read_waker\.wake\(\)\);/$1/s
forced-skips-lingering|src/shutdown.rs src/conn/close.rs|the deadline does not close connections in a lingering close (the sweep skips them and the lingering close ignores the force)|s/if slot\.close\(generation, SlotState::ShutdownForced\) && slot\.flags\(\) & LINGERING != 0(\s*)\{/if slot.flags() & LINGERING != 0 || (slot.close(generation, SlotState::ShutdownForced) \&\& false)${1}{/ ;; s/\n\s*\.or\(core\.stop\(\)\.forced\(\)\)(\s*\.or\(by_server\))/$1/
first-request-grace-ignored|src/conn.rs|a connection that has sent nothing yet is told to drain at once (no first-request grace)|s/(fn drain_due\(core.*?\{\s*)if slot\.flags\(\) & SAW_DATA != 0 \{/$1if true {/s; s/let saw_data = slot\.flags\(\) & SAW_DATA != 0;/let saw_data = true;/
linger-ignores-server-close|src/conn/close.rs|a lingering close is not ended by a server-side close (idle timeout, ConnHandle)|s/\n\s*\.or\(by_server\)//
accept-backoff-ignores-shutdown|src/accept.rs|the accept loop's error back-off does not wake for a shutdown|s/stopped\.as_mut\(\)\.or\(core\.runtime\(\)\.sleep\(delay\)\)\.await;/core.runtime().sleep(delay).await;/
loop-refusal-counted|src/core.rs|a client refused on the accept loop is counted as open and never taken off|s/(pub\(crate\) fn reject_on_loop\(&self, peer_addr: Addr, reason: RejectReason\) \{)/$1\n        self.count_open();/
loop-refusal-reported-twice|src/accept.rs|a client refused on the accept loop is reported (and counted) twice|s/core\.reject_on_loop\(peer_addr, reason\);/core.reject_on_loop(peer_addr.clone(), reason.clone());\n                            core.reject_on_loop(peer_addr, reason);/
per-ip-not-released|src/admission.rs|a connection that closes does not give its place under max_per_ip back|s/entry\.active = entry\.active\.saturating_sub\(1\);/entry.active = entry.active.saturating_sub(0);/
per-ip-off-by-one|src/admission.rs|max_per_ip lets one more connection in per address|s/entry\.active >= max\)/entry.active > max)/
rate-never-refuses|src/admission.rs|a per-IP rate token is taken, but an empty bucket never refuses|s/if !bucket\.(take|has_token)\(rate, now\) \{/if !bucket.$1(rate, now) \&\& false {/
max-connections-off-by-one|src/accept.rs|the accept loop lets max_connections + 1 connections in|s/let max = core\.config\(\)\.max_connections;/let max = core.config().max_connections.map(|max| max + 1);/
evict-not-idle|src/accept.rs|at max_connections a newcomer evicts the connection idle the longest, however briefly idle|s/if !evicted\(core, min\) \{/if !evicted(core, Duration::ZERO) {/
handshake-place-kept-on-failure|src/task.rs|a failed TLS handshake never gives its max_handshakes place back|s/(\n\s*)crate::tls::handshake\(config, core\.tls_select\(\), stream\)\.await/${1}let result = crate::tls::handshake(config, core.tls_select(), stream).await;${1}if result.is_err() { std::mem::forget(_place); }${1}result/
handshake-limit-off-by-one|src/capacity.rs|one TLS handshake more than max_handshakes runs at once|s/\(n < max\)\.then_some\(n \+ 1\)/(n <= max).then_some(n + 1)/
EOF
)

if [[ ${1:-} == --list ]]; then
    while IFS='|' read -r name files what _; do
        printf '%-32s %-28s %s\n' "$name" "$files" "$what"
    done <<<"$MUTANTS_TABLE"
    exit 0
fi

WORK=$(mktemp -d /tmp/berth-mutants.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
[[ ${KEEP:-0} == 1 ]] && trap - EXIT
# -m: files get the current time, so cargo (whose fingerprints are mtimes, and whose
# artifacts in the shared target directory may come from an earlier mutant) rebuilds.
tar -C "$ROOT" --exclude=./target --exclude=./.git -cf - . | tar -xmf - -C "$WORK"
cp -r "$WORK/src" "$WORK/.pristine-src"

CHECK=0
[[ ${1:-} == --check ]] && CHECK=1

run_suite() { # log file; returns cargo's status
    if [[ $CHECK == 1 ]]; then
        (cd "$WORK" && cargo test -p berth-sim --no-run "${CARGO_FLAGS[@]}" >"$1" 2>&1)
    else
        (cd "$WORK" && cargo test -p berth-sim "${CARGO_FLAGS[@]}" >"$1" 2>&1)
    fi
}

# Which test caught it, and why, in one line.
first_failure() {
    local line
    line=$(grep -m1 -E 'FAILED: |panicked at' "$1" || true)
    if [[ $line == *"panicked at"* ]]; then
        local next
        next=$(grep -m1 -A1 -F "$line" "$1" | tail -1)
        line="$line $next"
    fi
    echo "${line:0:220}"
}

started=$(date +%s)
echo "scratch copy: $WORK; target: $CARGO_TARGET_DIR"
echo -n "baseline (no mutant): "
if ! run_suite "$WORK/baseline.log"; then
    echo "FAILS: $(first_failure "$WORK/baseline.log")"
    echo "the suite must pass on the unmodified code first (log: $WORK/baseline.log)" >&2
    trap - EXIT
    exit 2
fi
echo "passes ($(( $(date +%s) - started )) s)"

caught=0
total=0
results=()
while IFS='|' read -r name files what subs; do
    if [[ -n ${MUTANTS:-} && ",$MUTANTS," != *",$name,"* ]]; then
        continue
    fi
    total=$((total + 1))
    t0=$(date +%s)
    rm -rf "$WORK/src" && cp -r "$WORK/.pristine-src" "$WORK/src"
    # Apply: one substitution per file; each must change its file.
    IFS=' ' read -r -a file_list <<<"$files"
    applied=1
    i=0
    while IFS= read -r sub; do
        sub=${sub#"${sub%%[![:space:]]*}"}
        sub=${sub%"${sub##*[![:space:]]}"}
        f=${file_list[$i]}
        perl -0pi -e "$sub" "$WORK/$f"
        if cmp -s "$WORK/$f" "$WORK/.pristine-src/${f#src/}"; then
            applied=0
            echo "mutant $name: the substitution for $f matched nothing (has berth changed?)" >&2
        fi
        i=$((i + 1))
    done < <(echo "$subs" | sed 's/ ;; /\n/g')
    log="$WORK/$name.log"
    if [[ $applied == 0 ]]; then
        line="NOT APPLIED  $name: $what"
    elif [[ $CHECK == 1 ]]; then
        if run_suite "$log"; then line="builds       $name"; else line="NO BUILD     $name (see $log)"; fi
    elif run_suite "$log"; then
        line="missed       $name: $what ($(( $(date +%s) - t0 )) s)"
    elif grep -qE '^error(\[E[0-9]+\])?:' "$log" && ! grep -q 'test result' "$log"; then
        line="NO BUILD     $name: $what (see $log)"
    else
        caught=$((caught + 1))
        line="caught       $name: $what ($(( $(date +%s) - t0 )) s)
             by: $(first_failure "$log")"
    fi
    echo "$line"
    results+=("$line")
done <<<"$MUTANTS_TABLE"
rm -rf "$WORK/src" && cp -r "$WORK/.pristine-src" "$WORK/src"

echo
if [[ $CHECK == 1 ]]; then
    # --check runs no test: it passes when every mutant applied and built.
    built=$(printf '%s\n' "${results[@]}" | grep -c '^builds ' || true)
    echo "$built of $total apply and build ($(( $(date +%s) - started )) s in all)"
    [[ $built == "$total" ]]
    exit
fi
echo "caught $caught of $total ($(( $(date +%s) - started )) s in all)"
[[ $caught == "$total" ]]
