use super::*;

const MINIMAL: &str = r#"
[[listener]]
name = "orders"
listen = "127.0.0.1:6432"
upstream = "127.0.0.1:5432"
[listener.tls]
cert = "/etc/intransit/chain.pem"
key = "/etc/intransit/key.pem"
client_ca = "/etc/intransit/ca.pem"
"#;

fn error_of(text: &str) -> ConfigError {
    Config::from_toml(text).unwrap_err()
}

#[test]
fn minimal_listener_gets_secure_defaults() {
    let c = Config::from_toml(MINIMAL).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.name, "orders");
    assert_eq!(l.protocol, Protocol::Postgres);
    assert_eq!(l.mode, Mode::Server);
    assert_eq!(l.tls.min_version, TlsVersion::V1_3);
    assert_eq!(l.tls.client_auth, ClientAuth::Required);
    assert_eq!(l.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.unauthenticated.max, 512);
    assert_eq!(l.unauthenticated.per_address, 64);
    assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(c.worker_threads, None);
    assert_eq!(c.admin_limits, AdminLimits::default());
    assert_eq!(
        c.admin_limits.header_read_timeout,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(
        c.admin_limits.idle_timeout,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(c.admin_limits.max_connections, 128);
}

#[test]
fn unauthenticated_and_admin_limits_parse() {
    let text = MINIMAL
        .replace(
            "name = \"orders\"",
            "name = \"orders\"\nmax_unauthenticated = 100\nmax_unauthenticated_per_address = 5",
        )
        .replace(
            "[[listener]]",
            "admin_header_read_timeout = \"2s\"\nadmin_idle_timeout = \"3s\"\nadmin_max_connections = 7\n[[listener]]",
        );
    let c = Config::from_toml(&text).unwrap();
    let l = &c.listeners[0];
    assert_eq!(
        l.unauthenticated,
        UnauthenticatedLimits {
            max: 100,
            per_address: 5
        }
    );
    assert_eq!(
        c.admin_limits,
        AdminLimits {
            header_read_timeout: std::time::Duration::from_secs(2),
            idle_timeout: std::time::Duration::from_secs(3),
            max_connections: 7,
        }
    );
}

#[test]
fn full_policy_parses() {
    let text = r#"
state_dir = "/var/lib/intransit"
shutdown_grace = "5s"
[[listener]]
name = "orders"
protocol = "postgres"
listen = "0.0.0.0:6432"
upstream = "unix:/run/postgresql/.s.PGSQL.5432"
handshake_timeout = "3s"
max_connections = 50
[listener.tls]
cert = "c.pem"
key = "k.pem"
client_ca = "ca.pem"
crl = "ca.crl"
min_version = "1.2"
client_auth = "optional"
allow = ["uri:spiffe://prod/trainer", "dns:*.ml.internal", "cn:reporting"]
[[listener.db_users]]
identity = "uri:spiffe://prod/trainer"
users = ["trainer", "readonly"]
[[listener.db_users]]
identity_regex = "^cn:(.+)$"
user = "\\1"
"#;
    let c = Config::from_toml(text).unwrap();
    let l = &c.listeners[0];
    assert_eq!(
        l.upstream,
        Endpoint::Unix("/run/postgresql/.s.PGSQL.5432".into())
    );
    assert_eq!(l.tls.allow.patterns().len(), 3);
    assert!(!l.db_users.is_empty());
    assert_eq!(l.max_connections, 50);
    assert_eq!(c.shutdown_grace, std::time::Duration::from_secs(5));
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            &MINIMAL.replace("key = \"/etc/intransit/key.pem\"\n", ""),
            "listener[0].tls.key",
        ),
        (
            &MINIMAL.replace("127.0.0.1:6432", "6432"),
            "listener[0].listen",
        ),
        (
            &MINIMAL.replace("127.0.0.1:6432", "db.example:6432"),
            "listener[0].listen",
        ),
        (
            &format!("{MINIMAL}min_version = \"1.1\"\n"),
            "listener[0].tls.min_version",
        ),
        (
            &format!("{MINIMAL}client_auth = \"maybe\"\n"),
            "listener[0].tls.client_auth",
        ),
        (
            &format!("{MINIMAL}allow = [\"reporting\"]\n"),
            "listener[0].tls.allow[0]",
        ),
        (
            &MINIMAL.replace("client_ca = \"/etc/intransit/ca.pem\"\n", ""),
            "listener[0].tls.client_ca",
        ),
        (
            &MINIMAL.replace("name = \"orders\"", "name = \"orders\"\nprotocol = \"mongo\""),
            "listener[0].protocol",
        ),
        (
            &format!("{MINIMAL}[[listener.db_users]]\nidentity_regex = \"^cn:(.+)$\"\nuser = \"\\\\2\"\n"),
            "listener[0].db_users[0].identity_regex",
        ),
        (
            &format!("{MINIMAL}[[listener.db_users]]\nidentity = \"cn:x\"\n"),
            "listener[0].db_users[0].users",
        ),
        (
            &MINIMAL.replace("name = \"orders\"", "name = \"orders\"\nmax_connections = 0"),
            "listener[0].max_connections",
        ),
        (
            &MINIMAL.replace("name = \"orders\"", "name = \"orders\"\nhandshake_timeout = \"10\""),
            "listener[0].handshake_timeout",
        ),
        (
            &MINIMAL.replace("name = \"orders\"", "name = \"orders\"\nmax_unauthenticated = 0"),
            "listener[0].max_unauthenticated",
        ),
        (
            &MINIMAL.replace(
                "name = \"orders\"",
                "name = \"orders\"\nmax_unauthenticated_per_address = -1",
            ),
            "listener[0].max_unauthenticated_per_address",
        ),
        (
            &format!("admin_idle_timeout = \"0s\"\n{MINIMAL}"),
            "admin_idle_timeout",
        ),
        (
            &format!("admin_header_read_timeout = \"soon\"\n{MINIMAL}"),
            "admin_header_read_timeout",
        ),
        (
            &format!("admin_max_connections = 0\n{MINIMAL}"),
            "admin_max_connections",
        ),
        (&format!("{MINIMAL}{MINIMAL}"), "listener[1].name"),
        ("", "listener"),
    ];
    for (text, key) in cases {
        let e = error_of(text);
        assert_eq!(&e.key, key, "{e}");
        assert!(!e.message.is_empty());
    }
}

#[test]
fn unknown_keys_are_refused_with_position() {
    let e = error_of(&MINIMAL.replace("client_ca", "clinet_ca"));
    let text = e.to_string();
    assert!(text.contains("clinet_ca"), "{text}");
    assert!(text.contains("line"), "{text}");
}

#[test]
fn the_mysql_protocol_is_parsed() {
    let mysql = Config::from_toml(&MINIMAL.replace(
        "name = \"orders\"",
        "name = \"orders\"\nprotocol = \"mysql\"",
    ))
    .unwrap();
    assert_eq!(mysql.listeners[0].protocol, Protocol::Mysql);
}

const PIN_A: &str = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
const PIN_B: &str = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn with_upstream_tls(table: &str) -> Result<Config, ConfigError> {
    Config::from_toml(&format!("{MINIMAL}[listener.upstream_tls]\n{table}\n"))
}

#[test]
fn upstream_tls_defaults_to_verify_full_with_the_upstream_host() {
    let c = with_upstream_tls("ca = \"/etc/db-ca.pem\"").unwrap();
    let t = c.listeners[0].upstream_tls.clone().unwrap();
    assert_eq!(t.mode, UpstreamTlsMode::VerifyFull);
    assert_eq!(
        t.server_name,
        UpstreamServerName::Ip("127.0.0.1".parse().unwrap())
    );
    assert_eq!(t.min_version, TlsVersion::V1_3);
    assert!(t.pins.is_empty());
    assert!(Config::from_toml(MINIMAL).unwrap().listeners[0]
        .upstream_tls
        .is_none());
    let named = Config::from_toml(
        &(MINIMAL.replace("127.0.0.1:5432", "DB.internal:5432")
            + "[listener.upstream_tls]\nca = \"ca.pem\"\n"),
    )
    .unwrap();
    assert_eq!(
        named.listeners[0]
            .upstream_tls
            .as_ref()
            .unwrap()
            .server_name,
        UpstreamServerName::Dns("db.internal".into())
    );
}

#[test]
fn upstream_tls_full_table_parses() {
    let c = with_upstream_tls(&format!(
        "mode = \"verify-ca\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nserver_name = \"db.internal\"\npins = [\"{PIN_A}\", \"{PIN_B}\"]\nmin_version = \"1.2\""
    ))
    .unwrap();
    let t = c.listeners[0].upstream_tls.clone().unwrap();
    assert_eq!(t.mode, UpstreamTlsMode::VerifyCa);
    assert_eq!(t.cert.as_deref(), Some(std::path::Path::new("c.pem")));
    assert_eq!(t.server_name, UpstreamServerName::Dns("db.internal".into()));
    assert_eq!(t.pins.len(), 2);
    assert_eq!(t.pins[0].as_str(), PIN_A);
    assert_eq!(t.min_version, TlsVersion::V1_2);
    let pinned = with_upstream_tls(&format!("mode = \"pinned\"\npins = [\"{PIN_A}\"]")).unwrap();
    assert_eq!(
        pinned.listeners[0].upstream_tls.as_ref().unwrap().mode,
        UpstreamTlsMode::Pinned
    );
    let disabled = with_upstream_tls("mode = \"disable\"").unwrap();
    assert!(disabled.listeners[0].upstream_tls.is_none());
}

#[test]
fn upstream_tls_mistakes_name_the_key() {
    let k = "listener[0].upstream_tls";
    let cases: Vec<(String, String)> = vec![
        ("mode = \"verify\"".into(), format!("{k}.mode")),
        ("mode = \"verify-full\"".into(), format!("{k}.ca")),
        ("mode = \"verify-ca\"".into(), format!("{k}.ca")),
        ("mode = \"pinned\"".into(), format!("{k}.pins")),
        (
            format!("mode = \"pinned\"\npins = [\"{PIN_A}\"]\nca = \"ca.pem\""),
            format!("{k}.ca"),
        ),
        (
            "mode = \"require\"\nca = \"ca.pem\"".into(),
            format!("{k}.ca"),
        ),
        (
            format!("mode = \"require\"\npins = [\"{PIN_A}\"]"),
            format!("{k}.pins"),
        ),
        (
            "mode = \"disable\"\nca = \"ca.pem\"".into(),
            format!("{k}.ca"),
        ),
        (
            "ca = \"ca.pem\"\ncert = \"c.pem\"".into(),
            format!("{k}.key"),
        ),
        (
            "ca = \"ca.pem\"\nkey = \"k.pem\"".into(),
            format!("{k}.cert"),
        ),
        (
            "ca = \"ca.pem\"\nmin_version = \"1.1\"".into(),
            format!("{k}.min_version"),
        ),
        (
            "ca = \"ca.pem\"\nserver_name = \"db internal\"".into(),
            format!("{k}.server_name"),
        ),
        (
            "ca = \"ca.pem\"\npins = [\"md5/abc\"]".into(),
            format!("{k}.pins[0]"),
        ),
        (
            "ca = \"ca.pem\"\npins = [\"sha256/not base64!\"]".into(),
            format!("{k}.pins[0]"),
        ),
        (
            "ca = \"ca.pem\"\npins = [\"sha256/AAAA\"]".into(),
            format!("{k}.pins[0]"),
        ),
    ];
    for (table, key) in cases {
        let e = with_upstream_tls(&table).unwrap_err();
        assert_eq!(e.key, key, "{table}: {e}");
        assert!(!e.message.is_empty());
    }
    let e = with_upstream_tls("ca = \"ca.pem\"\nsslmode = \"x\"").unwrap_err();
    assert!(e.message.contains("sslmode"), "{e}");
}

#[test]
fn upstream_tls_over_a_unix_socket_is_refused() {
    let text = MINIMAL.replace("127.0.0.1:5432", "unix:/run/postgresql/.s.PGSQL.5432")
        + "[listener.upstream_tls]\nca = \"ca.pem\"\nserver_name = \"db\"\n";
    let e = error_of(&text);
    assert_eq!(e.key, "listener[0].upstream_tls");
    assert!(e.message.contains("unix"), "{e}");
}

#[test]
fn routes_inherit_upstream_tls_with_their_own_server_name() {
    let text = format!(
        r#"{MINIMAL}[listener.upstream_tls]
ca = "ca.pem"
pins = ["{PIN_A}"]
[[listener.route]]
server_name = "a.db.internal"
upstream = "a.db.internal:5432"
tls = {{ cert = "a.pem", key = "a.key" }}
[[listener.route]]
server_name = "b.db.internal"
upstream = "10.0.0.2:5432"
tls = {{ cert = "b.pem", key = "b.key" }}
upstream_tls = {{ mode = "disable" }}
"#
    );
    let c = Config::from_toml(&text).unwrap();
    let l = &c.listeners[0];
    let a = l.routes[0].upstream_tls.as_ref().unwrap();
    assert_eq!(
        a.server_name,
        UpstreamServerName::Dns("a.db.internal".into())
    );
    assert_eq!(a.pins[0].as_str(), PIN_A);
    assert!(l.routes[1].upstream_tls.is_none());
}

/// A route on a unix socket that inherits its listener's upstream TLS is
/// refused like a listener on one, also when the listener names its
/// server explicitly (nothing is derived from the route's upstream then).
#[test]
fn a_unix_socket_route_inheriting_upstream_tls_is_refused() {
    for server_name in ["", "server_name = \"db.internal\"\n"] {
        let text = format!(
            r#"{MINIMAL}[listener.upstream_tls]
ca = "ca.pem"
{server_name}[[listener.route]]
server_name = "a.db.internal"
upstream = "unix:/run/postgresql/.s.PGSQL.5432"
tls = {{ cert = "a.pem", key = "a.key" }}
"#
        );
        let e = error_of(&text);
        assert_eq!(e.key, "listener[0].route[0].upstream_tls", "{e}");
        assert!(e.message.contains("unix"), "{e}");
    }
}

#[test]
fn identities_need_certificates() {
    let e = error_of(&format!(
        "{}client_auth = \"none\"\nallow = [\"cn:x\"]\n",
        MINIMAL.replace("client_ca = \"/etc/intransit/ca.pem\"\n", "")
    ));
    assert_eq!(e.key, "listener[0].tls.allow");
}

#[test]
fn endpoints() {
    assert_eq!(
        Endpoint::parse("[::1]:5432").unwrap(),
        Endpoint::Tcp {
            host: "::1".into(),
            port: 5432
        }
    );
    assert_eq!(
        Endpoint::parse("db.internal:5432").unwrap(),
        Endpoint::Tcp {
            host: "db.internal".into(),
            port: 5432
        }
    );
    assert_eq!(
        Endpoint::parse("[::1]:5432").unwrap().to_string(),
        "[::1]:5432"
    );
    assert!(Endpoint::parse("unix:").is_err());
    assert!(Endpoint::parse("db.internal").is_err());
    assert!(Endpoint::parse("db:99999").is_err());
}

/// An endpoint prints as text that parses back to it, so two spellings of
/// one address compare equal (the duplicate-listen check relies on it),
/// and IPv6 addresses need their brackets. "::0]:3" used to parse as host
/// "::0", which printed as "[::0]:3" and read back as "::".
#[test]
fn endpoints_have_one_spelling_and_ipv6_needs_brackets() {
    for text in ["::0]:3", "[::0:3", "::1:5432", "a:b:5432", "[db]x]:1"] {
        assert!(Endpoint::parse(text).is_err(), "{text}");
    }
    assert_eq!(Endpoint::parse("[::0]:3"), Endpoint::parse("[::]:3"));
    assert_eq!(
        Endpoint::parse("[127.0.0.1]:5432"),
        Endpoint::parse("127.0.0.1:5432")
    );
    for text in [
        "[::0]:3",
        "[fe80::1%eth0]:5432",
        "[db.internal]:5432",
        "[::ffff:127.0.0.1]:6432",
        "localhost:0",
        "unix:/run/postgresql/.s.PGSQL.5432",
    ] {
        let endpoint = Endpoint::parse(text).unwrap();
        assert_eq!(
            Endpoint::parse(&endpoint.to_string()),
            Ok(endpoint),
            "{text}"
        );
    }
}

#[test]
fn tls_protocol_listeners() {
    let text = MINIMAL.replace("name = \"orders\"", "name = \"orders\"\nprotocol = \"tls\"");
    let c = Config::from_toml(&text).unwrap();
    assert_eq!(c.listeners[0].protocol, Protocol::Tls);
    let e = error_of(&format!(
        "{text}[[listener.db_users]]\nidentity = \"cn:x\"\nusers = [\"y\"]\n"
    ));
    assert_eq!(e.key, "listener[0].db_users");
}

#[test]
fn routes_inherit_policy_and_need_their_own_certificate() {
    let text = format!(
        r#"{MINIMAL}min_version = "1.2"
allow = ["cn:reporting"]
[[listener.route]]
server_name = "orders.db.internal"
upstream = "10.0.0.5:5432"
tls = {{ cert = "orders.pem", key = "orders-key.pem" }}
[[listener.route]]
server_name = "*.ml.internal"
tls = {{ cert = "ml.pem", key = "ml-key.pem", client_auth = "optional", allow = ["uri:spiffe://prod/*"] }}
"#
    );
    let c = Config::from_toml(&text).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.routes.len(), 2);
    let orders = &l.routes[0];
    assert_eq!(orders.tls.min_version, TlsVersion::V1_2);
    assert_eq!(orders.tls.allow.patterns().len(), 1);
    assert_eq!(orders.tls.client_ca, l.tls.client_ca);
    assert_eq!(
        orders.upstream,
        Endpoint::Tcp {
            host: "10.0.0.5".into(),
            port: 5432
        }
    );
    let ml = &l.routes[1];
    assert_eq!(ml.upstream, l.upstream);
    assert_eq!(ml.tls.client_auth, ClientAuth::Optional);
    assert!(!l.require_sni_match);

    let e = error_of(&format!(
        "{MINIMAL}[[listener.route]]\nserver_name = \"a.example\"\n"
    ));
    assert_eq!(e.key, "listener[0].route[0].tls");
    let e = error_of(&format!(
        "{MINIMAL}[[listener.route]]\nserver_name = \"10.0.0.1\"\ntls = {{ cert = \"c\", key = \"k\" }}\n"
    ));
    assert_eq!(e.key, "listener[0].route[0].server_name");
    let dup =
        "[[listener.route]]\nserver_name = \"a.example\"\ntls = { cert = \"c\", key = \"k\" }\n";
    let e = error_of(&format!("{MINIMAL}{dup}{dup}"));
    assert_eq!(e.key, "listener[0].route[1].server_name");
}

#[test]
fn server_name_patterns() {
    let exact = ServerNamePattern::parse("Orders.DB.internal").unwrap();
    assert!(exact.matches("orders.db.internal"));
    assert!(!exact.matches("x.orders.db.internal"));
    let wild = ServerNamePattern::parse("*.db.internal").unwrap();
    assert!(wild.matches("orders.db.internal"));
    assert!(wild.matches("ORDERS.db.internal"));
    assert!(!wild.matches("db.internal"));
    assert!(!wild.matches("a.b.db.internal"));
    assert_eq!(wild.to_string(), "*.db.internal");
    for bad in ["*.internal", "", "a..b", "10.0.0.1x/", "*"] {
        assert!(ServerNamePattern::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_admin_server_listens_on_loopback_only() {
    let config = Config::from_toml(&format!("admin = \"127.0.0.1:9090\"\n{MINIMAL}")).unwrap();
    assert_eq!(config.admin, Some("127.0.0.1:9090".parse().unwrap()));
    let config = Config::from_toml(&format!("admin = \"[::1]:0\"\n{MINIMAL}")).unwrap();
    assert!(config.admin.is_some_and(|a| a.ip().is_loopback()));
    assert!(Config::from_toml(MINIMAL).unwrap().admin.is_none());
    let e = error_of(&format!("admin = \"0.0.0.0:9090\"\n{MINIMAL}"));
    assert_eq!(e.key, "admin");
    assert!(e.message.contains("loopback"), "{}", e.message);
    let e = error_of(&format!("admin = \"localhost:9090\"\n{MINIMAL}"));
    assert!(e.message.contains("IP address and port"), "{}", e.message);
}

#[test]
fn the_admin_server_needs_tls_to_leave_loopback() {
    let tls = "[admin_tls]\ncert = \"/etc/a/cert.pem\"\nkey = \"/etc/a/key.pem\"\nclient_ca = \"/etc/a/ca.pem\"\n";
    let config = Config::from_toml(&format!("admin = \"0.0.0.0:9443\"\n{MINIMAL}{tls}")).unwrap();
    assert_eq!(config.admin, Some("0.0.0.0:9443".parse().unwrap()));
    let admin_tls = config.admin_tls.unwrap();
    assert_eq!(admin_tls.client_auth, ClientAuth::Required);
    // client_auth defaults to required, which needs client_ca.
    let e = error_of(&format!(
        "admin = \"0.0.0.0:9443\"\n{MINIMAL}{}",
        tls.replace("client_ca = \"/etc/a/ca.pem\"\n", "")
    ));
    assert_eq!(e.key, "admin_tls.client_ca");
    let e = error_of(&format!("admin = \"0.0.0.0:9443\"\n{MINIMAL}"));
    assert!(e.message.contains("[admin_tls]"), "{}", e.message);
    let e = error_of(&format!("{MINIMAL}{tls}"));
    assert_eq!(e.key, "admin_tls");
}

const CLIENT: &str = r#"
[[listener]]
name = "orders-out"
mode = "client"
listen = "127.0.0.1:6432"
upstream = "db.internal:5432"
[listener.upstream_tls]
ca = "/etc/intransit/db-ca.pem"
cert = "/etc/intransit/app/chain.pem"
key = "/etc/intransit/app/key.pem"
"#;

#[test]
fn client_mode_listener_parses_with_verify_full() {
    let c = Config::from_toml(CLIENT).unwrap();
    assert!(c.listeners.is_empty());
    let l = &c.client_listeners[0];
    assert_eq!(l.name, "orders-out");
    assert_eq!(l.protocol, Protocol::Postgres);
    assert!(!l.allow_remote_plaintext);
    assert_eq!(l.upstream_tls.mode, UpstreamTlsMode::VerifyFull);
    assert_eq!(
        l.upstream_tls.server_name,
        UpstreamServerName::Dns("db.internal".into())
    );
    assert!(!l.upstream_tls.direct);
    assert_eq!(l.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
    assert_eq!(l.max_connections, DEFAULT_MAX_CONNECTIONS);

    let direct = Config::from_toml(&format!("{CLIENT}direct = true\n")).unwrap();
    assert!(direct.client_listeners[0].upstream_tls.direct);
    for listen in [
        "[::1]:6432",
        "localhost:6432",
        "127.0.0.53:6432",
        "unix:/run/app/pg.sock",
    ] {
        let c = Config::from_toml(&CLIENT.replace("127.0.0.1:6432", listen)).unwrap();
        assert_eq!(c.client_listeners.len(), 1, "{listen}");
    }
    for protocol in ["mysql", "tls"] {
        let c = Config::from_toml(&CLIENT.replace(
            "mode = \"client\"",
            &format!("mode = \"client\"\nprotocol = \"{protocol}\""),
        ))
        .unwrap();
        assert_eq!(c.client_listeners[0].protocol.as_str(), protocol);
    }
}

#[test]
fn client_mode_refuses_remote_plaintext_unless_allowed() {
    for listen in ["0.0.0.0:6432", "[::]:6432", "10.1.2.3:6432"] {
        let e = error_of(&CLIENT.replace("127.0.0.1:6432", listen));
        assert_eq!(e.key, "listener[0].listen", "{listen}: {e}");
        assert!(e.message.contains("allow_remote_plaintext"), "{e}");
        assert!(e.message.contains("loopback"), "{e}");
    }
    let allowed = Config::from_toml(&CLIENT.replace(
        "listen = \"127.0.0.1:6432\"",
        "listen = \"0.0.0.0:6432\"\nallow_remote_plaintext = true",
    ))
    .unwrap();
    assert!(allowed.client_listeners[0].allow_remote_plaintext);

    // A server-mode listener never accepts plaintext: the key is refused.
    let e = error_of(&MINIMAL.replace(
        "[listener.tls]",
        "allow_remote_plaintext = true\n[listener.tls]",
    ));
    assert_eq!(e.key, "listener[0].allow_remote_plaintext", "{e}");
}

#[test]
fn client_mode_mistakes_name_the_key_and_the_fix() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{CLIENT}[listener.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"),
            "listener[0].tls",
            "upstream_tls",
        ),
        (
            CLIENT.replace("[listener.upstream_tls]", "[[listener.db_users]]\nidentity = \"cn:x\"\nusers = [\"x\"]\n[listener.upstream_tls]"),
            "listener[0].db_users",
            "plaintext",
        ),
        (
            CLIENT.replace("[listener.upstream_tls]", "[[listener.route]]\nserver_name = \"a.db.internal\"\ntls = { cert = \"a.pem\", key = \"a.key\" }\n[listener.upstream_tls]"),
            "listener[0].route",
            "one client-mode listener per upstream",
        ),
        (
            CLIENT.replace("upstream = ", "require_sni_match = true\nupstream = "),
            "listener[0].require_sni_match",
            "server name",
        ),
        (
            CLIENT.replace("upstream = ", "max_unauthenticated = 10\nupstream = "),
            "listener[0].max_unauthenticated",
            "max_connections is its only limit",
        ),
        (
            CLIENT.replace("upstream = ", "max_unauthenticated_per_address = 10\nupstream = "),
            "listener[0].max_unauthenticated_per_address",
            "max_connections is its only limit",
        ),
        (
            CLIENT.split("[listener.upstream_tls]").next().unwrap().to_owned(),
            "listener[0].upstream_tls",
            "ca",
        ),
        (
            CLIENT.split("[listener.upstream_tls]").next().unwrap().to_owned()
                + "[listener.upstream_tls]\nmode = \"disable\"\n",
            "listener[0].upstream_tls.mode",
            "always encrypts",
        ),
        (
            CLIENT.replace("db.internal:5432", "unix:/run/postgresql/.s.PGSQL.5432")
                .replace("ca = ", "server_name = \"db\"\nca = "),
            "listener[0].upstream_tls",
            "unix",
        ),
        (
            CLIENT.replace("mode = \"client\"", "mode = \"client\"\nprotocol = \"mysql\"")
                + "direct = true\n",
            "listener[0].upstream_tls.direct",
            "PostgreSQL",
        ),
        (
            CLIENT.replace("mode = \"client\"", "mode = \"client\"\nprotocol = \"tls\"")
                + "direct = true\n",
            "listener[0].upstream_tls.direct",
            "first byte",
        ),
        (
            CLIENT.replace("mode = \"client\"", "mode = \"Client\""),
            "listener[0].mode",
            "\"client\"",
        ),
    ];
    for (text, key, hint) in cases {
        let e = error_of(&text);
        assert_eq!(e.key, key, "{text}\n{e}");
        assert!(e.message.contains(hint), "{key}: {e}");
    }
}

#[test]
fn names_and_addresses_are_unique_across_modes() {
    let both = format!("{MINIMAL}{CLIENT}").replace(
        "127.0.0.1:6432\"\nupstream = \"db",
        "127.0.0.1:6433\"\nupstream = \"db",
    );
    let c = Config::from_toml(&both).unwrap();
    assert_eq!((c.listeners.len(), c.client_listeners.len()), (1, 1));
    let same_name = both.replace("orders-out", "orders");
    assert_eq!(error_of(&same_name).key, "listener[1].name");
    let same_listen = format!("{MINIMAL}{CLIENT}");
    let e = error_of(&same_listen);
    assert_eq!(e.key, "listener[1].listen", "{e}");
    assert!(e.message.contains("\"orders\""), "{e}");
}

#[test]
fn direct_upstream_tls_is_postgres_only_in_server_mode_too() {
    let c = with_upstream_tls("ca = \"ca.pem\"\ndirect = true").unwrap();
    assert!(c.listeners[0].upstream_tls.as_ref().unwrap().direct);
    let e = error_of(
        &(MINIMAL.replace(
            "name = \"orders\"",
            "name = \"orders\"\nprotocol = \"mysql\"",
        ) + "[listener.upstream_tls]\nca = \"ca.pem\"\ndirect = true\n"),
    );
    assert_eq!(e.key, "listener[0].upstream_tls.direct");
    let e = with_upstream_tls("mode = \"disable\"\ndirect = true").unwrap_err();
    assert_eq!(e.key, "listener[0].upstream_tls.direct");
}

#[test]
fn mysql_listeners_greet_with_a_version_of_their_own() {
    let mysql = MINIMAL.replace(
        "name = \"orders\"",
        "name = \"orders\"\nprotocol = \"mysql\"",
    );
    let c = Config::from_toml(&mysql).unwrap();
    assert_eq!(
        c.listeners[0].mysql_server_version,
        DEFAULT_MYSQL_SERVER_VERSION
    );
    let set = mysql.replace(
        "protocol = \"mysql\"",
        "protocol = \"mysql\"\nmysql_server_version = \"5.5.5-10.11.6-MariaDB\"",
    );
    let c = Config::from_toml(&set).unwrap();
    assert_eq!(c.listeners[0].mysql_server_version, "5.5.5-10.11.6-MariaDB");

    for bad in ["", "8.0 with spaces", "8.0.0\\u0000"] {
        let text = mysql.replace(
            "protocol = \"mysql\"",
            &format!("protocol = \"mysql\"\nmysql_server_version = \"{bad}\""),
        );
        let e = error_of(&text);
        assert_eq!(e.key, "listener[0].mysql_server_version", "{bad:?}");
    }
    let e = error_of(&MINIMAL.replace(
        "name = \"orders\"",
        "name = \"orders\"\nmysql_server_version = \"8.0.36\"",
    ));
    assert_eq!(e.key, "listener[0].mysql_server_version");
    assert!(
        e.message.contains("only a protocol = \"mysql\" listener"),
        "{}",
        e.message
    );
}

#[test]
fn stale_crl_defaults_to_refuse_and_is_inherited_by_routes() {
    let with_crl = format!("{MINIMAL}crl = \"ca.crl\"\n");
    let c = Config::from_toml(&with_crl).unwrap();
    assert_eq!(c.listeners[0].tls.stale_crl, StaleCrl::Refuse);

    let text = format!(
        "{with_crl}stale_crl = \"allow\"\n[[listener.route]]\nserver_name = \"a.example\"\ntls = {{ cert = \"c\", key = \"k\" }}\n[[listener.route]]\nserver_name = \"b.example\"\ntls = {{ cert = \"c\", key = \"k\", stale_crl = \"refuse\" }}\n"
    );
    let c = Config::from_toml(&text).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.tls.stale_crl, StaleCrl::Allow);
    assert_eq!(l.routes[0].tls.stale_crl, StaleCrl::Allow);
    assert_eq!(l.routes[1].tls.stale_crl, StaleCrl::Refuse);
}

#[test]
fn stale_crl_needs_a_crl_and_a_known_value() {
    let e = error_of(&format!(
        "{MINIMAL}crl = \"ca.crl\"\nstale_crl = \"ignore\"\n"
    ));
    assert_eq!(e.key, "listener[0].tls.stale_crl");
    assert!(e.to_string().contains("\"refuse\""), "{e}");
    let e = error_of(&format!("{MINIMAL}stale_crl = \"allow\"\n"));
    assert_eq!(e.key, "listener[0].tls.stale_crl");
    assert!(e.to_string().contains("there is no crl"), "{e}");
}

#[test]
fn relative_paths_resolve_from_the_config_files_directory() {
    let text = r#"
state_dir = "state"
audit_log = "/var/log/intransit/audit.jsonl"
pid_file = "run/intransit.pid"
admin = "127.0.0.1:8432"
[admin_tls]
cert = "admin/chain.pem"
key = "admin/key.pem"
client_ca = "ca.pem"
[[listener]]
name = "orders"
listen = "unix:sockets/orders.sock"
upstream = "db.internal:5432"
[listener.tls]
cert = "certs/chain.pem"
key = "./certs/key.pem"
client_ca = "../shared/ca.pem"
crl = "ca.crl"
[listener.upstream_tls]
ca = "db-ca.pem"
server_name = "db.internal"
[[listener.route]]
server_name = "b.example"
upstream = "10.0.0.5:5432"
tls = { cert = "b/chain.pem", key = "b/key.pem" }
[[listener]]
name = "local"
listen = "127.0.0.1:6433"
upstream = "unix:pg/.s.PGSQL.5432"
[listener.tls]
cert = "/etc/ssl/chain.pem"
key = "key.pem"
client_ca = "ca.pem"
[[listener]]
name = "app"
mode = "client"
listen = "127.0.0.1:15432"
upstream = "db.internal:5432"
[listener.upstream_tls]
ca = "db-ca.pem"
cert = "app/chain.pem"
key = "app/key.pem"
"#;
    let dir = Path::new("/etc/intransit");
    let c = Config::from_toml_in(text, dir).unwrap();
    let at = |p: &str| dir.join(p);
    assert_eq!(c.state_dir, Some(at("state")));
    assert_eq!(
        c.audit_log,
        Some(PathBuf::from("/var/log/intransit/audit.jsonl"))
    );
    assert_eq!(c.pid_file, Some(at("run/intransit.pid")));
    let admin = c.admin_tls.as_ref().unwrap();
    assert_eq!(admin.cert, at("admin/chain.pem"));
    assert_eq!(admin.client_ca, Some(at("ca.pem")));
    let l = &c.listeners[0];
    assert_eq!(l.listen, Endpoint::Unix(at("sockets/orders.sock")));
    let local = &c.listeners[1];
    assert_eq!(local.upstream, Endpoint::Unix(at("pg/.s.PGSQL.5432")));
    assert_eq!(local.tls.cert, PathBuf::from("/etc/ssl/chain.pem"));
    assert_eq!(local.tls.key, at("key.pem"));
    assert_eq!(l.tls.cert, at("certs/chain.pem"));
    assert_eq!(l.tls.key, at("./certs/key.pem"));
    assert_eq!(l.tls.client_ca, Some(at("../shared/ca.pem")));
    assert_eq!(l.tls.crl, Some(at("ca.crl")));
    assert_eq!(l.upstream_tls.as_ref().unwrap().ca, Some(at("db-ca.pem")));
    let route = &l.routes[0];
    assert_eq!(route.tls.cert, at("b/chain.pem"));
    assert_eq!(route.tls.client_ca, Some(at("../shared/ca.pem")));
    assert_eq!(
        route.upstream_tls.as_ref().unwrap().ca,
        Some(at("db-ca.pem"))
    );
    let app = &c.client_listeners[0];
    assert_eq!(app.upstream_tls.cert, Some(at("app/chain.pem")));
    assert_eq!(app.upstream_tls.key, Some(at("app/key.pem")));

    // Without a directory, paths stay as written.
    let c = Config::from_toml(text).unwrap();
    assert_eq!(c.listeners[0].tls.cert, PathBuf::from("certs/chain.pem"));
}

#[test]
fn pin_mistakes_name_the_command_that_prints_pins() {
    for (text, key) in [
        ("mode = \"pinned\"", "listener[0].upstream_tls.pins"),
        (
            "mode = \"pinned\"\npins = [\"sha1/abc\"]",
            "listener[0].upstream_tls.pins[0]",
        ),
    ] {
        let e = with_upstream_tls(text).unwrap_err();
        assert_eq!(e.key, key);
        assert!(e.message.contains("`intransit pin FILE`"), "{e}");
    }
}

#[test]
fn worker_threads_are_a_count_and_zero_means_the_shared_runtime() {
    let with = |n: &str| Config::from_toml(&format!("worker_threads = {n}\n{MINIMAL}"));
    assert_eq!(with("4").unwrap().worker_threads, Some(4));
    assert_eq!(with("0").unwrap().worker_threads, Some(0));
    let e = with("-1").unwrap_err().to_string();
    assert!(
        e.contains("worker_threads") && e.contains("out of range"),
        "{e}"
    );
    assert!(with("5000").is_err());
}

const PEERS: &str = r#"
[listener.pool]
mode = "transaction"
peer_id = 1

[[listener.pool.peers]]
id = 2
address = "10.0.0.2:6432"

[[listener.pool.peers]]
id = 3
address = "db-proxy-3.internal:6432"

[listener.pool.peer_tls]
ca = "/etc/intransit/ca.pem"
cert = "/etc/intransit/peer.pem"
key = "/etc/intransit/peer-key.pem"
"#;

#[test]
fn pool_peers_carry_their_id_address_and_mutual_tls() {
    let c = Config::from_toml(&format!("{MINIMAL}{PEERS}")).unwrap();
    let pool = c.listeners[0].pool.as_ref().unwrap();
    assert_eq!(pool.peer_id, Some(1));
    assert_eq!(pool.peers.len(), 2);
    assert_eq!(pool.peers[0].id, 2);
    assert_eq!(pool.peers[0].address.to_string(), "10.0.0.2:6432");
    // The server name is each peer's own host.
    assert_eq!(
        pool.peers[1].tls.server_name.to_string(),
        "db-proxy-3.internal"
    );
    assert_eq!(pool.peers[0].tls.mode, UpstreamTlsMode::VerifyFull);
    assert!(pool.peers[0].tls.cert.is_some());
}

#[test]
fn pool_peers_are_refused_without_what_makes_a_cancel_safe_to_forward() {
    let with = |peers: &str| error_of(&format!("{MINIMAL}{peers}")).to_string();
    let e = with(&PEERS.replace("peer_id = 1\n", ""));
    assert!(e.contains("peer_id") && e.contains("missing"), "{e}");
    let e = with(&PEERS.replace("id = 3", "id = 1"));
    assert!(e.contains("own peer_id"), "{e}");
    let e = with(&PEERS.replace("id = 3", "id = 2"));
    assert!(e.contains("given twice"), "{e}");
    let e = with(&PEERS.replace("peer_id = 1", "peer_id = 256"));
    assert!(e.contains("1 to 255"), "{e}");
    let e = with(&PEERS[..PEERS.find("[listener.pool.peer_tls]").unwrap()]);
    assert!(e.contains("peer_tls") && e.contains("mutual TLS"), "{e}");
    let e = with(&PEERS.replace(
        "cert = \"/etc/intransit/peer.pem\"\nkey = \"/etc/intransit/peer-key.pem\"\n",
        "",
    ));
    assert!(e.contains("client certificate"), "{e}");
    let e = with(&PEERS.replace("\"10.0.0.2:6432\"", "\"unix:/run/p.sock\""));
    assert!(e.contains("TCP listener"), "{e}");
}
