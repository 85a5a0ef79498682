//! `tmem list --format xen`: the `G=`/`S=`/`C=`/`P=`/`T` lines of Xen's `xl tmem-list`, with
//! Xen's tags in Xen's order, so scripts written for Xen (and `xen-tmem-list-parse`) keep
//! working.
//!
//! The layout follows Xen 4.5 (the `C=` record keeps the `ca:` cap tag, which tmemd enforces).
//! Tags whose concept does not exist in tmemd are printed as `0`; [`ZERO_TAGS`] lists them.
//! Numbers are decimal except the uuid words `U0`/`U1`, which are lower-case hex without a
//! prefix, as Xen printed them.

use tmem_store::{ClientStats, PoolCounters, StoreStats};

/// Short part of the `G=` record, in order.
pub const G_SHORT: [&str; 13] = [
    "Tt", "Te", "Cf", "Af", "Pf", "Ta", "Lm", "Et", "Ea", "Rt", "Ra", "Rx", "Fp",
];
/// Long part of the `G=` record (`-l`), in order.
pub const G_LONG: [&str; 16] = [
    "Ec", "Em", "Oc", "Om", "Nc", "Nm", "Pc", "Pm", "Fc", "Fm", "Sc", "Sm", "Ep", "Gd", "Zt", "Gz",
];
/// Short part of the `C=` record.
pub const C_SHORT: [&str; 9] = ["CI", "ww", "ca", "co", "fr", "Tc", "Ge", "Pp", "Gp"];
/// Long part of the `C=` record.
pub const C_LONG: [&str; 6] = ["Ec", "Em", "cp", "cb", "cn", "cm"];
/// Short part of the `P=` record.
pub const P_SHORT: [&str; 5] = ["CI", "PI", "PT", "U0", "U1"];
/// Short part of the `S=` record, before one `SC` per sharer.
pub const S_SHORT: [&str; 4] = ["SI", "PT", "U0", "U1"];
/// Long part of the `P=` and `S=` records.
pub const POOL_LONG: [&str; 17] = [
    "Pc", "Pm", "Oc", "Om", "Nc", "Nm", "ps", "pt", "pd", "pr", "px", "gs", "gt", "fs", "ft", "os",
    "ot",
];

/// Tags always printed as 0 because tmemd has no such thing, by record, with the reason.
pub const ZERO_TAGS: &[(&str, &str, &str)] = &[
    (
        "G",
        "Cf",
        "no failed copies: pages are copied from shared memory, which cannot fail",
    ),
    ("G", "Af", "no sub-page allocator"),
    (
        "G",
        "Pf",
        "frames are pre-allocated; a put refused for memory is counted as px",
    ),
    ("G", "Lm", "never incremented in Xen either"),
    ("G", "Rt", "no hypervisor heap to relinquish pages to"),
    ("G", "Ra", "as Rt"),
    ("G", "Rx", "as Rt"),
    ("G", "Fp", "never incremented in Xen either"),
    ("G", "Nc", "no radix-tree nodes (hash maps)"),
    ("G", "Nm", "as Nc"),
    ("G", "Sc", "no deduplication (removed from Xen in 4.8)"),
    ("G", "Sm", "as Sc"),
    ("G", "Gd", "as Sc"),
    (
        "G",
        "Zt",
        "no trailing-zero elimination (all-zero pages are stored as metadata)",
    ),
    ("C", "Tc", "no cycle accounting (only Xen <= 4.3 had it)"),
    (
        "C",
        "cn",
        "pages that did not compress are counted store-wide only (status: compression.incompressible)",
    ),
    (
        "C",
        "cm",
        "no allocation fails while compressing: a page without a slot is stored raw",
    ),
    ("P", "Nc", "no radix-tree nodes"),
    ("P", "Nm", "as Nc"),
    ("S", "Nc", "no radix-tree nodes"),
    ("S", "Nm", "as Nc"),
];

fn line(tag: &str, short: &[(&str, String)], long: Option<&[(&str, String)]>) -> String {
    let mut s = String::from(tag);
    s.push('=');
    let fields: Vec<String> = short
        .iter()
        .chain(long.unwrap_or(&[]))
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    s.push_str(&fields.join(","));
    s.push('\n');
    s
}

fn n(v: u64) -> String {
    v.to_string()
}

fn pool_long(k: &PoolCounters) -> Vec<(&'static str, String)> {
    let v = [
        k.pages,
        k.pages_max,
        k.objects,
        k.objects_max,
        0,
        0,
        k.good_puts,
        k.total_puts,
        k.dup_puts_flushed,
        k.dup_puts_replaced,
        k.no_mem_puts,
        k.found_gets,
        k.total_gets,
        k.found_flushes,
        k.total_flushes,
        k.found_obj_flushes,
        k.total_obj_flushes,
    ];
    POOL_LONG.iter().copied().zip(v.map(n)).collect()
}

/// Xen's two-letter pool type, normalised (tmemd reports `EP`, `ES`, `PP`).
fn pool_type(kind: &str) -> String {
    let mut k: String = kind
        .chars()
        .filter(|c| !c.is_whitespace())
        .take(2)
        .collect();
    while k.len() < 2 {
        k.push('?');
    }
    k
}

/// A client's private pools (the pages charged to it; shared pools have their own account).
pub fn private(c: &ClientStats) -> impl Iterator<Item = &tmem_store::PoolStats> {
    c.pools.iter().filter(|p| !p.kind.ends_with('S'))
}

fn client_lines(out: &mut String, c: &ClientStats, long: bool) {
    let short = [
        ("CI", n(c.domid.into())),
        ("ww", n(c.weight.into())),
        ("ca", n(c.cap_pages)),
        ("co", n(c.compress.into())),
        ("fr", n(c.frozen.into())),
        ("Tc", n(0)),
        ("Ge", n(c.succ_eph_gets)),
        ("Pp", n(c.pers_puts)),
        ("Gp", n(c.pers_gets)),
    ];
    let long_part = [
        ("Ec", n(c.eph_pages)),
        ("Em", n(c.eph_pages_max)),
        (
            "cp",
            n(private(c).map(|p| p.counters.compressed_pages).sum()),
        ),
        (
            "cb",
            n(private(c).map(|p| p.counters.compressed_bytes).sum()),
        ),
        ("cn", n(0)),
        ("cm", n(0)),
    ];
    out.push_str(&line("C", &short, long.then_some(&long_part[..])));
    for p in &c.pools {
        // Xen kept a uuid only for shared pools and printed 0 for private ones, whatever
        // the guest passed; tmemd stores what the guest passed, so zero it here.
        let uuid = if p.kind.ends_with('S') {
            p.uuid
        } else {
            [0, 0]
        };
        let short = [
            ("CI", n(c.domid.into())),
            ("PI", n(p.pool_id.into())),
            ("PT", pool_type(&p.kind)),
            ("U0", format!("{:x}", uuid[0])),
            ("U1", format!("{:x}", uuid[1])),
        ];
        let lp = pool_long(&p.counters);
        out.push_str(&line("P", &short, long.then_some(&lp[..])));
    }
}

/// Render Xen's `tmem-list` text. With `all`, the whole store (`G=`, `S=`, then `C=`/`P=` per
/// client, then `T`); otherwise only the `C=` and `P=` lines of the clients in `stats`.
pub fn render_xen(stats: &StoreStats, long: bool, all: bool) -> String {
    let mut out = String::new();
    if all {
        let g = &stats.global;
        let short = [
            ("Tt", n(g.total_ops)),
            ("Te", n(g.errored_ops)),
            ("Cf", n(0)),
            ("Af", n(0)),
            ("Pf", n(0)),
            ("Ta", n(g.frames_free)),
            ("Lm", n(0)),
            ("Et", n(g.evictions)),
            ("Ea", n(g.evict_attempts)),
            ("Rt", n(0)),
            ("Ra", n(0)),
            ("Rx", n(0)),
            ("Fp", n(0)),
        ];
        // Frames are pre-faulted and recycled, never returned, so the allocated count is
        // also its own maximum.
        let long_part = [
            ("Ec", n(g.eph_pages)),
            ("Em", n(g.eph_pages_max)),
            ("Oc", n(g.objects)),
            ("Om", n(g.objects_max)),
            ("Nc", n(0)),
            ("Nm", n(0)),
            ("Pc", n(g.pages)),
            ("Pm", n(g.pages_max)),
            ("Fc", n(g.frames_allocated)),
            ("Fm", n(g.frames_allocated)),
            ("Sc", n(0)),
            ("Sm", n(0)),
            ("Ep", n(g.good_eph_puts)),
            ("Gd", n(0)),
            ("Zt", n(0)),
            ("Gz", n(g.compression.compressed_bytes)),
        ];
        out.push_str(&line("G", &short, long.then_some(&long_part[..])));
        for (i, s) in stats.shared_pools.iter().enumerate() {
            let mut short = vec![
                ("SI", n(i as u64)),
                ("PT", pool_type(&s.kind)),
                ("U0", format!("{:x}", s.uuid[0])),
                ("U1", format!("{:x}", s.uuid[1])),
            ];
            short.extend(s.sharers.iter().map(|d| ("SC", n((*d).into()))));
            let lp = pool_long(&s.counters);
            out.push_str(&line("S", &short, long.then_some(&lp[..])));
        }
    }
    for c in &stats.clients {
        client_lines(&mut out, c, long);
    }
    if all {
        out.push_str("T\n");
    }
    out
}

/// One parsed `tmem-list` line: its record letter and its `tag:value` fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenRecord {
    pub record: String,
    pub fields: Vec<(String, String)>,
}

impl XenRecord {
    /// The tags, in order.
    pub fn tags(&self) -> Vec<&str> {
        self.fields.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// The first value of `tag`.
    pub fn get(&self, tag: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == tag)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `tag` as a decimal number.
    pub fn num(&self, tag: &str) -> Option<u64> {
        self.get(tag)?.parse().ok()
    }
}

/// Parse one line of `tmem-list` output, the way Xen's parsers read it: `X=` then
/// comma-separated `tt:value` pairs with two-letter tags; the perf line is a bare `T`.
pub fn parse_xen_line(line: &str) -> Result<XenRecord, String> {
    let line = line.trim_end_matches('\n');
    if line == "T" {
        return Ok(XenRecord {
            record: "T".into(),
            fields: Vec::new(),
        });
    }
    let (record, rest) = line
        .split_once('=')
        .ok_or_else(|| format!("no record tag in {line:?}"))?;
    if record.len() != 1 || !"GSCP".contains(record) {
        return Err(format!("unknown record {record:?} in {line:?}"));
    }
    let mut fields = Vec::new();
    for f in rest.split(',') {
        let (k, v) = f
            .split_once(':')
            .ok_or_else(|| format!("field {f:?} is not tag:value"))?;
        if k.len() != 2 || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("tag {k:?} is not two letters"));
        }
        if v.is_empty() {
            return Err(format!("tag {k} has no value"));
        }
        fields.push((k.to_string(), v.to_string()));
    }
    Ok(XenRecord {
        record: record.to_string(),
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::sample;

    /// Xen's format strings (X4.5 `tmem.c`, the `tmemc_list_*` functions, as quoted in the
    /// spec §4.7), kept here independently of the constants above so that a wrong or
    /// reordered tag in the renderer fails the test.
    const SPEC_G_SHORT: &str = "G=Tt:%lu,Te:%lu,Cf:%lu,Af:%lu,Pf:%lu,Ta:%lu,Lm:%lu,Et:%lu,Ea:%lu,Rt:%lu,Ra:%lu,Rx:%lu,Fp:%lu";
    const SPEC_G_LONG: &str = "Ec:%ld,Em:%ld,Oc:%d,Om:%d,Nc:%d,Nm:%d,Pc:%d,Pm:%d,Fc:%d,Fm:%d,Sc:%d,Sm:%d,Ep:%lu,Gd:%lu,Zt:%lu,Gz:%lu";
    const SPEC_C_SHORT: &str = "C=CI:%d,ww:%d,ca:%d,co:%d,fr:%d,Tc:%llu,Ge:%ld,Pp:%ld,Gp:%ld";
    const SPEC_C_LONG: &str = "Ec:%ld,Em:%ld,cp:%ld,cb:%lld,cn:%ld,cm:%ld";
    const SPEC_P_SHORT: &str = "P=CI:%d,PI:%d,PT:%c%c,U0:%llx,U1:%llx";
    const SPEC_S_SHORT: &str = "S=SI:%d,PT:%c%c,U0:%llx,U1:%llx";
    const SPEC_POOL_LONG: &str = "Pc:%d,Pm:%d,Oc:%ld,Om:%ld,Nc:%lu,Nm:%lu,ps:%lu,pt:%lu,pd:%lu,pr:%lu,px:%lu,gs:%lu,gt:%lu,fs:%lu,ft:%lu,os:%lu,ot:%lu";

    /// The tags of a format string, in order.
    fn spec_tags(fmt: &str) -> Vec<String> {
        let body = fmt.split_once('=').map_or(fmt, |(_, b)| b);
        body.split(',')
            .map(|f| f.split_once(':').expect("tag:fmt").0.to_string())
            .collect()
    }

    fn tags_of(short: &str, long: Option<&str>) -> Vec<String> {
        let mut t = spec_tags(short);
        if let Some(l) = long {
            t.extend(spec_tags(l));
        }
        t
    }

    fn parse_all(text: &str) -> Vec<XenRecord> {
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|l| parse_xen_line(l).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    #[test]
    fn private_pools_print_uuid_zero_as_xen_did() {
        let mut stats = sample();
        // A guest may send a filesystem uuid for a private pool; Xen printed 0 all the same.
        stats.clients[0].pools[0].uuid = [0x1234, 0x5678];
        let recs = parse_all(&render_xen(&stats, false, true));
        let pools: Vec<_> = recs.iter().filter(|r| r.record == "P").collect();
        assert_eq!(pools[0].get("PT"), Some("EP"));
        assert_eq!(
            (pools[0].get("U0"), pools[0].get("U1")),
            (Some("0"), Some("0"))
        );
        assert_eq!(pools[2].get("PT"), Some("ES"));
        assert_eq!(
            (pools[2].get("U0"), pools[2].get("U1")),
            (Some("2"), Some("abcdef"))
        );
    }

    #[test]
    fn constants_match_the_spec_format_strings() {
        assert_eq!(tags_of(SPEC_G_SHORT, None), G_SHORT);
        assert_eq!(tags_of(SPEC_G_LONG, None), G_LONG);
        assert_eq!(tags_of(SPEC_C_SHORT, None), C_SHORT);
        assert_eq!(tags_of(SPEC_C_LONG, None), C_LONG);
        assert_eq!(tags_of(SPEC_P_SHORT, None), P_SHORT);
        assert_eq!(tags_of(SPEC_S_SHORT, None), S_SHORT);
        assert_eq!(tags_of(SPEC_POOL_LONG, None), POOL_LONG);
    }

    #[test]
    fn long_output_parses_back_field_by_field() {
        let stats = sample();
        let text = render_xen(&stats, true, true);
        let recs = parse_all(&text);
        let kinds: Vec<&str> = recs.iter().map(|r| r.record.as_str()).collect();
        // Order: G, S per shared pool, C then its P lines per client, T.
        assert_eq!(kinds, ["G", "S", "C", "P", "P", "P", "C", "P", "T"]);

        let g = &recs[0];
        assert_eq!(g.tags(), tags_of(SPEC_G_SHORT, Some(SPEC_G_LONG)));
        let gs = &stats.global;
        for (tag, want) in [
            ("Tt", gs.total_ops),
            ("Te", gs.errored_ops),
            ("Ta", gs.frames_free),
            ("Et", gs.evictions),
            ("Ea", gs.evict_attempts),
            ("Ec", gs.eph_pages),
            ("Em", gs.eph_pages_max),
            ("Oc", gs.objects),
            ("Om", gs.objects_max),
            ("Pc", gs.pages),
            ("Pm", gs.pages_max),
            ("Fc", gs.frames_allocated),
            ("Ep", gs.good_eph_puts),
        ] {
            assert_eq!(g.num(tag), Some(want), "G {tag}");
        }
        for (rec, tag, _) in ZERO_TAGS.iter().filter(|z| z.0 == "G") {
            assert_eq!(g.num(tag), Some(0), "{rec} {tag} is documented as always 0");
        }

        let s = &recs[1];
        let mut want_s = tags_of(SPEC_S_SHORT, None);
        want_s.extend(["SC".to_string(), "SC".to_string()]);
        want_s.extend(spec_tags(SPEC_POOL_LONG));
        assert_eq!(s.tags(), want_s);
        assert_eq!(s.get("PT"), Some("ES"));
        assert_eq!(s.get("U0"), Some("2"));
        assert_eq!(s.get("U1"), Some("abcdef"));
        let sharers: Vec<&str> = s
            .fields
            .iter()
            .filter(|(k, _)| k == "SC")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(sharers, ["1", "7"]);

        let c = &recs[2];
        assert_eq!(c.tags(), tags_of(SPEC_C_SHORT, Some(SPEC_C_LONG)));
        let cs = &stats.clients[0];
        for (tag, want) in [
            ("CI", u64::from(cs.domid)),
            ("ww", cs.weight.into()),
            ("ca", cs.cap_pages),
            ("co", 0),
            ("fr", 0),
            ("Tc", 0),
            ("Ge", cs.succ_eph_gets),
            ("Pp", cs.pers_puts),
            ("Gp", cs.pers_gets),
            ("Ec", cs.eph_pages),
            ("Em", cs.eph_pages_max),
        ] {
            assert_eq!(c.num(tag), Some(want), "C {tag}");
        }
        let c7 = &recs[6];
        assert_eq!(c7.num("CI"), Some(7));
        assert_eq!(c7.num("ca"), Some(2560));
        assert_eq!(c7.num("co"), Some(1));
        assert_eq!(c7.num("fr"), Some(1));

        for (rec, pool) in recs[3..6].iter().zip(&cs.pools) {
            assert_eq!(rec.tags(), tags_of(SPEC_P_SHORT, Some(SPEC_POOL_LONG)));
            assert_eq!(rec.num("CI"), Some(1));
            assert_eq!(rec.num("PI"), Some(pool.pool_id.into()));
            assert_eq!(rec.get("PT"), Some(pool.kind.as_str()));
            let k = &pool.counters;
            for (tag, want) in [
                ("Pc", k.pages),
                ("Pm", k.pages_max),
                ("Oc", k.objects),
                ("Om", k.objects_max),
                ("Nc", 0),
                ("Nm", 0),
                ("ps", k.good_puts),
                ("pt", k.total_puts),
                ("pd", k.dup_puts_flushed),
                ("pr", k.dup_puts_replaced),
                ("px", k.no_mem_puts),
                ("gs", k.found_gets),
                ("gt", k.total_gets),
                ("fs", k.found_flushes),
                ("ft", k.total_flushes),
                ("os", k.found_obj_flushes),
                ("ot", k.total_obj_flushes),
            ] {
                assert_eq!(rec.num(tag), Some(want), "P{} {tag}", pool.pool_id);
            }
        }
        assert_eq!(recs[5].get("U1"), Some("abcdef"));
        assert!(recs[8].fields.is_empty());
    }

    #[test]
    fn short_output_stops_after_the_first_group() {
        let text = render_xen(&sample(), false, true);
        let recs = parse_all(&text);
        assert_eq!(recs[0].tags(), tags_of(SPEC_G_SHORT, None));
        assert_eq!(recs[1].tags()[..4], tags_of(SPEC_S_SHORT, None)[..]);
        assert_eq!(
            recs[1].tags().len(),
            6,
            "S short part ends after the sharers"
        );
        assert_eq!(recs[2].tags(), tags_of(SPEC_C_SHORT, None));
        assert_eq!(recs[3].tags(), tags_of(SPEC_P_SHORT, None));
        assert_eq!(text.lines().last(), Some("T"));
    }

    #[test]
    fn one_domain_prints_only_its_client_and_pools() {
        let mut stats = sample();
        stats.clients.remove(0);
        let text = render_xen(&stats, false, false);
        assert_eq!(
            text,
            "C=CI:7,ww:50,ca:2560,co:1,fr:1,Tc:0,Ge:0,Pp:0,Gp:0\n\
             P=CI:7,PI:0,PT:ES,U0:2,U1:abcdef\n"
        );
    }

    #[test]
    fn parser_rejects_malformed_lines() {
        assert!(parse_xen_line("X=Aa:1").is_err());
        assert!(parse_xen_line("G=Tt").is_err());
        assert!(parse_xen_line("G=Ttt:1").is_err());
        assert!(parse_xen_line("G=Tt:").is_err());
        assert_eq!(parse_xen_line("T").unwrap().record, "T");
    }
}
