//! Concurrency test: the contention run of `contention/mod.rs` on raw pages, in a store small
//! enough that eviction races puts and gets.

use std::sync::Arc;
use tmem_store::*;

mod contention;

const LIMIT_PAGES: u64 = 96;

#[test]
fn no_torn_or_stale_pages_under_contention() {
    let store = Arc::new(Store::new(StoreConfig {
        mem_limit_bytes: LIMIT_PAGES * PAGE_SIZE as u64,
        ..StoreConfig::default()
    }));
    contention::run(
        &store,
        &contention::Hooks {
            limit_pages: LIMIT_PAGES,
            block_words: 1,
            setup: |_, _, _| {},
            each_op: |_, _, _| {},
            check: |_| {},
        },
    );
}
