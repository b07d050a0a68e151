//! How the binary shows an error: its chain of causes with each cause
//! once, and, for what stops a start, the thing that failed and what to do.
//!
//! The library crates' error types either name their cause in their own
//! message or return it from `source()`, never both. Some dependencies do
//! both (tokio-postgres says "error connecting to server: Connection
//! refused" and returns the same I/O error as its source), so the chain is
//! printed here, leaving out a cause its parent has already said.

use std::io::ErrorKind;
use std::path::Path;

use intransit_config::Endpoint;
use intransit_proxy::ProxyError;

/// The error and its causes on one line, joined by ": ", each cause once.
pub(crate) fn chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut said = String::new();
    for cause in error.chain() {
        let words = cause.to_string();
        if words.is_empty() || said.contains(&words) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&words);
        said = words;
    }
    text
}

/// A listener that could not be prepared or bound, with what to do about
/// it. `elsewhere` says, for the command at hand, how to give the listener
/// named in its argument another address (a flag, or a configuration key).
pub(crate) fn explain_listener(
    error: ProxyError,
    elsewhere: &dyn Fn(&str) -> String,
) -> anyhow::Error {
    match &error {
        ProxyError::Bind {
            listener,
            endpoint,
            error: io,
        } => anyhow::anyhow!(
            "{error}; {}{}",
            address_advice(io.kind(), endpoint),
            elsewhere(listener)
        ),
        _ => match expired_in_state_dir(&error) {
            Some(renew) => anyhow::anyhow!("{error}; {renew}"),
            None => error.into(),
        },
    }
}

/// Why an address may not be bound, as the start of a sentence that the
/// caller finishes with how to choose another one.
pub(crate) fn address_advice(kind: ErrorKind, endpoint: &Endpoint) -> String {
    match (kind, endpoint) {
        (ErrorKind::AddrInUse, Endpoint::Tcp { port, .. }) => format!(
            "another process holds port {port} (`ss -ltnp 'sport = :{port}'` shows which): stop it, or "
        ),
        (ErrorKind::AddrInUse, Endpoint::Unix(_)) => {
            "another process listens on that socket: stop it, or ".to_owned()
        }
        (ErrorKind::PermissionDenied, Endpoint::Tcp { port, .. }) if *port < 1024 => format!(
            "port {port} is privileged: run as root or grant CAP_NET_BIND_SERVICE, or "
        ),
        (ErrorKind::AddrNotAvailable, _) => {
            "no network interface of this machine has that address: ".to_owned()
        }
        _ => String::new(),
    }
}

/// For a certificate that expired (or is not valid yet) and lives in a
/// state directory (`<state>/certs/<name>/`), the command that renews it.
fn expired_in_state_dir(error: &ProxyError) -> Option<String> {
    let (path, reason) = match error {
        ProxyError::Listener { error, .. } => return expired_in_state_dir(error),
        ProxyError::File { path, reason, .. } => (path, reason),
        _ => return None,
    };
    if !(reason.starts_with("expired at") || reason.starts_with("not valid before")) {
        return None;
    }
    let (state_dir, name) = inventory_name(path)?;
    Some(format!(
        "renew it with `intransit cert renew {name} --force --state-dir {}`",
        state_dir.display()
    ))
}

/// The state directory and inventory name of a file issued into
/// `<state>/certs/<name>/`, if it is one.
fn inventory_name(path: &Path) -> Option<(&Path, &str)> {
    let dir = path.parent()?;
    let certs = dir.parent()?;
    let state_dir = certs.parent()?;
    if certs.file_name()? != "certs" || !state_dir.join("inventory.json").is_file() {
        return None;
    }
    Some((state_dir, dir.file_name()?.to_str()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::error::Error;
    use std::fmt;

    use super::*;

    /// Every cause of `error` appears once in what the binary prints, and
    /// once in anyhow's own `{:#}` too when `own_types` says the chain is
    /// made of this workspace's types only.
    fn assert_each_cause_once(error: &anyhow::Error, own_types: bool) {
        let printed = chain(error);
        let root = error.root_cause().to_string();
        assert_eq!(printed.matches(&root).count(), 1, "{printed}");
        if own_types {
            let plain = format!("{error:#}");
            assert_eq!(plain.matches(&root).count(), 1, "{plain}");
        }
    }

    /// An error that says its source and returns it too, as tokio-postgres does.
    #[derive(Debug)]
    struct Repeating(std::io::Error);

    impl fmt::Display for Repeating {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "error connecting to server: {}", self.0)
        }
    }

    impl Error for Repeating {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    /// A file error of listener "pg", as `Proxy::prepare` returns it.
    fn in_listener(what: &str, path: &Path, reason: &str) -> ProxyError {
        ProxyError::Listener {
            listener: "pg".into(),
            error: Box::new(ProxyError::File {
                what: what.into(),
                path: path.to_owned(),
                reason: reason.into(),
            }),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_listener_that_cannot_bind_says_the_os_error_once_and_what_to_do() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let endpoint = Endpoint::parse(&format!("127.0.0.1:{port}")).unwrap();
        let io = runtime()
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect_err("the port is taken");
        let error = ProxyError::Bind {
            listener: "pg".into(),
            endpoint,
            error: io,
        };
        let explained = explain_listener(error, &|l| format!("set another listen for {l:?}"))
            .context("starting");
        assert_each_cause_once(&explained, true);
        let text = chain(&explained);
        assert!(text.contains("listener \"pg\""), "{text}");
        assert!(
            text.contains(&format!("ss -ltnp 'sport = :{port}'")),
            "{text}"
        );
        assert!(text.ends_with("set another listen for \"pg\""), "{text}");
    }

    #[test]
    fn the_chains_of_library_errors_say_each_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        // A CA that is not there: the pki crate's I/O error under a load error.
        let pki = intransit_pki::CertificateAuthority::load(&dir.path().join("ca"))
            .expect_err("no CA there");
        assert_each_cause_once(&anyhow::Error::new(pki).context("issuing"), true);

        // Nothing listens on a privileged port that no test binds.
        let target: intransit_scan::Target = "postgres://127.0.0.1:613".parse().unwrap();
        let scan = runtime()
            .block_on(intransit_scan::fetch_chain(
                &target,
                &intransit_scan::FetchOptions::default(),
            ))
            .expect_err("nothing listens there");
        assert_each_cause_once(&anyhow::Error::new(scan).context("inspecting"), true);

        let listener = in_listener(
            "server certificate chain",
            &dir.path().join("chain.pem"),
            "No such file or directory (os error 2)",
        );
        assert_each_cause_once(&explain_listener(listener, &|_| String::new()), true);
    }

    #[test]
    fn a_dependency_that_repeats_its_source_is_printed_once() {
        let io = std::io::Error::from(ErrorKind::ConnectionRefused);
        let error = anyhow::Error::new(Repeating(io)).context("connecting to PostgreSQL");
        assert_each_cause_once(&error, false);
        assert_eq!(
            chain(&error),
            "connecting to PostgreSQL: error connecting to server: connection refused"
        );
    }

    #[test]
    fn an_expired_certificate_in_a_state_dir_names_the_renew_command() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        std::fs::write(state.join("inventory.json"), "{}").unwrap();
        let cert = state.join("certs").join("server").join("chain.pem");
        let error = in_listener(
            "server certificate chain",
            &cert,
            "expired at 2024-01-01T00:00:00Z (serial 01)",
        );
        let text = chain(&explain_listener(error, &|_| String::new()));
        assert!(
            text.ends_with(&format!(
                "renew it with `intransit cert renew server --force --state-dir {}`",
                state.display()
            )),
            "{text}"
        );
    }
}
