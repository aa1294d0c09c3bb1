//! The kube-lvs operator: cluster-wide decisions (VIP allocation, status roll-up,
//! LoadBalancer Services) as pure functions, and the controllers that apply them.

#![forbid(unsafe_code)]

pub mod allocate;
pub mod controller;
pub mod lease;
pub mod metrics;
pub mod pass;
pub mod reserved;
pub mod rollup;
pub mod service;
mod service_controller;
