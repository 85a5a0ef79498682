#![no_main]
// Body in crates/tmem-fuzz-targets, shared with the corpus replay in `cargo test`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tmem_fuzz_targets::image_file(data));
