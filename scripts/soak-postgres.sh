#!/usr/bin/env bash
# Soaks intransit's PostgreSQL listener and prints a markdown report
# (method and figures are explained in docs/benchmarks.md):
#
#   1. SESSIONS concurrent TLS 1.3 sessions with verified client
#      certificates held open through the listener: LOGGED_IN of them
#      logged in (StartupMessage up to ReadyForQuery, one PostgreSQL backend
#      each), the rest stopped after the TLS handshake, where the proxy
#      waits for the StartupMessage and holds no database connection. The
#      proxy's RSS and open descriptors before, with them open and after;
#      memory per session of each kind; the time psql takes to run
#      `SELECT 1` through the proxy while they are all open, held for HOLD
#      seconds, with the proxy sampled every 5 s meanwhile; what the
#      PostgreSQL backends cost, and what 10,000 logged-in sessions would
#      need on this machine.
#   2. MINUTES of mixed load on a fresh proxy, in SEGMENT-second segments:
#      pgbench on persistent connections and pgbench -C side by side, the
#      proxy's server certificate reissued in the middle of every segment
#      (the proxy's file watcher reloads it), and one PostgreSQL restart
#      (`pg_ctl restart -m fast`) a third into the middle segment. Per
#      segment: transactions, tps, failed transactions, aborted clients,
#      the proxy's RSS and descriptors.
#
# Exits non-zero if a session could not be opened or was dropped while held,
# the new client was not served, a transaction failed or a client aborted
# in a segment other than the restart's, a reload failed or was not seen,
# or the proxy kept descriptors or memory beyond the load's own (the rules
# are printed with the report).
#
# Bounded (about MINUTES + 3 minutes), loopback only, in a temporary
# directory removed on exit (KEEP=1 keeps it, with every log). Needs root
# (PostgreSQL runs as the postgres user), PostgreSQL server binaries, psql,
# pgbench, openssl and curl (`.ci/install-deps.sh`). Not part of the test
# suite.
#
# Knobs (environment): SESSIONS (10000), LOGGED_IN (2000, at most
# SESSIONS), HOLD seconds all sessions stay open (60), MINUTES (10),
# SEGMENT seconds (30), SCALE pgbench scale (10),
# PERSISTENT_CLIENTS (4), RECONNECT_CLIENTS (2), NEW_CLIENT_PROBES (5),
# SKIP_BUILD=1 uses the binaries already built, KEEP, PGBIN,
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=scripts/lib/postgres.sh
source "$repo/scripts/lib/postgres.sh"

SESSIONS=${SESSIONS:-10000}
LOGGED_IN=${LOGGED_IN:-2000}
MINUTES=${MINUTES:-10}
SEGMENT=${SEGMENT:-30}
SCALE=${SCALE:-10}
PERSISTENT_CLIENTS=${PERSISTENT_CLIENTS:-4}
RECONNECT_CLIENTS=${RECONNECT_CLIENTS:-2}
NEW_CLIENT_PROBES=${NEW_CLIENT_PROBES:-5}
HOLD=${HOLD:-60}
(( HOLD <= 1200 )) || die "HOLD is at most 1200 seconds"
(( LOGGED_IN > SESSIONS )) && LOGGED_IN=$SESSIONS
at_startup=$((SESSIONS - LOGGED_IN))
segments=$((MINUTES * 60 / SEGMENT))
(( segments >= 2 )) || die "MINUTES * 60 / SEGMENT must give at least 2 segments"
# The middle segment; the restart happens a third of the way into it.
restart_segment=$((segments / 2 + 1))
# What a PostgreSQL backend of an idle logged-in session is assumed to cost
# before the script measures it, to refuse a LOGGED_IN that could push the
# machine into swapping or the OOM killer (measured on the 2-vCPU machine
# of docs/benchmarks.md: about 1.5 MiB of private memory and page tables).
backend_estimate_kib=2048

pg_require
command -v curl >/dev/null || die "curl not found (apt-get install curl)"

# --- descriptors: the soft limit up to the hard one (raised first when
# allowed), then check that the run fits in it. Each holder process holds
# its sessions' sockets; the proxy holds one socket per session stopped
# at the StartupMessage and two (client and database) per logged-in one,
# plus listeners, the admin server, the runtime and the file watcher.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
proxy_fds_needed=$((at_startup + 2 * LOGGED_IN + 64))
(( proxy_fds_needed <= nofile )) \
    || die "the proxy would need about $proxy_fds_needed descriptors and the limit is $nofile (raise the hard limit, or lower SESSIONS or LOGGED_IN)"
(( at_startup + 64 <= nofile && LOGGED_IN + 64 <= nofile )) \
    || die "a holder process would need more than $nofile descriptors"
mem_available_kib=$(awk '/^MemAvailable:/{print $2}' /proc/meminfo)
(( LOGGED_IN * backend_estimate_kib <= mem_available_kib / 2 )) \
    || die "$LOGGED_IN PostgreSQL backends (about $((LOGGED_IN * backend_estimate_kib / 1024)) MiB) would take more than half of the $((mem_available_kib / 1024)) MiB available; lower LOGGED_IN"

pg_build
pg_workdir intransit-soak
holder_pids=()
on_cleanup() {
    local pid
    for pid in "${holder_pids[@]}"; do kill "$pid" 2>/dev/null; done
    # Background pgbench runs of an interrupted segment.
    for pid in $(jobs -p); do
        [[ $pid == "$proxy_pid" ]] || kill "$pid" 2>/dev/null
    done
}

load_start=$(load_now)
uptime_start=$(uptime)
pg_certificates
pg_start $((LOGGED_IN + PERSISTENT_CLIENTS + RECONNECT_CLIENTS + 20))
pg_pgbench_init "$SCALE"
admin_port=$(free_port)
admin=127.0.0.1:$admin_port
# The sessions stopped at the StartupMessage are held for the whole of
# phase 1, so the handshake timeout is an hour; every connection of both
# phases fits under max_connections.
pg_proxy_config 1h $((SESSIONS + 100)) "$admin"
conn=$(conninfo "$proxy_port")

# --- samples
proc_rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
proc_fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
metrics() { curl -fsS "http://$admin/metrics"; }
# Sum of a metric family's values whose labels contain a fragment.
metric_sum() { # family label-fragment
    metrics | awk -v fam="$1" -v frag="$2" 'index($0, fam "{") == 1 && index($0, frag) { s += $NF } END { printf "%d", s }'
}
# "outcome=count, ..." of the handshake counter.
handshake_outcomes() {
    metrics | awk '/^intransit_handshakes_total\{/ {
            match($0, /outcome="[^"]*"/); o = substr($0, RSTART + 9, RLENGTH - 10); n[o] += $NF
        } END { for (o in n) if (n[o] > 0) printf "%s%s=%d", (c++ ? ", " : ""), o, n[o] }'
}
kib_mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k / 1024}'; }
# Milliseconds psql takes to connect through the proxy and run SELECT 1.
new_client_ms() {
    local start end answer
    start=$(date +%s%N)
    answer=$(psql "$conn" -qAtc "SELECT 1" 2>>"$work/new-client.log") || return 1
    end=$(date +%s%N)
    [[ $answer == 1 ]] || return 1
    echo $(( (end - start) / 1000000 ))
}
new_client_probes() {
    local out="" ms
    for _ in $(seq "$NEW_CLIENT_PROBES"); do
        ms=$(new_client_ms) || { echo "failed"; return 1; }
        out+="$ms "
    done
    echo "${out% }"
}

failures=()
fail() { failures+=("$*"); log "FAIL: $*"; }

# ============================ phase 1 ============================
log "phase 1: $SESSIONS sessions ($at_startup at the StartupMessage, $LOGGED_IN logged in)"
pg_start_proxy warn
sleep 1
p1_before_rss=$(proc_rss_kib "$proxy_pid")
p1_before_fds=$(proc_fds "$proxy_pid")
p1_new_idle=$(new_client_probes) || fail "phase 1: psql through the proxy failed before any session was open"
sleep 1
p1_base_rss=$(proc_rss_kib "$proxy_pid")
p1_base_fds=$(proc_fds "$proxy_pid")

release=$work/release
tls_args=(--ca "$ca" --cert "$client_cert" --key "$client_key" --server-name 127.0.0.1)
# Starts a holder and waits until its sessions are open (its first line).
hold() { # stage count name
    local out=$work/hold-$3.out
    "$bench" idle "${tls_args[@]}" --target "127.0.0.1:$proxy_port" --watch-pid "$proxy_pid" \
        --stage "$1" --count "$2" --hold-until-file "$release" --hold-max-secs 1800 \
        >"$out" 2>"$work/hold-$3.err" &
    holder_pids+=($!)
    local pid=$!
    for _ in $(seq 9000); do
        [[ -s $out ]] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    die "holding $2 $1 sessions failed: $(cat "$work/hold-$3.err")"
}
mem_before_kib=$(awk '/^MemAvailable:/{print $2}' /proc/meminfo)
if (( at_startup > 0 )); then
    log "opening $at_startup TLS sessions that stop before the StartupMessage"
    hold tls "$at_startup" startup
fi
p1_tls_rss=$(proc_rss_kib "$proxy_pid")
p1_tls_fds=$(proc_fds "$proxy_pid")
if (( LOGGED_IN > 0 )); then
    log "opening $LOGGED_IN logged-in sessions"
    hold ready "$LOGGED_IN" ready
fi
opened_at=$SECONDS
sleep 1
p1_open_rss=$(proc_rss_kib "$proxy_pid")
p1_open_fds=$(proc_fds "$proxy_pid")
p1_active=$(metric_sum intransit_connections_active 'listener="bench"')
mem_after_kib=$(awk '/^MemAvailable:/{print $2}' /proc/meminfo)

# What PostgreSQL's backends of the logged-in sessions cost: proportional
# set size (shared pages split among the processes that map them) and page
# tables, summed.
postmaster=$(head -n 1 "$pg/data/postmaster.pid")
mapfile -t backends < <(ps -o pid=,args= --ppid "$postmaster" | awk '/postgres: bench bench \[local\] idle$/ {print $1}')
pg_backends=${#backends[@]}
pg_pss_kib=0
pg_pte_kib=0
if (( pg_backends > 0 )); then
    rollups=("${backends[@]/#//proc/}")
    statuses=("${rollups[@]/%//status}")
    rollups=("${rollups[@]/%//smaps_rollup}")
    pg_pss_kib=$(awk '/^Pss:/{s += $2} END{print s + 0}' "${rollups[@]}")
    pg_pte_kib=$(awk '/^VmPTE:/{s += $2} END{print s + 0}' "${statuses[@]}")
fi
pg_per_backend_kib=$(( pg_backends > 0 ? (pg_pss_kib + pg_pte_kib) / pg_backends : 0 ))
mem_total_kib=$(awk '/^MemTotal:/{print $2}' /proc/meminfo)

log "new clients while the sessions are open"
p1_new_held=$(new_client_probes) || fail "phase 1: psql through the proxy was not served while $SESSIONS sessions were open"

# Hold them all HOLD seconds after the last one opened, sampling the proxy.
log "holding the sessions for ${HOLD}s"
hold_rss=()
hold_fds=()
while (( SECONDS < opened_at + HOLD )); do
    hold_rss+=("$(proc_rss_kib "$proxy_pid")")
    hold_fds+=("$(proc_fds "$proxy_pid")")
    sleep 5
done
hold_rss+=("$(proc_rss_kib "$proxy_pid")")
hold_fds+=("$(proc_fds "$proxy_pid")")
min_max() { printf '%s\n' "$@" | sort -n | sed -n '1p;$p' | paste -sd' '; }
read -r hold_rss_min hold_rss_max <<<"$(min_max "${hold_rss[@]}")"
read -r hold_fds_min hold_fds_max <<<"$(min_max "${hold_fds[@]}")"
p1_open_hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$proxy_pid/status")

log "releasing the sessions"
touch "$release"
for pid in "${holder_pids[@]}"; do
    wait "$pid" || fail "phase 1: a holder exited with an error (see $work/hold-*.err)"
done
holder_pids=()
sleep 2
p1_after_rss=$(proc_rss_kib "$proxy_pid")
p1_after_fds=$(proc_fds "$proxy_pid")
p1_outcomes=$(handshake_outcomes)

held_line() { # name
    [[ -s $work/hold-$1.out ]] && cat "$work/hold-$1.out"
}
startup_out=$(held_line startup || true)
ready_out=$(held_line ready || true)
check_held() { # output count what
    [[ $2 == 0 ]] && return 0
    local opened idle end
    opened=$(field sessions <<<"$1" | head -n 1)
    idle=$(field still_idle <<<"$1")
    end=$(field hold_end <<<"$1")
    [[ $opened == "$2" ]] || fail "phase 1: $opened of $2 $3 sessions opened"
    [[ $end == released ]] || fail "phase 1: the $3 sessions' hold ended by ${end:-nothing}, not by release"
    [[ $idle == "$2" ]] || fail "phase 1: ${idle:-0} of $2 $3 sessions were still open and idle at release"
}
check_held "$startup_out" "$at_startup" "StartupMessage"
check_held "$ready_out" "$LOGGED_IN" "logged-in"
(( p1_after_fds <= p1_base_fds )) \
    || fail "phase 1: the proxy holds $p1_after_fds descriptors after the sessions closed, $p1_base_fds before"

# A field of a holder's output, or - when that holder did not run.
held_field() { # name output
    local value
    value=$(field "$1" <<<"$2" | head -n 1)
    echo "${value:--}"
}
per_startup_kib=$(held_field per_connection_kib "$startup_out")
per_ready_kib=$(held_field per_connection_kib "$ready_out")
per_all_kib=$(awk -v a="$p1_open_rss" -v b="$p1_base_rss" -v n="$SESSIONS" 'BEGIN{printf "%.1f", (a - b) / n}')
pg_stop_proxy

# ============================ phase 2 ============================
log "phase 2: $MINUTES minutes, $segments segments of ${SEGMENT}s; PostgreSQL restarts in segment $restart_segment"
pg_start_proxy warn
sleep 1
p2_start_rss=$(proc_rss_kib "$proxy_pid")
p2_start_fds=$(proc_fds "$proxy_pid")
reloads_ok_start=$(metric_sum intransit_tls_reloads_total 'outcome="ok"')
reloads_failed_start=$(metric_sum intransit_tls_reloads_total 'outcome="failed"')

# One pgbench run's figures: "transactions tps failed aborted exit".
pgbench_figures() { # log exit
    local txns tps failed aborted
    txns=$(awk -F': ' '/number of transactions actually processed/{split($2, a, "/"); print a[1]; exit}' "$1")
    tps=$(awk '/^tps = /{printf "%.1f", $3; exit}' "$1")
    failed=$(awk -F': ' '/number of failed transactions/{split($2, a, " "); print a[1]; exit}' "$1")
    aborted=$(grep -cE 'client [0-9]+ (script [0-9]+ )?aborted' "$1" || true)
    echo "${txns:-0} ${tps:-0} ${failed:-0} $aborted $2"
}
rows=""
reissues=0
restart_window=""
p2_connections_after_first=0
p2_first_rss=""
for seg in $(seq "$segments"); do
    seg_start=$(date +%s.%N)
    seg_clock=$(date +%T)
    pgbench -n -T "$SEGMENT" -c "$PERSISTENT_CLIENTS" -j 1 "$conn" >"$work/seg$seg-persistent.log" 2>&1 &
    persistent_pid=$!
    pgbench -n -T "$SEGMENT" -c "$RECONNECT_CLIENTS" -j 1 -C "$conn" >"$work/seg$seg-reconnect.log" 2>&1 &
    reconnect_pid=$!
    events=""
    if (( seg == restart_segment )); then
        sleep "$(awk -v s="$SEGMENT" 'BEGIN{print s / 3}')"
        r0=$(date +%s.%N)
        pg_ctl_as_postgres -l "$pg/server.log" -m fast -w restart >>"$work/restart.log" 2>&1 \
            || die "PostgreSQL did not restart (see $pg/server.log)"
        r1=$(date +%s.%N)
        restart_window=$(awk -v s="$seg_start" -v a="$r0" -v b="$r1" 'BEGIN{printf "%.1f s to %.1f s", a - s, b - s}')
        events+="PostgreSQL restart ($restart_window); "
    fi
    now=$(date +%s.%N)
    sleep "$(awk -v s="$seg_start" -v n="$now" -v d="$SEGMENT" 'BEGIN{w = s + d / 2 - n; print (w > 0 ? w : 0)}')"
    "$intransit" cert renew server --force --state-dir "$state" >>"$work/renew.log" 2>&1 \
        || die "reissuing the server certificate failed (see $work/renew.log)"
    reissues=$((reissues + 1))
    events+="certificate reissued at $(awk -v s="$seg_start" -v n="$(date +%s.%N)" 'BEGIN{printf "%.1f s", n - s}')"
    p_exit=0; wait "$persistent_pid" || p_exit=$?
    c_exit=0; wait "$reconnect_pid" || c_exit=$?
    sleep 1
    rss=$(proc_rss_kib "$proxy_pid")
    fds=$(proc_fds "$proxy_pid")
    reloads=$(( $(metric_sum intransit_tls_reloads_total 'outcome="ok"') - reloads_ok_start ))
    read -r pt ptps pf pa pe <<<"$(pgbench_figures "$work/seg$seg-persistent.log" "$p_exit")"
    read -r ct ctps cf ca_ ce <<<"$(pgbench_figures "$work/seg$seg-reconnect.log" "$c_exit")"
    (( seg == 1 )) && p2_first_rss=$rss
    (( seg > 1 )) && p2_connections_after_first=$((p2_connections_after_first + ct + PERSISTENT_CLIENTS))
    label=$seg
    if (( seg == restart_segment )); then
        label="$seg (restart)"
    elif (( pf + pa + cf + ca_ > 0 || pe != 0 || ce != 0 )); then
        fail "segment $seg ($seg_clock): failed $pf + $cf, aborted clients $pa + $ca_, pgbench exit $pe / $ce"
    fi
    rows+="| $label | $seg_clock | $pt | $ptps | $pf | $pa | $ct | $ctps | $cf | $ca_ | $(kib_mib "$rss") | $fds | $reloads | $events |"$'\n'
    log "segment $seg: persistent $pt txn ($pf failed, $pa aborted), -C $ct txn ($cf failed, $ca_ aborted), RSS $(kib_mib "$rss") MiB, $fds fds, $reloads reloads"
done
sleep 2
p2_end_rss=$(proc_rss_kib "$proxy_pid")
p2_end_fds=$(proc_fds "$proxy_pid")
p2_hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$proxy_pid/status")
reloads_ok=$(( $(metric_sum intransit_tls_reloads_total 'outcome="ok"') - reloads_ok_start ))
reloads_failed=$(( $(metric_sum intransit_tls_reloads_total 'outcome="failed"') - reloads_failed_start ))
p2_outcomes=$(handshake_outcomes)
served_serial=$(openssl s_client -starttls postgres -connect "127.0.0.1:$proxy_port" -tls1_3 \
    -CAfile "$ca" -cert "$client_cert" -key "$client_key" </dev/null 2>/dev/null \
    | openssl x509 -noout -serial 2>/dev/null | cut -d= -f2)
disk_serial=$(openssl x509 -noout -serial -in "$server_chain" | cut -d= -f2)
load_end=$(load_now)

# The rules. Descriptors: the load's own are its connections, and none is
# open when the proxy is sampled, so the end must not exceed the start.
# Memory: what the load needs (its connections, buffers and caches kept
# for reuse) is in place by the end of the first segment; growth after
# that up to the end may be at most 8 MiB.
rss_allowance_kib=8192
(( p2_end_fds <= p2_start_fds )) \
    || fail "phase 2: the proxy holds $p2_end_fds descriptors at the end, $p2_start_fds at the start"
(( p2_end_rss <= p2_first_rss + rss_allowance_kib )) \
    || fail "phase 2: the proxy's RSS grew from $(kib_mib "$p2_first_rss") MiB after segment 1 to $(kib_mib "$p2_end_rss") MiB at the end"
(( reloads_failed == 0 )) || fail "phase 2: $reloads_failed reloads failed"
(( reloads_ok >= reissues )) || fail "phase 2: $reissues certificates reissued, $reloads_ok reloads counted"
[[ -n $served_serial && $served_serial == "$disk_serial" ]] \
    || fail "phase 2: the proxy serves serial ${served_serial:-none}, the newest certificate is $disk_serial"
leak_sensitivity=$(awk -v a="$rss_allowance_kib" -v n="$p2_connections_after_first" 'BEGIN{ if (n > 0) printf "%d", a * 1024 / n; else print "-" }')

# ============================ report ============================
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
verdict="passed"
(( ${#failures[@]} == 0 )) || verdict="FAILED"
cat <<EOF
## intransit soak, PostgreSQL listener: $(date -u +%Y-%m-%dT%H:%MZ), $verdict

Machine: $cpu_model, $(nproc) cores, $(kib_mib "$mem_total_kib") MiB, Linux $(uname -r);
$("$PGBIN/postgres" --version); $(pgbench --version); $(openssl version).
Open-file limit for the proxy and clients: $nofile.
Load average (1, 5, 15 min) at start: $load_start; at end: $load_end
(at start: \`$uptime_start\`).

### Phase 1: $SESSIONS concurrent TLS sessions

Held at once through one postgres listener, each TLS 1.3 with a client
certificate the proxy verified:

- $at_startup stopped after the TLS handshake: nothing sent inside TLS, so
  the proxy waits for the StartupMessage (handshake_timeout 1h) and has no
  database connection for them;
- $LOGGED_IN logged in: StartupMessage, trust, ReadyForQuery, then idle;
  each has its PostgreSQL backend.

| proxy | VmRSS MiB | open descriptors |
|---|---|---|
| fresh, no session | $(kib_mib "$p1_before_rss") | $p1_before_fds |
| after $NEW_CLIENT_PROBES psql probes, before the sessions | $(kib_mib "$p1_base_rss") | $p1_base_fds |
| $at_startup sessions at the StartupMessage | $(kib_mib "$p1_tls_rss") | $p1_tls_fds |
| + $LOGGED_IN logged in ($SESSIONS in all) | $(kib_mib "$p1_open_rss") | $p1_open_fds |
| while all were held, ${#hold_rss[@]} samples over ${HOLD} s (min–max) | $(kib_mib "$hold_rss_min")–$(kib_mib "$hold_rss_max") | $hold_fds_min–$hold_fds_max |
| after closing them all | $(kib_mib "$p1_after_rss") | $p1_after_fds |

Peak RSS (VmHWM) at the end of the hold: $(kib_mib "$p1_open_hwm") MiB.
\`intransit_connections_active\` with them open: $p1_active.
Memory per session (VmRSS growth divided by sessions): at the StartupMessage
$per_startup_kib KiB; logged in $per_ready_kib KiB; all $SESSIONS: $per_all_kib KiB.
Opened in (s, 4 at a time): $(held_field open_secs "$startup_out") at the StartupMessage, $(held_field open_secs "$ready_out") logged in.
Held (s): $(held_field held_secs "$startup_out") and $(held_field held_secs "$ready_out"); still open and idle at release:
$(held_field still_idle "$startup_out") of $at_startup and $(held_field still_idle "$ready_out") of $LOGGED_IN.
Handshake outcomes counted by the proxy in phase 1: $p1_outcomes.

New client, \`psql\` connecting through the proxy and running \`SELECT 1\`
(ms, process start to exit, $NEW_CLIENT_PROBES runs): no session open: $p1_new_idle;
with all $SESSIONS open: $p1_new_held.

PostgreSQL: $pg_backends idle backends for the logged-in sessions take
$(kib_mib $((pg_pss_kib + pg_pte_kib))) MiB (proportional set size $(kib_mib "$pg_pss_kib") MiB + page
tables $(kib_mib "$pg_pte_kib") MiB), $pg_per_backend_kib KiB each. MemAvailable went from
$(kib_mib "$mem_before_kib") to $(kib_mib "$mem_after_kib") MiB while phase 1 opened its sessions (machine-wide: the
backends, the proxy, the two holder processes and whatever else ran).
10,000 logged-in sessions would need 10,000 backends, about
$(awk -v k="$pg_per_backend_kib" 'BEGIN{printf "%.1f", k * 10000 / 1048576}') GiB at that rate, on a machine of $(awk -v k="$mem_total_kib" 'BEGIN{printf "%.1f", k / 1048576}') GiB, and about
$((2 * 10000 + 64)) descriptors in the proxy (two per logged-in session) against a limit
of $nofile here.

### Phase 2: mixed load for $MINUTES min

A fresh proxy process. Each ${SEGMENT}-second segment runs, side by side,
\`pgbench -n -T $SEGMENT -c $PERSISTENT_CLIENTS -j 1\` (persistent connections) and
\`pgbench -n -T $SEGMENT -c $RECONNECT_CLIENTS -j 1 -C\` (a new connection, TLS handshake
and login per transaction), the TPC-B-like script at scale $SCALE, both with
client certificates and \`sslmode=verify-full\`. In the middle of every
segment \`intransit cert renew server --force\` reissues the proxy's
certificate and key (the file watcher reloads them); in segment
$restart_segment PostgreSQL restarts with \`pg_ctl restart -m fast\`. RSS and
descriptors are sampled after each segment's pgbench runs have exited.
pgbench does not reconnect a client whose connection broke: it counts
the client as aborted, and a run whose clients all aborted ends early.

| segment | start | persistent txn | tps | failed | aborted clients | -C txn | tps | failed | aborted clients | proxy RSS MiB | fds | reloads so far | events |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
${rows%$'\n'}

| proxy | VmRSS MiB | open descriptors |
|---|---|---|
| start (fresh, idle) | $(kib_mib "$p2_start_rss") | $p2_start_fds |
| after segment 1 | $(kib_mib "$p2_first_rss") | |
| end (idle) | $(kib_mib "$p2_end_rss") | $p2_end_fds |

Peak RSS (VmHWM): $(kib_mib "$p2_hwm") MiB. Certificates reissued: $reissues;
\`intransit_tls_reloads_total\`: $reloads_ok ok, $reloads_failed failed; at the end the proxy
serves serial $served_serial, the newest is $disk_serial.
Handshake outcomes counted by the proxy in phase 2: $p2_outcomes.
Restart window: segment $restart_segment, PostgreSQL down from $restart_window after the
segment's start.

Rules: no failed transaction and no aborted client outside the restart's
segment; descriptors at the end (no client connected) no more than at the
start; RSS at the end no more than 8 MiB above RSS after segment 1, when
the load's connections, buffers and caches are in place
($p2_connections_after_first connections were made after segment 1, so a leak of
more than ${leak_sensitivity} bytes per connection would exceed it); every reload ok and
the newest certificate served.
EOF
if (( ${#failures[@]} > 0 )); then
    echo
    echo "### Failures"
    echo
    printf -- '- %s\n' "${failures[@]}"
fi
if [[ $KEEP == 1 ]]; then
    echo
    echo "Raw output: $work"
fi
(( ${#failures[@]} == 0 ))
