//! Cluster-wide decisions.
