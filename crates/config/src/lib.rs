//! intransit-config
