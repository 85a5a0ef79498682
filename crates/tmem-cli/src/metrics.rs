//! `tmem metrics`: one [`MetricsSnapshot`] in the Prometheus text exposition format (0.0.4),
//! for node_exporter's textfile collector or any scraper that reads a file or a pipe.
//!
//! A small writer rather than the prometheus-client crate: the output is a pure function of
//! one snapshot, with no registry, no live metric objects and nothing to serve, and the
//! format needs only fixed metric names, label values escaped (`\\`, `\"`, `\n`), `HELP`
//! text escaped (`\\`, `\n`) and every family's samples together. The tests parse the
//! output with Prometheus's own Python parser.

use std::fmt::Write as _;

use tmem_control::{format_uuid, LatencyHistogram, MetricsSnapshot, LATENCY_BUCKETS};
use tmem_store::{ClientStats, PoolCounters, SwapDiskStats};

use crate::render::PAGE_BYTES;

/// Smallest and largest finite bucket bounds written, as powers of two nanoseconds
/// (256 ns to about 1.07 s): faster requests count in the first, slower in `+Inf`.
const FIRST_BOUND: usize = 8;
const LAST_BOUND: usize = 30;

/// Escape a label value.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escape `HELP` text.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[derive(Debug, Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with a single unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn client_labels(c: &ClientStats) -> Vec<(&'static str, String)> {
    vec![
        ("client", c.identity().to_string()),
        ("name", c.name.clone()),
    ]
}

type ClientValue = fn(&ClientStats) -> u64;
type PoolValue = fn(&PoolCounters) -> u64;

const CLIENT_METRICS: &[(&str, &str, &str, ClientValue)] = &[
    ("tmem_client_attached", "gauge", "1 while the guest is connected, 0 while detached (its persistent pools kept for a reattach).", |c| u64::from(c.attached)),
    ("tmem_client_frozen", "gauge", "1 while new puts are refused (tmem freeze).", |c| u64::from(c.frozen)),
    ("tmem_client_weight", "gauge", "Eviction weight.", |c| u64::from(c.weight)),
    ("tmem_client_cap_pages", "gauge", "Cap on the client's page memory in 4 KiB units, 0 for none.", |c| c.cap_pages),
    ("tmem_client_pages", "gauge", "Pages charged to the client (its private pools, zero pages included).", |c| c.pages),
    ("tmem_client_memory_bytes", "gauge", "Page memory charged to the client (what its cap and weight count): 4096 per raw page, a compressed page's share of its run, 0 per same-filled page.", |c| c.mem_bytes),
    ("tmem_client_ephemeral_pages", "gauge", "Ephemeral pages in the client's private pools.", |c| c.eph_pages),
    ("tmem_client_puts_total", "counter", "Successful puts.", |c| c.puts),
    ("tmem_client_gets_total", "counter", "Gets, hits and misses.", |c| c.succ_gets + c.failed_gets),
    ("tmem_client_get_hits_total", "counter", "Gets that returned data.", |c| c.succ_gets),
    ("tmem_client_flushes_total", "counter", "Page and object flushes.", |c| c.invalidates),
    ("tmem_client_errors_total", "counter", "Operations answered with an error (no memory, no such pool, refused).", |c| c.errors),
    ("tmem_client_evictions_total", "counter", "Ephemeral pages of the client's private pools evicted under memory pressure.", |c| c.evictions),
];

const POOL_METRICS: &[(&str, &str, &str, PoolValue)] = &[
    ("tmem_pool_pages", "gauge", "Pages in the pool now.", |k| {
        k.pages
    }),
    (
        "tmem_pool_memory_bytes",
        "gauge",
        "Memory of the pool's pages: pages times 4096.",
        |k| k.pages * PAGE_BYTES,
    ),
    (
        "tmem_pool_objects",
        "gauge",
        "Objects in the pool now.",
        |k| k.objects,
    ),
    (
        "tmem_pool_puts_total",
        "counter",
        "Puts, stored or not.",
        |k| k.total_puts,
    ),
    (
        "tmem_pool_put_errors_total",
        "counter",
        "Puts that were not stored (no memory, cap, frozen, a failed duplicate).",
        |k| k.total_puts.saturating_sub(k.good_puts),
    ),
    (
        "tmem_pool_puts_no_memory_total",
        "counter",
        "Puts refused for lack of memory.",
        |k| k.no_mem_puts,
    ),
    (
        "tmem_pool_evictions_total",
        "counter",
        "Ephemeral pages of the pool evicted under memory pressure.",
        |k| k.evictions,
    ),
    (
        "tmem_pool_gets_total",
        "counter",
        "Gets, hits and misses.",
        |k| k.total_gets,
    ),
    (
        "tmem_pool_get_hits_total",
        "counter",
        "Gets that found the page.",
        |k| k.found_gets,
    ),
    (
        "tmem_pool_page_flushes_total",
        "counter",
        "Page flushes.",
        |k| k.total_flushes,
    ),
    (
        "tmem_pool_object_flushes_total",
        "counter",
        "Object flushes.",
        |k| k.total_obj_flushes,
    ),
];

/// The exposition of one snapshot.
pub fn render_metrics(m: &MetricsSnapshot) -> String {
    let mut w = Writer::default();
    let g = &m.stats.global;
    w.family(
        "tmem_build_info",
        "gauge",
        "Always 1; the version label is tmemd's version.",
    );
    w.sample(
        "tmem_build_info",
        &[("version", m.daemon_version.clone())],
        1,
    );
    w.single(
        "tmem_uptime_seconds",
        "gauge",
        "Seconds since tmemd started.",
        m.uptime_secs,
    );
    w.single(
        "tmem_guests_connected",
        "gauge",
        "Guests connected now.",
        m.guests_connected,
    );
    w.single(
        "tmem_memory_limit_bytes",
        "gauge",
        "Configured limit on page data (mem_limit).",
        g.mem_limit_bytes,
    );
    w.single(
        "tmem_memory_used_bytes",
        "gauge",
        "Page data in use.",
        g.data_bytes,
    );
    w.single(
        "tmem_metadata_bytes",
        "gauge",
        "Estimated metadata (index, LRU, objects, pools).",
        g.metadata_bytes,
    );
    w.single(
        "tmem_frames_allocated",
        "gauge",
        "Page frames faulted in so far, in use or free.",
        g.frames_allocated,
    );
    w.single(
        "tmem_frames_free",
        "gauge",
        "Page frames on the free list.",
        g.frames_free,
    );
    w.single(
        "tmem_pages",
        "gauge",
        "Pages stored, all kinds, zero pages included.",
        g.pages,
    );
    w.single(
        "tmem_ephemeral_pages",
        "gauge",
        "Ephemeral pages stored.",
        g.eph_pages,
    );
    w.single(
        "tmem_zero_pages",
        "gauge",
        "Pages stored as all-zero (no data frame).",
        g.zero_pages,
    );
    w.single(
        "tmem_same_filled_pages",
        "gauge",
        "Pages stored as one 8-byte word repeated (no data frame), zero pages included.",
        g.same_filled_pages,
    );
    w.single(
        "tmem_freeable_pages",
        "gauge",
        "Ephemeral pages whose eviction would release memory now.",
        g.freeable_pages,
    );
    w.single(
        "tmem_freeable_bytes",
        "gauge",
        "Page memory their eviction would release now (tmem freeable).",
        g.freeable_bytes,
    );
    w.single(
        "tmem_operations_total",
        "counter",
        "Guest operations handled.",
        g.total_ops,
    );
    w.single(
        "tmem_operation_errors_total",
        "counter",
        "Guest operations that returned an error.",
        g.errored_ops,
    );
    w.single(
        "tmem_evictions_total",
        "counter",
        "Ephemeral pages evicted.",
        g.evictions,
    );
    w.single(
        "tmem_eviction_attempts_total",
        "counter",
        "Eviction attempts, successful or not.",
        g.evict_attempts,
    );
    w.single(
        "tmem_shared_auth_required",
        "gauge",
        "1 when joining a shared pool needs an authorisation.",
        u64::from(g.shared_auth_required),
    );

    if let Some(pm) = &m.page_memory {
        w.family(
            "tmem_page_memory_durable",
            "gauge",
            "1 when persistent pages survive a restart of tmemd; origin is fd_store, path or heap.",
        );
        w.sample(
            "tmem_page_memory_durable",
            &[("origin", pm.origin.clone())],
            u64::from(pm.durable),
        );
        if let Some(r) = &pm.recovery {
            w.single(
                "tmem_recovered_clients",
                "gauge",
                "Clients recovered from durable page memory at this start.",
                r.clients,
            );
            w.single(
                "tmem_recovered_pools",
                "gauge",
                "Pools recovered from durable page memory at this start.",
                r.pools,
            );
            w.single(
                "tmem_recovered_pages",
                "gauge",
                "Pages recovered from durable page memory at this start.",
                r.pages,
            );
            w.family(
                "tmem_recovery_dropped_pages",
                "gauge",
                "Records dropped by the recovery at this start, by reason.",
            );
            for (reason, n) in [
                ("torn", r.torn),
                ("orphan", r.orphans),
                ("superseded", r.superseded),
            ] {
                w.sample(
                    "tmem_recovery_dropped_pages",
                    &[("reason", reason.to_string())],
                    n,
                );
            }
        }
    }

    for (name, kind, help, value) in CLIENT_METRICS {
        w.family(name, kind, help);
        for c in &m.stats.clients {
            w.sample(name, &client_labels(c), value(c));
        }
    }

    // Private pools under their client; each shared pool once (its counters are the same
    // under every sharer), with client "shared".
    for (name, kind, help, value) in POOL_METRICS {
        w.family(name, kind, help);
        for c in &m.stats.clients {
            for p in c.pools.iter().filter(|p| !p.kind.ends_with('S')) {
                let mut l = client_labels(c);
                l.push(("pool", p.pool_id.to_string()));
                l.push(("kind", p.kind.clone()));
                // A private pool's uuid names the guest's filesystem when it sent one.
                let uuid = if p.uuid == [0, 0] {
                    String::new()
                } else {
                    format_uuid(p.uuid)
                };
                l.push(("uuid", uuid));
                w.sample(name, &l, value(&p.counters));
            }
        }
        for s in &m.stats.shared_pools {
            let l = vec![
                ("client", "shared".to_string()),
                ("name", String::new()),
                ("pool", String::new()),
                ("kind", s.kind.clone()),
                ("uuid", format_uuid(s.uuid)),
            ];
            w.sample(name, &l, value(&s.counters));
        }
    }

    for (name, kind, help, value) in SWAP_DISK_METRICS {
        w.family(name, kind, help);
        for d in &m.stats.swap_disks {
            let l = vec![
                ("domid", d.domid.to_string()),
                ("name", d.name.clone()),
                ("device", d.device.clone()),
                ("state", d.state.clone()),
            ];
            w.sample(name, &l, value(d));
        }
    }

    let name = "tmem_request_duration_seconds";
    w.family(
        name,
        "histogram",
        "Time a worker spent on one guest request, answer on the ring included, by kind.",
    );
    for h in &m.latency {
        histogram(&mut w, name, &[("op", h.op.clone())], h);
    }
    if let Some(h) = &m.ring_batches {
        let name = "tmem_ring_batch_duration_seconds";
        w.family(
            name,
            "histogram",
            "Time from taking a batch of one guest's requests off its ring (up to 64) to \
             publishing the batch's last answer: how long a guest that queued many requests \
             waits for all of them.",
        );
        histogram(&mut w, name, &[], h);
    }
    w.out
}

type SwapDiskMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SwapDiskStats) -> u64,
);

/// One sample per swap disk, labelled by domain, name, device and state.
const SWAP_DISK_METRICS: [SwapDiskMetric; 9] = [
    (
        "tmem_swap_disk_size_bytes",
        "gauge",
        "Size of the swap disk.",
        |d| d.sectors * 512,
    ),
    (
        "tmem_swap_disk_memory_pages",
        "gauge",
        "Swap disk pages held in tmem memory.",
        |d| d.pages_in_memory,
    ),
    (
        "tmem_swap_disk_spilled_pages",
        "gauge",
        "Swap disk pages in the spill file (memory or the cap said no).",
        |d| d.pages_spilled,
    ),
    (
        "tmem_swap_disk_reads_total",
        "counter",
        "READ requests served.",
        |d| d.reads,
    ),
    (
        "tmem_swap_disk_writes_total",
        "counter",
        "WRITE requests served.",
        |d| d.writes,
    ),
    (
        "tmem_swap_disk_discards_total",
        "counter",
        "DISCARD requests served.",
        |d| d.discards,
    ),
    (
        "tmem_swap_disk_flushes_total",
        "counter",
        "FLUSH requests served.",
        |d| d.flushes,
    ),
    (
        "tmem_swap_disk_spill_writes_total",
        "counter",
        "Pages written to the spill file because the store refused them.",
        |d| d.spill_writes,
    ),
    (
        "tmem_swap_disk_errors_total",
        "counter",
        "Requests answered with an error.",
        |d| d.errors,
    ),
];

fn histogram(w: &mut Writer, name: &str, labels: &[(&'static str, String)], h: &LatencyHistogram) {
    let bucket = format!("{name}_bucket");
    let with_le = |le: String| {
        let mut l = labels.to_vec();
        l.push(("le", le));
        l
    };
    let mut cumulative = 0u64;
    for (k, n) in h.buckets.iter().enumerate().take(LATENCY_BUCKETS) {
        cumulative += n;
        if (FIRST_BOUND..=LAST_BOUND).contains(&k) {
            let bound_ns = LatencyHistogram::bucket_bound_ns(k).unwrap_or(u64::MAX);
            w.sample(
                &bucket,
                &with_le(format!("{:e}", bound_ns as f64 / 1e9)),
                cumulative,
            );
        }
    }
    w.sample(&bucket, &with_le("+Inf".into()), h.count());
    w.sample(
        &format!("{name}_sum"),
        labels,
        format!("{:e}", h.sum_ns as f64 / 1e9),
    );
    w.sample(&format!("{name}_count"), labels, h.count());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::sample;

    fn snapshot() -> MetricsSnapshot {
        let mut stats = sample();
        stats.clients[1].name = "db \"main\"\\\nx".into();
        stats.swap_disks.push(SwapDiskStats {
            domid: 7,
            name: "db".into(),
            device: "xvdz".into(),
            devid: 268_441_856,
            sectors: 1 << 21,
            state: "connected".into(),
            pages_in_memory: 300,
            pages_spilled: 12,
            writes: 400,
            ..SwapDiskStats::default()
        });
        let mut buckets = vec![0; LATENCY_BUCKETS];
        buckets[3] = 2; // below the first bound written
        buckets[9] = 5; // 256..512 ns
        buckets[LATENCY_BUCKETS - 1] = 1; // over a second
        MetricsSnapshot {
            stats,
            uptime_secs: 42,
            guests_connected: 1,
            page_memory: None,
            daemon_version: "0.1.0".into(),
            latency: vec![LatencyHistogram {
                op: "put".into(),
                buckets,
                sum_ns: 2_000_001_500,
            }],
            ring_batches: None,
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let text = render_metrics(&snapshot());
        assert!(
            text.contains("tmem_client_pages{client=\"7\",name=\"db \\\"main\\\"\\\\\\nx\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn swap_disks_are_labelled_by_domain_and_device() {
        let text = render_metrics(&snapshot());
        let l = "{domid=\"7\",name=\"db\",device=\"xvdz\",state=\"connected\"}";
        for line in [
            format!("tmem_swap_disk_size_bytes{l} 1073741824\n"),
            format!("tmem_swap_disk_memory_pages{l} 300\n"),
            format!("tmem_swap_disk_spilled_pages{l} 12\n"),
            format!("tmem_swap_disk_writes_total{l} 400\n"),
        ] {
            assert!(text.contains(&line), "missing {line} in {text}");
        }
    }

    #[test]
    fn families_are_contiguous_and_typed() {
        let text = render_metrics(&snapshot());
        let mut seen = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(!seen.contains(&current), "{current} declared twice");
                seen.push(current.clone());
            } else if !line.starts_with('#') {
                assert!(
                    line.starts_with(&current),
                    "{line} outside its family {current}"
                );
            }
        }
        assert!(text.contains("tmem_memory_limit_bytes 67108864\n"));
        assert!(text.contains("tmem_zero_pages 3\n"));
        assert!(text.contains("tmem_same_filled_pages 5\n"));
        assert!(text.contains("tmem_build_info{version=\"0.1.0\"} 1\n"));
        assert!(text.contains("tmem_client_get_hits_total{client=\"1\",name=\"web\"} 1150\n"));
        // Shared pools once, private pools under their client.
        assert_eq!(text.matches("tmem_pool_pages{client=\"shared\"").count(), 1);
        assert!(text.contains(
            "tmem_pool_pages{client=\"1\",name=\"web\",pool=\"1\",kind=\"PP\",uuid=\"\"} 500\n"
        ));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let text = render_metrics(&snapshot());
        let b = |le: &str| {
            let needle = format!("tmem_request_duration_seconds_bucket{{op=\"put\",le=\"{le}\"}} ");
            let line = text
                .lines()
                .find(|l| l.starts_with(&needle))
                .unwrap_or_else(|| panic!("{needle} in {text}"));
            line[needle.len()..].parse::<u64>().unwrap()
        };
        assert_eq!(b("2.56e-7"), 2);
        assert_eq!(b("5.12e-7"), 7);
        assert_eq!(b("1.073741824e0"), 7);
        assert_eq!(b("+Inf"), 8);
        assert!(text.contains("tmem_request_duration_seconds_count{op=\"put\"} 8\n"));
        assert!(text.contains("tmem_request_duration_seconds_sum{op=\"put\"} 2.0000015e0\n"));
    }
}
