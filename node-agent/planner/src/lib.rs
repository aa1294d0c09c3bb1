//! Pure node planner.
