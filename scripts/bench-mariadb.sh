#!/usr/bin/env bash
# Measures an intransit `mysql` listener in front of MariaDB against
# MariaDB's own TLS, on one mariadbd, and prints a markdown summary:
#
#   mariadb-slap --ssl --ssl-verify-server-cert with a client certificate
#   (TLS 1.3), `SELECT 1`, CONCURRENCY clients on persistent connections:
#     native: mariadbd's own TLS on TCP 127.0.0.1 (OpenSSL),
#     proxy:  intransit (rustls) -> mariadbd's unix socket,
#   interleaved, REPS times, plus the proxy's CPU per 10,000 queries;
#   then the same with a new connection per query (mariadb-slap --detach=1,
#   CONNECT_QUERIES queries per run).
#
# Loopback only; everything lives in a temporary directory removed on exit.
# Knobs: REPS (5), QUERIES per run (50000), CONNECT_QUERIES (2000),
# CONCURRENCY (2), WORKER_THREADS (the proxy's worker_threads; 0 serves
# connections on the shared runtime), SKIP_BUILD=1,
# CARGO_TARGET_DIR. Needs root (mariadbd runs as the mysql user). Not part
# of the test suite.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-5}
QUERIES=${QUERIES:-50000}
CONNECT_QUERIES=${CONNECT_QUERIES:-2000}
CONCURRENCY=${CONCURRENCY:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
intransit=$CARGO_TARGET_DIR/release/intransit

for tool in mariadbd mariadb-install-db mariadb mariadb-slap; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run .ci/install-deps.sh" >&2; exit 1; }
done
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$repo" && cargo build --release --locked -p intransit >&2)
fi

work=$(mktemp -d /tmp/intransit-bench-mariadb.XXXXXX)
chmod 755 "$work"
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

# Certificates from intransit's own CA, as `up` makes them.
"$intransit" --log-level error up --state-dir "$work/state" --listen 127.0.0.1:0 \
    --protocol tls --upstream 127.0.0.1:1 >/dev/null &
up_pid=$!
for _ in $(seq 100); do [[ -f $work/state/certs/client/key.pem ]] && break; sleep 0.1; done
sleep 0.5
kill "$up_pid"; wait "$up_pid" 2>/dev/null || true
ca=$work/state/ca/ca.pem
srv=$work/state/certs/server
cli=$work/state/certs/client
mkdir -p "$work/db-tls"
cp "$srv/chain.pem" "$srv/key.pem" "$ca" "$work/db-tls/"
chown -R mysql:mysql "$work/db-tls"
chmod 600 "$work/db-tls/key.pem"

db_port=$(free_port)
mkdir -p "$work/data" "$work/run"
chown mysql:mysql "$work/data" "$work/run"
mariadb-install-db --no-defaults --user=mysql --datadir="$work/data" \
    --auth-root-authentication-method=normal --skip-test-db >"$work/install.log" 2>&1
mariadbd --no-defaults --user=mysql --datadir="$work/data" --socket="$work/run/mysql.sock" \
    --port="$db_port" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="$work/run/mariadb.pid" --log-error="$work/run/mariadb.err" \
    --max-connections=200 --innodb-buffer-pool-size=64M \
    --ssl-cert="$work/db-tls/chain.pem" --ssl-key="$work/db-tls/key.pem" \
    --ssl-ca="$work/db-tls/ca.pem" --tls-version=TLSv1.3 &
pids+=($!)
for _ in $(seq 200); do
    mariadb --no-defaults -S "$work/run/mysql.sock" -u root -e 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
done
mariadb --no-defaults -S "$work/run/mysql.sock" -u root -e \
    "CREATE USER 'bench'@'%' IDENTIFIED BY 'bench-pw'; CREATE USER 'bench'@'localhost' IDENTIFIED BY 'bench-pw'; CREATE DATABASE bench; GRANT ALL ON bench.* TO 'bench'@'%'; GRANT ALL ON bench.* TO 'bench'@'localhost';"

proxy_port=$(free_port)
cat > "$work/proxy.toml" <<EOF
${WORKER_THREADS:+worker_threads = $WORKER_THREADS}
[[listener]]
name = "maria"
protocol = "mysql"
listen = "127.0.0.1:$proxy_port"
upstream = "unix:$work/run/mysql.sock"

[listener.tls]
cert = "$srv/chain.pem"
key = "$srv/key.pem"
client_ca = "$ca"
EOF
"$intransit" --log-level warn proxy --config "$work/proxy.toml" 2>"$work/proxy.log" &
proxy_pid=$!
pids+=("$proxy_pid")
sleep 0.5

tls_args=(--ssl --ssl-verify-server-cert "--ssl-ca=$ca" "--ssl-cert=$cli/cert.pem" "--ssl-key=$cli/key.pem")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_sec=$(getconf CLK_TCK)
declare -A qps
declare -A cpu

slap() { # port queries detach -> seconds for all queries
    mariadb-slap --no-defaults -h 127.0.0.1 -P "$1" -u bench --password=bench-pw "${tls_args[@]}" \
        --create-schema=bench --concurrency="$CONCURRENCY" --iterations=1 --detach="$3" \
        --number-of-queries="$2" --query="SELECT 1" 2>/dev/null |
        awk '/Average number of seconds to run all queries/ {print $(NF-1)}'
}

echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for rep in $(seq "$REPS"); do
    for mode in persistent connect; do
        queries=$QUERIES detach=0
        [[ $mode == connect ]] && queries=$CONNECT_QUERIES detach=1
        for target in native proxy; do
            port=$db_port
            [[ $target == proxy ]] && port=$proxy_port
            before=$(cpu_ticks "$proxy_pid")
            secs=$(slap "$port" "$queries" "$detach")
            after=$(cpu_ticks "$proxy_pid")
            rate=$(awk -v q="$queries" -v s="$secs" 'BEGIN {printf "%.0f", q / s}')
            qps[$mode,$target]+="$rate "
            if [[ $target == proxy ]]; then
                cpu[$mode]+="$(awk -v t=$((after - before)) -v hz="$ticks_per_sec" -v q="$queries" 'BEGIN {printf "%.1f", t * 1000 / hz * 10000 / q}') "
            fi
            echo "rep $rep $mode $target: $secs s, $rate queries/s" >&2
        done
    done
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
minmax() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR==1{min=$1} {max=$1} END {print min "–" max}'; }
echo "## intransit mysql listener vs MariaDB TLS: $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "mariadb-slap --concurrency=$CONCURRENCY --query='SELECT 1', TLS 1.3 with a client certificate, $REPS repetitions interleaved; $(mariadbd --version | awk '{print $3}'). Persistent: $QUERIES queries per run; connect per query (--detach=1): $CONNECT_QUERIES."
echo
echo "| run | MariaDB's own TLS, queries/s median [min–max] | intransit -> unix socket | ratio | proxy CPU ms / 10k queries |"
echo "|---|---|---|---|---|"
for mode in persistent connect; do
    n=$(echo "${qps[$mode,native]}" | median)
    p=$(echo "${qps[$mode,proxy]}" | median)
    echo "| $mode | $n [$(echo "${qps[$mode,native]}" | minmax)] | $p [$(echo "${qps[$mode,proxy]}" | minmax)] | $(awk -v a="$p" -v b="$n" 'BEGIN {printf "%.2f", a / b}') | $(echo "${cpu[$mode]}" | median) |"
done
