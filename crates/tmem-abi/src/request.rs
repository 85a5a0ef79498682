//! Validation of guest requests: the one place where a request's fields gain meaning.
//!
//! [`parse_request`] takes a request that has already been copied out of shared memory and
//! returns a typed [`Request`] or the precise [`Refusal`]. Nothing downstream looks at raw
//! request fields again.

use crate::ring::RequestEntry;
use crate::status::TmemError;
use crate::{cmd, pool_flags};

/// A 192-bit object id (ABI spec version 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Oid(pub [u64; 3]);

/// The handle of one page inside a pool: object id and page index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PageKey {
    pub oid: Oid,
    pub index: u32,
}

/// The three kinds of pool a guest may create (shared persistent does not exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Clean page cache of a private filesystem: exclusive gets, evictable.
    PrivateEphemeral,
    /// Clean page cache of a filesystem shared by uuid (e.g. ocfs2): non-exclusive, evictable.
    SharedEphemeral,
    /// Swap: non-exclusive gets, never evicted.
    PrivatePersistent,
}

impl PoolKind {
    pub const fn is_persistent(self) -> bool {
        matches!(self, PoolKind::PrivatePersistent)
    }
    pub const fn is_shared(self) -> bool {
        matches!(self, PoolKind::SharedEphemeral)
    }
    /// The `NEW_POOL` flags word for this kind.
    pub const fn flags(self) -> u32 {
        pool_flags::for_kind(self.is_persistent(), self.is_shared())
    }
    /// Two-letter type as Xen's `tmem-list` printed it (`PT:`): persistence, then sharing.
    pub const fn xen_tag(self) -> &'static str {
        match self {
            PoolKind::PrivateEphemeral => "EP",
            PoolKind::SharedEphemeral => "ES",
            PoolKind::PrivatePersistent => "PP",
        }
    }
}

/// A validated guest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    NewPool { uuid: [u64; 2], kind: PoolKind },
    DestroyPool { pool: u32 },
    Put { pool: u32, key: PageKey, slot: u32 },
    Get { pool: u32, key: PageKey, slot: u32 },
    FlushPage { pool: u32, key: PageKey },
    FlushObject { pool: u32, oid: Oid },
}

/// Why a request was refused. Each reason answers the guest with a status; none of them
/// disconnects it (ring-level violations are tmem-ring's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("reserved request field is not zero")]
    ReservedNotZero,
    #[error("privileged command {0} is only accepted on the control socket")]
    Privileged(u32),
    #[error("legacy command {0} is not supported")]
    Legacy(u32),
    #[error("unknown command {0}")]
    UnknownCommand(u32),
    #[error("pool flags {0:#010x}: spec version is not 1")]
    BadSpecVersion(u32),
    #[error("pool flags {0:#010x}: shared persistent pools do not exist")]
    SharedPersistent(u32),
    #[error("pool flags {0:#010x}: page size is not 4 KiB")]
    BadPageSize(u32),
    #[error("pool flags {0:#010x}: precompressed pools are not supported")]
    Precompressed(u32),
    #[error("pool flags {0:#010x}: reserved bits set")]
    ReservedFlags(u32),
    #[error("data slot {slot} is outside the data area of {slots} slots")]
    SlotOutOfRange { slot: u32, slots: u32 },
}

impl Refusal {
    /// The error this refusal is answered with.
    pub const fn error(self) -> TmemError {
        match self {
            Refusal::ReservedNotZero | Refusal::SlotOutOfRange { .. } => TmemError::Invalid,
            Refusal::Privileged(_) => TmemError::NotPermitted,
            Refusal::Legacy(_) | Refusal::UnknownCommand(_) => TmemError::Unsupported,
            // Xen answered every bad-flags case with -EPERM.
            Refusal::BadSpecVersion(_)
            | Refusal::SharedPersistent(_)
            | Refusal::BadPageSize(_)
            | Refusal::Precompressed(_)
            | Refusal::ReservedFlags(_) => TmemError::NotPermitted,
        }
    }
    /// The wire status for this refusal.
    pub const fn status(self) -> i32 {
        self.error().status()
    }
}

/// Validate a request copied out of a ring slot. `data_slots` is the size of the connection's
/// data area; `PUT`/`GET` must name a slot inside it.
///
/// Pool ids are taken as unsigned (Xen's XSA-15 fix): a negative id becomes a huge one that
/// names no pool, so the store answers it like any other unknown pool.
pub fn parse_request(e: &RequestEntry, data_slots: u32) -> Result<Request, Refusal> {
    if e.rsvd != [0, 0] {
        return Err(Refusal::ReservedNotZero);
    }
    let pool = e.pool_id as u32;
    match e.cmd {
        cmd::NEW_POOL => {
            // Xen ignores the pool id of NEW_POOL, and so do we.
            if e.creat_rsvd() != 0 || e.arg[3] != 0 || e.arg[4] != 0 {
                return Err(Refusal::ReservedNotZero);
            }
            let kind = parse_pool_flags(e.pool_flags())?;
            Ok(Request::NewPool {
                uuid: e.uuid(),
                kind,
            })
        }
        cmd::DESTROY_POOL => {
            if e.arg != [0; 5] {
                return Err(Refusal::ReservedNotZero);
            }
            Ok(Request::DestroyPool { pool })
        }
        cmd::PUT_PAGE | cmd::GET_PAGE => {
            if e.arg[4] != 0 {
                return Err(Refusal::ReservedNotZero);
            }
            let slot = e.slot();
            if slot >= data_slots {
                return Err(Refusal::SlotOutOfRange {
                    slot,
                    slots: data_slots,
                });
            }
            let key = PageKey {
                oid: Oid(e.oid()),
                index: e.index(),
            };
            Ok(if e.cmd == cmd::PUT_PAGE {
                Request::Put { pool, key, slot }
            } else {
                Request::Get { pool, key, slot }
            })
        }
        cmd::FLUSH_PAGE => {
            if e.arg[4] != 0 || e.slot() != 0 {
                return Err(Refusal::ReservedNotZero);
            }
            let key = PageKey {
                oid: Oid(e.oid()),
                index: e.index(),
            };
            Ok(Request::FlushPage { pool, key })
        }
        cmd::FLUSH_OBJECT => {
            if e.arg[3] != 0 || e.arg[4] != 0 {
                return Err(Refusal::ReservedNotZero);
            }
            Ok(Request::FlushObject {
                pool,
                oid: Oid(e.oid()),
            })
        }
        cmd::CONTROL | cmd::AUTH | cmd::RESTORE_NEW => Err(Refusal::Privileged(e.cmd)),
        cmd::NEW_PAGE | cmd::READ | cmd::WRITE | cmd::XCHG => Err(Refusal::Legacy(e.cmd)),
        other => Err(Refusal::UnknownCommand(other)),
    }
}

/// Validate `NEW_POOL` flags, in Xen's order.
pub fn parse_pool_flags(flags: u32) -> Result<PoolKind, Refusal> {
    use pool_flags::*;
    if (flags >> VERSION_SHIFT) & VERSION_MASK != SPEC_VERSION {
        return Err(Refusal::BadSpecVersion(flags));
    }
    let persistent = flags & PERSIST != 0;
    let shared = flags & SHARED != 0;
    if persistent && shared {
        return Err(Refusal::SharedPersistent(flags));
    }
    if (flags >> PAGESIZE_SHIFT) & PAGESIZE_MASK != crate::PAGE_SHIFT - 12 {
        return Err(Refusal::BadPageSize(flags));
    }
    if flags & PRECOMPRESSED != 0 {
        return Err(Refusal::Precompressed(flags));
    }
    if flags & (RESERVED_BITS | UNUSED_BIT3) != 0 {
        return Err(Refusal::ReservedFlags(flags));
    }
    Ok(match (persistent, shared) {
        (true, _) => PoolKind::PrivatePersistent,
        (false, true) => PoolKind::SharedEphemeral,
        (false, false) => PoolKind::PrivateEphemeral,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::errno;

    const SLOTS: u32 = 16;

    fn put(slot: u32) -> RequestEntry {
        RequestEntry::page_op(1, cmd::PUT_PAGE, 0, [1, 2, 3], 4, slot)
    }

    #[test]
    fn linux_shim_flags_are_accepted() {
        // The exact words Linux's Xen tmem shim sent.
        assert_eq!(
            parse_pool_flags(0x0100_0000),
            Ok(PoolKind::PrivateEphemeral)
        );
        assert_eq!(parse_pool_flags(0x0100_0002), Ok(PoolKind::SharedEphemeral));
        assert_eq!(
            parse_pool_flags(0x0100_0001),
            Ok(PoolKind::PrivatePersistent)
        );
        for k in [
            PoolKind::PrivateEphemeral,
            PoolKind::SharedEphemeral,
            PoolKind::PrivatePersistent,
        ] {
            assert_eq!(parse_pool_flags(k.flags()), Ok(k));
        }
    }

    #[test]
    fn bad_spec_version_is_refused() {
        assert_eq!(parse_pool_flags(0), Err(Refusal::BadSpecVersion(0)));
        assert_eq!(
            parse_pool_flags(0x0200_0000),
            Err(Refusal::BadSpecVersion(0x0200_0000))
        );
    }

    #[test]
    fn shared_persistent_is_refused() {
        assert_eq!(
            parse_pool_flags(0x0100_0003),
            Err(Refusal::SharedPersistent(0x0100_0003))
        );
    }

    #[test]
    fn non_4k_page_size_is_refused() {
        assert_eq!(
            parse_pool_flags(0x0100_0010),
            Err(Refusal::BadPageSize(0x0100_0010))
        );
        assert_eq!(
            parse_pool_flags(0x0100_00f0),
            Err(Refusal::BadPageSize(0x0100_00f0))
        );
    }

    #[test]
    fn precompressed_is_refused() {
        assert_eq!(
            parse_pool_flags(0x0100_0004),
            Err(Refusal::Precompressed(0x0100_0004))
        );
    }

    #[test]
    fn reserved_flag_bits_are_refused() {
        for bit in (8..24).chain([3]) {
            let f = 0x0100_0000 | 1 << bit;
            assert_eq!(
                parse_pool_flags(f),
                Err(Refusal::ReservedFlags(f)),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn bad_flags_answer_eperm() {
        assert_eq!(Refusal::BadSpecVersion(0).status(), -errno::EPERM);
        assert_eq!(Refusal::ReservedFlags(0).status(), -errno::EPERM);
    }

    #[test]
    fn new_pool_parses_uuid_and_kind() {
        let e = RequestEntry::new_pool(5, [7, 8], 0x0100_0002);
        assert_eq!(
            parse_request(&e, SLOTS),
            Ok(Request::NewPool {
                uuid: [7, 8],
                kind: PoolKind::SharedEphemeral
            })
        );
    }

    #[test]
    fn new_pool_reserved_fields_must_be_zero() {
        let mut e = RequestEntry::new_pool(5, [7, 8], 0x0100_0000);
        e.arg[2] |= 1 << 32;
        assert_eq!(parse_request(&e, SLOTS), Err(Refusal::ReservedNotZero));
        let mut e = RequestEntry::new_pool(5, [7, 8], 0x0100_0000);
        e.arg[3] = 1;
        assert_eq!(parse_request(&e, SLOTS), Err(Refusal::ReservedNotZero));
        let mut e = RequestEntry::new_pool(5, [7, 8], 0x0100_0000);
        e.arg[4] = 1;
        assert_eq!(parse_request(&e, SLOTS), Err(Refusal::ReservedNotZero));
    }

    #[test]
    fn trailing_reserved_words_must_be_zero_for_every_command() {
        for c in [
            cmd::NEW_POOL,
            cmd::DESTROY_POOL,
            cmd::PUT_PAGE,
            cmd::GET_PAGE,
            cmd::FLUSH_PAGE,
            cmd::FLUSH_OBJECT,
        ] {
            let mut e = RequestEntry::page_op(1, c, 0, [0; 3], 0, 0);
            e.rsvd[1] = 1;
            assert_eq!(parse_request(&e, SLOTS), Err(Refusal::ReservedNotZero));
        }
    }

    #[test]
    fn put_and_get_parse_with_slot_in_range() {
        assert_eq!(
            parse_request(&put(SLOTS - 1), SLOTS),
            Ok(Request::Put {
                pool: 0,
                key: PageKey {
                    oid: Oid([1, 2, 3]),
                    index: 4
                },
                slot: SLOTS - 1
            })
        );
        let g = RequestEntry::page_op(1, cmd::GET_PAGE, 2, [1, 2, 3], 4, 0);
        assert!(matches!(
            parse_request(&g, SLOTS),
            Ok(Request::Get { pool: 2, .. })
        ));
    }

    #[test]
    fn slot_out_of_range_is_refused() {
        assert_eq!(
            parse_request(&put(SLOTS), SLOTS),
            Err(Refusal::SlotOutOfRange {
                slot: SLOTS,
                slots: SLOTS
            })
        );
        assert_eq!(
            parse_request(&put(u32::MAX), SLOTS).map_err(Refusal::status),
            Err(-errno::EINVAL)
        );
        // An empty data area admits no PUT or GET at all.
        assert!(parse_request(&put(0), 0).is_err());
    }

    #[test]
    fn page_op_trailing_union_word_must_be_zero() {
        let mut e = put(0);
        e.arg[4] = 1;
        assert_eq!(parse_request(&e, SLOTS), Err(Refusal::ReservedNotZero));
    }

    #[test]
    fn flushes_must_not_carry_a_slot() {
        let e = RequestEntry::page_op(1, cmd::FLUSH_PAGE, 0, [1, 2, 3], 4, 1);
        assert_eq!(parse_request(&e, SLOTS), Err(Refusal::ReservedNotZero));
        let e = RequestEntry::page_op(1, cmd::FLUSH_OBJECT, 0, [1, 2, 3], 4, 0);
        assert_eq!(parse_request(&e, SLOTS), Err(Refusal::ReservedNotZero));
        let e = RequestEntry::page_op(1, cmd::FLUSH_OBJECT, 0, [1, 2, 3], 0, 0);
        assert_eq!(
            parse_request(&e, SLOTS),
            Ok(Request::FlushObject {
                pool: 0,
                oid: Oid([1, 2, 3])
            })
        );
    }

    #[test]
    fn destroy_pool_takes_no_arguments() {
        let e = RequestEntry::destroy_pool(1, 3);
        assert_eq!(
            parse_request(&e, SLOTS),
            Ok(Request::DestroyPool { pool: 3 })
        );
        let mut e = RequestEntry::destroy_pool(1, 3);
        e.arg[0] = 1;
        assert_eq!(parse_request(&e, SLOTS), Err(Refusal::ReservedNotZero));
    }

    #[test]
    fn negative_pool_ids_become_unsigned() {
        let e = RequestEntry::page_op(1, cmd::FLUSH_PAGE, -1, [0; 3], 0, 0);
        assert!(matches!(
            parse_request(&e, SLOTS),
            Ok(Request::FlushPage { pool: u32::MAX, .. })
        ));
    }

    #[test]
    fn privileged_commands_are_refused_with_eperm() {
        for c in [cmd::CONTROL, cmd::AUTH, cmd::RESTORE_NEW] {
            let e = RequestEntry::page_op(1, c, 0, [0; 3], 0, 0);
            assert_eq!(parse_request(&e, SLOTS), Err(Refusal::Privileged(c)));
            assert_eq!(Refusal::Privileged(c).status(), -errno::EPERM);
        }
    }

    #[test]
    fn legacy_and_unknown_commands_are_refused_with_enosys() {
        for c in [cmd::NEW_PAGE, cmd::READ, cmd::WRITE, cmd::XCHG] {
            let e = RequestEntry::page_op(1, c, 0, [0; 3], 0, 0);
            assert_eq!(parse_request(&e, SLOTS), Err(Refusal::Legacy(c)));
        }
        for c in [11, 100, 103, u32::MAX] {
            let e = RequestEntry::page_op(1, c, 0, [0; 3], 0, 0);
            assert_eq!(parse_request(&e, SLOTS), Err(Refusal::UnknownCommand(c)));
            assert_eq!(Refusal::UnknownCommand(c).status(), -errno::ENOSYS);
        }
    }
}
