//! Maglev consistent hashing (pure).
