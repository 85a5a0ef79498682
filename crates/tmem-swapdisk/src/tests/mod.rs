//! Tests of the whole crate against the mock frontend and grant pages (in the crate, not
//! under `tests/`, so that the workspace's plain `cargo test` runs them).

mod crash_points;
mod model;
mod ring;
mod two_guests;
