# shellcheck shell=bash
# The setup shared by the PostgreSQL benchmark scripts (bench-postgres.sh,
# soak-postgres.sh, bench-pool.sh): certificates from `intransit up`, a
# private PostgreSQL run as the postgres user, the proxy in front of it
# (and, for the pooling benchmark, a pooling proxy and PgBouncer beside
# it), and the temporary directory that holds them all and is removed on
# exit.
#
# Sourced, not run. Before sourcing, the script sets `repo` (the
# repository's root) and may set KEEP, PGBIN, CARGO_TARGET_DIR and
# INTRANSIT; it then calls, in order: pg_require, pg_build, pg_workdir
# PREFIX, pg_certificates, pg_start MAX_CONNECTIONS, pg_proxy_config ...,
# pg_start_proxy LEVEL (pg_pool_config and pg_start_pool_proxy,
# pg_pgbouncer_require, pg_pgbouncer_config and pg_start_pgbouncer for the
# pooling targets). A script that starts processes of its own defines
# `on_cleanup`, which runs first on exit.
#
# The variables set here are read by the sourcing script.
# shellcheck disable=SC2034

KEEP=${KEEP:-0}
PGBIN=${PGBIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
# INTRANSIT runs another build of the proxy (the `profiling` profile, for
# perf) with the release build's measuring tools.
intransit=${INTRANSIT:-$CARGO_TARGET_DIR/release/intransit}
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
pool_pid=""
pgbouncer_pid=""
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
    pg_stop_proxy
    pg_stop_pool_proxy
    pg_stop_pgbouncer
    pg_stop_pid stunnel_pid
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

# CPU clock ticks of PostgreSQL's backends: those that have exited (the
# postmaster's waited-for children) plus those still running (a pooler's
# server connections live across a whole run), so the difference over a
# run counts both. The postmaster's own time is not included.
pg_server_ticks() {
    local postmaster
    postmaster=$(head -n 1 "$pg/data/postmaster.pid")
    # After the command name (in parentheses, and it may hold spaces): the
    # parent pid is the 2nd field, utime and stime the 12th and 13th,
    # cutime and cstime the 14th and 15th. A process that ended after the
    # glob is skipped.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$postmaster" '
        { pid = $1; sub(/^.*\) /, ""); split($0, f, " ") }
        pid == pm { t += f[14] + f[15] }
        f[2] == pm { t += f[12] + f[13] }
        END { print t + 0 }'
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
        pg_listener_toml bench "$proxy_port" "$1" "$2"
    } >"$work/proxy.toml"
}
pg_listener_toml() { # name port handshake_timeout max_connections
    cat <<EOF
[[listener]]
name = "$1"
protocol = "postgres"
listen = "127.0.0.1:$2"
upstream = "unix:$pg/sock/.s.PGSQL.$pg_port"
handshake_timeout = "$3"
max_connections = $4

[listener.tls]
cert = "$server_chain"
key = "$server_key"
client_ca = "$ca"
EOF
}
pg_start_proxy() { # log level
    pg_stop_proxy
    pg_run_intransit proxy_pid "$work/proxy.toml" "$proxy_port" "$work/proxy-$1.log" "$1"
}
pg_stop_proxy() {
    pg_stop_pid proxy_pid
}

# --- the pooling proxy: a second intransit process on
# 127.0.0.1:$pool_port, the same listener with [listener.pool], logging in
# to PostgreSQL by trust over the unix socket (`local` in pg_hba.conf).
pg_pool_config() { # mode size handshake_timeout max_connections
    pool_port=$(free_port)
    {
        pg_listener_toml pooled "$pool_port" "$3" "$4"
        cat <<EOF

[listener.pool]
mode = "$1"
size = $2
server_auth = "trust"
EOF
    } >"$work/pool.toml"
}
pg_start_pool_proxy() { # log level
    pg_stop_pool_proxy
    pg_run_intransit pool_pid "$work/pool.toml" "$pool_port" "$work/pool-$1.log" "$1"
}
pg_stop_pool_proxy() {
    pg_stop_pid pool_pid
}

# Starts intransit on a configuration and stores its pid in the variable
# named by the first argument.
pg_run_intransit() { # pid_variable config port log level
    "$intransit" --log-level "$5" proxy --config "$2" 2>>"$4" &
    printf -v "$1" '%s' "$!"
    wait_for_port "$3" "intransit ($(basename "$2"))"
}
# Stops the process whose pid is in the variable named by the argument.
pg_stop_pid() { # pid_variable
    local pid=${!1}
    if [[ -n $pid ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        printf -v "$1" '%s' ""
    fi
}

# --- PgBouncer (the Debian package), the pooling baseline, on
# 127.0.0.1:$pgbouncer_port: TLS 1.3 towards clients with a client
# certificate required and verified against the same CA, the same server
# certificate as PostgreSQL and the proxy, and PostgreSQL's unix socket
# behind it. auth_type = trust: PgBouncer asks the client for nothing once
# the certificate is verified (as the proxy and PostgreSQL's `hostssl ...
# trust clientcert=verify-ca` do); its auth_file only names the user.
# PgBouncer refuses to run as root, so it runs as postgres on copies of
# the files.
pg_pgbouncer_require() {
    command -v pgbouncer >/dev/null \
        || die "pgbouncer not found (Debian, Ubuntu: apt-get install pgbouncer)"
}
pg_pgbouncer_config() { # pool_mode pool_size max_client_conn
    pgbouncer_port=$(free_port)
    pgbouncer_dir=$work/pgbouncer
    mkdir -p "$pgbouncer_dir"
    install -m 0644 "$ca" "$pgbouncer_dir/ca.pem"
    install -m 0644 "$server_chain" "$pgbouncer_dir/server.crt"
    install -m 0600 "$server_key" "$pgbouncer_dir/server.key"
    echo '"bench" ""' >"$pgbouncer_dir/userlist.txt"
    cat >"$pgbouncer_dir/pgbouncer.ini" <<EOF
[databases]
bench = host=$pg/sock port=$pg_port dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgbouncer_port
unix_socket_dir =
pidfile = $pgbouncer_dir/pgbouncer.pid
logfile = $pgbouncer_dir/pgbouncer.log
auth_type = trust
auth_file = $pgbouncer_dir/userlist.txt
pool_mode = $1
default_pool_size = $2
max_client_conn = $3
client_tls_sslmode = verify-full
client_tls_protocols = tlsv1.3
client_tls_ca_file = $pgbouncer_dir/ca.pem
client_tls_cert_file = $pgbouncer_dir/server.crt
client_tls_key_file = $pgbouncer_dir/server.key
log_connections = 0
log_disconnections = 0
EOF
    chown -R postgres:postgres "$pgbouncer_dir"
}
# runuser stays PgBouncer's parent, so PgBouncer's own pid comes from its
# pidfile.
pgbouncer_runner=""
pg_start_pgbouncer() {
    pg_stop_pgbouncer
    rm -f "$pgbouncer_dir/pgbouncer.pid"
    # runuser's PAM session sets the soft limit on open files back to
    # 1,024; PgBouncer gets the benchmark's limit again. The inner shell
    # expands its own arguments.
    # shellcheck disable=SC2016
    runuser -u postgres -- sh -c 'ulimit -n "$1" && exec pgbouncer "$2"' pgbouncer "$(ulimit -n)" \
        "$pgbouncer_dir/pgbouncer.ini" >>"$pgbouncer_dir/stderr.log" 2>&1 &
    pgbouncer_runner=$!
    wait_for_port "$pgbouncer_port" "pgbouncer (see $pgbouncer_dir/pgbouncer.log)"
    for _ in $(seq 50); do
        [[ -s $pgbouncer_dir/pgbouncer.pid ]] && break
        sleep 0.1
    done
    pgbouncer_pid=$(cat "$pgbouncer_dir/pgbouncer.pid")
}
pg_stop_pgbouncer() {
    if [[ -n $pgbouncer_pid ]]; then
        # SIGTERM: PgBouncer 1.18 shuts down at once, clients or not.
        kill "$pgbouncer_pid" 2>/dev/null || true
        pgbouncer_pid=""
    fi
    pg_stop_pid pgbouncer_runner
}

# --- stunnel (the Debian package stunnel4), the pass-through baseline, on
# 127.0.0.1:$stunnel_port: `protocol = pgsql` answers the SSLRequest, TLS
# 1.3 with a client certificate required and verified against the same
# CA, the same server certificate, PostgreSQL's unix socket behind it.
pg_stunnel_require() {
    command -v stunnel4 >/dev/null \
        || die "stunnel4 not found (Debian, Ubuntu: apt-get install stunnel4)"
}
pg_stunnel_config() {
    stunnel_port=$(free_port)
    cat >"$work/stunnel.conf" <<EOF
foreground = yes
pid =
debug = 3
output = $work/stunnel.log
[postgres]
accept = 127.0.0.1:$stunnel_port
connect = $pg/sock/.s.PGSQL.$pg_port
protocol = pgsql
cert = $server_chain
key = $server_key
CAfile = $ca
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
EOF
}
stunnel_pid=""
pg_start_stunnel() {
    pg_stop_pid stunnel_pid
    stunnel4 "$work/stunnel.conf" >>"$work/stunnel-stderr.log" 2>&1 &
    stunnel_pid=$!
    wait_for_port "$stunnel_port" "stunnel (see $work/stunnel.log)"
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
