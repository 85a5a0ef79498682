//! The tmemd daemon.

fn main() {}
