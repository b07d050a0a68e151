//! intransit-wire
