#!/usr/bin/env bash
# The project's test command (README "Quick start"): unit, property, concurrency and
# multi-process integration tests over the local transport. Needs only Rust and Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
# Integration tests start the real binaries; build them first so the tests find them.
cargo build --workspace --bins
cargo test --workspace "$@"
