//! `intransit bench` against real servers: the in-process `--self`
//! server, PostgreSQL, MariaDB and Redis each with native TLS and through
//! the proxy. Runs last a fraction of a second; the tests check the JSON
//! report's structure (configurations, statuses, counts, ordered
//! percentiles) and that what a server declines is reported as refused.
//! They never check a timing.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use intransit_testkit::{
    MariaDbAuth, MariaDbOptions, MariaDbServer, MariaDbSsl, PgOptions, PgServer, PgSsl,
    RedisServer, RedisTls,
};
use serde_json::Value;

use crate::support::*;
use crate::upstream_tls::db_pki;

/// Runs `intransit bench ARGS --format json` with `env`, expects success,
/// and returns the report.
fn bench(args: &[&str], env: &[(&str, &str)]) -> Value {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .args(["--format", "json"])
        .envs(env.iter().copied())
        .output()
        .expect("running intransit bench");
    assert!(
        out.status.success(),
        "intransit bench {args:?} failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&out)))
}

/// The run of `configuration` against `target`.
fn run<'a>(report: &'a Value, configuration: &str, target: &str) -> &'a Value {
    report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["configuration"] == configuration && r["target"] == target)
        .unwrap_or_else(|| panic!("no run {configuration} against {target} in {report:#}"))
}

/// A successful run: operations, no failures, percentiles in order.
fn assert_measured(run: &Value) {
    assert_eq!(run["status"], "ok", "{run:#}");
    assert!(run["operations"].as_u64().unwrap() > 0, "{run:#}");
    assert!(run["ops_per_s"].as_f64().unwrap() > 0.0, "{run:#}");
    let l = &run["latency_ms"];
    let get = |k: &str| {
        l[k].as_f64()
            .unwrap_or_else(|| panic!("latency_ms.{k}: {run:#}"))
    };
    assert!(get("min") > 0.0, "{run:#}");
    assert!(get("min") <= get("p50"), "{run:#}");
    assert!(get("p50") <= get("p90"), "{run:#}");
    assert!(get("p90") <= get("p99"), "{run:#}");
    assert!(get("p99") <= get("max"), "{run:#}");
}

fn assert_refused(run: &Value, because: &str) {
    assert_eq!(run["status"], "refused", "{run:#}");
    assert_eq!(run["operations"], 0, "{run:#}");
    assert!(run["latency_ms"].is_null(), "{run:#}");
    let reason = run["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(because), "expected {because:?} in {run:#}");
}

/// The test CA and the database CA in one file, so one `--ca` verifies a
/// database's own certificate and the proxy's.
fn ca_bundle() -> &'static PathBuf {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let path = pki().dir.join("bench-ca-bundle.pem");
        let mut pem = std::fs::read_to_string(&pki().ca).unwrap();
        pem.push_str(&std::fs::read_to_string(&db_pki().ca).unwrap());
        std::fs::write(&path, pem).unwrap();
        path
    })
}

/// A proxy listener that asks for client certificates but lets clients
/// without one finish the handshake, so every configuration can be
/// measured through it.
fn optional_cert_listener(upstream: &str, protocol: &str, upstream_tls: bool) -> String {
    let mut toml = listener_toml(
        upstream,
        "client_auth = \"optional\"",
        &format!("protocol = \"{protocol}\""),
    );
    if upstream_tls {
        toml.push_str(&format!(
            "[listener.upstream_tls]\nca = \"{}\"\n",
            db_pki().ca.display()
        ));
    }
    toml
}

#[test]
fn self_measures_every_configuration_and_tls12_is_refused_by_the_default_policy() {
    let report = bench(&["handshake", "--self", "--duration", "200ms"], &[]);
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["command"], "handshake");
    assert_eq!(report["interrupted"], false);
    let target = report["targets"][0].as_str().unwrap().to_owned();
    assert_eq!(target, "self");
    let url = report["urls"][0].as_str().unwrap();
    assert!(url.starts_with("tls://127.0.0.1:"), "{url}");
    assert_eq!(run(&report, "tls1.3", &target)["url"], url);
    assert_eq!(report["runs"].as_array().unwrap().len(), 6);
    assert_refused(run(&report, "tls1.2", &target), "ProtocolVersion");
    for c in [
        "tls1.3",
        "tls1.3-resumed",
        "tls1.3-client-cert",
        "x25519",
        "x25519mlkem768",
    ] {
        assert_measured(run(&report, c, &target));
        assert_eq!(run(&report, c, &target)["tls"]["version"], "TLSv1_3");
    }
    let resumed = run(&report, "tls1.3-resumed", &target);
    assert!(resumed["resumed"].as_u64().unwrap() > 0, "{resumed:#}");
    assert_eq!(run(&report, "x25519", &target)["tls"]["group"], "X25519");
    assert_eq!(
        run(&report, "x25519mlkem768", &target)["tls"]["group"],
        "X25519MLKEM768"
    );
    // The full handshakes resumed nothing.
    assert!(run(&report, "tls1.3", &target)["resumed"].is_null());
}

#[test]
fn self_as_a_table_and_as_markdown() {
    for (format, marker) in [
        ("table", "configuration  "),
        ("markdown", "| configuration |"),
    ] {
        let out = Command::new(BIN)
            .args(["bench", "handshake", "--self", "--count", "5"])
            .args(["--configurations", "tls1.2,x25519", "--format", format])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(marker), "{text}");
        assert!(text.contains("x25519"), "{text}");
        assert!(text.contains("refused"), "{text}");
        // Progress goes to a terminal only; stderr is a pipe here.
        assert_eq!(stderr(&out), "", "progress on a pipe");
    }
}

#[test]
fn targets_that_are_not_loopback_need_allow_remote_and_bad_flags_are_refused() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "handshake",
            "postgres://192.0.2.1:5432",
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--allow-remote 192.0.2.1"),
        "{}",
        stderr(&out)
    );
    for (flag, value, says) in [
        ("--duration", "11m", "--duration is at most"),
        ("--concurrency", "100000", "--concurrency is from"),
        ("--configurations", "tls1.1", "unknown configuration"),
    ] {
        let out = Command::new(BIN)
            .args(["bench", "handshake", "--self", flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(stderr(&out).contains(says), "{flag}: {}", stderr(&out));
    }
}

/// A PostgreSQL with native TLS (TLS 1.3 only) that trusts client
/// certificates of both test CAs, and one user per login method this
/// client speaks.
fn auth_pg() -> &'static PgServer {
    static PG: OnceLock<PgServer> = OnceLock::new();
    PG.get_or_init(|| {
        let p = db_pki();
        let pg = PgServer::start(PgOptions {
            ssl: Some(PgSsl {
                cert_file: p.server.chain.clone(),
                key_file: p.server.key.clone(),
                ca_file: ca_bundle().clone(),
            }),
            hba_first: vec![
                "hostssl all bench_trust 127.0.0.1/32 trust".into(),
                "hostssl all bench_clear 127.0.0.1/32 password".into(),
                "hostssl all bench_md5 127.0.0.1/32 md5".into(),
                "hostssl all bench_scram 127.0.0.1/32 scram-sha-256".into(),
                "hostnossl all all 127.0.0.1/32 reject".into(),
            ],
            ..PgOptions::default()
        })
        .expect("PostgreSQL with native TLS");
        pg.psql(
            "postgres",
            "CREATE ROLE bench_trust LOGIN; \
             CREATE ROLE bench_clear LOGIN PASSWORD 'clear-pw'; \
             CREATE ROLE bench_scram LOGIN PASSWORD 'scram-pw'; \
             SET password_encryption = 'md5'; \
             CREATE ROLE bench_md5 LOGIN PASSWORD 'md5-pw';",
        )
        .expect("bench roles");
        pg
    })
}

#[test]
fn handshake_postgres_native_and_through_the_proxy() {
    let pg = auth_pg();
    let proxy = ProxyProcess::start(&optional_cert_listener(
        &format!("127.0.0.1:{}", pg.port()),
        "postgres",
        true,
    ));
    let native = format!("postgres://127.0.0.1:{}", pg.port());
    let through = format!("postgres://127.0.0.1:{}", proxy.port());
    let pid = format!("proxy={}", proxy.pid());
    let ca = ca_bundle().to_str().unwrap();
    let trainer = &pki().trainer;
    let report = bench(
        &[
            "handshake",
            &native,
            "--compare",
            &through,
            "--ca",
            ca,
            "--sni",
            "localhost",
            "--cert",
            trainer.chain.to_str().unwrap(),
            "--key",
            trainer.key.to_str().unwrap(),
            "--duration",
            "200ms",
            "--repeat",
            "2",
            "--concurrency",
            "2",
            "--pid",
            &pid,
        ],
        &[],
    );
    assert_eq!(report["runs"].as_array().unwrap().len(), 12);
    // The test PostgreSQL allows TLS 1.3 only; so does the proxy.
    assert_refused(run(&report, "tls1.2", &native), "alert");
    assert_refused(run(&report, "tls1.2", &through), "ProtocolVersion");
    // PostgreSQL turns session tickets and its session cache off.
    assert_refused(
        run(&report, "tls1.3-resumed", &native),
        "resumed no session",
    );
    assert_measured(run(&report, "tls1.3-resumed", &through));
    for c in ["tls1.3", "tls1.3-client-cert"] {
        for t in [&native, &through] {
            assert_measured(run(&report, c, t));
            assert!(run(&report, c, t)["ops_per_s_rounds"]["median"]
                .as_f64()
                .is_some());
        }
    }
    // PostgreSQL before 18 allows one group, ssl_ecdh_curve = prime256v1,
    // so the default offer costs it a HelloRetryRequest and a client that
    // offers only X25519 is refused; OpenSSL before 3.5 has no
    // X25519MLKEM768. Each is measured wherever the server has it.
    for (c, group) in [("x25519", "X25519"), ("x25519mlkem768", "X25519MLKEM768")] {
        let r = run(&report, c, &native);
        if r["status"] == "ok" {
            assert_eq!(r["tls"]["group"], group);
        } else {
            assert_refused(r, "HandshakeFailure");
        }
        assert_measured(run(&report, c, &through));
        assert_eq!(run(&report, c, &through)["tls"]["group"], group);
    }
    let default_offer = &run(&report, "tls1.3", &native)["tls"];
    if default_offer["group"] == "secp256r1" {
        assert_eq!(default_offer["hello_retry"], true, "{default_offer:#}");
    }
    assert_eq!(
        run(&report, "tls1.3", &through)["tls"]["hello_retry"],
        false
    );
    // Ratios against the first target, and the proxy's cost from /proc.
    let ratios = report["ratios"].as_array().unwrap();
    assert!(
        ratios
            .iter()
            .any(|r| r["configuration"] == "tls1.3" && r["target"] == through.as_str()),
        "{ratios:#?}"
    );
    let cost = &run(&report, "tls1.3", &through)["processes"][0];
    assert_eq!(cost["label"], "proxy");
    assert_eq!(cost["pid"], proxy.pid());
    assert!(cost["peak_rss_kib"].as_u64().unwrap() > 0, "{cost:#}");
    assert!(cost["cpu_ms_per_1000_ops"].as_f64().is_some(), "{cost:#}");
}

#[test]
fn a_proxy_that_requires_client_certificates_is_measured_in_every_configuration_with_one() {
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let target = format!("postgres://127.0.0.1:{}", proxy.port());
    let report = bench(
        &[
            "handshake",
            &target,
            "--ca",
            pki().ca.to_str().unwrap(),
            "--sni",
            "localhost",
            "--cert",
            pki().trainer.chain.to_str().unwrap(),
            "--key",
            pki().trainer.key.to_str().unwrap(),
            "--configurations",
            "tls1.3,tls1.3-resumed,tls1.3-client-cert,x25519,x25519mlkem768",
            "--count",
            "20",
        ],
        &[],
    );
    // With --cert every configuration presents it when asked, so all of
    // them are measured through a proxy that requires one.
    for configuration in [
        "tls1.3",
        "tls1.3-resumed",
        "tls1.3-client-cert",
        "x25519",
        "x25519mlkem768",
    ] {
        let measured = run(&report, configuration, &target);
        assert_measured(measured);
        assert_eq!(measured["operations"], 20, "{configuration}");
    }
    // Without it, the proxy's alert is a refusal.
    let report = bench(
        &[
            "handshake",
            &target,
            "--ca",
            pki().ca.to_str().unwrap(),
            "--sni",
            "localhost",
            "--configurations",
            "tls1.3",
            "--count",
            "5",
        ],
        &[],
    );
    assert_refused(run(&report, "tls1.3", &target), "CertificateRequired");
    // A query without a client certificate: the proxy's alert after the
    // handshake is a refusal too, not an error.
    let report = bench(
        &[
            "query",
            &target,
            "--ca",
            pki().ca.to_str().unwrap(),
            "--sni",
            "localhost",
            "--user",
            "nobody",
            "--count",
            "1",
        ],
        &[],
    );
    assert_refused(run(&report, "select-1", &target), "CertificateRequired");
    // Without --cert, the client-certificate configuration is skipped.
    let report = bench(
        &[
            "handshake",
            &target,
            "--ca",
            pki().ca.to_str().unwrap(),
            "--configurations",
            "tls1.3-client-cert",
            "--count",
            "1",
        ],
        &[],
    );
    assert_eq!(
        run(&report, "tls1.3-client-cert", &target)["status"],
        "skipped"
    );
}

#[test]
fn query_postgres_with_every_login_method() {
    let pg = auth_pg();
    let target = format!("postgres://127.0.0.1:{}", pg.port());
    let ca = db_pki().ca.to_str().unwrap().to_owned();
    for (user, password) in [
        ("bench_trust", None),
        ("bench_clear", Some("clear-pw")),
        ("bench_md5", Some("md5-pw")),
        ("bench_scram", Some("scram-pw")),
    ] {
        let env: Vec<(&str, &str)> = password.map(|p| ("BENCH_PW", p)).into_iter().collect();
        let mut args = vec![
            "query",
            &target,
            "--ca",
            &ca,
            "--sni",
            "localhost",
            "--user",
            user,
            "--database",
            "postgres",
            "--duration",
            "200ms",
        ];
        if password.is_some() {
            args.extend(["--password-env", "BENCH_PW"]);
        }
        let report = bench(&args, &env);
        let r = run(&report, "select-1", &target);
        assert_measured(r);
        assert_eq!(r["failures"], 0, "{user}: {r:#}");
    }
    // A wrong password is an error with PostgreSQL's message and exit 1.
    let out = Command::new(BIN)
        .args(["bench", "query", &target, "--ca", &ca, "--sni", "localhost"])
        .args([
            "--user",
            "bench_scram",
            "--database",
            "postgres",
            "--count",
            "1",
        ])
        .args(["--format", "json"])
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = run(&report, "select-1", &target);
    assert_eq!(r["status"], "error");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("password authentication failed"),
        "{r:#}"
    );
}

#[test]
fn query_postgres_native_vs_proxy_persistent_and_new_connection_each() {
    let pg = auth_pg();
    let proxy = ProxyProcess::start(&optional_cert_listener(
        &format!("127.0.0.1:{}", pg.port()),
        "postgres",
        true,
    ));
    // Named targets: NAME=URL.
    let native = format!("native=postgres://127.0.0.1:{}", pg.port());
    let through = format!("proxy=postgres://127.0.0.1:{}", proxy.port());
    let ca = ca_bundle().to_str().unwrap();
    for (extra, name) in [
        (None, "select-1"),
        (Some("--new-connection-each"), "select-1-new-connection"),
    ] {
        let mut args = vec![
            "query",
            &native,
            "--compare",
            &through,
            "--ca",
            ca,
            "--sni",
            "localhost",
            "--user",
            "bench_scram",
            "--database",
            "postgres",
            "--duration",
            "200ms",
            "--concurrency",
            "2",
        ];
        args.extend(extra);
        let report = bench(&args, &[("PGPASSWORD", "scram-pw")]);
        assert_eq!(report["targets"], serde_json::json!(["native", "proxy"]));
        assert_measured(run(&report, name, "native"));
        assert_measured(run(&report, name, "proxy"));
        assert_eq!(
            run(&report, name, "proxy")["url"],
            format!("postgres://127.0.0.1:{}", proxy.port())
        );
        let ratios = report["ratios"].as_array().unwrap();
        assert_eq!(ratios.len(), 1);
        assert_eq!(ratios[0]["baseline"], "native");
    }
}

#[test]
fn mariadb_native_and_through_the_proxy() {
    let p = db_pki();
    let server = MariaDbServer::start(MariaDbOptions {
        ssl: Some(MariaDbSsl {
            cert_file: p.server.chain.clone(),
            key_file: p.server.key.clone(),
            ca_file: p.ca.clone(),
        }),
        ..MariaDbOptions::default()
    })
    .expect("MariaDB with TLS");
    let user = intransit_testkit::unique_name("benchmy");
    let password = format!("pw-{user}");
    server
        .create_user(&user, &password, MariaDbAuth::NativePassword)
        .expect("user");
    let proxy = ProxyProcess::start(&optional_cert_listener(&server.addr(), "mysql", false));
    let native = format!("mysql://127.0.0.1:{}", server.port());
    let through = format!("mysql://127.0.0.1:{}", proxy.port());
    let ca = ca_bundle().to_str().unwrap();
    let common = [
        "--compare",
        &through,
        "--ca",
        ca,
        "--sni",
        "localhost",
        "--duration",
        "200ms",
    ];

    let mut args = vec![
        "handshake",
        &native,
        "--configurations",
        "tls1.2,tls1.3,x25519",
    ];
    args.extend(common);
    let report = bench(&args, &[]);
    // MariaDB allows TLS 1.2; the proxy's default policy does not.
    assert_measured(run(&report, "tls1.2", &native));
    assert_eq!(run(&report, "tls1.2", &native)["tls"]["version"], "TLSv1_2");
    assert_refused(run(&report, "tls1.2", &through), "ProtocolVersion");
    for t in [&native, &through] {
        assert_measured(run(&report, "tls1.3", t));
        assert_measured(run(&report, "x25519", t));
    }

    let mut args = vec![
        "query",
        &native,
        "--user",
        &user,
        "--password-env",
        "BENCH_PW",
    ];
    args.extend(common);
    let report = bench(&args, &[("BENCH_PW", &password)]);
    assert_measured(run(&report, "select-1", &native));
    assert_measured(run(&report, "select-1", &through));
}

#[test]
fn redis_query_and_throughput_native_and_through_the_proxy() {
    let p = db_pki();
    let redis = RedisServer::start_with_tls(RedisTls {
        cert_file: p.server.chain.clone(),
        key_file: p.server.key.clone(),
        ca_file: p.ca.clone(),
    })
    .expect("Redis with TLS");
    let proxy = ProxyProcess::start(&optional_cert_listener(&redis.addr(), "tls", false));
    let native = format!("tls://127.0.0.1:{}", redis.tls_port().expect("TLS port"));
    let through = format!("tls://127.0.0.1:{}", proxy.port());
    let ca = ca_bundle().to_str().unwrap();
    let common = [
        "--compare",
        &through,
        "--ca",
        ca,
        "--sni",
        "localhost",
        "--duration",
        "200ms",
    ];

    let mut args = vec!["query", &native];
    args.extend(common);
    let report = bench(&args, &[]);
    assert_measured(run(&report, "redis-ping", &native));
    assert_measured(run(&report, "redis-ping", &through));

    let mut args = vec!["throughput", &native, "--size", "64KiB"];
    args.extend(common);
    let report = bench(&args, &[]);
    for t in [&native, &through] {
        let r = run(&report, "get-64KiB", t);
        assert_measured(r);
        let ops = r["operations"].as_u64().unwrap();
        assert_eq!(r["bytes"].as_u64().unwrap(), ops * 65536, "{r:#}");
        assert!(r["mb_per_s"].as_f64().unwrap() > 0.0, "{r:#}");
    }
    // The value is removed afterwards.
    let cli = intransit_testkit::require_tool("redis-cli", "redis-tools").unwrap();
    let out = Command::new(cli)
        .args([
            "-p",
            &redis.port().to_string(),
            "EXISTS",
            "intransit-bench:throughput",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "0");

    // Throughput needs a tls:// target.
    let report = bench(
        &[
            "throughput",
            "--ca",
            ca,
            "postgres://127.0.0.1:5432",
            "--count",
            "1",
        ],
        &[],
    );
    assert_eq!(report["runs"][0]["status"], "skipped");
}

#[test]
fn ctrl_c_stops_the_run_and_still_prints_the_report() {
    let child = Command::new(BIN)
        .args(["bench", "handshake", "--self", "--duration", "60s"])
        .args(["--configurations", "tls1.3,x25519", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Give it time to start measuring; the assertions hold either way.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // A process started with SIGINT ignored (a background job of a
    // non-interactive shell) passes that on, and then only SIGTERM, which
    // takes the same path, can stop the child.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    signal(child.id(), if ignored & 0b10 == 0 { "INT" } else { "TERM" });
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", stdout(&out)));
    assert_eq!(report["interrupted"], true);
    for r in report["runs"].as_array().unwrap() {
        match r["status"].as_str().unwrap() {
            "ok" => assert_measured(r),
            "skipped" => assert!(
                r["reason"].as_str().unwrap().contains("interrupted"),
                "{r:#}"
            ),
            other => panic!("{other}: {r:#}"),
        }
    }
    // The second configuration never ran: the stop ended the first.
    assert_eq!(
        run(&report, "x25519", report["targets"][0].as_str().unwrap())["status"],
        "skipped"
    );
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
}
