//! rustls handshakes in memory, with no sockets: what the CPU pays for a
//! full TLS 1.3 handshake, a resumed one, and one with a client
//! certificate, using the aws-lc-rs provider as the proxy does.

// A benchmark fails loudly on bad input it built itself.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

struct Pki {
    ca: CertificateDer<'static>,
    server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bench CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![usage];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    };
    Pki {
        ca: ca_cert.der().clone(),
        server: leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf("trainer", ExtendedKeyUsagePurpose::ClientAuth),
    }
}

fn server_config(pki: &Pki, client_auth: bool) -> Arc<ServerConfig> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap();
    let builder = if client_auth {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(pki.server.0.clone(), pki.server.1.clone_key())
        .unwrap();
    config.ticketer = aws_lc_rs::Ticketer::new().unwrap();
    Arc::new(config)
}

fn client_config(pki: &Pki, client_cert: bool, resume: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if client_cert {
        builder
            .with_client_auth_cert(pki.client.0.clone(), pki.client.1.clone_key())
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// Runs one handshake to completion in memory; returns whether it resumed.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> bool {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut buf = Vec::with_capacity(8192);
    // Until both sides are done and every byte (tickets too) is delivered.
    loop {
        let mut moved = false;
        while c.wants_write() {
            buf.clear();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            moved = true;
        }
        while s.wants_write() {
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().unwrap();
            moved = true;
        }
        if !moved && !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
    }
    c.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

fn handshakes(c: &mut Criterion) {
    let pki = pki();
    let plain_server = server_config(&pki, false);
    let mtls_server = server_config(&pki, true);

    let full = client_config(&pki, false, false);
    assert!(!handshake(&full, &plain_server));
    c.bench_function("rustls/tls1.3 full", |b| {
        b.iter(|| handshake(&full, &plain_server))
    });

    let resuming = client_config(&pki, false, true);
    handshake(&resuming, &plain_server);
    assert!(handshake(&resuming, &plain_server), "no resumption");
    c.bench_function("rustls/tls1.3 resumed", |b| {
        b.iter(|| handshake(&resuming, &plain_server))
    });

    let mtls = client_config(&pki, true, false);
    assert!(!handshake(&mtls, &mtls_server));
    c.bench_function("rustls/tls1.3 client certificate", |b| {
        b.iter(|| handshake(&mtls, &mtls_server))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(2));
    targets = handshakes
}
criterion_main!(benches);
