//! The frontend end of a transport: how the pool map reaches a backend.
//!
//! A [`Transport`] knows how to reach a backend (a socket path, later a Xen device) and makes
//! [`Connection`]s. A connection carries batches of [`Call`]s over the ring and reports the
//! backend's death as [`FrontError::Disconnected`]. The pool map above never sees rings,
//! slots or file descriptors.

use tmem_abi::{Page, RequestEntry};

use crate::FrontError;

/// Something that can (try to) reach a backend. Called again after every disconnect.
pub trait Transport: Send {
    /// Connect and hand back a live connection, or say why not.
    fn connect(&mut self) -> Result<Box<dyn Connection>, FrontError>;
    /// A short human description ("local:/run/tmemd/tmemd.sock") for status output.
    fn describe(&self) -> String;
}

/// Page data travelling with a call.
#[derive(Debug)]
pub enum Payload<'a> {
    /// No page (pool and flush commands).
    None,
    /// `PUT_PAGE`: the page to store.
    Put(&'a Page),
    /// `GET_PAGE`: where a hit is copied to. Left untouched on a miss.
    Get(&'a mut Page),
}

/// The backend's answer to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Xen tmem return convention (see `tmem_abi::status`).
    pub status: i32,
    /// `tmem_abi::rsp_flags`.
    pub flags: u32,
}

/// One request of a batch and, once answered, its reply.
#[derive(Debug)]
pub struct Call<'a> {
    /// The request; its `id` and data `slot` are assigned by the connection.
    pub req: RequestEntry,
    pub data: Payload<'a>,
    /// Set when the backend answered. After a `Disconnected` error some calls of the batch may
    /// be answered and others not: an unanswered call may or may not have been executed.
    pub reply: Option<Reply>,
}

impl<'a> Call<'a> {
    pub fn new(req: RequestEntry, data: Payload<'a>) -> Self {
        Call {
            req,
            data,
            reply: None,
        }
    }
}

/// A live connection to a backend.
pub trait Connection: Send {
    /// Submit every call of `calls` (pipelined, up to the connection's window in flight, one
    /// publish and at most one notification per refill) and wait until all are answered.
    ///
    /// Returns `Err(Disconnected)` when the backend is gone (socket closed, no answer within
    /// the timeout, or a protocol violation by the backend); the connection is then dead and
    /// must be dropped.
    fn call_batch(&mut self, calls: &mut [Call<'_>]) -> Result<(), FrontError>;

    /// Cheap, non-blocking liveness probe used while the guest is idle (e.g. the socket has
    /// not hung up). `false` means dead.
    fn is_alive(&mut self) -> bool {
        true
    }

    /// The most requests this connection keeps in flight.
    fn window(&self) -> usize;

    /// Orderly close: the guest is leaving for good (its pools may be destroyed).
    fn goodbye(&mut self) {}

    /// The client id the backend assigned, for display.
    fn client_id(&self) -> u64 {
        0
    }
}
