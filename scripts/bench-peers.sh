#!/usr/bin/env bash
# tmemd's local transport against Redis and memcached, one run, same workload (see
# tests/integration/benches/peers.rs): 4 KiB values on loopback, pipelined and synchronous.
# Starts both servers on private loopback ports with no persistence, runs the bench, stops
# them (also on failure). Needs redis-server and memcached (Debian: apt-get install
# redis-server memcached). Environment: TMEM_PEERS_PAGES (default 100000), TMEM_PEERS_RUNS
# (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
for b in redis-server memcached; do
    command -v "$b" >/dev/null || { echo "bench-peers: $b is not installed (apt-get install redis-server memcached)" >&2; exit 2; }
done
pages=${TMEM_PEERS_PAGES:-100000}
mib=$(( pages * 6 / 1024 + 256 ))   # 4 KiB values plus per-item overhead, with room
redis_port=${TMEM_PEERS_REDIS_PORT:-16379}
mc_port=${TMEM_PEERS_MEMCACHED_PORT:-21211}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --dir "$work" --maxmemory "${mib}mb" --daemonize no --loglevel warning >"$work/redis.log" 2>&1 &
pids+=($!)
memcached -l 127.0.0.1 -p "$mc_port" -U 0 -m "$mib" -u "$(id -un)" >"$work/memcached.log" 2>&1 &
pids+=($!)
# Wait (bounded) until both accept connections.
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null \
        && (exec 3<>"/dev/tcp/127.0.0.1/$mc_port") 2>/dev/null; then
        break
    fi
    sleep 0.1
done
cargo build --release -p tmemd -p tmem-guest
TMEM_PEERS_REDIS="127.0.0.1:$redis_port" TMEM_PEERS_MEMCACHED="127.0.0.1:$mc_port" \
    cargo bench -p tmem-tests --bench peers
