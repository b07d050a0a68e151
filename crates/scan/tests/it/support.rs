use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, SupportedProtocolVersion};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

/// A root CA, an intermediate CA it signed, and a server certificate for
/// `localhost` and 127.0.0.1 that the intermediate signed.
pub struct Hierarchy {
    pub root: CertificateDer<'static>,
    pub intermediate: CertificateDer<'static>,
    pub leaf: CertificateDer<'static>,
    leaf_key: PrivatePkcs8KeyDer<'static>,
}

impl Hierarchy {
    pub fn new() -> Self {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("scan test root");
        let root = root_params.self_signed(&root_key).unwrap().der().clone();
        let root_issuer = Issuer::new(root_params, root_key);

        let inter_key = KeyPair::generate().unwrap();
        let inter_params = ca_params("scan test intermediate");
        let intermediate = inter_params
            .signed_by(&inter_key, &root_issuer)
            .unwrap()
            .der()
            .clone();
        let inter_issuer = Issuer::new(inter_params, inter_key);

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params
            .signed_by(&leaf_key, &inter_issuer)
            .unwrap()
            .der()
            .clone();

        Hierarchy {
            root,
            intermediate,
            leaf,
            leaf_key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        }
    }

    /// The leaf's private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.leaf_key.clone_key())
    }

    /// Leaf and intermediate: what a well-configured server sends.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.clone(), self.intermediate.clone()]
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

pub const TLS13_AND_TLS12: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A rustls server configuration serving `chain` exactly as given.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// What a test server saw of one client.
#[derive(Debug)]
pub struct Seen {
    /// The SNI in the ClientHello.
    pub sni: Option<String>,
    /// The ALPN protocols the client offered.
    pub alpn_offered: Vec<Vec<u8>>,
    /// Application data received after the handshake, up to the client's
    /// close_notify.
    pub after_handshake: Vec<u8>,
}

/// A listener on 127.0.0.1 and a random port.
pub async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Runs a TLS server handshake on `stream` and reads until the client
/// closes, returning what the client sent.
pub async fn serve_tls(stream: TcpStream, config: Arc<ServerConfig>) -> Seen {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
        .await
        .expect("reading the ClientHello");
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let alpn_offered = hello
        .alpn()
        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let tls = start.into_stream(config).await.expect("TLS handshake");
    Seen {
        sni,
        alpn_offered,
        after_handshake: read_until_close(tls).await,
    }
}

/// Reads application data until the client's close_notify, which must
/// come: a probe closes cleanly.
async fn read_until_close(mut tls: TlsStream<TcpStream>) -> Vec<u8> {
    let mut received = Vec::new();
    tls.read_to_end(&mut received)
        .await
        .expect("the client closes with close_notify");
    received
}

/// Accepts one connection and serves TLS on it with `config`.
pub async fn tls_server_once(config: Arc<ServerConfig>) -> (SocketAddr, JoinHandle<Seen>) {
    let (listener, addr) = listen().await;
    let handle = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve_tls(stream, config).await
    });
    (addr, handle)
}
