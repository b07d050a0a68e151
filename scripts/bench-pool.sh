#!/usr/bin/env bash
# Measures the PostgreSQL data path and connection pooling on one
# PostgreSQL server, six targets side by side, as ratios to PostgreSQL's
# own TLS 1.3, and prints a markdown summary (method and figures in
# docs/benchmarks.md, "Pooling"):
#
#   native       PostgreSQL's own TLS 1.3 (client certificate verified,
#                trust), a backend forked per connection;
#   stunnel      stunnel4, `protocol = pgsql`, TLS 1.3 with a verified
#                client certificate, the unix socket behind it;
#   passthrough  intransit without a pool: one backend per client session,
#                over PostgreSQL's unix socket;
#   shared       the same pass-through proxy with `worker_threads = 0`
#                (connections on tokio's shared multi-thread runtime, as
#                before per-thread runtimes), for comparison (SHARED=0
#                leaves it out);
#   pooled       intransit with [listener.pool] mode = "transaction",
#                size = POOL_SIZE, server_auth = "trust" over the unix
#                socket: the proxy completes the client's login itself;
#   pgbouncer    PgBouncer, pool_mode = transaction, default_pool_size =
#                POOL_SIZE, TLS 1.3 to clients with a verified client
#                certificate from the same CA, auth_type = trust, the unix
#                socket behind it.
#
#   1. pgbench -S -c 2 -j JOBS with -C (a new connection per
#      transaction) and on persistent connections, the targets
#      interleaved, REPS times, the order turning by one target each
#      time (scripts/pair-pool.sh compares pooled and pass-through
#      alone, by many pairs of runs);
#   2. connect + SELECT 1 latency, a fresh TLS connection each time,
#      sequential, interleaved, then each target alone; and the TLS
#      handshake alone (connect, SSLRequest, TLS 1.3 with the client
#      certificate), interleaved;
#   3. the proxy's CPU (user and system) per 10,000 transactions, and the
#      CPU of pgbench and PostgreSQL's backends;
#   4. the resident memory of a fresh pooled proxy and a fresh PgBouncer
#      (and, for scale, a fresh pass-through proxy) with IDLE TLS clients
#      logged in;
#   5. pgbench -M prepared -S through each target, with 2 clients and with
#      more clients than the pool size, reported as it ends.
#
# Everything runs on loopback, in a temporary directory that is removed on
# exit (KEEP=1 keeps it, with every log). Needs root (PostgreSQL and
# PgBouncer run as the `postgres` user), PostgreSQL server binaries, psql,
# pgbench and openssl (`.ci/install-deps.sh`), pgbouncer and stunnel4
# (`apt-get install pgbouncer stunnel4`). Not part of the test suite.
#
# Knobs (environment): REPS (5), DURATION seconds per pgbench run (10),
# JOBS pgbench threads (1: one pgbench thread drives both clients, so
# that client, proxy and server share the two cores as in the peers'
# comparisons; 2 was the default before), HANDSHAKES per target (1000),
# SHARED (1),
# SCALE pgbench scale (10), POOL_SIZE server connections per pool (5),
# SESSION_PROBES per target (500), IDLE clients (1000), PREPARED=0 skips
# the -M prepared runs, PREPARED_CLIENTS the pgbench client counts they
# use ("2 2*POOL_SIZE"), PERF=1 records `perf record -g` of the pooled
# proxy during one more -C and one more persistent run and of the
# pass-through proxy during one more persistent run, on the binary
# PERF_INTRANSIT if set (the release build is stripped: `cargo build
# --profile profiling -p intransit` and
# PERF_INTRANSIT=target/profiling/intransit give symbols), SKIP_BUILD=1
# uses the binaries already built, PGBIN, CARGO_TARGET_DIR, INTRANSIT.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=scripts/lib/postgres.sh
source "$repo/scripts/lib/postgres.sh"

REPS=${REPS:-5}
DURATION=${DURATION:-10}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-5}
SESSION_PROBES=${SESSION_PROBES:-500}
IDLE=${IDLE:-1000}
PREPARED=${PREPARED:-1}
PREPARED_CLIENTS=${PREPARED_CLIENTS:-"2 $((POOL_SIZE * 2))"}
JOBS=${JOBS:-1}
HANDSHAKES=${HANDSHAKES:-1000}
SHARED=${SHARED:-1}
PERF=${PERF:-0}
PERF_INTRANSIT=${PERF_INTRANSIT:-}

pg_require
pg_pgbouncer_require
pg_stunnel_require
if [[ $PERF == 1 ]]; then command -v perf >/dev/null || die "perf not found (apt-get install linux-perf)"; fi
pg_build

# IDLE client sockets here, as many in the proxy or PgBouncer, and their
# upstream side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

pg_workdir intransit-bench-pool
pg_certificates
pg_start $((IDLE + 100))
pg_pgbench_init "$SCALE"
pg_proxy_config 60s $((IDLE + 1000)) -
pg_pool_config transaction "$POOL_SIZE" 60s $((IDLE + 1000))
pg_pgbouncer_config transaction "$POOL_SIZE" $((IDLE + 100))
pg_stunnel_config
pg_start_proxy warn
pg_start_pool_proxy warn
pg_start_pgbouncer
pg_start_stunnel
# The pass-through proxy again, its connections on the shared runtime.
shared_pid=""
on_cleanup() { pg_stop_pid shared_pid; }
if [[ $SHARED == 1 ]]; then
    shared_port=$(free_port)
    {
        echo "worker_threads = 0"
        echo
        pg_listener_toml shared "$shared_port" 60s $((IDLE + 1000))
    } >"$work/shared.toml"
    pg_run_intransit shared_pid "$work/shared.toml" "$shared_port" "$work/shared-warn.log" warn
fi

sides=(native stunnel pgbouncer passthrough)
if [[ $SHARED == 1 ]]; then sides+=(shared); fi
sides+=(pooled)
declare -A port=([native]=$pg_port [stunnel]=$stunnel_port [passthrough]=$proxy_port
    [shared]=${shared_port:-} [pooled]=$pool_port [pgbouncer]=$pgbouncer_port)
declare -A title=([native]="native TLS" [stunnel]="stunnel" [passthrough]="intransit pass-through"
    [shared]="intransit pass-through, worker_threads = 0" [pooled]="intransit pooled" [pgbouncer]="PgBouncer")
# The process between the client and PostgreSQL, or - for none.
watched_pid() { # side
    case $1 in
        stunnel) echo "$stunnel_pid" ;;
        passthrough) echo "$proxy_pid" ;;
        shared) echo "$shared_pid" ;;
        pooled) echo "$pool_pid" ;;
        pgbouncer) echo "$pgbouncer_pid" ;;
        *) echo - ;;
    esac
}

# What libpq negotiates with each target (openssl s_client uses the same
# OpenSSL defaults as libpq).
negotiated() { # side
    openssl s_client -starttls postgres -connect "127.0.0.1:${port[$1]}" -tls1_3 \
        -CAfile "$ca" -cert "$client_cert" -key "$client_key" -verify_return_error -brief </dev/null 2>&1 \
        | awk -F': ' '/^(Protocol version|Ciphersuite|Server Temp Key|Negotiated TLS1.3 group)/{printf "%s%s", sep, $2; sep=", "} END{print ""}'
}
# Every target requires and verifies the client certificate: psql
# without one must be turned away.
declare -A tls
for side in "${sides[@]}"; do
    psql "$(conninfo "${port[$side]}")" -qAtc "SELECT 1" >/dev/null || die "psql through $side failed"
    if psql "host=127.0.0.1 port=${port[$side]} user=bench dbname=bench sslmode=verify-full sslrootcert=$ca sslcert=$work/none.crt sslkey=$work/none.key gssencmode=disable" \
        -qAtc "SELECT 1" >/dev/null 2>&1; then
        die "$side let a client without a certificate in"
    fi
    tls[$side]=$(negotiated "$side")
done

clk_tck=$(getconf CLK_TCK)
# "user system" clock ticks of a process.
proc_ticks() { # pid
    local out
    out=$("$bench" proc "$1")
    echo "$(field user_ticks <<<"$out") $(field system_ticks <<<"$out")"
}
ms() { echo $(( $1 * 1000 / clk_tck )); }

# One pgbench run; prints "tps transactions proxy_user_ms proxy_system_ms
# postgres_cpu_ms pgbench_cpu_ms" (the proxy's are - for native).
pgbench_run() { # side mode(persistent|reconnect) label
    local side=$1 out="$work/pgbench-$3.log" flags=(-S) pid u0=0 s0=0 u1 s1 user_ms=- system_ms=- pg_before pg_ms client_ms
    if [[ $2 == reconnect ]]; then flags+=(-C); fi
    pid=$(watched_pid "$side")
    if [[ $pid != - ]]; then read -r u0 s0 <<<"$(proc_ticks "$pid")"; fi
    pg_before=$(pg_server_ticks)
    local TIMEFORMAT='%3U %3S'
    { time pgbench -n "${flags[@]}" -c 2 -j "$JOBS" -T "$DURATION" "$(conninfo "${port[$side]}")" >"$out" 2>&1; } 2>"$out.cpu" \
        || die "pgbench through $side failed (see $out)"
    if [[ $pid != - ]]; then
        read -r u1 s1 <<<"$(proc_ticks "$pid")"
        user_ms=$(ms $((u1 - u0)))
        system_ms=$(ms $((s1 - s0)))
    fi
    # The postmaster reaps the backends right after pgbench disconnects.
    sleep 0.5
    pg_ms=$(ms $(($(pg_server_ticks) - pg_before)))
    client_ms=$(awk '{printf "%d", ($1 + $2) * 1000}' "$out.cpu")
    local tps txns
    tps=$(awk '/^tps = /{print $3; exit}' "$out")
    txns=$(awk -F': ' '/number of transactions actually processed/{split($2, a, "/"); print a[1]; exit}' "$out")
    echo "$tps $txns $user_ms $system_ms $pg_ms $client_ms"
}
per10k() { # ms transactions
    awk -v c="$1" -v n="$2" 'BEGIN{ if (c == "-") print "-"; else printf "%.1f", c * 10000 / n }'
}
sum_ms() { # a b
    awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "-") print "-"; else print a + b }'
}

load_start=$(load_now)

# --- 1 and 3: pgbench, the four targets interleaved
declare -A tps proxy10k user10k sys10k pg10k client10k
log "pgbench -S: $REPS repetitions x 2 modes x ${#sides[@]} targets x ${DURATION}s"
for rep in $(seq "$REPS"); do
    # The order turns by one target each repetition, so that no target
    # always runs first, or always right after the same one.
    turn=$(((rep - 1) % ${#sides[@]}))
    order=("${sides[@]:turn}" "${sides[@]:0:turn}")
    for mode in reconnect persistent; do
        for side in "${order[@]}"; do
            result=$(pgbench_run "$side" "$mode" "$side-$mode-$rep")
            read -r t n pu ps p b <<<"$result"
            key=$side-$mode
            tps[$key]+="$t "
            if [[ $pu != - ]]; then
                proxy10k[$key]+="$(per10k "$(sum_ms "$pu" "$ps")" "$n") "
                user10k[$key]+="$(per10k "$pu" "$n") "
                sys10k[$key]+="$(per10k "$ps" "$n") "
            fi
            pg10k[$key]+="$(per10k "$p" "$n") "
            client10k[$key]+="$(per10k "$b" "$n") "
            log "rep $rep $side $mode: $t tps, $n transactions, CPU ms: proxy user $pu system $ps, postgres $p, pgbench $b"
        done
    done
done

# $1 is a space-separated list of numbers: word splitting is intended.
# shellcheck disable=SC2086
spread() { "$bench" spread $1; }
median_of() { if [[ -z $1 ]]; then echo -; else spread "$1" | field median; fi; }
# "median [min–max]" of a list.
spread_text() {
    local s
    [[ -n $1 ]] || { echo -; return; }
    s=$(spread "$1")
    echo "$(field median <<<"$s") [$(field min <<<"$s")–$(field max <<<"$s")]"
}
ratio() { # a b: a / b with two decimals
    awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'
}

# --- optional: profiles of the proxies, each during one more run
# Records the process of a side during one pgbench run and writes its
# self time by binary (a stripped release build shows its own code as one
# block), then by symbol, to $work/perf-LABEL.txt.
perf_profile() { # side mode label
    local pid perf_pid data=$work/perf-$3.data
    pid=$(watched_pid "$1")
    perf record -e cpu-clock -g -p "$pid" -o "$data" -- sleep "$DURATION" >"$work/perf-$3.log" 2>&1 &
    perf_pid=$!
    pgbench_run "$1" "$2" "$3-perf" >/dev/null
    wait "$perf_pid" || true
    {
        perf report -i "$data" --no-children --sort dso --stdio 2>/dev/null \
            | grep -E '^ +[0-9.]+%' | head -n 8
        echo
        perf report -i "$data" --no-children --sort dso,sym --stdio --percent-limit 0.5 \
            2>/dev/null | grep -E '^ +[0-9.]+%' | head -n 40
    } >"$work/perf-$3.txt" || true
}
perf_runs=(
    "pooled reconnect pooled-C"
    "pooled persistent pooled-persistent"
    "passthrough persistent passthrough-persistent"
)
if [[ $PERF == 1 ]]; then
    log "perf record -g of the proxies during ${#perf_runs[@]} more pgbench runs"
    if [[ -n $PERF_INTRANSIT ]]; then
        intransit=$PERF_INTRANSIT pg_start_proxy warn
        intransit=$PERF_INTRANSIT pg_start_pool_proxy warn
    fi
    for run in "${perf_runs[@]}"; do
        # "side mode label": word splitting is intended.
        # shellcheck disable=SC2086
        perf_profile $run
    done
    if [[ -n $PERF_INTRANSIT ]]; then
        pg_start_proxy warn
        pg_start_pool_proxy warn
    fi
fi

# --- 2: connect + SELECT 1, a fresh TLS connection each, interleaved
log "connect + SELECT 1 latency: $SESSION_PROBES per target"
tls_args=(--ca "$ca" --cert "$client_cert" --key "$client_key" --server-name 127.0.0.1)
targets=()
for side in "${sides[@]}"; do targets+=(--target "$side=127.0.0.1:${port[$side]}"); done
latency=$("$bench" latency "${tls_args[@]}" "${targets[@]}" --count "$SESSION_PROBES" --warmup 20 \
    --session --query "SELECT 1")
# The same probe one target after the other: what each target's tail is
# without the others' work (a backend exiting after a native or
# pass-through probe) landing on it.
log "connect + SELECT 1 latency, each target alone: $SESSION_PROBES per target"
latency_alone=""
for side in "${sides[@]}"; do
    latency_alone+=$("$bench" latency "${tls_args[@]}" --target "$side=127.0.0.1:${port[$side]}" \
        --count "$SESSION_PROBES" --warmup 20 --session --query "SELECT 1")$'\n'
done

# The TLS handshake alone (no login), interleaved.
log "TLS handshake latency: $HANDSHAKES per target"
handshakes=$("$bench" latency "${tls_args[@]}" "${targets[@]}" --count "$HANDSHAKES" --warmup 20)

# --- 5: prepared statements in transaction mode: with 2 clients, as the
# other runs, and with more clients than the pool has server connections.
prepared_rows=""
if [[ $PREPARED == 1 ]]; then
    for clients in $PREPARED_CLIENTS; do
        for side in "${sides[@]}"; do
            log "pgbench -M prepared -S -c $clients through $side"
            out=$work/pgbench-prepared-$side-$clients.log
            rc=0
            pgbench -n -M prepared -S -c "$clients" -j "$JOBS" -T "$DURATION" "$(conninfo "${port[$side]}")" >"$out" 2>&1 || rc=$?
            t=$(awk '/^tps = /{printf "%.1f", $3; exit}' "$out")
            n=$(awk -F': ' '/number of transactions actually processed/{print $2; exit}' "$out")
            f=$(awk -F': ' '/number of failed transactions/{print $2; exit}' "$out")
            prepared_rows+="| ${title[$side]} | $clients | $rc | ${t:--} | ${n:--} | ${f:--} |"$'\n'
            # Each distinct error once, without the client number.
            grep -E 'error|ERROR|FATAL' "$out" | sed -E 's/client [0-9]+/client N/' | sort -u | head -n 4 \
                >"$out.errors" || true
        done
    done
fi

# --- 4: memory with IDLE pooled clients logged in, each on a fresh process
bench_backends() {
    psql "$(conninfo plain)" -qAtc "SELECT count(*) FROM pg_stat_activity
        WHERE usename = 'bench' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
}
declare -A idle_out idle_backends
idle_run() { # side pid
    local out=$work/idle-$1.out release=$work/release-$1 holder
    "$bench" idle "${tls_args[@]}" --target "127.0.0.1:${port[$1]}" --watch-pid "$2" --count "$IDLE" \
        --hold-until-file "$release" --hold-max-secs 600 >"$out" 2>"$work/idle-$1.err" &
    holder=$!
    for _ in $(seq 6000); do
        [[ -s $out ]] && break
        kill -0 "$holder" 2>/dev/null || die "holding $IDLE clients through $1 failed: $(cat "$work/idle-$1.err")"
        sleep 0.1
    done
    idle_backends[$1]=$(bench_backends)
    touch "$release"
    wait "$holder" || die "the idle clients through $1 ended badly: $(cat "$work/idle-$1.err")"
    idle_out[$1]=$(tr '\n' ' ' <"$out")
}
# One proxy at a time, so the backends counted are its own; pass-through
# first, for scale (one backend per client).
pg_stop_pool_proxy
pg_stop_pgbouncer
pg_stop_pid shared_pid
pg_stop_pid stunnel_pid
log "memory: $IDLE idle clients through a fresh pass-through proxy"
pg_start_proxy warn
sleep 1
idle_run passthrough "$proxy_pid"
log "memory: $IDLE idle clients through a fresh pooled proxy"
pg_stop_proxy
pg_start_pool_proxy warn
sleep 1
idle_run pooled "$pool_pid"
log "memory: $IDLE idle clients through a fresh PgBouncer"
pg_stop_pool_proxy
pg_start_pgbouncer
sleep 1
idle_run pgbouncer "$pgbouncer_pid"
load_end=$(load_now)

# --- report
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null) ]]; then commit+=" (with uncommitted changes)"; fi
tps_row() { # label mode
    local cells="" side m n
    n=$(median_of "${tps[native-$2]}")
    for side in "${sides[@]}"; do
        m=$(median_of "${tps[$side-$2]}")
        cells+=" $(spread_text "${tps[$side-$2]}") (**$(ratio "$m" "$n")x**) |"
    done
    echo "| $1 |$cells"
}
cpu_row() { # label mode side
    local p=- u=- s=- b c total
    b=$(median_of "${client10k[$3-$2]}")
    c=$(median_of "${pg10k[$3-$2]}")
    if [[ -n ${proxy10k[$3-$2]:-} ]]; then
        p=$(median_of "${proxy10k[$3-$2]}")
        u=$(median_of "${user10k[$3-$2]}")
        s=$(median_of "${sys10k[$3-$2]}")
    fi
    total=$(awk -v a="$b" -v b="$c" -v c="$p" 'BEGIN{printf "%.1f", a + b + (c == "-" ? 0 : c)}')
    echo "| $1 | ${title[$3]} | $b | $c | $p | $u | $s | $total |"
}
lat() { # side field [output]: of the interleaved pass unless given another
    grep "^target=$1 " <<<"${3:-$latency}" | field "$2"
}
lat_row() { # side [output]
    local out=${2:-$latency} n50 n99
    n50=$(lat native p50_us "$out"); n99=$(lat native p99_us "$out")
    echo "| ${title[$1]} | $(lat "$1" p50_us "$out") | $(lat "$1" p90_us "$out") | $(lat "$1" p99_us "$out") | $(lat "$1" min_us "$out") | $(lat "$1" max_us "$out") | $(ratio "$(lat "$1" p50_us "$out")" "$n50")x | $(ratio "$(lat "$1" p99_us "$out")" "$n99")x |"
}
kib_mb() { awk -v k="$1" 'BEGIN{printf "%.1f", k / 1024}'; }
idle_field() { field "$2" <<<"${idle_out[$1]}"; }
mem_row() { # label field
    echo "| $1 | $(kib_mb "$(idle_field pooled "$2")") | $(kib_mb "$(idle_field pgbouncer "$2")") | $(kib_mb "$(idle_field passthrough "$2")") |"
}
mem_text_row() { # label field
    echo "| $1 | $(idle_field pooled "$2") | $(idle_field pgbouncer "$2") | $(idle_field passthrough "$2") |"
}
verdict() { # measured op limit: "met" or "missed"
    awk -v m="$1" -v op="$2" -v l="$3" 'BEGIN{
        ok = (op == ">=") ? (m >= l) : (m <= l)
        print (m == "-" ? "not measured" : (ok ? "met" : "**missed**")) }'
}

m_native_c=$(median_of "${tps[native-reconnect]}")
m_pooled_c=$(median_of "${tps[pooled-reconnect]}")
m_pass_p=$(median_of "${tps[passthrough-persistent]}")
m_pooled_p=$(median_of "${tps[pooled-persistent]}")
r_c=$(ratio "$m_pooled_c" "$m_native_c")
r_p50=$(ratio "$(lat pooled p50_us)" "$(lat native p50_us)")
r_p99=$(ratio "$(lat pooled p99_us)" "$(lat native p99_us)")
r_pp=$(ratio "$m_pooled_p" "$m_pass_p")
m_native_p=$(median_of "${tps[native-persistent]}")
r_pass_p=$(ratio "$m_pass_p" "$m_native_p")
r_pooled_p=$(ratio "$m_pooled_p" "$m_native_p")
r_hs=$(ratio "$(lat pooled p50_us "$handshakes")" "$(lat pgbouncer p50_us "$handshakes")")
r_hs_pass=$(ratio "$(lat passthrough p50_us "$handshakes")" "$(lat pgbouncer p50_us "$handshakes")")

cat <<EOF
## Pooling: intransit pooled vs pass-through vs PgBouncer vs PostgreSQL TLS 1.3: $(date -u +%Y-%m-%dT%H:%MZ)

Machine: $cpu_model, $(nproc) cores, Linux $(uname -r); $("$PGBIN/postgres" --version);
$(pgbench --version); $(pgbouncer --version | head -n 1) ($(pgbouncer --version | awk '/^tls:/{sub(/^tls: /, ""); print}'));
$(openssl version); $(rustc --version 2>/dev/null || echo "rustc unknown"); intransit $commit.
Load average (1, 5, 15 min) at start: $load_start; at end: $load_end.
Pool size $POOL_SIZE server connections for (bench, bench) in both poolers, transaction mode.

TLS negotiated by libpq's OpenSSL: $(for side in "${sides[@]}"; do printf '%s: %s; ' "${title[$side]}" "${tls[$side]}"; done)

### pgbench -S -c 2 -j $JOBS -T $DURATION, $REPS repetitions interleaved (tps, median [min–max], ratio of medians to native)

| run |$(for side in "${sides[@]}"; do printf ' %s |' "${title[$side]}"; done)
|---|$(for side in "${sides[@]}"; do printf -- '---|'; done)
$(tps_row "-C (new connection per transaction)" reconnect)
$(tps_row "persistent" persistent)

### Connect + SELECT 1, a fresh TLS 1.3 connection each, sequential, interleaved ($SESSION_PROBES per target, µs)

| target | p50 | p90 | p99 | min | max | p50 / native | p99 / native |
|---|---|---|---|---|---|---|---|
$(for side in "${sides[@]}"; do lat_row "$side"; done)

The same probe, each target alone (one target after the other, $SESSION_PROBES each):

| target | p50 | p90 | p99 | min | max | p50 / native | p99 / native |
|---|---|---|---|---|---|---|---|
$(for side in "${sides[@]}"; do lat_row "$side" "$latency_alone"; done)

### TLS handshake alone: connect, SSLRequest, TLS 1.3 with the client certificate, sequential, interleaved ($HANDSHAKES per target, µs)

| target | p50 | p90 | p99 | min | max | p50 / native | p99 / native |
|---|---|---|---|---|---|---|---|
$(for side in "${sides[@]}"; do lat_row "$side" "$handshakes"; done)

### CPU per 10,000 transactions by process (median of $REPS runs, ms)

"proxy" is the process between client and PostgreSQL (intransit, stunnel or PgBouncer), split into user and system time.

| run | target | pgbench (client) | PostgreSQL backends | proxy | proxy user | proxy system | total |
|---|---|---|---|---|---|---|---|
$(for side in "${sides[@]}"; do cpu_row "-C" reconnect "$side"; done)
$(for side in "${sides[@]}"; do cpu_row persistent persistent "$side"; done)

### Memory with $IDLE idle TLS clients logged in (fresh process each, one at a time)

| | ${title[pooled]} | ${title[pgbouncer]} | ${title[passthrough]} (for scale) |
|---|---|---|---|
$(mem_row "VmRSS MiB, no client" baseline_rss_kib)
$(mem_row "VmRSS MiB, clients open" open_rss_kib)
$(mem_row "VmHWM MiB (peak RSS), clients open" open_hwm_kib)
$(mem_row "VmHWM MiB (peak RSS), after closing" closed_hwm_kib)
$(mem_text_row "per client KiB (VmRSS open minus no client, divided by clients)" per_connection_kib)
$(mem_text_row "clients open" sessions)
$(mem_text_row "seconds to open them, 4 at a time" open_secs)
$(mem_text_row "still idle at release" still_idle)
| PostgreSQL backends of the user while they were open | ${idle_backends[pooled]} | ${idle_backends[pgbouncer]} | ${idle_backends[passthrough]} |
EOF

if [[ $PREPARED == 1 ]]; then
    cat <<EOF

### pgbench -M prepared -S -j $JOBS -T $DURATION (pools in transaction mode, $POOL_SIZE server connections)

| target | clients | pgbench exit status | tps | transactions processed | failed transactions |
|---|---|---|---|---|---|
$prepared_rows
EOF
    for clients in $PREPARED_CLIENTS; do
        for side in "${sides[@]}"; do
            if [[ -s $work/pgbench-prepared-$side-$clients.log.errors ]]; then
                echo "${title[$side]}, $clients clients, pgbench's errors:"
                echo
                echo '```'
                cat "$work/pgbench-prepared-$side-$clients.log.errors"
                echo '```'
                echo
            fi
        done
    done
fi

cat <<EOF

### Targets

| target | measured | |
|---|---|---|
| pooled \`-C\` tps ≥ 3.5x native | ${r_c}x | $(verdict "$r_c" ">=" 3.5) |
| pooled connect + SELECT 1 p50 ≤ 0.3x native | ${r_p50}x | $(verdict "$r_p50" "<=" 0.3) |
| pooled connect + SELECT 1 p99 ≤ 0.3x native | ${r_p99}x | $(verdict "$r_p99" "<=" 0.3) |
| pooled persistent tps ≥ pass-through | ${r_pp}x of pass-through | $(verdict "$r_pp" ">=" 1) |
| pass-through persistent tps ≥ 0.75x native | ${r_pass_p}x | $(verdict "$r_pass_p" ">=" 0.75) |
| pooled persistent tps ≥ 0.75x native | ${r_pooled_p}x | $(verdict "$r_pooled_p" ">=" 0.75) |
| TLS handshake p50 ≤ 0.6x PgBouncer's | pooled ${r_hs}x, pass-through ${r_hs_pass}x | $(verdict "$r_hs" "<=" 0.6) |
EOF

if [[ $PERF == 1 ]]; then
    for run in "${perf_runs[@]}"; do
        read -r side mode label <<<"$run"
        if [[ $mode == reconnect ]]; then mode="-S -C"; else mode="-S, persistent"; fi
        cat <<EOF

### perf record -e cpu-clock -g -p PID of ${title[$side]} during one more pgbench $mode run (self time: by binary, then symbols ≥ 0.5%)

\`\`\`
$(cat "$work/perf-$label.txt")
\`\`\`
EOF
    done
fi
if [[ $KEEP == 1 ]]; then
    echo
    echo "Raw output: $work"
fi
