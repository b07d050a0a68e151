# shellcheck shell=bash
# The setup shared by the PostgreSQL benchmark scripts (bench-postgres.sh,
# soak-postgres.sh): certificates from `intransit up`, a private PostgreSQL
# run as the postgres user, the proxy in front of it, and the temporary
# directory that holds them all and is removed on exit.
#
# Sourced, not run. Before sourcing, the script sets `repo` (the
# repository's root) and may set KEEP, PGBIN and CARGO_TARGET_DIR; it then
# calls, in order: pg_require, pg_build, pg_workdir PREFIX, pg_certificates,
# pg_start MAX_CONNECTIONS, pg_proxy_config ..., pg_start_proxy LEVEL.
# A script that starts processes of its own defines `on_cleanup`, which
# runs first on exit.
#
# The variables set here are read by the sourcing script.
# shellcheck disable=SC2034

KEEP=${KEEP:-0}
PGBIN=${PGBIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
intransit=$CARGO_TARGET_DIR/release/intransit
bench=$CARGO_TARGET_DIR/release/intransit-bench-pg

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Root, PostgreSQL's server binaries, its client programs and the tools the
# scripts call.
pg_require() {
    [[ $(id -u) == 0 ]] || die "run as root: PostgreSQL is started as the postgres user"
    [[ -x $PGBIN/postgres && -x $PGBIN/initdb ]] || die "no PostgreSQL server binaries in '$PGBIN' (set PGBIN, or: bash .ci/install-deps.sh)"
    local tool
    for tool in psql pgbench openssl ss runuser; do
        command -v "$tool" >/dev/null || die "$tool not found (bash .ci/install-deps.sh)"
    done
    id postgres >/dev/null 2>&1 || die "no postgres user (apt-get install postgresql)"
}

pg_build() {
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "building (release)"
        cargo build --release --locked -p intransit -p intransit-bench >&2
    fi
}

# The temporary directory, and the exit trap that stops the proxy and
# PostgreSQL and removes it (KEEP=1 keeps it, with every log).
work=""
proxy_pid=""
pg_started=0
pg_workdir() { # prefix
    work=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$work"
    trap pg_cleanup EXIT
    trap 'exit 130' INT TERM
}
pg_cleanup() {
    set +e
    if declare -F on_cleanup >/dev/null; then on_cleanup; fi
    if [[ -n $proxy_pid ]]; then kill "$proxy_pid" 2>/dev/null; wait "$proxy_pid" 2>/dev/null; fi
    if [[ $pg_started == 1 ]]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1
    fi
    if [[ -n $work ]]; then
        if [[ $KEEP == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
    fi
}

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

# `key=value` fields of the measuring tools' output.
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }

load_now() { awk '{print $1", "$2", "$3}' /proc/loadavg; }

# --- certificates: intransit up makes a CA, a server and a client
# certificate in $state; the proxy and PostgreSQL serve the same ones.
pg_certificates() {
    state=$work/state
    log "creating certificates with intransit up"
    "$intransit" up --state-dir "$state" --listen 127.0.0.1:0 --admin off \
        --upstream "unix:$work/nowhere/.s.PGSQL.1" >"$work/up.log" 2>&1 &
    local up_pid=$! f
    for _ in $(seq 100); do
        [[ -s $state/certs/client/key.pem && -s $state/certs/server/chain.pem ]] && break
        sleep 0.1
    done
    kill "$up_pid" 2>/dev/null || true
    wait "$up_pid" 2>/dev/null || true
    ca=$state/ca/ca.pem
    server_chain=$state/certs/server/chain.pem
    server_key=$state/certs/server/key.pem
    client_cert=$state/certs/client/cert.pem
    client_key=$state/certs/client/key.pem
    for f in "$ca" "$server_chain" "$server_key" "$client_cert" "$client_key"; do
        [[ -s $f ]] || die "intransit up did not create $f (see $work/up.log)"
    done
}

# --- PostgreSQL: one private server in $work/pg, with TLS 1.3 on TCP
# 127.0.0.1:$pg_port for native clients (client certificate required) and
# a unix socket in $pg/sock for the proxy, as a sidecar reaches it; trust
# for the bench user on both, so no password work is measured. Creates
# the database `bench`.
pg_start() { # max_connections
    pg_port=$(free_port)
    pg=$work/pg
    mkdir -p "$pg/sock"
    chown -R postgres:postgres "$pg"
    log "initdb and starting PostgreSQL on 127.0.0.1:$pg_port (max_connections = $1)"
    runuser -u postgres -- "$PGBIN/initdb" -D "$pg/data" -U bench --auth=trust -E UTF8 --no-sync >"$work/initdb.log" 2>&1 \
        || die "initdb failed (see $work/initdb.log)"
    install -o postgres -g postgres -m 0644 "$server_chain" "$pg/data/server.crt"
    install -o postgres -g postgres -m 0600 "$server_key" "$pg/data/server.key"
    install -o postgres -g postgres -m 0644 "$ca" "$pg/data/root.crt"
    cat >>"$pg/data/postgresql.conf" <<EOF
# intransit benchmark
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pg/sock'
max_connections = $1
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'root.crt'
ssl_min_protocol_version = 'TLSv1.3'
EOF
    cat >"$pg/data/pg_hba.conf" <<EOF
# TYPE   DATABASE USER  ADDRESS       METHOD
local    all      bench               trust
hostssl  all      bench 127.0.0.1/32  trust  clientcert=verify-ca
EOF
    chown postgres:postgres "$pg/data/pg_hba.conf"
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$pg/data" -l "$pg/server.log" -w start >/dev/null \
        || die "PostgreSQL did not start (see $pg/server.log)"
    pg_started=1
    psql -h "$pg/sock" -p "$pg_port" -U bench -d postgres -qAtc "CREATE DATABASE bench" >/dev/null
}

pg_ctl_as_postgres() { # pg_ctl arguments...
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$pg/data" "$@"
}

# pgbench's tables at the given scale, in the database `bench`.
pg_pgbench_init() { # scale
    log "pgbench -i -s $1"
    pgbench -i -q -s "$1" -h "$pg/sock" -p "$pg_port" -U bench bench >"$work/pgbench-init.log" 2>&1 \
        || die "pgbench -i failed (see $work/pgbench-init.log)"
}

# --- the proxy: one postgres listener on 127.0.0.1:$proxy_port in front of
# PostgreSQL's unix socket, with the certificates of pg_certificates.
# An admin address of "-" starts no admin server.
pg_proxy_config() { # handshake_timeout max_connections admin_address
    proxy_port=$(free_port)
    {
        [[ $3 != - ]] && printf 'admin = "%s"\n\n' "$3"
        cat <<EOF
[[listener]]
name = "bench"
protocol = "postgres"
listen = "127.0.0.1:$proxy_port"
upstream = "unix:$pg/sock/.s.PGSQL.$pg_port"
handshake_timeout = "$1"
max_connections = $2

[listener.tls]
cert = "$server_chain"
key = "$server_key"
client_ca = "$ca"
EOF
    } >"$work/proxy.toml"
}
pg_start_proxy() { # log level
    pg_stop_proxy
    "$intransit" --log-level "$1" proxy --config "$work/proxy.toml" 2>>"$work/proxy-$1.log" &
    proxy_pid=$!
    wait_for_port "$proxy_port" "intransit"
}
pg_stop_proxy() {
    if [[ -n $proxy_pid ]]; then
        kill "$proxy_pid" 2>/dev/null || true
        wait "$proxy_pid" 2>/dev/null || true
        proxy_pid=""
    fi
}

# libpq connection string: through a TLS port (the proxy's or PostgreSQL's
# own) with the client certificate, or `plain` for the unix socket.
conninfo() { # port|plain
    if [[ $1 == plain ]]; then
        echo "host=$pg/sock port=$pg_port user=bench dbname=bench"
        return
    fi
    echo "host=127.0.0.1 port=$1 user=bench dbname=bench sslmode=verify-full sslrootcert=$ca sslcert=$client_cert sslkey=$client_key ssl_min_protocol_version=TLSv1.3 gssencmode=disable"
}
