//! What to probe: a host, a port, and how its clients start TLS.
//!
//! This module owns the [`Target`] type and its URL-like syntax
//! (`postgres://db:5432`, `mysql://[::1]`, `tls://redis:6380`). It must never
//! resolve names or touch the network: parsing is pure, so a typo is reported
//! before anything is dialled.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// PostgreSQL's default port.
pub const POSTGRES_DEFAULT_PORT: u16 = 5432;

/// MySQL's and MariaDB's default port.
pub const MYSQL_DEFAULT_PORT: u16 = 3306;

/// The longest DNS name, in characters (RFC 1035, without the final dot).
const MAX_HOST_LEN: usize = 253;

/// An endpoint and the way its clients ask for TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A PostgreSQL server: TLS starts after an SSLRequest answered with `S`.
    Postgres {
        /// A DNS name or an IP address (IPv6 without brackets).
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// A MySQL or MariaDB server: TLS starts after the server's greeting
    /// advertises `CLIENT_SSL` and the client answers with an SSLRequest.
    Mysql {
        /// A DNS name or an IP address (IPv6 without brackets).
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// Anything that speaks TLS from the first byte (Redis, Kafka, HTTPS,
    /// PostgreSQL 17 direct TLS with ALPN `postgresql`).
    Tls {
        /// A DNS name or an IP address (IPv6 without brackets).
        host: String,
        /// The TCP port.
        port: u16,
    },
}

impl Target {
    /// The host: a DNS name or an IP address, IPv6 without brackets.
    pub fn host(&self) -> &str {
        match self {
            Target::Postgres { host, .. }
            | Target::Mysql { host, .. }
            | Target::Tls { host, .. } => host,
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        match self {
            Target::Postgres { port, .. }
            | Target::Mysql { port, .. }
            | Target::Tls { port, .. } => *port,
        }
    }

    /// The canonical scheme: `postgres`, `mysql` or `tls`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Target::Postgres { .. } => "postgres",
            Target::Mysql { .. } => "mysql",
            Target::Tls { .. } => "tls",
        }
    }

    /// `host:port`, with IPv6 addresses in brackets, as dialled and as shown
    /// in messages.
    pub fn address(&self) -> String {
        let host = self.host();
        if host.contains(':') {
            format!("[{host}]:{}", self.port())
        } else {
            format!("{host}:{}", self.port())
        }
    }
}

impl fmt::Display for Target {
    /// The canonical form, which parses back to the same target:
    /// `postgres://db.internal:5432`, `tls://[::1]:6380`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.address())
    }
}

/// Why a target string is not a [`Target`]. Each message says how to write
/// it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// No `scheme://` in front.
    #[error(
        "{input:?} has no scheme; write postgres://host:port, mysql://host:port or tls://host:port"
    )]
    MissingScheme {
        /// The whole input.
        input: String,
    },
    /// A scheme this crate does not probe.
    #[error(
        "unknown scheme {scheme:?}; use postgres:// (or postgresql://), mysql:// (or mariadb://) \
         or tls:// for anything that speaks TLS from the first byte"
    )]
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
    },
    /// A user name or password before the host.
    #[error("remove the user name from the target: the probe never logs in")]
    UserInfo,
    /// A path, query or fragment after the host and port.
    #[error(
        "remove {rest:?} from the target: it is only scheme://host:port, \
         with no database name or options"
    )]
    PathOrQuery {
        /// The part after the host and port.
        rest: String,
    },
    /// Nothing between `://` and the port.
    #[error("the target has no host; write e.g. postgres://db.internal:5432")]
    EmptyHost,
    /// Characters a host name cannot contain.
    #[error(
        "{host:?} is not a host name or an IP address \
         (IPv6 addresses go in brackets: tls://[::1]:6380)"
    )]
    InvalidHost {
        /// The host as written.
        host: String,
    },
    /// An IPv6 address without brackets, where its colons are ambiguous.
    #[error(
        "{host:?} looks like an IPv6 address; put it in brackets with the port after them, \
         as in {scheme}://[::1]:port"
    )]
    UnbracketedIpv6 {
        /// The scheme as written.
        scheme: String,
        /// The address as written.
        host: String,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("{port:?} is not a TCP port (1 to 65535)")]
    InvalidPort {
        /// The port as written.
        port: String,
    },
    /// `tls://` without a port: plain TLS has no default port.
    #[error("tls:// targets need a port, e.g. tls://{host}:6380 for Redis")]
    MissingPort {
        /// The host, for the example in the message.
        host: String,
    },
}

/// Which kind of target a scheme names.
#[derive(Clone, Copy)]
enum Kind {
    Postgres,
    Mysql,
    Tls,
}

impl FromStr for Target {
    type Err = TargetError;

    /// Parses `scheme://host[:port][/]`. Schemes are `postgres` or
    /// `postgresql` (default port 5432), `mysql` or `mariadb` (default port
    /// 3306) and `tls` (port required), in any case. IPv6 addresses go in
    /// brackets.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) =
            input
                .trim()
                .split_once("://")
                .ok_or_else(|| TargetError::MissingScheme {
                    input: input.to_owned(),
                })?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Kind::Postgres,
            "mysql" | "mariadb" => Kind::Mysql,
            "tls" => Kind::Tls,
            _ => {
                return Err(TargetError::UnknownScheme {
                    scheme: scheme.to_owned(),
                })
            }
        };

        // A lone trailing slash is what people type after a URL; anything
        // else after the authority is a database name or options, which a
        // probe that never logs in would silently ignore.
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if !tail.is_empty() && tail != "/" {
            return Err(TargetError::PathOrQuery {
                rest: tail.to_owned(),
            });
        }
        if authority.contains('@') {
            return Err(TargetError::UserInfo);
        }

        let (host, port) = split_host_port(scheme, authority)?;
        let port = match (port, kind) {
            (Some(port), _) => parse_port(port)?,
            (None, Kind::Postgres) => POSTGRES_DEFAULT_PORT,
            (None, Kind::Mysql) => MYSQL_DEFAULT_PORT,
            (None, Kind::Tls) => return Err(TargetError::MissingPort { host }),
        };
        Ok(match kind {
            Kind::Postgres => Target::Postgres { host, port },
            Kind::Mysql => Target::Mysql { host, port },
            Kind::Tls => Target::Tls { host, port },
        })
    }
}

/// Splits `host[:port]` or `[ipv6][:port]` and checks the host.
fn split_host_port<'a>(
    scheme: &str,
    authority: &'a str,
) -> Result<(String, Option<&'a str>), TargetError> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) =
            bracketed
                .split_once(']')
                .ok_or_else(|| TargetError::InvalidHost {
                    host: authority.to_owned(),
                })?;
        let address: Ipv6Addr = inside.parse().map_err(|_| TargetError::InvalidHost {
            host: inside.to_owned(),
        })?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| TargetError::InvalidPort {
                        port: after.to_owned(),
                    })?,
            ),
        };
        return Ok((address.to_string(), port));
    }

    let (host, port) = match authority.split_once(':') {
        // More than one colon can only be an IPv6 address, whose last
        // group could be mistaken for a port.
        Some((_, port)) if port.contains(':') => {
            return Err(TargetError::UnbracketedIpv6 {
                scheme: scheme.to_owned(),
                host: authority.to_owned(),
            })
        }
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    if host.parse::<Ipv4Addr>().is_err() && !is_host_name(host) {
        return Err(TargetError::InvalidHost {
            host: host.to_owned(),
        });
    }
    Ok((host.to_owned(), port))
}

/// Whether `host` is spelled like a DNS name. Underscores are allowed
/// because internal names (Docker services, SRV-style labels) use them.
fn is_host_name(host: &str) -> bool {
    host.len() <= MAX_HOST_LEN
        && host.split('.').enumerate().all(|(i, label)| {
            // Only the last label may be empty: a fully qualified "db.".
            (label.is_empty() && i > 0 && host.ends_with('.'))
                || (label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        })
}

/// Parses a port from 1 to 65535, written in decimal digits only.
fn parse_port(port: &str) -> Result<u16, TargetError> {
    let invalid = || TargetError::InvalidPort {
        port: port.to_owned(),
    };
    // `u16::from_str` also accepts a leading `+`, which no URL has.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Target, TargetError> {
        s.parse()
    }

    fn pg(host: &str, port: u16) -> Target {
        Target::Postgres {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn postgres_schemes_and_default_port() {
        assert_eq!(parse("postgres://db:5433"), Ok(pg("db", 5433)));
        assert_eq!(parse("postgresql://db"), Ok(pg("db", 5432)));
        assert_eq!(
            parse("POSTGRES://db.internal/"),
            Ok(pg("db.internal", 5432))
        );
        assert_eq!(
            parse("  postgres://10.0.0.5:6432 "),
            Ok(pg("10.0.0.5", 6432))
        );
    }

    #[test]
    fn mysql_schemes_and_default_port() {
        let expected = Target::Mysql {
            host: "db".to_owned(),
            port: 3306,
        };
        assert_eq!(parse("mysql://db"), Ok(expected.clone()));
        assert_eq!(parse("mariadb://db:3306"), Ok(expected));
    }

    #[test]
    fn tls_needs_a_port() {
        assert_eq!(
            parse("tls://redis:6380"),
            Ok(Target::Tls {
                host: "redis".to_owned(),
                port: 6380
            })
        );
        let err = parse("tls://redis").unwrap_err();
        assert_eq!(
            err,
            TargetError::MissingPort {
                host: "redis".to_owned()
            }
        );
        assert!(err.to_string().contains("tls://redis:6380"), "{err}");
    }

    #[test]
    fn ipv6_in_brackets() {
        assert_eq!(parse("postgres://[::1]:5433"), Ok(pg("::1", 5433)));
        assert_eq!(parse("postgres://[::1]"), Ok(pg("::1", 5432)));
        assert_eq!(
            parse("postgres://[2001:DB8::1]:1"),
            Ok(pg("2001:db8::1", 1))
        );
        let err = parse("postgres://::1:5432").unwrap_err();
        assert!(
            matches!(err, TargetError::UnbracketedIpv6 { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("postgres://[::1]:port"), "{err}");
        assert!(matches!(
            parse("postgres://[::1"),
            Err(TargetError::InvalidHost { .. })
        ));
        assert!(matches!(
            parse("postgres://[db]:5432"),
            Err(TargetError::InvalidHost { .. })
        ));
        assert!(matches!(
            parse("postgres://[::1]5432"),
            Err(TargetError::InvalidPort { .. })
        ));
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "postgres://db:5432",
            "mysql://[::1]:3306",
            "tls://redis.internal:6380",
        ] {
            let target = parse(input).unwrap();
            assert_eq!(target.to_string(), input);
            assert_eq!(parse(&target.to_string()), Ok(target));
        }
        assert_eq!(
            parse("postgresql://db").unwrap().to_string(),
            "postgres://db:5432"
        );
        assert_eq!(parse("mysql://[::1]").unwrap().address(), "[::1]:3306");
    }

    #[test]
    fn errors_say_how_to_write_it() {
        let err = parse("db:5432").unwrap_err();
        assert!(matches!(err, TargetError::MissingScheme { .. }));
        assert!(err.to_string().contains("postgres://host:port"), "{err}");

        let err = parse("redis://cache:6379").unwrap_err();
        assert!(matches!(err, TargetError::UnknownScheme { .. }));
        assert!(err.to_string().contains("tls://"), "{err}");

        assert_eq!(parse("postgres://app@db:5432"), Err(TargetError::UserInfo));
        assert_eq!(
            parse("postgres://db:5432/orders?sslmode=require"),
            Err(TargetError::PathOrQuery {
                rest: "/orders?sslmode=require".to_owned()
            })
        );
        assert_eq!(parse("postgres://:5432"), Err(TargetError::EmptyHost));
        assert_eq!(parse("postgres://"), Err(TargetError::EmptyHost));
    }

    #[test]
    fn bad_hosts_and_ports() {
        for host in ["db host", "-db", "db-.x", "a..b", ".db", "d\u{e9}"] {
            assert!(
                matches!(
                    parse(&format!("postgres://{host}:5432")),
                    Err(TargetError::InvalidHost { .. })
                ),
                "{host:?}"
            );
        }
        assert_eq!(
            parse("postgres://db_1.local.:5432"),
            Ok(pg("db_1.local.", 5432))
        );
        assert!(parse(&format!("tls://{}:1", "a".repeat(64))).is_err());
        for port in ["0", "65536", "", "54x", "+5432", "-1"] {
            assert_eq!(
                parse(&format!("postgres://db:{port}")),
                Err(TargetError::InvalidPort {
                    port: port.to_owned()
                }),
                "{port:?}"
            );
        }
    }
}
