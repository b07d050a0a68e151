#!/usr/bin/env bash
# Measures an intransit `tls` listener in front of Redis against Redis's own
# TLS port, on one redis-server, and prints a markdown summary:
#
#   redis-benchmark --tls (client certificate, TLS 1.3) against
#     native: redis-server's tls-port (OpenSSL), and
#     proxy:  intransit (rustls) -> redis-server's plaintext port on loopback,
#   interleaved, REPS times, persistent connections (redis-benchmark's
#   default keep-alive), plus the proxy's CPU per 100,000 requests.
#
# Loopback only; everything lives in a temporary directory removed on exit.
# Knobs: REPS (5), REQUESTS per run (200000), CLIENTS (50), TESTS
# (ping_mbulk,set,get), UPSTREAM (tcp, or unix for the proxy to reach Redis
# over its unix socket), WORKER_THREADS (the proxy's worker_threads; 0
# serves connections on the shared runtime), SKIP_BUILD=1, CARGO_TARGET_DIR. Not part of the
# test suite.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-5}
REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
TESTS=${TESTS:-ping_mbulk,set,get}
UPSTREAM=${UPSTREAM:-tcp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
intransit=$CARGO_TARGET_DIR/release/intransit

for tool in redis-server redis-benchmark redis-cli openssl; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run .ci/install-deps.sh" >&2; exit 1; }
done
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$repo" && cargo build --release --locked -p intransit >&2)
fi

work=$(mktemp -d /tmp/intransit-bench-redis.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Certificates: intransit's own CA, as `up` makes them.
"$intransit" --log-level error up --state-dir "$work/state" --listen 127.0.0.1:0 \
    --protocol tls --upstream 127.0.0.1:1 >/dev/null &
up_pid=$!
for _ in $(seq 100); do [[ -f $work/state/certs/client/key.pem ]] && break; sleep 0.1; done
sleep 0.5
kill "$up_pid"; wait "$up_pid" 2>/dev/null || true
ca=$work/state/ca/ca.pem
srv=$work/state/certs/server
cli=$work/state/certs/client

plain_port=$(free_port)
tls_port=$(free_port)
redis-server --port "$plain_port" --bind 127.0.0.1 --save '' --appendonly no \
    --tls-port "$tls_port" --tls-cert-file "$srv/chain.pem" --tls-key-file "$srv/key.pem" \
    --tls-ca-cert-file "$ca" --tls-auth-clients yes --tls-protocols TLSv1.3 \
    --unixsocket "$work/redis.sock" --unixsocketperm 700 \
    --dir "$work" --logfile "$work/redis.log" --daemonize no &
pids+=($!)

proxy_port=$(free_port)
upstream=127.0.0.1:$plain_port
[[ $UPSTREAM == unix ]] && upstream=unix:$work/redis.sock
cat > "$work/proxy.toml" <<EOF
${WORKER_THREADS:+worker_threads = $WORKER_THREADS}
[[listener]]
name = "redis"
protocol = "tls"
listen = "127.0.0.1:$proxy_port"
upstream = "$upstream"

[listener.tls]
cert = "$srv/chain.pem"
key = "$srv/key.pem"
client_ca = "$ca"
EOF
"$intransit" --log-level warn proxy --config "$work/proxy.toml" 2>"$work/proxy.log" &
proxy_pid=$!
pids+=("$proxy_pid")
for _ in $(seq 100); do
    redis-cli -p "$plain_port" PING >/dev/null 2>&1 && break
    sleep 0.1
done
sleep 0.5

tls_args=(--tls --sni localhost --cacert "$ca" --cert "$cli/cert.pem" --key "$cli/key.pem")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_sec=$(getconf CLK_TCK)

declare -A results
run() { # target port -> "test rps" lines
    redis-benchmark -h 127.0.0.1 -p "$2" "${tls_args[@]}" -n "$REQUESTS" -c "$CLIENTS" \
        -t "$TESTS" --csv 2>/dev/null | tail -n +2 | tr -d '"' | cut -d, -f1,2
}

echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for rep in $(seq "$REPS"); do
    for target in native proxy; do
        port=$tls_port
        [[ $target == proxy ]] && port=$proxy_port
        before=$(cpu_ticks "$proxy_pid")
        while IFS=, read -r test rps; do
            results[$target,$test]+="$rps "
            echo "rep $rep $target $test: $rps rps" >&2
        done < <(run "$target" "$port")
        after=$(cpu_ticks "$proxy_pid")
        if [[ $target == proxy ]]; then
            results[proxy,cpu]+="$(( (after - before) * 1000 / ticks_per_sec )) "
        fi
    done
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
minmax() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR==1{min=$1} {max=$1} END {print min "–" max}'; }

echo "## intransit tls listener vs redis-server TLS: $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "redis-benchmark -n $REQUESTS -c $CLIENTS, TLS 1.3 with a client certificate, $REPS repetitions interleaved; proxy upstream over $UPSTREAM; $(redis-server --version | cut -d' ' -f1-3)."
echo
echo "| test | native TLS rps, median [min–max] | intransit rps, median [min–max] | ratio |"
echo "|---|---|---|---|"
IFS=, read -ra names <<<"$TESTS"
for t in "${!results[@]}"; do :; done
for key in $(printf '%s\n' "${!results[@]}" | grep '^native,' | cut -d, -f2 | sort); do
    n=$(echo "${results[native,$key]}" | median)
    p=$(echo "${results[proxy,$key]}" | median)
    ratio=$(awk -v a="$p" -v b="$n" 'BEGIN {printf "%.2f", a / b}')
    echo "| $key | $n [$(echo "${results[native,$key]}" | minmax)] | $p [$(echo "${results[proxy,$key]}" | minmax)] | $ratio |"
done
echo
total_requests=$(( REQUESTS * $(echo "$TESTS" | tr ',' '\n' | wc -l) ))
cpu=$(echo "${results[proxy,cpu]}" | median)
echo "Proxy CPU per run of $total_requests requests (median): ${cpu} ms, $(awk -v c="$cpu" -v n="$total_requests" 'BEGIN {printf "%.1f", c * 100000 / n}') ms per 100,000 requests."
