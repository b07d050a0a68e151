//! intransit-proxy
