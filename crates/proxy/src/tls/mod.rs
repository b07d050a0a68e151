//! TLS on both legs: the listener side that clients see, the upstream
//! side towards the database, the handshake with a client, and the checks
//! all material passes before it is used.

pub(crate) mod handshake;
pub(crate) mod listener;
pub(crate) mod material;
pub(crate) mod upstream;

pub use listener::{
    crypto_provider, load_certs, ListenerTls, LoadedCertificate, PolicySummary, PolicyVerifier,
    PresentedCertificate, ReloadError, ReloadFailure, Reloaded, TlsMaterial, ALPN_POSTGRESQL,
};
pub use material::SourceFingerprint;
pub use upstream::{
    PinMismatch, UpstreamMaterial, UpstreamSession, UpstreamTls, UpstreamTlsFailure,
};
