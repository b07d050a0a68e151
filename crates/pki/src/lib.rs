//! intransit-pki
