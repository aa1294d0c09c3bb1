//! The XDP director dataplane.
