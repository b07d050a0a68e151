//! Entry point for the cargo-fuzz target `config_toml` in `fuzz/`: TOML
//! text to a validated [`Config`], over arbitrary bytes.
//!
//! Any text gives a configuration or an error that says something, never
//! a panic; a configuration that validates keeps the promises
//! `docs/configuration.md` makes (client-mode listeners on loopback unless
//! told otherwise, a plain-HTTP admin server on loopback, `db_users` only
//! where certificates are asked for, no TLS on a unix-socket upstream,
//! `direct` for PostgreSQL only, unique listener names); and the values
//! with a text form (endpoints, server names, pins) read back as
//! themselves. A failed assertion here is a bug in the crate. It is not
//! part of the crate's API (hidden from the documentation); the unit tests
//! run it over the documentation's examples.

use crate::{
    ClientAuth, Config, Endpoint, Protocol, ServerNamePattern, ServerTls, SpkiPin, UpstreamTls,
    UpstreamTlsMode,
};

/// Parses and validates `data` as `intransit.toml`, and reads it as each
/// value with a text form.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(config) => promises_kept(&config),
        Err(e) => assert!(!e.message.trim().is_empty(), "an error without a message"),
    }
    text_forms(text);
}

fn promises_kept(config: &Config) {
    assert!(!config.listeners.is_empty() || !config.client_listeners.is_empty());
    if config.admin_tls.is_none() {
        assert!(
            config.admin.is_none_or(|a| a.ip().is_loopback()),
            "a plain-HTTP admin server off loopback"
        );
    }
    if let Some(tls) = &config.admin_tls {
        server_tls(tls);
    }
    let mut names = Vec::new();
    for l in &config.listeners {
        names.push(l.name.as_str());
        assert!(
            matches!(l.listen, Endpoint::Unix(_)) || l.listen.bind_addr().is_some(),
            "a listener that binds a host name"
        );
        server_tls(&l.tls);
        route(
            l.protocol,
            &l.upstream,
            l.upstream_tls.as_ref(),
            &l.tls,
            l.db_users.is_empty(),
        );
        for r in &l.routes {
            route(
                l.protocol,
                &r.upstream,
                r.upstream_tls.as_ref(),
                &r.tls,
                r.db_users.is_empty(),
            );
        }
    }
    for c in &config.client_listeners {
        names.push(c.name.as_str());
        let local = match &c.listen {
            Endpoint::Unix(_) => true,
            Endpoint::Tcp { .. } => c
                .listen
                .bind_addr()
                .is_some_and(|a| a.ip().to_canonical().is_loopback()),
        };
        assert!(
            local || c.allow_remote_plaintext,
            "a client-mode listener off loopback"
        );
        upstream_tls(c.protocol, &c.upstream, &c.upstream_tls);
    }
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "two listeners with one name");
}

fn server_tls(tls: &ServerTls) {
    if tls.client_auth == ClientAuth::None {
        assert!(tls.crl.is_none(), "a CRL without client certificates");
    } else {
        assert!(tls.client_ca.is_some(), "client certificates without a CA");
    }
}

fn route(
    protocol: Protocol,
    upstream: &Endpoint,
    tls_upstream: Option<&UpstreamTls>,
    tls: &ServerTls,
    no_db_users: bool,
) {
    server_tls(tls);
    if tls.client_auth == ClientAuth::None || protocol == Protocol::Tls {
        assert!(no_db_users, "db_users that can never match");
    }
    if let Some(t) = tls_upstream {
        upstream_tls(protocol, upstream, t);
    }
}

fn upstream_tls(protocol: Protocol, upstream: &Endpoint, tls: &UpstreamTls) {
    assert!(
        !matches!(upstream, Endpoint::Unix(_)),
        "TLS to a unix-socket upstream"
    );
    assert!(!tls.direct || protocol == Protocol::Postgres);
    match tls.mode {
        UpstreamTlsMode::Pinned => assert!(!tls.pins.is_empty()),
        UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull => assert!(tls.ca.is_some()),
        UpstreamTlsMode::Require => {}
    }
}

/// Values that print as text read back as themselves.
fn text_forms(text: &str) {
    if let Ok(endpoint) = Endpoint::parse(text) {
        assert_eq!(Endpoint::parse(&endpoint.to_string()), Ok(endpoint));
    }
    if let Ok(pattern) = ServerNamePattern::parse(text) {
        let printed = pattern.to_string();
        assert_eq!(ServerNamePattern::parse(&printed), Ok(pattern.clone()));
        if let ServerNamePattern::Exact(name) = &pattern {
            assert!(pattern.matches(name));
        }
    }
    if let Ok(pin) = SpkiPin::parse(text) {
        assert_eq!(SpkiPin::parse(pin.as_str()), Ok(pin));
    }
    let _ = crate::parse_duration(text);
}

/// The entry point over the TOML examples of the documentation, their
/// prefixes and a few shapes of their values: a stable-Rust smoke run of
/// what `cargo fuzz` explores at length.
#[cfg(test)]
mod tests {
    use super::*;

    /// The ```toml blocks of a Markdown document.
    fn toml_blocks(markdown: &str) -> Vec<String> {
        let mut blocks = Vec::new();
        let mut current: Option<String> = None;
        for line in markdown.lines() {
            match (&mut current, line.trim()) {
                (None, "```toml") => current = Some(String::new()),
                (Some(block), "```") => {
                    blocks.push(std::mem::take(block));
                    current = None;
                }
                (Some(block), _) => {
                    block.push_str(line);
                    block.push('\n');
                }
                (None, _) => {}
            }
        }
        blocks
    }

    #[test]
    fn documented_examples_their_prefixes_and_values() {
        let blocks: Vec<String> = [
            include_str!("../../../docs/configuration.md"),
            include_str!("../../../README.md"),
        ]
        .into_iter()
        .flat_map(toml_blocks)
        .collect();
        assert!(
            blocks.len() >= 8,
            "the documents' TOML examples were not found"
        );
        let mut validated = 0;
        for block in &blocks {
            validated += usize::from(Config::from_toml(block).is_ok());
            for (end, _) in block.char_indices() {
                config_toml(&block.as_bytes()[..end]);
            }
            config_toml(block.as_bytes());
        }
        assert!(validated > 0, "no documented example validates");
        for value in [
            "unix:/run/postgresql/.s.PGSQL.5432",
            "[::1]:5432",
            "::1:5432",
            "localhost:0",
            "*.db.internal",
            "Orders.DB.internal",
            "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "1m30s",
        ] {
            config_toml(value.as_bytes());
        }
    }
}
