//! kubelvs.io API.
