#!/usr/bin/env bash
# Measures what each TLS configuration costs with `intransit bench`:
# PostgreSQL's own TLS against intransit in front of the same PostgreSQL
# (handshakes per configuration, SELECT 1 round trips on persistent
# connections and with a connection per query), Redis's own TLS against an
# intransit `tls` listener (PING and GET throughput), and the in-process
# `--self` server. Prints Markdown; docs/benchmarks.md explains the method.
#
# Everything runs on loopback in a temporary directory removed on exit
# (KEEP=1 keeps it). Needs root (PostgreSQL runs as `postgres`),
# PostgreSQL server binaries and redis-server (`.ci/install-deps.sh`).
# Not part of the test suite.
#
# Knobs (environment): DURATION of each run (3s), REPEAT rounds (3),
# CONCURRENCY for the throughput-style rows (2), SKIP_BUILD=1, PGBIN,
# REDIS=0 skips Redis, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

DURATION=${DURATION:-3s}
REPEAT=${REPEAT:-3}
CONCURRENCY=${CONCURRENCY:-2}
REDIS=${REDIS:-1}
KEEP=${KEEP:-0}
PGBIN=${PGBIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root: PostgreSQL is started as the postgres user"
[[ -x $PGBIN/postgres && -x $PGBIN/initdb ]] || die "no PostgreSQL server binaries in '$PGBIN' (set PGBIN, or: bash .ci/install-deps.sh)"
for tool in psql ss runuser; do
    command -v "$tool" >/dev/null || die "$tool not found (bash .ci/install-deps.sh)"
done
if [[ $REDIS == 1 ]]; then command -v redis-server >/dev/null || die "redis-server not found (REDIS=0 skips it)"; fi

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building (release)"
    cargo build --release --locked -p intransit >&2
fi
intransit=$CARGO_TARGET_DIR/release/intransit

work=$(mktemp -d /tmp/intransit-bench-tls.XXXXXX)
chmod 755 "$work"
pids=()
pg_started=0
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    if [[ $pg_started == 1 ]]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1
    fi
    if [[ $KEEP == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 30000))
        if [[ -z $(ss -Htan "sport = :$port") ]]; then echo "$port"; return; fi
    done
    die "no free port found"
}
wait_for_port() { # port what
    for _ in $(seq 100); do
        [[ -n $(ss -Htln "sport = :$1") ]] && return 0
        sleep 0.1
    done
    die "$2 is not listening on $1"
}

# --- certificates from intransit up (CA, server for localhost, client)
state=$work/state
log "creating certificates with intransit up"
"$intransit" up --state-dir "$state" --listen 127.0.0.1:0 \
    --upstream "unix:$work/nowhere/.s.PGSQL.1" >"$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 100); do
    [[ -s $state/certs/client/key.pem && -s $state/certs/server/chain.pem ]] && break
    sleep 0.1
done
kill "$up_pid" 2>/dev/null || true
wait "$up_pid" 2>/dev/null || true
ca=$state/ca/ca.pem
server_chain=$state/certs/server/chain.pem
server_key=$state/certs/server/key.pem
client_chain=$state/certs/client/chain.pem
client_key=$state/certs/client/key.pem
for f in "$ca" "$server_chain" "$server_key" "$client_chain" "$client_key"; do
    [[ -s $f ]] || die "intransit up did not create $f (see $work/up.log)"
done

# --- PostgreSQL with its defaults for TLS (TLS 1.2 and 1.3, ssl_ecdh_curve
# prime256v1, no tickets), client certificates asked for but optional,
# trust for the bench user.
pg_port=$(free_port)
pg=$work/pg
mkdir -p "$pg/sock"
chown -R postgres:postgres "$pg"
log "starting PostgreSQL on 127.0.0.1:$pg_port"
runuser -u postgres -- "$PGBIN/initdb" -D "$pg/data" -U bench --auth=trust -E UTF8 --no-sync >"$work/initdb.log" 2>&1 \
    || die "initdb failed (see $work/initdb.log)"
install -o postgres -g postgres -m 0644 "$server_chain" "$pg/data/server.crt"
install -o postgres -g postgres -m 0600 "$server_key" "$pg/data/server.key"
install -o postgres -g postgres -m 0644 "$ca" "$pg/data/root.crt"
cat >>"$pg/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pg/sock'
max_connections = 200
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'root.crt'
EOF
cat >"$pg/data/pg_hba.conf" <<EOF
local    all  bench               trust
hostssl  all  bench 127.0.0.1/32  trust
EOF
chown postgres:postgres "$pg/data/pg_hba.conf"
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$pg/data" -l "$pg/server.log" -w start >/dev/null \
    || die "PostgreSQL did not start (see $pg/server.log)"
pg_started=1
postmaster=$(head -n 1 "$pg/data/postmaster.pid")

# --- intransit in front of it, over the unix socket as a sidecar is
# deployed. TLS 1.2 allowed and client certificates optional, so that
# every configuration can be measured (the defaults are TLS 1.3 and
# required certificates).
proxy_port=$(free_port)
cat >"$work/proxy.toml" <<EOF
[[listener]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:$proxy_port"
upstream = "unix:$pg/sock/.s.PGSQL.$pg_port"

[listener.tls]
cert = "$server_chain"
key = "$server_key"
client_ca = "$ca"
min_version = "1.2"
client_auth = "optional"
EOF
"$intransit" --log-level warn proxy --config "$work/proxy.toml" 2>>"$work/proxy.log" &
proxy_pid=$!
pids+=("$proxy_pid")
wait_for_port "$proxy_port" "intransit"

native=postgres-tls=postgres://127.0.0.1:$pg_port
through=intransit=postgres://127.0.0.1:$proxy_port
tls_args=(--ca "$ca" --sni localhost --cert "$client_chain" --key "$client_key")
pid_args=(--pid "proxy=$proxy_pid" --pid "postgres=$postmaster")

echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, Linux $(uname -r);"
echo "$("$PGBIN/postgres" --version); $(openssl version 2>/dev/null || echo 'openssl not installed'); intransit $(git -C "$repo" rev-parse --short HEAD)."
echo "Load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
echo

log "handshakes, PostgreSQL native vs intransit"
echo "### Handshakes: PostgreSQL's own TLS vs intransit, sequential"
echo
"$intransit" bench handshake "$native" --compare "$through" "${tls_args[@]}" "${pid_args[@]}" \
    --duration "$DURATION" --repeat "$REPEAT" --format markdown
echo
echo "### Handshakes, $CONCURRENCY at a time"
echo
"$intransit" bench handshake "$native" --compare "$through" "${tls_args[@]}" "${pid_args[@]}" \
    --configurations tls1.3,tls1.3-client-cert --concurrency "$CONCURRENCY" \
    --duration "$DURATION" --repeat "$REPEAT" --format markdown
echo
log "SELECT 1, PostgreSQL native vs intransit"
echo "### SELECT 1 on persistent connections, $CONCURRENCY at a time"
echo
"$intransit" bench query "$native" --compare "$through" "${tls_args[@]}" "${pid_args[@]}" \
    --user bench --database postgres --concurrency "$CONCURRENCY" \
    --duration "$DURATION" --repeat "$REPEAT" --format markdown
echo
echo "### SELECT 1 with a new connection each, $CONCURRENCY at a time"
echo
"$intransit" bench query "$native" --compare "$through" "${tls_args[@]}" "${pid_args[@]}" \
    --user bench --database postgres --concurrency "$CONCURRENCY" --new-connection-each \
    --duration "$DURATION" --repeat "$REPEAT" --format markdown
echo

if [[ $REDIS == 1 ]]; then
    log "Redis native TLS vs intransit"
    redis_port=$(free_port)
    redis_tls_port=$(free_port)
    mkdir -p "$work/redis"
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --save '' --appendonly no \
        --tls-port "$redis_tls_port" --tls-cert-file "$server_chain" --tls-key-file "$server_key" \
        --tls-ca-cert-file "$ca" --tls-auth-clients optional >"$work/redis.log" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_for_port "$redis_tls_port" "redis-server"
    redis_proxy_port=$(free_port)
    cat >"$work/redis-proxy.toml" <<EOF
[[listener]]
name = "redis"
protocol = "tls"
listen = "127.0.0.1:$redis_proxy_port"
upstream = "127.0.0.1:$redis_port"

[listener.tls]
cert = "$server_chain"
key = "$server_key"
client_ca = "$ca"
EOF
    "$intransit" --log-level warn proxy --config "$work/redis-proxy.toml" 2>>"$work/redis-proxy.log" &
    redis_proxy_pid=$!
    pids+=("$redis_proxy_pid")
    wait_for_port "$redis_proxy_port" "intransit (redis)"
    rnative=redis-tls=tls://127.0.0.1:$redis_tls_port
    rthrough=intransit=tls://127.0.0.1:$redis_proxy_port
    echo "### Redis PING on persistent connections, $CONCURRENCY at a time"
    echo
    "$intransit" bench query "$rnative" --compare "$rthrough" "${tls_args[@]}" \
        --pid "proxy=$redis_proxy_pid" --pid "redis=$redis_pid" --concurrency "$CONCURRENCY" \
        --duration "$DURATION" --repeat "$REPEAT" --format markdown
    echo
    echo "### Redis GET of a 1 MiB value, 1 connection"
    echo
    "$intransit" bench throughput "$rnative" --compare "$rthrough" "${tls_args[@]}" \
        --pid "proxy=$redis_proxy_pid" --pid "redis=$redis_pid" --size 1MiB \
        --duration "$DURATION" --repeat "$REPEAT" --format markdown
    echo
fi

log "--self"
echo "### The in-process server (--self), sequential"
echo
"$intransit" bench handshake --self --duration "$DURATION" --repeat "$REPEAT" --format markdown
echo
echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg)."
