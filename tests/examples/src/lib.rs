//! Shared helpers for cross-component tests.
