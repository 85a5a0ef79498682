//! tmemd: the dom0 daemon that serves tmem guests.
//!
//! `main.rs` only parses arguments and reports errors; this library holds the daemon:
//! configuration ([`config`]), the main thread ([`daemon`]: sockets, handshakes, signals),
//! the workers that serve guest rings ([`worker`]), the control socket ([`control`]), where
//! page memory lives ([`pagemem`]) and the administrator settings that survive ([`settings`]).
//! It must never trust a guest: every guest byte reaches it through tmem-ring's validation.

pub mod config;
pub mod control;
pub mod daemon;
pub mod handshake;
pub mod health;
pub mod pagemem;
pub mod ratelimit;
pub mod sdnotify;
pub mod settings;
pub mod sync;
pub mod transfer;
pub mod worker;
pub mod xen;
