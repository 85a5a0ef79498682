//! The bodies of tmemd's fuzz targets: one plain function per parser that a guest or a local
//! peer controls. The cargo-fuzz binaries in `fuzz/` call these, and so does this crate's
//! corpus replay test, so every checked-in corpus file and crash reproducer runs in plain
//! `cargo test` on stable Rust.
//!
//! Each function takes arbitrary bytes and panics only when an invariant of the code under
//! test is broken (that is the bug report); refusals and errors are expected outcomes.

mod abi;
mod blkif;
mod control;
mod image;
mod input;
mod local;
mod ring;
mod xen;

pub use abi::abi_request;
pub use blkif::blkif_ring;
pub use control::control_request;
pub use image::image_file;
pub use local::local_hello;
pub use ring::ring_backend;
pub use xen::{xen_blkfront_keys, xen_frontend_keys, xen_wire};

/// The body of one fuzz target: arbitrary bytes in, a panic only on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by the name of its fuzz binary (and of its corpus directory).
pub const TARGETS: &[(&str, Target)] = &[
    ("abi_request", abi_request),
    ("ring_backend", ring_backend),
    ("blkif_ring", blkif_ring),
    ("local_hello", local_hello),
    ("xen_wire", xen_wire),
    ("xen_frontend_keys", xen_frontend_keys),
    ("xen_blkfront_keys", xen_blkfront_keys),
    ("control_request", control_request),
    ("image_file", image_file),
];
