//! The tmem page store: clients, pools, objects, pages, eviction, quotas, statistics. No I/O, no unsafe.
