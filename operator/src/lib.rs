//! Cluster-wide decisions of the kube-lvs operator, as pure functions.
//!
//! Today: VIP allocation from AddressPools. The controllers that watch the API server and
//! write status are not built yet (see README's feature table).

#![forbid(unsafe_code)]

pub mod allocate;
