//! The xenstore wire format (Xen's `io/xs_wire.h`): a 16-byte header in host byte order,
//! `{u32 type, u32 req_id, u32 tx_id, u32 len}`, then `len` bytes of payload (mostly
//! NUL-terminated strings). Pure encode/decode; no I/O.

/// Message types (`enum xsd_sockmsg_type`).
pub mod ty {
    pub const DEBUG: u32 = 0;
    pub const DIRECTORY: u32 = 1;
    pub const READ: u32 = 2;
    pub const GET_PERMS: u32 = 3;
    pub const WATCH: u32 = 4;
    pub const UNWATCH: u32 = 5;
    pub const TRANSACTION_START: u32 = 6;
    pub const TRANSACTION_END: u32 = 7;
    pub const INTRODUCE: u32 = 8;
    pub const RELEASE: u32 = 9;
    pub const GET_DOMAIN_PATH: u32 = 10;
    pub const WRITE: u32 = 11;
    pub const MKDIR: u32 = 12;
    pub const RM: u32 = 13;
    pub const SET_PERMS: u32 = 14;
    pub const WATCH_EVENT: u32 = 15;
    pub const ERROR: u32 = 16;
    pub const IS_DOMAIN_INTRODUCED: u32 = 17;
    pub const RESUME: u32 = 18;
    pub const SET_TARGET: u32 = 19;
    pub const RESTRICT: u32 = 20;
    pub const RESET_WATCHES: u32 = 21;
    pub const DIRECTORY_PART: u32 = 22;
}

/// Header bytes.
pub const HEADER_LEN: usize = 16;
/// Largest payload either side may send (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;

/// Special watch paths fired by xenstored.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// One message, either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

/// A malformed message or stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("xenstore payload of {0} bytes exceeds the {PAYLOAD_MAX}-byte limit")]
    TooLong(usize),
    #[error("xenstore path is invalid: {0}")]
    BadPath(String),
    #[error("malformed xenstore payload: {0}")]
    Malformed(&'static str),
}

impl Message {
    /// Encode header + payload.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.payload.len() > PAYLOAD_MAX {
            return Err(WireError::TooLong(self.payload.len()));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.ty.to_ne_bytes());
        out.extend_from_slice(&self.req_id.to_ne_bytes());
        out.extend_from_slice(&self.tx_id.to_ne_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_ne_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }
}

/// Reassembles messages from a byte stream (a socket, or reads of `/dev/xen/xenbus`).
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. A length above
    /// [`PAYLOAD_MAX`] means the stream is corrupt (it cannot be resynchronised).
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let word = |i: usize| {
            let b: [u8; 4] = self.buf[i * 4..i * 4 + 4].try_into().expect("4 bytes");
            u32::from_ne_bytes(b)
        };
        let (ty, req_id, tx_id, len) = (word(0), word(1), word(2), word(3) as usize);
        if len > PAYLOAD_MAX {
            return Err(WireError::TooLong(len));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Message {
            ty,
            req_id,
            tx_id,
            payload,
        }))
    }
}

/// Check a path before it is sent: absolute (`/...`) or a special `@name`, printable ASCII
/// from xenstore's character set, no empty components, within the length limit.
pub fn check_path(path: &str) -> Result<(), WireError> {
    let bad = |why: &str| Err(WireError::BadPath(format!("{path:?}: {why}")));
    if path.is_empty() {
        return bad("empty");
    }
    if path.len() > ABS_PATH_MAX {
        return bad("too long");
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-/_@.".contains(&b))
    {
        return bad("character outside [A-Za-z0-9-/_@.]");
    }
    if path.starts_with('@') {
        return Ok(());
    }
    if !path.starts_with('/') {
        return bad("not absolute");
    }
    if path.len() > 1 && (path.ends_with('/') || path.contains("//")) {
        return bad("empty component");
    }
    Ok(())
}

/// `a\0b\0...` with a trailing NUL after each part.
pub fn join_nul(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.push(0);
    }
    out
}

/// Split a payload of NUL-terminated strings (a trailing NUL is optional; an empty payload is
/// an empty list). Each part must be UTF-8.
pub fn split_nul(payload: &[u8]) -> Result<Vec<String>, WireError> {
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    body.split(|b| *b == 0)
        .map(|s| {
            String::from_utf8(s.to_vec()).map_err(|_| WireError::Malformed("string is not UTF-8"))
        })
        .collect()
}

/// Access of one domain to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    Write,
    Both,
}

/// One permission entry. The first entry of a node's list names its owner (who always has
/// full access) and the access of every domain not listed after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub domid: u32,
    pub access: Access,
}

impl Perm {
    pub const fn new(domid: u32, access: Access) -> Perm {
        Perm { domid, access }
    }

    /// `n0`, `r5`, `w3`, `b1`.
    pub fn format(&self) -> String {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        format!("{c}{}", self.domid)
    }

    /// Strict parse of one entry.
    pub fn parse(s: &str) -> Result<Perm, WireError> {
        let mut chars = s.chars();
        let access = match chars.next() {
            Some('n') => Access::None,
            Some('r') => Access::Read,
            Some('w') => Access::Write,
            Some('b') => Access::Both,
            _ => {
                return Err(WireError::Malformed(
                    "permission must start with n, r, w or b",
                ))
            }
        };
        let domid =
            parse_u32(chars.as_str()).ok_or(WireError::Malformed("bad permission domid"))?;
        Ok(Perm { domid, access })
    }
}

/// Strict decimal u32: digits only, no sign, no leading zeros (except "0"), no spaces.
pub fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_in_pieces() {
        let m = Message {
            ty: ty::WRITE,
            req_id: 7,
            tx_id: 3,
            payload: b"/a/b\0value".to_vec(),
        };
        let bytes = m.encode().unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 10);
        assert_eq!(&bytes[0..4], &11u32.to_ne_bytes());
        assert_eq!(&bytes[12..16], &10u32.to_ne_bytes());
        let mut d = Decoder::default();
        // Byte by byte, then two messages at once.
        for b in &bytes {
            assert_eq!(d.next_message().unwrap(), None);
            d.push(&[*b]);
        }
        assert_eq!(d.next_message().unwrap(), Some(m.clone()));
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        d.push(&two);
        assert_eq!(d.next_message().unwrap(), Some(m.clone()));
        assert_eq!(d.next_message().unwrap(), Some(m));
        assert_eq!(d.next_message().unwrap(), None);
    }

    #[test]
    fn oversized_payloads_are_refused_both_ways() {
        let m = Message {
            ty: ty::WRITE,
            req_id: 0,
            tx_id: 0,
            payload: vec![b'x'; PAYLOAD_MAX + 1],
        };
        assert_eq!(m.encode(), Err(WireError::TooLong(PAYLOAD_MAX + 1)));
        let mut hdr = Vec::new();
        for w in [ty::READ, 1, 0, 5000] {
            hdr.extend_from_slice(&u32::to_ne_bytes(w));
        }
        let mut d = Decoder::default();
        d.push(&hdr);
        assert_eq!(d.next_message(), Err(WireError::TooLong(5000)));
    }

    #[test]
    fn nul_lists() {
        assert_eq!(join_nul(&[b"a", b"bc"]), b"a\0bc\0");
        assert_eq!(split_nul(b"a\0bc\0").unwrap(), vec!["a", "bc"]);
        assert_eq!(split_nul(b"a\0bc").unwrap(), vec!["a", "bc"]);
        assert!(split_nul(b"").unwrap().is_empty());
        assert!(split_nul(b"\xff\0").is_err());
    }

    #[test]
    fn permissions_format_and_parse_strictly() {
        let p = Perm::new(5, Access::Read);
        assert_eq!(p.format(), "r5");
        assert_eq!(Perm::parse("r5").unwrap(), p);
        assert_eq!(Perm::parse("n0").unwrap(), Perm::new(0, Access::None));
        assert_eq!(Perm::parse("b12").unwrap(), Perm::new(12, Access::Both));
        assert_eq!(Perm::parse("w4294967295").unwrap().domid, u32::MAX);
        for bad in ["", "x1", "r", "r-1", "r 1", "r01", "r4294967296", "R1"] {
            assert!(Perm::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_checked() {
        for ok in ["/", "/local/domain/0/backend/tmem/3/0", "@releaseDomain"] {
            check_path(ok).unwrap();
        }
        for bad in ["", "local", "/a//b", "/a/", "/a b", "/a\0b", "/ä"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_path(&format!("/{}", "a".repeat(ABS_PATH_MAX))).is_err());
    }

    #[test]
    fn strict_u32() {
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        for bad in [
            "",
            "-1",
            "+1",
            "01",
            " 1",
            "1 ",
            "4294967296",
            "0x10",
            "99999999999",
        ] {
            assert_eq!(parse_u32(bad), None, "{bad}");
        }
    }
}
