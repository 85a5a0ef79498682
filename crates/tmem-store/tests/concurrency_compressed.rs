//! The concurrency test of `concurrency.rs` with compression on: threads compress with lz4,
//! zstd or only their ephemeral pages, pages compress (each 64-word block repeats one word,
//! which still encodes key, version and block), and one thread compacts now and then, so
//! puts, gets, evictions and compaction moves of compressed objects sharing frames race.
//! A torn, foreign or stale page is detected as in `concurrency.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tmem_store::*;

mod contention;

const LIMIT_PAGES: u64 = 24;
/// The most compressed pages seen at once (a check hook cannot capture).
static SEEN_Z: AtomicU64 = AtomicU64::new(0);

#[test]
fn no_torn_or_stale_compressed_pages_under_contention() {
    let store = Arc::new(Store::new(StoreConfig {
        mem_limit_bytes: LIMIT_PAGES * PAGE_SIZE as u64,
        // Memory is small here (so that compressed pages get evicted): no per-client share.
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    }));
    let g = contention::run(
        &store,
        &contention::Hooks {
            limit_pages: LIMIT_PAGES,
            // Each 64-word block repeats one word (still encoding key, version and block):
            // the pages compress.
            block_words: 64,
            setup: |store, c, t| {
                let (l, z, o) = (Compression::Lz4, Compression::Zstd, Compression::Off);
                let (ephemeral, persistent) = [(l, l), (z, z), (l, o), (o, z)][t % 4];
                store
                    .set_compression(
                        c,
                        ClientCompression {
                            ephemeral,
                            persistent,
                        },
                    )
                    .unwrap();
            },
            each_op: |store, t, n| {
                if t == 0 && n % 256 == 0 {
                    store.compact(64);
                }
            },
            check: |g| {
                assert_eq!(g.compression.decompress_errors, 0);
                SEEN_Z.fetch_max(g.compression.pages, Ordering::Relaxed);
            },
        },
    );
    assert!(g.compression.compactions > 0);
    assert!(
        SEEN_Z.load(Ordering::Relaxed) > 24,
        "compressed pages should outnumber frames"
    );
    assert_eq!(g.compression.frames, 0);
}
