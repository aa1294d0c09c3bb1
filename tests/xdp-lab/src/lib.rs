//! Network-namespace lab for the XDP dataplane.
