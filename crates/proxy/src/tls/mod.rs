//! TLS on both legs, kept apart from what any protocol says and from any
//! one connection: the listener side that clients see (`listener`), the
//! upstream side towards the database (`upstream`),
//! material swapped while serving (`reloadable`), the checks all material
//! passes before it is used (`material`), and what a handshake negotiated
//! (`facts`).

pub(crate) mod facts;
pub(crate) mod listener;
pub(crate) mod material;
pub(crate) mod reloadable;
pub(crate) mod upstream;

pub use facts::TlsFacts;
pub use listener::{
    crypto_provider, load_certs, ListenerTls, LoadedCertificate, LoadedCrl, PolicySummary,
    PolicyVerifier, PresentedCertificate, TlsMaterial,
};
pub use material::SourceFingerprint;
pub use reloadable::{ReloadError, ReloadFailure, Reloaded};
pub use upstream::{
    PinMismatch, UpstreamMaterial, UpstreamSession, UpstreamTls, UpstreamTlsFailure,
};
