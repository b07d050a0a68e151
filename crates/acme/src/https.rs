//! The HTTPS client that talks to the ACME server: hyper over rustls with
//! aws-lc-rs, trusting the platform's roots plus an optional extra root
//! (`--acme-ca`, for a private CA such as step-ca or pebble), with a
//! deadline on every request so that a server that accepts and then stalls
//! is reported like one that is down.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::AcmeError;

/// How long one request to the ACME server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failure to get any HTTP answer from the ACME server. It travels through
/// instant-acme as `Error::Other` and is recognised again by
/// [`crate::classify`].
#[derive(Debug)]
pub(crate) struct Unreachable {
    pub(crate) detail: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Unreachable {}

pub(crate) struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl HttpsClient {
    /// A client trusting the platform's roots and the certificates in
    /// `extra_root`, if given.
    pub(crate) fn new(extra_root: Option<&Path>) -> Result<Self, AcmeError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut extra = Vec::new();
        if let Some(path) = extra_root {
            let bad = |detail: String| AcmeError::ExtraRoot {
                path: path.to_owned(),
                detail,
            };
            let pem = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let ders = intransit_pki::pem_to_der_certs(&pem).map_err(|e| bad(words(&e)))?;
            extra.extend(ders.into_iter().map(rustls_pki_types::CertificateDer::from));
        }
        let no_platform = |e: rustls::Error| AcmeError::Local {
            action: "HTTPS to the ACME server",
            detail: e.to_string(),
        };
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
                .map_err(no_platform)?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(no_platform)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

impl HttpClient for HttpsClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let url = req.uri().to_string();
        let response = self.client.request(req);
        Box::pin(async move {
            let unreachable = |detail: String| {
                instant_acme::Error::Other(Box::new(Unreachable {
                    detail: format!("{url}: {detail}"),
                }))
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, response).await {
                Ok(Ok(response)) => Ok(BytesResponse::from(response)),
                Ok(Err(e)) => Err(unreachable(words(&e))),
                Err(_) => Err(unreachable(format!(
                    "no answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}

/// An error and its causes on one line, each said once (hyper's client
/// errors wrap the connector's, which wrap the system's).
pub(crate) fn words(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}
