//! Helpers shared by the test modules: running the openssl CLI, an in-memory
//! rustls handshake, and small file utilities.

use std::error::Error;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use intransit_pki::{
    CertificateAuthority, CertificateKind, CertificateSummary, IssueRequest, IssuedCertificate,
    KeyAlgorithm, StateDir, Validity,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConnection;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};

pub type TestResult = Result<(), Box<dyn Error>>;

/// Runs `openssl` with `args`, feeding `stdin`. A missing openssl binary is a
/// test failure with an install hint, never a skip.
pub fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Result<Output, Box<dyn Error>> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run openssl ({e}); install it, e.g. `apt-get install openssl`")
        })?;
    if let Some(mut input) = child.stdin.take() {
        if let Some(bytes) = stdin {
            input.write_all(bytes)?;
        }
    }
    Ok(child.wait_with_output()?)
}

/// Like [`openssl`], failing unless it exits successfully; returns stdout.
pub fn openssl_ok(args: &[&str], stdin: Option<&[u8]>) -> Result<String, Box<dyn Error>> {
    let out = openssl(args, stdin)?;
    if !out.status.success() {
        return Err(format!(
            "openssl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `openssl verify -x509_strict -CAfile ca -purpose purpose cert`; returns
/// whether it succeeded and its combined output.
pub fn openssl_verify(
    ca: &Path,
    cert: &Path,
    purpose: &str,
) -> Result<(bool, String), Box<dyn Error>> {
    let out = openssl(
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            path_str(ca)?,
            "-purpose",
            purpose,
            path_str(cert)?,
        ],
        None,
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Fails with openssl's output unless verification succeeds.
pub fn assert_openssl_accepts(ca: &Path, cert: &Path, purpose: &str) -> TestResult {
    let (ok, text) = openssl_verify(ca, cert, purpose)?;
    if !ok {
        return Err(format!("openssl rejected {} as {purpose}: {text}", cert.display()).into());
    }
    Ok(())
}

pub fn path_str(path: &Path) -> Result<&str, Box<dyn Error>> {
    path.to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", path.display()).into())
}

/// A server certificate for `db.example` and 127.0.0.1 with CN `server`,
/// so that the host name is only in the SANs.
pub fn server_request(key: KeyAlgorithm) -> IssueRequest {
    let mut req = IssueRequest::new(CertificateKind::Server, "server");
    req.dns_names = vec!["db.example".to_owned(), "*.db.example".to_owned()];
    req.ip_addresses = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    req.key = key;
    req
}

/// A client certificate for `alice` with a SPIFFE URI.
pub fn client_request(key: KeyAlgorithm) -> IssueRequest {
    let mut req = IssueRequest::new(CertificateKind::Client, "alice");
    req.uris = vec!["spiffe://prod/trainer".to_owned()];
    req.key = key;
    req
}

pub fn new_ca(key: KeyAlgorithm) -> Result<CertificateAuthority, Box<dyn Error>> {
    Ok(CertificateAuthority::generate(
        "test CA",
        key,
        Validity::days_from_now(365),
    )?)
}

/// One side's credentials for [`handshake`].
pub struct Credentials<'a> {
    pub trust_ca_pem: &'a str,
    pub chain_pem: &'a str,
    pub key_pem: &'a str,
}

impl<'a> Credentials<'a> {
    pub fn of(issued: &'a IssuedCertificate) -> Credentials<'a> {
        Credentials {
            trust_ca_pem: &issued.ca_pem,
            chain_pem: &issued.cert_pem,
            key_pem: &issued.key_pem,
        }
    }
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, Box<dyn Error>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    Ok(Arc::new(roots))
}

fn chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, Box<dyn Error>> {
    Ok(CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?)
}

/// Runs a TLS 1.3 handshake with mutual authentication in memory, using
/// rustls and webpki with the aws-lc-rs provider, and exchanges one message.
/// The outer error is a test setup problem; the inner one is what rustls
/// said about the peer.
pub fn handshake(
    server: &Credentials<'_>,
    client: &Credentials<'_>,
    server_name: &str,
) -> Result<Result<(), rustls::Error>, Box<dyn Error>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots(server.trust_ca_pem)?, provider.clone())
            .build()?;
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(
            chain(server.chain_pem)?,
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())?,
        )?;
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(client.trust_ca_pem)?)
        .with_client_auth_cert(
            chain(client.chain_pem)?,
            PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())?,
        )?;

    let name = ServerName::try_from(server_name.to_owned())?;
    let mut client = Connection::Client(ClientConnection::new(Arc::new(client_config), name)?);
    let mut server = Connection::Server(ServerConnection::new(Arc::new(server_config))?);

    for _ in 0..20 {
        if let Err(e) = pump(&mut client, &mut server)? {
            return Ok(Err(e));
        }
        if let Err(e) = pump(&mut server, &mut client)? {
            return Ok(Err(e));
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            // Application data flows both ways once both are done.
            client.writer().write_all(b"ping")?;
            if let Err(e) = pump(&mut client, &mut server)? {
                return Ok(Err(e));
            }
            let mut buf = [0u8; 4];
            std::io::Read::read_exact(&mut server.reader(), &mut buf)?;
            assert_eq!(&buf, b"ping");
            return Ok(Ok(()));
        }
    }
    Err("handshake did not finish".into())
}

/// Moves all pending TLS bytes from `from` to `to` and lets `to` process them.
fn pump(
    from: &mut Connection,
    to: &mut Connection,
) -> Result<Result<(), rustls::Error>, Box<dyn Error>> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf)?;
    }
    let mut rd = buf.as_slice();
    while !rd.is_empty() {
        to.read_tls(&mut rd)?;
        if let Err(e) = to.process_new_packets() {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

/// The names of the entries of `dir`, sorted.
pub fn entries(dir: &Path) -> Result<Vec<String>, Box<dyn Error>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    names.sort();
    Ok(names)
}

/// Permission bits of `path`.
pub fn mode(path: &Path) -> Result<u32, Box<dyn Error>> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// Every file below a directory with its contents, sorted by path.
pub type Snapshot = Vec<(String, Vec<u8>)>;

/// The files below `root`, for checking that nothing changed.
pub fn snapshot(root: &Path) -> Result<Snapshot, Box<dyn Error>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            // The empty lock file orders writers; it holds no state.
            if path.file_name().is_some_and(|n| n == ".lock") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.display().to_string(), std::fs::read(&path)?));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A state directory in `root` with a fresh, unencrypted ECDSA P-256 CA.
pub fn new_state(root: &Path) -> Result<(StateDir, CertificateAuthority), Box<dyn Error>> {
    let state = StateDir::new(root);
    let ca = state.init_ca(
        "test CA",
        KeyAlgorithm::EcdsaP256,
        Validity::try_days_from_now(365)?,
        None,
        false,
    )?;
    Ok((state, ca))
}

/// The first certificate of a PEM file, summarised.
pub fn summary_of(path: &Path) -> Result<CertificateSummary, Box<dyn Error>> {
    let ders = intransit_pki::pem_to_der_certs(&std::fs::read_to_string(path)?)?;
    let der = ders.first().ok_or("no certificate")?;
    Ok(intransit_pki::summarize(der)?)
}
