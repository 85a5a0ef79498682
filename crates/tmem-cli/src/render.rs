//! Output formatting: pure functions from replies to text, so every format is unit tested on
//! fixed values.

use std::fmt::Write as _;

use tmem_control::{format_uuid, OkReply, Op, StoreStats, Target};
use tmem_store::{ClientStats, PoolCounters};

/// Bytes in one page.
pub const PAGE_BYTES: u64 = 4096;

/// `1536` → `1.5 KiB`; plain bytes below 1 KiB.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// `hits` as a percentage of `total`, or `-` when there were none.
pub fn percent(hits: u64, total: u64) -> String {
    if total == 0 {
        "-".into()
    } else {
        format!("{:.1}%", hits as f64 * 100.0 / total as f64)
    }
}

/// A uuid for display: `-` for the all-zero uuid of a private pool.
pub fn uuid_cell(uuid: [u64; 2]) -> String {
    if uuid == [0, 0] {
        "-".into()
    } else {
        format_uuid(uuid)
    }
}

/// Pages stored per page of memory they take (`-` for none; `inf` when all are same-filled).
fn ratio_cell(pages: u64, mem_bytes: u64) -> String {
    match (pages, mem_bytes) {
        (0, _) => "-".into(),
        (_, 0) => "inf".into(),
        (p, m) => format!("{:.2}", p as f64 * PAGE_BYTES as f64 / m as f64),
    }
}

/// Left-aligned text columns separated by two spaces; trailing spaces trimmed.
pub fn columns(rows: &[Vec<String>]) -> String {
    let ncol = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0; ncol];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            if i + 1 < r.len() {
                line.extend(std::iter::repeat_n(' ', width[i] - c.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn client_state(c: &ClientStats) -> String {
    let mut s = String::from(if c.attached { "attached" } else { "detached" });
    if c.frozen {
        s.push_str(",frozen");
    }
    s
}

fn cap_cell(cap: u64) -> String {
    if cap == 0 {
        "-".into()
    } else {
        cap.to_string()
    }
}

/// The default `tmem list` table: a summary, the clients, their pools, the shared pools.
pub fn render_table(stats: &StoreStats, all: bool) -> String {
    let g = &stats.global;
    let mut out = String::new();
    if all {
        let _ = writeln!(
            out,
            "memory: {} of {} page data in use ({}), {} pre-faulted and free, ~{} metadata",
            human_bytes(g.data_bytes),
            human_bytes(g.mem_limit_bytes),
            percent(g.data_bytes, g.mem_limit_bytes),
            human_bytes(g.frames_free * PAGE_BYTES),
            human_bytes(g.metadata_bytes),
        );
        let _ = writeln!(
            out,
            "pages: {} stored ({} ephemeral, {} same-filled incl. {} zero), {} freeable; shared pools need authorisation: {}",
            g.pages,
            g.eph_pages,
            g.same_filled_pages,
            g.zero_pages,
            g.freeable_pages,
            if g.shared_auth_required { "yes" } else { "no" },
        );
        out.push('\n');
    }
    if stats.clients.is_empty() {
        out.push_str("no tmem clients\n");
    } else {
        let mut rows = vec![[
            "DOMID", "NAME", "STATE", "WEIGHT", "CAP", "PAGES", "MEMORY", "RATIO", "PUTS", "GETS",
            "HITS", "HIT%",
        ]
        .map(String::from)
        .to_vec()];
        for c in &stats.clients {
            let gets = c.succ_gets + c.failed_gets;
            // Memory its pages really take (raw frames, compressed slots; same-filled: none).
            let mem: u64 = crate::xen::private(c).map(|p| p.counters.mem_bytes).sum();
            rows.push(vec![
                c.identity().to_string(),
                if c.name.is_empty() {
                    "-".into()
                } else {
                    c.name.clone()
                },
                client_state(c),
                c.weight.to_string(),
                cap_cell(c.cap_pages),
                c.pages.to_string(),
                human_bytes(mem),
                ratio_cell(c.pages, mem),
                c.puts.to_string(),
                gets.to_string(),
                c.succ_gets.to_string(),
                percent(c.succ_gets, gets),
            ]);
        }
        out.push_str(&columns(&rows));
        let mut prow = vec![[
            "DOMID",
            "POOL",
            "KIND",
            "UUID",
            "PAGES",
            "MEMORY",
            "RATIO",
            "COMPRESSED",
            "PUTS",
            "GETS",
            "HITS",
            "HIT%",
            "FLUSHES",
        ]
        .map(String::from)
        .to_vec()];
        for c in &stats.clients {
            for p in &c.pools {
                let k = &p.counters;
                let mut kind = p.kind.clone();
                if !p.adopted && p.kind.starts_with('P') {
                    kind.push_str(" (kept)");
                }
                prow.push(vec![
                    c.identity().to_string(),
                    p.pool_id.to_string(),
                    kind,
                    uuid_cell(p.uuid),
                    k.pages.to_string(),
                    human_bytes(k.mem_bytes),
                    ratio_cell(k.pages, k.mem_bytes),
                    k.compressed_pages.to_string(),
                    k.total_puts.to_string(),
                    k.total_gets.to_string(),
                    k.found_gets.to_string(),
                    percent(k.found_gets, k.total_gets),
                    (k.total_flushes + k.total_obj_flushes).to_string(),
                ]);
            }
        }
        if prow.len() > 1 {
            out.push('\n');
            out.push_str(&columns(&prow));
        }
    }
    if all && !stats.shared_pools.is_empty() {
        let mut srow = vec![[
            "SHARED UUID",
            "KIND",
            "SHARERS",
            "PAGES",
            "PUTS",
            "GETS",
            "HITS",
            "HIT%",
        ]
        .map(String::from)
        .to_vec()];
        for s in &stats.shared_pools {
            let k = &s.counters;
            srow.push(vec![
                format_uuid(s.uuid),
                s.kind.clone(),
                sharers_cell(s),
                k.pages.to_string(),
                k.total_puts.to_string(),
                k.total_gets.to_string(),
                k.found_gets.to_string(),
                percent(k.found_gets, k.total_gets),
            ]);
        }
        out.push('\n');
        out.push_str(&columns(&srow));
    }
    if !stats.swap_disks.is_empty() {
        out.push('\n');
        out.push_str(&swap_disk_table(&stats.swap_disks));
    }
    if !stats.parked.is_empty() {
        out.push('\n');
        out.push_str(&parked_table(&stats.parked));
    }
    out
}

/// Xen domains saved or migrated away whose pages wait for a domain with their uuid.
fn parked_table(parked: &[tmem_control::ParkedStats]) -> String {
    let mut rows = vec![[
        "PARKED",
        "NAME",
        "UUID",
        "STATE",
        "CLIENT",
        "SWAP DISK",
        "TIME LEFT",
    ]
    .map(String::from)
    .to_vec()];
    for p in parked {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        rows.push(vec![
            format!("dom{}", p.old_domid),
            dash(&p.name),
            dash(&p.uuid),
            dash(&p.state),
            p.client_id.map_or("-".into(), |c| c.to_string()),
            p.swap_disk.clone().unwrap_or_else(|| "-".into()),
            format!("{}s", p.secs_left),
        ]);
    }
    columns(&rows)
}

/// The swap disks: where each one's pages are, and what it served.
fn swap_disk_table(disks: &[tmem_control::SwapDiskStats]) -> String {
    let mut rows = vec![[
        "SWAP DISK",
        "NAME",
        "DEVICE",
        "SIZE",
        "STATE",
        "IN MEMORY",
        "SPILLED",
        "READS",
        "WRITES",
        "DISCARDS",
        "ERRORS",
    ]
    .map(String::from)
    .to_vec()];
    for d in disks {
        rows.push(vec![
            format!("dom{}", d.domid),
            if d.name.is_empty() {
                "-".into()
            } else {
                d.name.clone()
            },
            d.device.clone(),
            human_bytes(d.sectors * 512),
            d.state.clone(),
            format!(
                "{} ({})",
                d.pages_in_memory,
                human_bytes(d.pages_in_memory * PAGE_BYTES)
            ),
            format!(
                "{} ({})",
                d.pages_spilled,
                human_bytes(d.pages_spilled * PAGE_BYTES)
            ),
            d.reads.to_string(),
            d.writes.to_string(),
            d.discards.to_string(),
            d.errors.to_string(),
        ]);
    }
    columns(&rows)
}

fn kv_block(out: &mut String, title: &str, items: &[(&str, String)]) {
    out.push_str(title);
    out.push('\n');
    let indent = " ".repeat(title.len() - title.trim_start().len() + 2);
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|(k, v)| vec![format!("{indent}{k}"), v.clone()])
        .collect();
    out.push_str(&columns(&rows));
}

fn counter_items(k: &PoolCounters) -> Vec<(&'static str, String)> {
    vec![
        ("pages (now/max)", format!("{}/{}", k.pages, k.pages_max)),
        (
            "objects (now/max)",
            format!("{}/{}", k.objects, k.objects_max),
        ),
        (
            "puts (good/total)",
            format!("{}/{}", k.good_puts, k.total_puts),
        ),
        (
            "duplicate puts (flushed/replaced)",
            format!("{}/{}", k.dup_puts_flushed, k.dup_puts_replaced),
        ),
        ("puts refused for memory", k.no_mem_puts.to_string()),
        (
            "gets (found/total)",
            format!(
                "{}/{} ({})",
                k.found_gets,
                k.total_gets,
                percent(k.found_gets, k.total_gets)
            ),
        ),
        (
            "page flushes (found/total)",
            format!("{}/{}", k.found_flushes, k.total_flushes),
        ),
        (
            "object flushes (found/total)",
            format!("{}/{}", k.found_obj_flushes, k.total_obj_flushes),
        ),
    ]
}

/// `tmem list -l`: every counter, one per line, grouped by store, client, pool.
pub fn render_long(stats: &StoreStats, all: bool) -> String {
    let g = &stats.global;
    let mut out = String::new();
    if all {
        kv_block(
            &mut out,
            "store",
            &[
                (
                    "operations (total/errored)",
                    format!("{}/{}", g.total_ops, g.errored_ops),
                ),
                ("memory limit", human_bytes(g.mem_limit_bytes)),
                ("page data in use", human_bytes(g.data_bytes)),
                (
                    "frames (allocated/free)",
                    format!("{}/{}", g.frames_allocated, g.frames_free),
                ),
                ("metadata (estimate)", human_bytes(g.metadata_bytes)),
                ("pages (now/max)", format!("{}/{}", g.pages, g.pages_max)),
                (
                    "ephemeral pages (now/max)",
                    format!("{}/{}", g.eph_pages, g.eph_pages_max),
                ),
                ("zero pages", g.zero_pages.to_string()),
                (
                    "same-filled pages (incl. zero)",
                    g.same_filled_pages.to_string(),
                ),
                (
                    "objects (now/max)",
                    format!("{}/{}", g.objects, g.objects_max),
                ),
                ("good ephemeral puts", g.good_eph_puts.to_string()),
                (
                    "evictions (done/attempted)",
                    format!("{}/{}", g.evictions, g.evict_attempts),
                ),
                ("freeable pages", g.freeable_pages.to_string()),
                (
                    "freeable memory (KiB)",
                    (g.freeable_bytes / 1024).to_string(),
                ),
                (
                    "shared pools need authorisation",
                    if g.shared_auth_required { "yes" } else { "no" }.into(),
                ),
            ],
        );
    }
    for c in &stats.clients {
        if !out.is_empty() {
            out.push('\n');
        }
        kv_block(
            &mut out,
            &format!(
                "client {} '{}' (instance {}, store id {})",
                client_label(c),
                c.name,
                c.instance,
                c.client_id
            ),
            &[
                ("state", client_state(c)),
                ("weight", c.weight.to_string()),
                ("cap (4 KiB units)", cap_cell(c.cap_pages)),
                ("memory (KiB)", (c.mem_bytes / 1024).to_string()),
                ("compress", u8::from(c.compress).to_string()),
                ("pages charged", c.pages.to_string()),
                (
                    "ephemeral pages (now/max)",
                    format!("{}/{}", c.eph_pages, c.eph_pages_max),
                ),
                ("puts", c.puts.to_string()),
                (
                    "gets (hit/miss)",
                    format!(
                        "{}/{} ({})",
                        c.succ_gets,
                        c.failed_gets,
                        percent(c.succ_gets, c.succ_gets + c.failed_gets)
                    ),
                ),
                ("ephemeral gets that hit", c.succ_eph_gets.to_string()),
                (
                    "persistent puts/gets",
                    format!("{}/{}", c.pers_puts, c.pers_gets),
                ),
                ("flushes", c.invalidates.to_string()),
                ("evictions", c.evictions.to_string()),
                ("errors", c.errors.to_string()),
            ],
        );
        for p in &c.pools {
            let mut items = vec![("uuid", uuid_cell(p.uuid))];
            if !p.adopted {
                items.push(("state", "kept for reattach".into()));
            }
            items.extend(counter_items(&p.counters));
            kv_block(
                &mut out,
                &format!("  pool {} [{}]", p.pool_id, p.kind),
                &items,
            );
        }
    }
    if all {
        for s in &stats.shared_pools {
            out.push('\n');
            let mut items = vec![
                ("sharers", sharers_cell(s)),
                ("weight", s.weight.to_string()),
            ];
            items.extend(counter_items(&s.counters));
            kv_block(
                &mut out,
                &format!("shared pool {} [{}]", format_uuid(s.uuid), s.kind),
                &items,
            );
        }
    }
    out
}

fn target_text(t: &Target) -> String {
    match t {
        Target::All => "all domains".into(),
        Target::DomId(d) => format!("domain {d}"),
        Target::Local { uid, label } => format!("local client local:{uid}:{label}"),
        Target::Name(n) => format!("domain '{n}'"),
    }
}

fn clients_text(n: u32) -> String {
    if n == 1 {
        "1 client".into()
    } else {
        format!("{n} clients")
    }
}

/// The page-memory lines of `tmem status`: where it is, whether it survives, what the start
/// recovered.
pub fn page_memory_text(pm: &tmem_control::PageMemoryStatus) -> String {
    let place = match (pm.origin.as_str(), &pm.path) {
        ("fd_store", _) if pm.inherited => {
            "memfd in systemd's fd store (handed back at this start)".to_string()
        }
        ("fd_store", _) => "memfd in systemd's fd store (new at this start)".to_string(),
        ("path", Some(p)) => format!("file {p}"),
        ("heap", _) => "heap".to_string(),
        (other, _) => other.to_string(),
    };
    let survives = if pm.durable {
        "persistent pages survive a restart of tmemd"
    } else {
        "not durable: a restart of tmemd loses every page"
    };
    let mut out = format!("page memory: {place}; {survives}\n");
    if let Some(r) = &pm.recovery {
        if r.formatted {
            out.push_str("recovered at start: nothing (new page memory)\n");
        } else {
            out.push_str(&format!(
                "recovered at start: {} pages ({} zero, {} compressed) in {} pools of {} \
                 clients; dropped {} torn, {} orphan, {} superseded; scan {} ms, rebuild {} ms\n",
                r.pages,
                r.zero_pages,
                r.compressed_pages,
                r.pools,
                r.clients,
                r.torn,
                r.orphans,
                r.superseded,
                r.scan_ms,
                r.rebuild_ms
            ));
        }
    }
    if !pm.settings.is_empty() {
        out.push_str(&format!(
            "settings changed with tmem are kept in: {}\n",
            pm.settings
        ));
    }
    out
}

/// The confirmation printed for a command other than `list` and `top`.
pub fn render_reply(op: &Op, reply: &OkReply) -> String {
    match (op, reply) {
        (
            _,
            OkReply::Status {
                daemon_version,
                control_version,
                uptime_secs,
                guests_connected,
                transports,
                page_memory,
            },
        ) => {
            let mut out = format!(
                "tmemd {daemon_version} (control protocol {control_version}), up {}, \
                 {guests_connected} guest(s) connected, transports: {}\n",
                human_duration(*uptime_secs),
                transports.join(", ")
            );
            if let Some(pm) = page_memory {
                out.push_str(&page_memory_text(pm));
            }
            out
        }
        (_, OkReply::Freeable { pages, kib }) => format!(
            "{kib} KiB ({pages} pages, {} MiB) of ephemeral memory can be freed now\n",
            kib / 1024
        ),
        (_, OkReply::Flushed { kib }) => format!("flushed {kib} KiB\n"),
        (Op::Freeze { target }, OkReply::Done { clients }) => format!(
            "froze {} ({}): new puts now fail with -EFROZEN\n",
            target_text(target),
            clients_text(*clients)
        ),
        (Op::Thaw { target }, OkReply::Done { clients }) => format!(
            "thawed {} ({})\n",
            target_text(target),
            clients_text(*clients)
        ),
        (
            Op::Set {
                target,
                weight,
                cap_pages,
                compress,
            },
            OkReply::Done { clients },
        ) => {
            let mut what = Vec::new();
            if let Some(w) = weight {
                what.push(format!("weight {w}"));
            }
            if let Some(c) = cap_pages {
                what.push(if *c == 0 {
                    "no cap".to_string()
                } else {
                    format!(
                        "cap {} of page memory ({c} × 4 KiB)",
                        human_bytes(c.saturating_mul(PAGE_BYTES))
                    )
                });
            }
            if let Some(p) = compress {
                what.push(format!("compress {}", u8::from(*p)));
            }
            format!(
                "set {} on {} ({})\n",
                what.join(", "),
                target_text(target),
                clients_text(*clients)
            )
        }
        (
            Op::SharedAuth {
                target: Target::All,
                allow,
                ..
            },
            OkReply::Done { .. },
        ) => format!(
            "shared pools {} authorisation\n",
            if *allow { "no longer need" } else { "now need" }
        ),
        (
            Op::SharedAuth {
                target,
                uuid,
                allow,
            },
            OkReply::Done { .. },
        ) => format!(
            "{} {} for shared pool {}\n",
            if *allow {
                "authorised"
            } else {
                "de-authorised"
            },
            target_text(target),
            format_uuid(*uuid)
        ),
        (Op::Destroy { target }, OkReply::Done { clients }) => format!(
            "destroyed {} ({}): its pools are gone and it is disconnected\n",
            target_text(target),
            clients_text(*clients)
        ),
        (_, OkReply::Done { clients }) => format!("done ({})\n", clients_text(*clients)),
        (_, OkReply::Stats(_)) => "statistics received\n".into(),
        (_, OkReply::Metrics(_)) => "metrics received\n".into(),
        (
            _,
            OkReply::Saving {
                identity, pages, ..
            },
        ) => {
            format!("saving {identity}: {pages} pages\n")
        }
        (
            _,
            OkReply::Restored {
                identity, pages, ..
            },
        ) => format!("restored {identity}: {pages} pages\n"),
    }
}

/// `3725` → `1h 2m 5s`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// `domid 7` for a Xen client, `local:1000:7` for a local one.
fn client_label(c: &tmem_store::ClientStats) -> String {
    match c.local_uid {
        None => format!("domid {}", c.domid),
        Some(_) => c.identity().to_string(),
    }
}

/// Every sharer of a shared pool: Xen domain ids, then local clients.
fn sharers_cell(s: &tmem_store::SharedPoolStats) -> String {
    s.sharers
        .iter()
        .map(u32::to_string)
        .chain(s.local_sharers.iter().cloned())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tmem_store::{GlobalStats, PoolStats, SharedPoolStats};

    /// A fixed snapshot used by the rendering tests: two clients, three private pools and one
    /// shared pool.
    pub(crate) fn sample() -> StoreStats {
        let counters = |base: u64| PoolCounters {
            pages: base,
            // Half of the pages compressed to 1500 bytes in slots of 1536.
            compressed_pages: base / 2,
            compressed_bytes: base / 2 * 1500,
            mem_bytes: base / 2 * 4096 + base / 2 * 1536,
            pages_max: base + 10,
            objects: base / 10,
            objects_max: base / 10 + 1,
            good_puts: base * 3,
            total_puts: base * 3 + 2,
            dup_puts_flushed: 1,
            dup_puts_replaced: 4,
            no_mem_puts: 2,
            found_gets: base,
            total_gets: base * 2,
            found_flushes: 5,
            total_flushes: 7,
            found_obj_flushes: 3,
            total_obj_flushes: 9,
            evictions: base / 4,
        };
        StoreStats {
            global: GlobalStats {
                total_ops: 123_456,
                errored_ops: 12,
                evictions: 4096,
                evict_attempts: 4100,
                eph_pages: 1100,
                eph_pages_max: 1500,
                objects: 210,
                objects_max: 300,
                pages: 1600,
                pages_max: 2000,
                zero_pages: 3,
                same_filled_pages: 5,
                good_eph_puts: 40_000,
                mem_limit_bytes: 64 << 20,
                data_bytes: 1597 * 4096,
                frames_allocated: 2048,
                frames_free: 451,
                freeable_pages: 1097,
                freeable_bytes: 1097 * 4096,
                metadata_bytes: 300_000,
                shared_auth_required: true,
                compression: Default::default(),
            },
            clients: vec![
                ClientStats {
                    client_id: 1,
                    domid: 1,
                    local_uid: None,
                    instance: 1,
                    name: "web".into(),
                    attached: true,
                    weight: 100,
                    cap_pages: 0,
                    cap_bytes: 0,
                    mem_bytes: 4096,
                    compress: false,
                    frozen: false,
                    pages: 1500,
                    eph_pages: 1000,
                    eph_pages_max: 1400,
                    succ_eph_gets: 900,
                    pers_puts: 500,
                    pers_gets: 250,
                    succ_gets: 1150,
                    failed_gets: 850,
                    puts: 3500,
                    invalidates: 40,
                    errors: 6,
                    evictions: 250,
                    pools: vec![
                        PoolStats {
                            pool_id: 0,
                            kind: "EP".into(),
                            uuid: [0, 0],
                            adopted: true,
                            counters: counters(1000),
                        },
                        PoolStats {
                            pool_id: 1,
                            kind: "PP".into(),
                            uuid: [0, 0],
                            adopted: true,
                            counters: counters(500),
                        },
                        PoolStats {
                            pool_id: 2,
                            kind: "ES".into(),
                            uuid: [0x2, 0xabcdef],
                            adopted: true,
                            counters: counters(100),
                        },
                    ],
                },
                ClientStats {
                    client_id: 2,
                    domid: 7,
                    instance: 3,
                    name: "db".into(),
                    attached: false,
                    weight: 50,
                    cap_pages: 2560,
                    cap_bytes: 2560 * 4096,
                    mem_bytes: 8192,
                    compress: true,
                    frozen: true,
                    pages: 0,
                    pools: vec![PoolStats {
                        pool_id: 0,
                        kind: "ES".into(),
                        uuid: [0x2, 0xabcdef],
                        adopted: true,
                        counters: counters(100),
                    }],
                    ..ClientStats::default()
                },
            ],
            shared_pools: vec![SharedPoolStats {
                uuid: [0x2, 0xabcdef],
                kind: "ES".into(),
                sharers: vec![1, 7],
                local_sharers: Vec::new(),
                weight: 100,
                counters: counters(100),
            }],
            swap_disks: Vec::new(),
            parked: Vec::new(),
        }
    }

    #[test]
    fn status_says_where_page_memory_is_and_what_was_recovered() {
        let mut pm = tmem_control::PageMemoryStatus {
            origin: "fd_store".into(),
            durable: true,
            inherited: true,
            path: None,
            settings: "fd \"tmemd-settings\" in the fd store".into(),
            recovery: Some(tmem_control::RecoveryStatus {
                formatted: false,
                clients: 2,
                pools: 3,
                pages: 4096,
                zero_pages: 7,
                compressed_pages: 9,
                superseded: 1,
                orphans: 2,
                torn: 3,
                scan_ms: 11,
                rebuild_ms: 5,
            }),
        };
        let reply = OkReply::Status {
            daemon_version: "0.1.0".into(),
            control_version: 1,
            uptime_secs: 65,
            guests_connected: 2,
            transports: vec!["local".into()],
            page_memory: Some(pm.clone()),
        };
        let text = render_reply(&Op::Status, &reply);
        assert_eq!(
            text,
            "tmemd 0.1.0 (control protocol 1), up 1m 5s, 2 guest(s) connected, transports: local\n\
             page memory: memfd in systemd's fd store (handed back at this start); persistent \
             pages survive a restart of tmemd\n\
             recovered at start: 4096 pages (7 zero, 9 compressed) in 3 pools of 2 clients; dropped 3 torn, \
             2 orphan, 1 superseded; scan 11 ms, rebuild 5 ms\n\
             settings changed with tmem are kept in: fd \"tmemd-settings\" in the fd store\n"
        );
        pm.origin = "heap".into();
        pm.durable = false;
        pm.recovery = None;
        pm.settings = "memory only".into();
        let text = page_memory_text(&pm);
        assert!(text.starts_with("page memory: heap; not durable"), "{text}");
    }

    #[test]
    fn parked_domains_are_listed_with_their_time_left() {
        let mut s = sample();
        s.parked.push(tmem_control::ParkedStats {
            state: "parked".into(),
            uuid: "5e6f0000-0000-0000-0000-000000000001".into(),
            name: "web".into(),
            old_domid: 7,
            client_id: Some(3),
            swap_disk: Some("xvdz".into()),
            secs_left: 290,
        });
        let text = render_table(&s, true);
        let line = text
            .lines()
            .find(|l| l.starts_with("dom7"))
            .unwrap_or_else(|| panic!("{text}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "dom7",
                "web",
                "5e6f0000-0000-0000-0000-000000000001",
                "parked",
                "3",
                "xvdz",
                "290s"
            ]
        );
        assert!(text.contains("PARKED"), "{text}");
    }

    #[test]
    fn local_clients_are_shown_by_uid_and_label() {
        let mut s = sample();
        s.clients.push(ClientStats {
            client_id: 9,
            domid: 1,
            local_uid: Some(1000),
            name: "app".into(),
            ..ClientStats::default()
        });
        s.shared_pools[0].local_sharers = vec!["local:1000:1".into()];
        let t = render_table(&s, true);
        assert!(t.contains("local:1000:1"), "{t}");
        assert!(t.contains("1,7,local:1000:1"), "{t}");
    }

    #[test]
    fn table_shows_clients_pools_and_memory() {
        let t = render_table(&sample(), true);
        let expected = "\
memory: 6.2 MiB of 64.0 MiB page data in use (9.7%), 1.8 MiB pre-faulted and free, ~293.0 KiB metadata
pages: 1600 stored (1100 ephemeral, 5 same-filled incl. 3 zero), 1097 freeable; shared pools need authorisation: yes

DOMID  NAME  STATE            WEIGHT  CAP   PAGES  MEMORY   RATIO  PUTS  GETS  HITS  HIT%
1      web   attached         100     -     1500   4.0 MiB  1.45   3500  2000  1150  57.5%
7      db    detached,frozen  50      2560  0      0 B      -      0     0     0     -

DOMID  POOL  KIND  UUID                                  PAGES  MEMORY     RATIO  COMPRESSED  PUTS  GETS  HITS  HIT%   FLUSHES
1      0     EP    -                                     1000   2.7 MiB    1.45   500         3002  2000  1000  50.0%  16
1      1     PP    -                                     500    1.3 MiB    1.45   250         1502  1000  500   50.0%  16
1      2     ES    02000000-0000-0000-efcd-ab0000000000  100    275.0 KiB  1.45   50          302   200   100   50.0%  16
7      0     ES    02000000-0000-0000-efcd-ab0000000000  100    275.0 KiB  1.45   50          302   200   100   50.0%  16

SHARED UUID                           KIND  SHARERS  PAGES  PUTS  GETS  HITS  HIT%
02000000-0000-0000-efcd-ab0000000000  ES    1,7      100    302   200   100   50.0%
";
        assert_eq!(t, expected, "got:\n{t}");
    }

    #[test]
    fn table_for_one_domain_omits_the_store_summary() {
        let mut s = sample();
        s.clients.truncate(1);
        let t = render_table(&s, false);
        assert!(t.starts_with("DOMID  NAME"), "{t}");
        assert!(!t.contains("SHARED UUID"));
        let empty = render_table(&StoreStats::default(), true);
        assert!(empty.ends_with("no tmem clients\n"), "{empty}");
    }

    #[test]
    fn long_form_has_every_counter() {
        let t = render_long(&sample(), true);
        for needle in [
            "operations (total/errored)       123456/12",
            "evictions (done/attempted)       4096/4100",
            "same-filled pages (incl. zero)   5",
            "client domid 7 'db' (instance 3, store id 2)",
            "state                      detached,frozen",
            "cap (4 KiB units)          2560",
            "memory (KiB)               8",
            "  pool 1 [PP]",
            "    duplicate puts (flushed/replaced)  1/4",
            "    gets (found/total)                 1000/2000 (50.0%)",
            "shared pool 02000000-0000-0000-efcd-ab0000000000 [ES]",
            "sharers",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in:\n{t}");
        }
    }

    #[test]
    fn confirmations_name_the_effect() {
        let done = OkReply::Done { clients: 2 };
        assert_eq!(
            render_reply(
                &Op::Freeze {
                    target: Target::All
                },
                &done
            ),
            "froze all domains (2 clients): new puts now fail with -EFROZEN\n"
        );
        assert_eq!(
            render_reply(
                &Op::Set {
                    target: Target::DomId(3),
                    weight: Some(5),
                    cap_pages: Some(256),
                    compress: None
                },
                &OkReply::Done { clients: 1 }
            ),
            "set weight 5, cap 1.0 MiB of page memory (256 × 4 KiB) on domain 3 (1 client)\n"
        );
        assert_eq!(
            render_reply(
                &Op::Freeable,
                &OkReply::Freeable {
                    pages: 512,
                    kib: 2048
                }
            ),
            "2048 KiB (512 pages, 2 MiB) of ephemeral memory can be freed now\n"
        );
        assert_eq!(
            render_reply(&Op::Flush { kib: 100 }, &OkReply::Flushed { kib: 128 }),
            "flushed 128 KiB\n"
        );
        assert_eq!(human_duration(3725), "1h 2m 5s");
        assert_eq!(human_duration(59), "59s");
    }

    #[test]
    fn sizes_and_columns() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(
            columns(&[
                vec!["A".into(), "BB".into()],
                vec!["CCC".into(), "D".into()]
            ]),
            "A    BB\nCCC  D\n"
        );
    }
}
