//! microVM harness for the IPVS dataplane.
