#!/usr/bin/env bash
# The demo (README "Quick start"): guests start before tmemd and get fake pool handles,
# tmemd starts and they are remapped, tmemd is killed and restarted under load.
# Local transport only; needs Rust and Linux, no Xen and no root.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p tmemd -p tmem-guest -p tmem-cli
exec target/release/tmem-demo "$@"
