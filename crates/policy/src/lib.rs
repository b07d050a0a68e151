//! intransit-policy
