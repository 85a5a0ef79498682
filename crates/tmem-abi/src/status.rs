//! Status values carried in responses, following Xen's tmem return convention: `1` for a
//! successful put, get hit or flush, `0` for a get miss, a pool id (≥ 0) for `NEW_POOL`,
//! and negative Linux errno values (plus tmem's own two) for errors.

/// Successful put, get hit, flush, or destroy of an existing pool.
pub const SUCCESS: i32 = 1;
/// Get miss, or destroy of a pool that did not exist.
pub const MISS: i32 = 0;

/// Linux errno numbers used by tmem (Xen uses the Linux values).
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const E2BIG: i32 = 7;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EFAULT: i32 = 14;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const ERANGE: i32 = 34;
    pub const ENOSYS: i32 = 38;
    pub const EPROTO: i32 = 71;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EDQUOT: i32 = 122;
    /// tmem: the client is frozen and the put was for a new handle.
    pub const EFROZEN: i32 = 1000;
    /// tmem: the pool holds no pages at all.
    pub const EEMPTY: i32 = 1001;
}

/// Every error a tmem operation can return to a guest, with its wire status.
///
/// The store, the ring and the daemon all speak this type, so the mapping to wire numbers
/// lives in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TmemError {
    /// The pool id names no pool of this client (Xen: "operation requested on uncreated pool").
    #[error("no such pool")]
    NoSuchPool,
    /// The client is frozen; puts of new handles are refused.
    #[error("client is frozen")]
    Frozen,
    /// A duplicate put could not store the new data; the old copy was removed.
    #[error("duplicate put failed; old copy flushed")]
    DupPutFlushed,
    /// No memory for the page (the store is full of pages it may not evict).
    #[error("out of memory")]
    NoMemory,
    /// The client reached its page cap.
    #[error("client page cap reached")]
    OverCap,
    /// Bad pool flags, or a pool limit was reached.
    #[error("operation not permitted")]
    NotPermitted,
    /// The domain is not authorised for this shared-pool uuid.
    #[error("not authorised for this shared pool")]
    NotAuthorised,
    /// A malformed request (non-zero reserved field, slot out of range, ...).
    #[error("invalid request")]
    Invalid,
    /// A command tmemd does not implement (legacy or unknown).
    #[error("command not supported")]
    Unsupported,
    /// A get on a pool that holds no pages at all.
    #[error("pool is empty")]
    Empty,
    /// The client or its domain is going away.
    #[error("no such device")]
    NoDevice,
    /// A request id that is already in flight (a ring protocol violation).
    #[error("protocol error")]
    Protocol,
}

impl TmemError {
    /// The (negative) wire status for this error.
    pub const fn status(self) -> i32 {
        use errno::*;
        -match self {
            TmemError::NoSuchPool | TmemError::NoDevice => ENODEV,
            TmemError::Frozen => EFROZEN,
            TmemError::DupPutFlushed => ENOSPC,
            TmemError::NoMemory => ENOMEM,
            TmemError::OverCap => EDQUOT,
            TmemError::NotPermitted => EPERM,
            TmemError::NotAuthorised => EACCES,
            TmemError::Invalid => EINVAL,
            TmemError::Unsupported => ENOSYS,
            TmemError::Empty => EEMPTY,
            TmemError::Protocol => EPROTO,
        }
    }

    /// The error for a wire status, if it is one (`status < 0`) this crate knows.
    pub const fn from_status(status: i32) -> Option<TmemError> {
        use errno::*;
        Some(match -status {
            ENODEV => TmemError::NoSuchPool,
            EFROZEN => TmemError::Frozen,
            ENOSPC => TmemError::DupPutFlushed,
            ENOMEM => TmemError::NoMemory,
            EDQUOT => TmemError::OverCap,
            EPERM => TmemError::NotPermitted,
            EACCES => TmemError::NotAuthorised,
            EINVAL => TmemError::Invalid,
            ENOSYS => TmemError::Unsupported,
            EEMPTY => TmemError::Empty,
            EPROTO => TmemError::Protocol,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_negative_and_round_trip() {
        let all = [
            TmemError::NoSuchPool,
            TmemError::Frozen,
            TmemError::DupPutFlushed,
            TmemError::NoMemory,
            TmemError::OverCap,
            TmemError::NotPermitted,
            TmemError::NotAuthorised,
            TmemError::Invalid,
            TmemError::Unsupported,
            TmemError::Empty,
            TmemError::Protocol,
        ];
        for e in all {
            assert!(e.status() < 0, "{e:?}");
            assert_eq!(TmemError::from_status(e.status()), Some(e));
        }
        assert_eq!(TmemError::Frozen.status(), -1000);
        assert_eq!(TmemError::Empty.status(), -1001);
        assert_eq!(TmemError::DupPutFlushed.status(), -28);
        assert_eq!(TmemError::from_status(SUCCESS), None);
        assert_eq!(TmemError::from_status(MISS), None);
    }
}
