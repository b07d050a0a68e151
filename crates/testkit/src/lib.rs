//! intransit-testkit
