#!/usr/bin/env bash
# Measures intransit against PostgreSQL's own TLS 1.3, on one PostgreSQL
# server, and prints a markdown summary (method and figures are explained
# in docs/benchmarks.md):
#
#   1. pgbench -S (2 clients, -j 2) through the proxy and directly, on
#      persistent connections and with -C, interleaved, REPS times;
#   2. handshake latency (connect + SSLRequest + TLS 1.3 with a client
#      certificate) and connect-to-ReadyForQuery latency, interleaved;
#   3. the proxy's CPU time per 10,000 transactions;
#   4. the proxy's memory with IDLE idle TLS sessions open.
#
# Everything runs on loopback, in a temporary directory that is removed on
# exit (KEEP=1 keeps it, with every log). Needs root (PostgreSQL runs as the
# `postgres` user), PostgreSQL server binaries, psql, pgbench and openssl
# (`.ci/install-deps.sh` installs them). Not part of the test suite.
#
# Knobs (environment): REPS (5), DURATION seconds per pgbench run (10),
# SCALE pgbench scale (10), HANDSHAKES per target (2000), SESSION_PROBES per
# target (500), IDLE sessions (1000), CONTROL_REPS for the P-256 control
# (3; 0 skips it), INFO_RUN=0 skips the info-log run, REFERENCE=0 skips the
# no-TLS reference runs, SKIP_BUILD=1 uses the binaries already built,
# PGBIN, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=scripts/lib/postgres.sh
source "$repo/scripts/lib/postgres.sh"

REPS=${REPS:-5}
DURATION=${DURATION:-10}
SCALE=${SCALE:-10}
HANDSHAKES=${HANDSHAKES:-2000}
SESSION_PROBES=${SESSION_PROBES:-500}
IDLE=${IDLE:-1000}
CONTROL_REPS=${CONTROL_REPS:-3}
INFO_RUN=${INFO_RUN:-1}
REFERENCE=${REFERENCE:-1}

pg_require
pg_build

# 1,000 client sockets here plus 2,000 in the proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

pg_workdir intransit-bench
pg_certificates
# One server for both paths: native clients use TLS 1.3 on TCP, the proxy
# its unix socket.
pg_start 1100
pg_pgbench_init "$SCALE"
pg_proxy_config 60s 10000 -
pg_start_proxy warn

declare -A port=([native]=$pg_port [proxy]=$proxy_port [plain]=plain)

# What libpq negotiates on each path (openssl s_client uses the same
# OpenSSL defaults as libpq).
negotiated() { # side
    openssl s_client -starttls postgres -connect "127.0.0.1:${port[$1]}" -tls1_3 \
        -CAfile "$ca" -cert "$client_cert" -key "$client_key" -verify_return_error -brief </dev/null 2>&1 \
        | awk -F': ' '/^(Protocol version|Ciphersuite|Server Temp Key|Negotiated TLS1.3 group)/{printf "%s%s", sep, $2; sep=", "} END{print ""}'
}
for side in native proxy; do
    psql "$(conninfo "${port[$side]}")" -qAtc "SELECT 1" >/dev/null || die "psql through $side failed"
done
tls_native=$(negotiated native)
tls_proxy=$(negotiated proxy)

# CPU clock ticks: of the proxy itself, and of every PostgreSQL backend that
# has exited (the postmaster's waited-for children).
proxy_ticks() { "$bench" proc "$proxy_pid" | field cpu_ticks; }
pg_ticks() { "$bench" proc "$(head -n 1 "$pg/data/postmaster.pid")" | field children_ticks; }
clk_tck=$(getconf CLK_TCK)

# One pgbench run; prints "tps transactions proxy_cpu_ms postgres_cpu_ms
# pgbench_cpu_ms" (proxy_cpu_ms is - when the proxy is not on the path).
pgbench_run() { # side mode(persistent|reconnect) label
    local side=$1 mode=$2 out="$work/pgbench-$3.log" flags=() proxy_before=0 proxy_ms=- pg_before pg_ms client_ms
    [[ $mode == reconnect ]] && flags=(-C)
    [[ $side == proxy ]] && proxy_before=$(proxy_ticks)
    pg_before=$(pg_ticks)
    local TIMEFORMAT='%3U %3S'
    { time pgbench -n -S -c 2 -j 2 -T "$DURATION" "${flags[@]}" "$(conninfo "${port[$side]}")" >"$out" 2>&1; } 2>"$out.cpu" \
        || die "pgbench failed (see $out)"
    [[ $side == proxy ]] && proxy_ms=$(( ($(proxy_ticks) - proxy_before) * 1000 / clk_tck ))
    # The postmaster reaps the backends right after pgbench disconnects.
    sleep 0.5
    pg_ms=$(( ($(pg_ticks) - pg_before) * 1000 / clk_tck ))
    client_ms=$(awk '{printf "%d", ($1 + $2) * 1000}' "$out.cpu")
    local tps txns
    tps=$(awk '/^tps = /{print $3; exit}' "$out")
    txns=$(awk -F': ' '/number of transactions actually processed/{split($2, a, "/"); print a[1]; exit}' "$out")
    echo "$tps $txns $proxy_ms $pg_ms $client_ms"
}
per10k() { # ms transactions
    awk -v c="$1" -v n="$2" 'BEGIN{ if (c == "-") print "-"; else printf "%.1f", c * 10000 / n }'
}

load_start=$(load_now)
top -bn1 | head -n 15 >"$work/top-start.txt"

# --- 1 and 3: pgbench, interleaved A B A B
declare -A tps cpu10k pgcpu10k clientcpu10k
log "pgbench -S: $REPS repetitions x 4 runs x ${DURATION}s"
for rep in $(seq "$REPS"); do
    for mode in persistent reconnect; do
        for side in native proxy; do
            result=$(pgbench_run "$side" "$mode" "$side-$mode-$rep")
            read -r t n c p b <<<"$result"
            tps[$side-$mode]+="$t "
            [[ $side == proxy ]] && cpu10k[$mode]+="$(per10k "$c" "$n") "
            pgcpu10k[$side-$mode]+="$(per10k "$p" "$n") "
            clientcpu10k[$side-$mode]+="$(per10k "$b" "$n") "
            log "rep $rep $side $mode: $t tps, $n transactions, CPU ms: proxy $c, postgres $p, pgbench $b"
        done
    done
done

# $1 is a space-separated list of numbers: word splitting is intended.
# shellcheck disable=SC2086
spread() { "$bench" spread $1; }
median_of() { spread "$1" | field median; }
# "median [min–max]" of a list.
spread_text() {
    local s
    s=$(spread "$1")
    echo "$(field median <<<"$s") [$(field min <<<"$s")–$(field max <<<"$s")]"
}

# --- reference: no TLS at all, pgbench on PostgreSQL's unix socket (what
# the proxy's upstream leg sees); an upper bound for any proxy.
reference_rows=""
reference_cpu_rows=""
if [[ $REFERENCE == 1 ]]; then
    log "reference: plain unix socket, no TLS"
    result=$(pgbench_run plain persistent plain-persistent)
    read -r rp rpn _ rpp rpb <<<"$result"
    result=$(pgbench_run plain reconnect plain-reconnect)
    read -r rc rcn _ rcp rcb <<<"$result"
    reference_rows="| reference: persistent, unix socket, no TLS (one run) | $rp | | | |
| reference: -C, unix socket, no TLS (one run) | $rc | | | |"
    reference_cpu_rows="| persistent | reference: unix, no TLS | $(per10k "$rpb" "$rpn") | $(per10k "$rpp" "$rpn") | - | |
| -C | reference: unix, no TLS | $(per10k "$rcb" "$rcn") | $(per10k "$rcp" "$rcn") | - | |"
fi

# --- info-level logging cost on -C
info_line=""
if [[ $INFO_RUN == 1 ]]; then
    log "pgbench -C with the proxy at the default info log level"
    pg_start_proxy info
    result=$(pgbench_run native reconnect native-reconnect-info)
    read -r n_tps _ <<<"$result"
    result=$(pgbench_run proxy reconnect proxy-reconnect-info)
    read -r p_tps p_n p_c _ _ <<<"$result"
    info_cpu=$(per10k "$p_c" "$p_n")
    info_line="| -C, proxy at --log-level info (one run) | $n_tps | $p_tps | $(awk -v a="$p_tps" -v b="$n_tps" 'BEGIN{printf "%.2f", a / b}') | $info_cpu |"
    pg_start_proxy warn
fi

# --- control: both paths on P-256 (no HelloRetryRequest on the native side)
control_rows=""
control_tls_line=""
if (( CONTROL_REPS > 0 )); then
    log "control: -C with the client limited to P-256, $CONTROL_REPS repetitions"
    cat >"$work/openssl-p256.cnf" <<'EOF'
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Groups = P-256
EOF
    export OPENSSL_CONF=$work/openssl-p256.cnf
    control_tls_line="With the client limited to P-256 (control rows): native: $(negotiated native); proxy: $(negotiated proxy)."
    declare -A ctps
    for rep in $(seq "$CONTROL_REPS"); do
        for side in native proxy; do
            result=$(pgbench_run "$side" reconnect "$side-reconnect-p256-$rep")
            read -r t _ <<<"$result"
            ctps[$side]+="$t "
            log "control rep $rep $side: $t tps"
        done
    done
    unset OPENSSL_CONF
    cn=$(median_of "${ctps[native]}")
    cp=$(median_of "${ctps[proxy]}")
    control_rows="| -C, client offers P-256 only | $(spread_text "${ctps[native]}") | $(spread_text "${ctps[proxy]}") | $(awk -v a="$cp" -v b="$cn" 'BEGIN{printf "%.2f", a / b}') | |"
fi

# --- 2: handshake and connect-to-ready latency, interleaved
log "handshake latency: $HANDSHAKES per target, libpq's groups"
tls_args=(--ca "$ca" --cert "$client_cert" --key "$client_key" --server-name 127.0.0.1)
targets=(--target "native=127.0.0.1:$pg_port" --target "proxy=127.0.0.1:$proxy_port")
hs_default=$("$bench" latency "${tls_args[@]}" "${targets[@]}" --count "$HANDSHAKES")
log "handshake latency: $HANDSHAKES per target, P-256 only"
hs_p256=$("$bench" latency "${tls_args[@]}" --groups secp256r1 "${targets[@]}" --count "$HANDSHAKES")
log "connect-to-ReadyForQuery latency: $SESSION_PROBES per target"
hs_session=$("$bench" latency "${tls_args[@]}" "${targets[@]}" --count "$SESSION_PROBES" --warmup 20 --session)

# --- 4: memory with IDLE idle sessions, on a fresh proxy process
log "memory: $IDLE idle sessions through a fresh proxy"
pg_start_proxy warn
sleep 1
idle=$("$bench" idle "${tls_args[@]}" --target "127.0.0.1:$proxy_port" --watch-pid "$proxy_pid" --count "$IDLE")
pg_stop_proxy
load_end=$(load_now)

# --- report
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
row() { # label mode
    local n=${tps[native-$2]} p=${tps[proxy-$2]} mn mp
    mn=$(median_of "$n"); mp=$(median_of "$p")
    echo "| $1 | $(spread_text "$n") | $(spread_text "$p") | $(awk -v a="$mp" -v b="$mn" 'BEGIN{printf "%.2f", a / b}') | $(spread_text "${cpu10k[$2]}") |"
}
cpu_row() { # mode side
    local b p c="-" label=$1
    [[ $1 == reconnect ]] && label="-C"
    b=$(median_of "${clientcpu10k[$2-$1]}")
    p=$(median_of "${pgcpu10k[$2-$1]}")
    [[ $2 == proxy ]] && c=$(median_of "${cpu10k[$1]}")
    echo "| $label | $2 | $b | $p | $c | $(awk -v a="$b" -v b="$p" -v c="$c" 'BEGIN{printf "%.1f", a + b + (c == "-" ? 0 : c)}') |"
}
lat_row() { # label lines target
    local line
    line=$(grep "^target=$3 " <<<"$2")
    echo "| $1 | $3 | $(field p50_us <<<"$line") | $(field p90_us <<<"$line") | $(field p99_us <<<"$line") | $(field min_us <<<"$line") | $(field max_us <<<"$line") |"
}
kib_mb() { awk -v k="$1" 'BEGIN{printf "%.1f", k / 1024}'; }

cat <<EOF
## intransit vs PostgreSQL TLS 1.3: $(date -u +%Y-%m-%dT%H:%MZ)

Machine: $cpu_model, $(nproc) cores, Linux $(uname -r); $("$PGBIN/postgres" --version);
$(openssl version); $(rustc --version 2>/dev/null || echo "rustc unknown").
Load average (1, 5, 15 min) at start: $load_start; at end: $load_end.

TLS negotiated by libpq's OpenSSL: native: $tls_native; proxy: $tls_proxy.
$control_tls_line

### pgbench -S -c 2 -j 2 -T $DURATION, $REPS repetitions interleaved (median [min–max])

| run | native TLS tps | intransit tps | ratio | proxy CPU ms / 10k txn |
|---|---|---|---|---|
$(row "persistent" persistent)
$(row "-C (new connection per transaction)" reconnect)
$info_line
$control_rows
$reference_rows

### CPU per 10,000 transactions by process (median of $REPS runs, ms)

| run | path | pgbench (client) | PostgreSQL backends | proxy | total |
|---|---|---|---|---|---|
$(cpu_row persistent native)
$(cpu_row persistent proxy)
$(cpu_row reconnect native)
$(cpu_row reconnect proxy)
$reference_cpu_rows

### Latency, sequential, interleaved per probe (µs)

| probe | target | p50 | p90 | p99 | min | max |
|---|---|---|---|---|---|---|
$(lat_row "handshake, groups x25519,P-256 ($HANDSHAKES)" "$hs_default" native)
$(lat_row "handshake, groups x25519,P-256 ($HANDSHAKES)" "$hs_default" proxy)
$(lat_row "handshake, P-256 only ($HANDSHAKES)" "$hs_p256" native)
$(lat_row "handshake, P-256 only ($HANDSHAKES)" "$hs_p256" proxy)
$(lat_row "connect to ReadyForQuery ($SESSION_PROBES)" "$hs_session" native)
$(lat_row "connect to ReadyForQuery ($SESSION_PROBES)" "$hs_session" proxy)

### Proxy memory with $IDLE idle TLS sessions (fresh process)

| | VmRSS MiB | VmHWM MiB |
|---|---|---|
| 0 connections | $(kib_mb "$(field baseline_rss_kib <<<"$idle")") | $(kib_mb "$(field baseline_hwm_kib <<<"$idle")") |
| $(field sessions <<<"$idle") open (opened in $(field open_secs <<<"$idle") s) | $(kib_mb "$(field open_rss_kib <<<"$idle")") | $(kib_mb "$(field open_hwm_kib <<<"$idle")") |
| after closing them | $(kib_mb "$(field closed_rss_kib <<<"$idle")") | $(kib_mb "$(field closed_hwm_kib <<<"$idle")") |

Per connection: $(field per_connection_kib <<<"$idle") KiB (VmRSS with sessions open minus baseline, divided by sessions).
EOF
if [[ $KEEP == 1 ]]; then
    echo
    echo "Raw output: $work"
fi
