//! Placeholder for the server-side credentials of a pool (trust only).

use std::sync::Arc;

use intransit_config::PoolConfig;

use crate::conn::Refused;
use crate::error::ProxyError;
use crate::tls::upstream::UpstreamTls;

pub(crate) struct Credentials {
    upstream_tls: Option<Arc<UpstreamTls>>,
}

#[derive(Clone)]
pub(crate) struct ServerLogin {
    pub(crate) upstream_tls: Option<Arc<UpstreamTls>>,
}

impl Credentials {
    pub(crate) fn load(
        _pool: &PoolConfig,
        upstream_tls: Option<Arc<UpstreamTls>>,
    ) -> Result<Credentials, ProxyError> {
        Ok(Credentials { upstream_tls })
    }

    pub(crate) fn for_user(&self, _user: &str) -> Result<ServerLogin, Refused> {
        Ok(ServerLogin {
            upstream_tls: self.upstream_tls.clone(),
        })
    }

    pub(crate) fn reload(&self) -> Result<bool, ProxyError> {
        Ok(false)
    }
}
