#!/usr/bin/env bash
# Time-boxed fuzzing of every target, as CI runs it: `fuzz/run.sh [SECONDS] [TARGET...]`.
# Builds with cargo-fuzz on stable Rust (no sanitizer, debug assertions on), fuzzes each
# target for SECONDS (default 45) from a scratch copy of its checked-in corpus, and exits
# non-zero on the first crash, naming the reproducer. The checked-in corpus is never changed.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-45}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -s none -a
bin=target/$(rustc -vV | sed -n 's/^host: //p')/release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" artifacts/"$t"
    cp corpus/"$t"/* "$scratch/$t/"
    echo "--- fuzzing $t for ${secs}s"
    if ! "$bin/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -max_len=4096 \
        -print_final_stats=1 -artifact_prefix=artifacts/"$t"/ "$scratch/$t" 2>"$scratch/$t.log"; then
        tail -n 40 "$scratch/$t.log"
        echo "fuzz target $t failed; reproducer in fuzz/artifacts/$t/ (see fuzz/README.md)" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|#[0-9]+ +DONE)' "$scratch/$t.log" || true
done
