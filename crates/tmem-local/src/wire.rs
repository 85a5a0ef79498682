//! The byte layout of the local hello, its reply and the goodbye (see `docs/protocol.md`).

/// `b"TMHL"` read as a little-endian u32: first field of a hello.
pub const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"TMHL");
/// `b"TMRP"` read as a little-endian u32: first field of a reply.
pub const REPLY_MAGIC: u32 = u32::from_le_bytes(*b"TMRP");
/// Bytes of a hello message.
pub const HELLO_SIZE: usize = 104;
/// Bytes of a reply message.
pub const REPLY_SIZE: usize = 256;
/// Longest guest name, in bytes of UTF-8.
pub const MAX_NAME: usize = 64;
/// Longest error text in a reply, in bytes of UTF-8.
pub const MAX_MESSAGE: usize = REPLY_SIZE - 20;
/// File descriptors carried by a hello, in this order: memfd, kick eventfd, notify eventfd.
pub const HELLO_FDS: usize = 3;
/// The one byte a client may send after the hello: "destroy my pools, I am leaving".
pub const GOODBYE: u8 = b'G';
/// The one byte the daemon sends after the reply: "responses were published, wake up".
pub const NOTIFY: u8 = b'N';

/// The fixed fields of a hello as they travel (fds travel beside them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloWire {
    pub magic: u32,
    pub version: u32,
    pub domid: u32,
    pub flags: u32,
    pub instance: u64,
    pub ring_pages: u32,
    pub data_slots: u32,
    pub name_len: u32,
    pub reserved: u32,
    pub name: [u8; MAX_NAME],
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(w)
}

impl HelloWire {
    pub fn to_bytes(&self) -> [u8; HELLO_SIZE] {
        let mut b = [0u8; HELLO_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.domid.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.instance.to_le_bytes());
        b[24..28].copy_from_slice(&self.ring_pages.to_le_bytes());
        b[28..32].copy_from_slice(&self.data_slots.to_le_bytes());
        b[32..36].copy_from_slice(&self.name_len.to_le_bytes());
        b[36..40].copy_from_slice(&self.reserved.to_le_bytes());
        b[40..104].copy_from_slice(&self.name);
        b
    }

    pub fn from_bytes(b: &[u8; HELLO_SIZE]) -> Self {
        let mut name = [0u8; MAX_NAME];
        name.copy_from_slice(&b[40..104]);
        HelloWire {
            magic: u32_at(b, 0),
            version: u32_at(b, 4),
            domid: u32_at(b, 8),
            flags: u32_at(b, 12),
            instance: u64_at(b, 16),
            ring_pages: u32_at(b, 24),
            data_slots: u32_at(b, 28),
            name_len: u32_at(b, 32),
            reserved: u32_at(b, 36),
            name,
        }
    }
}

/// Reply class: the hello was accepted (`status == 0`).
pub const CLASS_NONE: u8 = 0;
/// Reply class: refused for now (daemon busy, handshake shed, old connection still closing);
/// the same hello may succeed later, so retry with backoff.
pub const CLASS_TEMPORARY: u8 = 1;
/// Reply class: refused for good (bad hello, limits, policy); retrying the same hello cannot
/// succeed, so a client must stop and report.
pub const CLASS_PERMANENT: u8 = 2;

/// A reply: `status` 0 with the client id, or a negative errno with a class and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyWire {
    pub magic: u32,
    pub version: u32,
    pub status: i32,
    pub client_id: u32,
    /// [`CLASS_NONE`], [`CLASS_TEMPORARY`] or [`CLASS_PERMANENT`] (0 from older daemons).
    pub class: u8,
    pub message: String,
}

impl ReplyWire {
    pub fn to_bytes(&self) -> [u8; REPLY_SIZE] {
        let mut b = [0u8; REPLY_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.status.to_le_bytes());
        b[12..16].copy_from_slice(&self.client_id.to_le_bytes());
        let msg = truncate_utf8(&self.message, MAX_MESSAGE);
        b[16..18].copy_from_slice(&(msg.len() as u16).to_le_bytes());
        b[18] = self.class;
        b[20..20 + msg.len()].copy_from_slice(msg.as_bytes());
        b
    }

    /// Parse a reply; `None` if its message length, class or text is malformed.
    pub fn from_bytes(b: &[u8; REPLY_SIZE]) -> Option<Self> {
        let len = usize::from(u16::from_le_bytes([b[16], b[17]]));
        let class = b[18];
        if len > MAX_MESSAGE || class > CLASS_PERMANENT || b[19] != 0 {
            return None;
        }
        let message = std::str::from_utf8(&b[20..20 + len]).ok()?.to_owned();
        Some(ReplyWire {
            magic: u32_at(b, 0),
            version: u32_at(b, 4),
            status: u32_at(b, 8) as i32,
            client_id: u32_at(b, 12),
            class,
            message,
        })
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1; // terminates: index 0 is a boundary
    }
    &s[..end]
}
