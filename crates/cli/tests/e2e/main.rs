//! End-to-end tests: the built `intransit` binary in front of a real
//! PostgreSQL started by the tests, driven by real clients (psql, pgbench,
//! openssl s_client, tokio-postgres) and by raw protocol bytes.
//!
//! Modules:
//! - `support`: certificates, the proxy child process, sentinel upstream.
//! - `clients`: stock clients through the proxy (psql, pgbench, openssl, tokio-postgres).
//! - `negotiation`: PostgreSQL negotiation paths byte by byte (SSLRequest,
//!   GSSENCRequest, direct TLS, plaintext, cancel, pipelining).
//! - `policy`: client certificate and identity refusals, db_users.
//! - `robustness`: malformed input, stalls, unreachable upstream.
//! - `limits`: unauthenticated connections counted apart from
//!   `max_connections` (per address, eviction, a 1,000-socket flood), the
//!   over-limit refusal of verified clients, the soft limit on open files,
//!   the admin server's timeouts and connection cap.
//! - `lifecycle`: `intransit up`, `check-config`, drain on SIGTERM, SIGHUP reload.
//! - `command_line`: errors said once with what to do (a port in use),
//!   `up` leaving no state behind when it cannot start, relative paths in
//!   a configuration file, the configuration given as an argument or after
//!   `--config`, shell completions and manual pages.
//! - `ca`: `intransit ca`/`cert` checked by openssl, PostgreSQL and the proxy.
//! - `tls_protocol`: `protocol = "tls"` listeners in front of a real Redis.
//! - `sni`: routes chosen by the TLS server name, across two PostgreSQL servers.
//! - `mysql`: `protocol = "mysql"` listeners in front of a real MariaDB.
//! - `metrics`: the admin server's metrics, health, readiness and audit events under real traffic.
//! - `lint`: `intransit lint` on the files real PostgreSQL and MariaDB servers run with.
//! - `scan`: `intransit scan` against openssl s_server (legacy TLS), PostgreSQL three ways, MariaDB and the proxy.
//! - `status_page`: the admin status page in headless chromium.
//! - `rotate`: `intransit rotate` replacing the certificate of a PostgreSQL
//!   and a MariaDB with native TLS, under pgbench and client load.
//! - `upstream_tls`: the encrypted upstream leg (verify modes, pins, client
//!   certificate, failures) against PostgreSQL, MariaDB and Redis with TLS.
//! - `hot_reload`: certificates, keys, client CAs replaced under pgbench
//!   load (atomic renames, a Kubernetes Secret `..data` swap), refused
//!   material that leaves the old serving, SIGHUP and `intransit reload`,
//!   an SNI route on its own, and an upstream leg's pins and client
//!   certificate.
//! - `client_mode`: `mode = "client"` listeners: plaintext applications
//!   through a client-mode proxy to a server-mode proxy (the mutual-TLS
//!   tunnel) and to PostgreSQL, MariaDB and Redis with TLS of their own.
//! - `self_signed`: a PostgreSQL with an `openssl req -x509` certificate
//!   trusted as its own CA by scan, client mode and server mode, each
//!   verdict compared with libpq's.
//! - `stale_crl`: a CRL past its nextUpdate refuses (`crl_expired`) or,
//!   with `stale_crl = "allow"`, admits with a warning; `/readyz`,
//!   `/status` and `check-config` say so.
//! - `docs`: every ```toml example in README.md and docs/*.md passes
//!   `check-config` (fragments inside a minimal listener).
//! - `readme`: README.md's first section run as written (`up` in a fresh
//!   directory, then the psql command it prints), with its substitutions
//!   listed in the module.
//! - `bench`: `intransit bench` against `--self` and PostgreSQL, MariaDB and
//!   Redis with native TLS and through the proxy (report structure and
//!   refusals, never timings).
//! - `pool`: `[listener.pool]`: clients served on shared server connections
//!   (psql, pgbench, cancels, session and transaction mode, exhaustion).
//! - `deploy`: deploy/: the Kubernetes manifests against the Kubernetes
//!   and cert-manager schemas, their intransit configurations run as a
//!   tunnel with the probes answered, the Prometheus rules through
//!   promtool, and every metric the rules and the Grafana dashboard query
//!   found on a running proxy.
//! - `up_demo`: `intransit up --demo`: its own PostgreSQL and MariaDB
//!   behind the proxy with psql and mariadb, plaintext and certificate-less
//!   TLS refused by the database itself, data kept across runs, missing
//!   server programs, and the warning when nothing answers upstream.
//! - `pool_login`: the pool's own logins: a password from `auth_file`, and
//!   a certificate minted per database user for `hostssl ... cert`.
//! - `systemd_notify`: what `proxy` and `up` tell a `Type=notify` unit
//!   (READY, RELOADING, STOPPING, WATCHDOG) on a NOTIFY_SOCKET the test reads.
//! - `packaging`: the Debian package (contents, conffile, unit checked by
//!   `systemd-analyze`, installed, run and purged with dpkg) and the Python
//!   wheel (built with maturin, installed in a fresh venv).

//! - `acme`: `cert issue server --acme`, `cert renew` and `up --acme`
//!   against a real pebble (HTTP-01 and TLS-ALPN-01 validated for real),
//!   a refused challenge, an unreachable ACME server, psql `verify-full`,
//!   TLS-ALPN-01 answered by `up`'s and a running proxy's own listeners.

// Tests may panic on anything unexpected: that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acme;
mod bench;
mod ca;
mod client_mode;
mod clients;
mod command_line;
mod deploy;
mod docs;
mod hot_reload;
mod lifecycle;
mod limits;
mod lint;
mod metrics;
mod mysql;
mod negotiation;
mod packaging;
mod peers;
mod policy;
mod pool;
mod pool_login;
mod readme;
mod robustness;
mod rotate;
mod scan;
mod self_signed;
mod sni;
mod stale_crl;
mod status_page;
mod support;
mod systemd_notify;
mod tls_protocol;
mod up_demo;
mod upstream_tls;
