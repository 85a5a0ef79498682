//! The tmemd control protocol, spoken on the daemon's root-only Unix control socket.
//!
//! One JSON object per line in each direction. Every request carries the protocol version;
//! the daemon answers every line with exactly one [`Reply`] line, then the client may send
//! another request or close. Guests never reach this socket: administration (freeze, caps,
//! shared-pool authorisation, ...) happens only here.
//!
//! This crate defines the messages and their framing; it does no I/O beyond encoding and
//! decoding byte buffers, so the daemon and the CLI agree by construction.

use serde::{Deserialize, Serialize};
pub use tmem_store::{ParkedStats, StoreStats, SwapDiskStats};

/// The protocol version this crate speaks.
pub const CONTROL_VERSION: u32 = 1;
/// The longest request line the daemon accepts, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Default path of the control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tmemd/control.sock";

/// Which domain(s) an administrative command applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every client (Xen's `-a`).
    All,
    /// One domain, by domain id.
    DomId(u32),
    /// One local client, by the uid the kernel reported and the label its hello named
    /// (written `local:UID:LABEL`).
    Local { uid: u32, label: u32 },
    /// One domain, by the name it registered with.
    Name(String),
}

impl Target {
    /// Parse a DOMAIN argument: a number is a domain id, `local:UID:LABEL` a local client,
    /// anything else a name.
    pub fn parse_domain(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty domain: give a domain id, local:UID:LABEL or a name".into());
        }
        if s.starts_with("local:") {
            return match s.parse::<tmem_store::Identity>()? {
                tmem_store::Identity::Local { uid, label } => Ok(Target::Local { uid, label }),
                tmem_store::Identity::Xen { domid } => Ok(Target::DomId(domid)),
            };
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u32>()
                .map(Target::DomId)
                .map_err(|_| format!("domain id {s} is out of range"));
        }
        Ok(Target::Name(s.to_string()))
    }
}

/// An administrative request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Daemon version and uptime.
    Status,
    /// Statistics for one domain or all.
    List {
        target: Target,
    },
    /// New puts from these clients fail with -EFROZEN.
    Freeze {
        target: Target,
    },
    Thaw {
        target: Target,
    },
    /// Change weight, page cap (0 = none) or the compression flag.
    Set {
        target: Target,
        weight: Option<u32>,
        cap_pages: Option<u64>,
        compress: Option<bool>,
    },
    /// Authorise (or de-authorise) a domain for a shared-pool uuid; `Target::All` flips the
    /// global "authorisation required" switch instead (`allow = true` means not required).
    SharedAuth {
        target: Target,
        uuid: [u64; 2],
        allow: bool,
    },
    /// Ephemeral memory that could be given back now.
    Freeable,
    /// Evict ephemeral pages until `kib` KiB are released.
    Flush {
        kib: u64,
    },
    /// Drop every pool of a domain and disconnect it.
    Destroy {
        target: Target,
    },
    /// Everything `tmem metrics` exports, in one snapshot.
    Metrics,
    /// Copy one client's persistent pages out as an image (`tmem save`): the reply line
    /// [`OkReply::Saving`] is followed on the same connection by the image, then EOF.
    /// Refused for a connected client unless `live` (a copy of a running guest is only a
    /// point-in-time copy of each page).
    Save {
        target: Target,
        #[serde(default)]
        live: bool,
    },
    /// Bring a client's persistent pages in from an image (`tmem restore`): the image
    /// follows the request line on the same connection; the reply comes once it has been
    /// read and checked, or at the first error. `as_identity` gives the client another
    /// identity (`7`, `local:UID:LABEL`) than the one it was saved under.
    Restore {
        #[serde(default)]
        as_identity: Option<String>,
    },
}

impl Op {
    /// Whether the op only reads: the ops a read-only peer (a monitoring agent) may send.
    pub fn is_read_only(&self) -> bool {
        match self {
            Op::Status | Op::List { .. } | Op::Freeable | Op::Metrics => true,
            Op::Freeze { .. }
            | Op::Thaw { .. }
            | Op::Set { .. }
            | Op::SharedAuth { .. }
            | Op::Flush { .. }
            | Op::Destroy { .. }
            | Op::Save { .. }
            | Op::Restore { .. } => false,
        }
    }

    /// Whether the op moves an image over its connection after the request line.
    pub fn is_transfer(&self) -> bool {
        matches!(self, Op::Save { .. } | Op::Restore { .. })
    }

    /// The op's name as `tmem` spells the command, for messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Status => "status",
            Op::List { .. } => "list",
            Op::Freeze { .. } => "freeze",
            Op::Thaw { .. } => "thaw",
            Op::Set { .. } => "set",
            Op::SharedAuth { .. } => "shared-auth",
            Op::Freeable => "freeable",
            Op::Flush { .. } => "flush",
            Op::Destroy { .. } => "destroy",
            Op::Metrics => "metrics",
            Op::Save { .. } => "save",
            Op::Restore { .. } => "restore",
        }
    }
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub op: Op,
}

/// What went wrong, in a form the CLI can turn into a one-line message and an exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request line was not valid JSON or not a known op.
    Malformed,
    /// The client speaks another protocol version.
    Version,
    /// The peer is not allowed to administer tmemd.
    PermissionDenied,
    /// The named domain has no tmem client.
    UnknownDomain,
    /// The arguments are out of range or contradictory.
    InvalidArgument,
    /// The store refused (e.g. the authorisation list is full).
    Refused,
    /// Every control connection is in use by peers that may not be displaced; sent in place
    /// of a reply to the request, right after accept. Try again in a moment.
    Busy,
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(OkReply),
    Error { kind: ErrorKind, message: String },
}

/// Successful results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OkReply {
    Status {
        daemon_version: String,
        control_version: u32,
        uptime_secs: u64,
        guests_connected: u32,
        transports: Vec<String>,
        /// Where page memory is and what was recovered at start (absent from older tmemd).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        page_memory: Option<PageMemoryStatus>,
    },
    Stats(Box<StoreStats>),
    /// Number of clients the command changed.
    Done {
        clients: u32,
    },
    /// Ephemeral pages whose eviction releases page memory, and the KiB it releases (a
    /// compressed page less than 4).
    Freeable {
        pages: u64,
        kib: u64,
    },
    Flushed {
        kib: u64,
    },
    Metrics(Box<MetricsSnapshot>),
    /// A save starts: this many pools and pages follow, as an image.
    Saving {
        identity: String,
        pools: u32,
        pages: u64,
    },
    /// A restore is complete: the client waits, detached, for its guest to reattach.
    Restored {
        identity: String,
        pools: u32,
        /// Pages stored.
        pages: u64,
        /// Pages the image marked as flushed during the save (not restored).
        gone: u64,
    },
}

/// The guest request kinds whose service time tmemd measures, in histogram order.
pub const REQUEST_KINDS: [&str; 7] = [
    "new_pool",
    "destroy_pool",
    "put",
    "get",
    "flush_page",
    "flush_object",
    "refused",
];

/// Buckets of a [`LatencyHistogram`]: bucket `k` counts durations of `k` significant bits,
/// i.e. below `2^k` ns (bucket 0: 0 ns); the last bucket also takes everything longer.
pub const LATENCY_BUCKETS: usize = 32;

/// Service times of one request kind, summed over the workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// One of [`REQUEST_KINDS`].
    pub op: String,
    /// Non-cumulative counts per bucket ([`LATENCY_BUCKETS`] entries).
    pub buckets: Vec<u64>,
    /// Sum of all durations, in nanoseconds.
    pub sum_ns: u64,
}

impl LatencyHistogram {
    /// Requests counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper bound of bucket `k`, in nanoseconds (`None` for the last, open bucket).
    pub fn bucket_bound_ns(k: usize) -> Option<u64> {
        (k + 1 < LATENCY_BUCKETS).then(|| 1u64 << k)
    }
}

/// What `tmem metrics` exports: the statistics of `tmem list`, the figures of `tmem status`
/// and the request latency histograms, taken together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    pub stats: StoreStats,
    pub uptime_secs: u64,
    pub guests_connected: u32,
    pub page_memory: Option<PageMemoryStatus>,
    pub latency: Vec<LatencyHistogram>,
    /// Time from taking a batch of one guest's requests off its ring to publishing the last
    /// answer of the batch, over every worker (absent from older tmemd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_batches: Option<LatencyHistogram>,
    /// tmemd's version.
    #[serde(default)]
    pub daemon_version: String,
}

/// Where the daemon keeps page memory, for `tmem status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageMemoryStatus {
    /// `fd_store` (a memfd in systemd's fd store), `path` (a file) or `heap`.
    pub origin: String,
    /// Whether persistent pages survive a restart of tmemd.
    pub durable: bool,
    /// For `fd_store`: the memfd was handed back by systemd at this start.
    #[serde(default)]
    pub inherited: bool,
    /// For `path`: the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Where settings changed with `tmem` are kept.
    #[serde(default)]
    pub settings: String,
    /// What the start found in durable page memory (absent for heap memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryStatus>,
}

/// What a start recovered from durable page memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecoveryStatus {
    /// The page memory was new (nothing to recover).
    pub formatted: bool,
    pub clients: u32,
    pub pools: u32,
    pub pages: u64,
    pub zero_pages: u64,
    /// Of `pages`, those stored compressed.
    pub compressed_pages: u64,
    /// Older copies of a page whose duplicate put was cut short, dropped.
    pub superseded: u64,
    /// Pages of pools that no longer exist, dropped.
    pub orphans: u64,
    /// Records whose write was cut short, dropped.
    pub torn: u64,
    pub scan_ms: u64,
    pub rebuild_ms: u64,
}

/// A reply line with its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyLine {
    pub version: u32,
    #[serde(flatten)]
    pub reply: Reply,
}

/// Encode a request as one line (newline included).
pub fn encode_request(op: &Op) -> Vec<u8> {
    let mut v = serde_json::to_vec(&Request {
        version: CONTROL_VERSION,
        op: op.clone(),
    })
    .expect("control requests always serialise");
    v.push(b'\n');
    v
}

/// Decode a request line (without its newline). A version mismatch is reported as such even
/// when the rest of the line is not understood, so old and new CLIs get a useful message.
pub fn decode_request(line: &[u8]) -> Result<Op, (ErrorKind, String)> {
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| (ErrorKind::Malformed, format!("request is not JSON: {e}")))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(CONTROL_VERSION) => {}
        Some(v) => {
            return Err((
                ErrorKind::Version,
                format!("control protocol version {v} is not supported; this tmemd speaks {CONTROL_VERSION}"),
            ))
        }
        None => return Err((ErrorKind::Malformed, "request has no version".into())),
    }
    serde_json::from_value::<Request>(value)
        .map(|r| r.op)
        .map_err(|e| {
            (
                ErrorKind::Malformed,
                format!("unknown or malformed request: {e}"),
            )
        })
}

/// Encode a reply as one line (newline included).
pub fn encode_reply(reply: Reply) -> Vec<u8> {
    let mut v = serde_json::to_vec(&ReplyLine {
        version: CONTROL_VERSION,
        reply,
    })
    .expect("control replies always serialise");
    v.push(b'\n');
    v
}

/// Decode a reply line.
pub fn decode_reply(line: &[u8]) -> Result<Reply, String> {
    let r: ReplyLine =
        serde_json::from_slice(line).map_err(|e| format!("tmemd sent a malformed reply: {e}"))?;
    if r.version != CONTROL_VERSION {
        return Err(format!(
            "tmemd speaks control protocol version {}, this tmem speaks {CONTROL_VERSION}",
            r.version
        ));
    }
    Ok(r.reply)
}

/// Parse a byte size as administrators write it, for `tmemd --mem-limit` and `tmem set -c`
/// alike: a whole number with an optional unit K, M, G or T (powers of 1024; `KiB`, `KB`, `k`
/// and a space before the unit are accepted), or `B` for bytes. `4096`, `64M`, `64MiB`, `1G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("bad size '{s}': expected a number with K, M, G or T (e.g. 4096, 64M, 64MiB, 1G)")
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size '{s}' is too large"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Parse a uuid in its usual text form (32 hex digits, dashes anywhere), as `blkid` prints a
/// filesystem's uuid. The 16 bytes in text order are the raw uuid; the pool's two words are
/// those bytes read as little-endian `u64`s, `[bytes 0..8, bytes 8..16]` — exactly what a
/// Linux guest sends for that filesystem. (`xl tmem-shared-auth` put the first 16 digits in
/// the high word instead, so the same text named a different pool than the guest's; tmemd
/// follows the guest.)
pub fn parse_uuid(s: &str) -> Result<[u64; 2], String> {
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!(
            "bad uuid '{s}': expected 32 hex digits like 01234567-89ab-cdef-0123-456789abcdef"
        ));
    }
    let mut raw = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
        raw[i] = u8::from_str_radix(text, 16).map_err(|e| e.to_string())?;
    }
    let lo = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    Ok([lo, hi])
}

/// The text form of a pool uuid `[lo, hi]`, inverse of [`parse_uuid`].
pub fn format_uuid(uuid: [u64; 2]) -> String {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&uuid[0].to_le_bytes());
    raw[8..16].copy_from_slice(&uuid[1].to_le_bytes());
    let h: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for op in [
            Op::Status,
            Op::List {
                target: Target::All,
            },
            Op::Freeze {
                target: Target::DomId(3),
            },
            Op::Set {
                target: Target::Name("web".into()),
                weight: Some(2),
                cap_pages: None,
                compress: Some(false),
            },
            Op::SharedAuth {
                target: Target::DomId(1),
                uuid: [1, 2],
                allow: true,
            },
            Op::Flush { kib: 1024 },
        ] {
            let line = encode_request(&op);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(decode_request(&line[..line.len() - 1]), Ok(op));
        }
    }

    #[test]
    fn stats_of_a_tmemd_without_same_filled_pages_still_decode() {
        let mut v = serde_json::to_value(StoreStats::default()).unwrap();
        let g = v["global"].as_object_mut().unwrap();
        assert!(g.remove("same_filled_pages").is_some());
        g.insert("zero_pages".into(), 4.into());
        let st: StoreStats = serde_json::from_value(v).unwrap();
        assert_eq!((st.global.zero_pages, st.global.same_filled_pages), (4, 0));
    }

    #[test]
    fn status_without_page_memory_still_decodes_and_with_it_round_trips() {
        // What a tmemd from before durable memory sends.
        let old = br#"{"version":1,"ok":{"kind":"status","daemon_version":"0.1.0","control_version":1,"uptime_secs":5,"guests_connected":0,"transports":["local"]}}"#;
        match decode_reply(old).unwrap() {
            Reply::Ok(OkReply::Status { page_memory, .. }) => assert_eq!(page_memory, None),
            other => panic!("{other:?}"),
        }
        let new = Reply::Ok(OkReply::Status {
            daemon_version: "0.1.0".into(),
            control_version: 1,
            uptime_secs: 5,
            guests_connected: 0,
            transports: vec!["local".into()],
            page_memory: Some(PageMemoryStatus {
                origin: "fd_store".into(),
                durable: true,
                inherited: true,
                path: None,
                settings: "fd \"tmemd-settings\" in the fd store".into(),
                recovery: Some(RecoveryStatus {
                    pages: 12,
                    ..RecoveryStatus::default()
                }),
            }),
        });
        let line = encode_reply(new.clone());
        assert_eq!(decode_reply(&line[..line.len() - 1]).unwrap(), new);
    }

    #[test]
    fn bad_requests_get_precise_errors() {
        assert_eq!(
            decode_request(b"garbage").unwrap_err().0,
            ErrorKind::Malformed
        );
        assert_eq!(
            decode_request(br#"{"op":"status"}"#).unwrap_err().0,
            ErrorKind::Malformed
        );
        assert_eq!(
            decode_request(br#"{"version":99,"op":"whatever"}"#)
                .unwrap_err()
                .0,
            ErrorKind::Version
        );
        assert_eq!(
            decode_request(br#"{"version":1,"op":"reboot_host"}"#)
                .unwrap_err()
                .0,
            ErrorKind::Malformed
        );
    }

    #[test]
    fn one_size_syntax_for_daemon_and_cli() {
        for (text, bytes) in [
            ("4096", 4096),
            ("64M", 64 << 20),
            ("64MiB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("64mb", 64 << 20),
            ("4k", 4096),
            ("1G", 1 << 30),
            ("2GiB", 2 << 30),
            ("1T", 1 << 40),
            ("512B", 512),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "M", "12Q", "-1", "1.5G", "64MiBs", "99999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn read_only_ops_are_exactly_the_ones_that_change_nothing() {
        let t = || Target::All;
        let ro = [
            Op::Status,
            Op::List { target: t() },
            Op::Freeable,
            Op::Metrics,
        ];
        let rw = [
            Op::Freeze { target: t() },
            Op::Thaw { target: t() },
            Op::Set {
                target: t(),
                weight: Some(1),
                cap_pages: None,
                compress: None,
            },
            Op::SharedAuth {
                target: t(),
                uuid: [0, 0],
                allow: true,
            },
            Op::Flush { kib: 1 },
            Op::Destroy {
                target: Target::DomId(1),
            },
        ];
        assert!(ro.iter().all(Op::is_read_only));
        assert!(!rw.iter().any(Op::is_read_only));
    }

    #[test]
    fn uuid_text_uses_the_guest_byte_order() {
        // Bytes in text order, each word little-endian: what tmem-front puts on the ring.
        let u = parse_uuid("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert_eq!(u, [0x7766_5544_3322_1100, 0xffee_ddcc_bbaa_9988]);
        assert_eq!(format_uuid(u), "00112233-4455-6677-8899-aabbccddeeff");
        let u = parse_uuid("00000000000000010000000000000002").unwrap();
        assert_eq!(u, [0x0100_0000_0000_0000, 0x0200_0000_0000_0000]);
        assert_eq!(parse_uuid(&format_uuid(u)).unwrap(), u);
        assert!(parse_uuid("xyz").is_err());
        assert!(parse_uuid("0000000000000001000000000000000").is_err());
    }

    #[test]
    fn domain_arguments_parse() {
        assert_eq!(Target::parse_domain("7"), Ok(Target::DomId(7)));
        assert_eq!(
            Target::parse_domain("web1"),
            Ok(Target::Name("web1".into()))
        );
        assert!(Target::parse_domain("").is_err());
        assert_eq!(
            Target::parse_domain("local:1000:7"),
            Ok(Target::Local {
                uid: 1000,
                label: 7
            })
        );
        assert!(Target::parse_domain("local:1000").is_err());
        assert!(Target::parse_domain("99999999999").is_err());
    }
}
