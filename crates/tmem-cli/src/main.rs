//! The tmem administration CLI.

fn main() {}
