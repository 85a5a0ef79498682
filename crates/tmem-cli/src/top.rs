//! `tmem top`: rates computed from two successive statistics snapshots, the busiest clients
//! and pools first. The frame is a pure function of the two snapshots; the loop around it
//! only fetches, sleeps and prints (clearing the screen first when stdout is a terminal).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tmem_control::{OkReply, Op, Target};
use tmem_store::{ClientStats, PoolCounters, StoreStats};

use crate::client::Client;
use crate::command::TopOptions;
use crate::error::CliError;
use crate::render::{columns, human_bytes, percent, PAGE_BYTES};

/// Clear the screen and home the cursor.
const CLEAR: &str = "\x1b[H\x1b[2J";

type ClientKey = (tmem_store::Identity, u64);

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs
}

fn fmt_rate(r: f64) -> String {
    if r >= 100.0 || r == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

#[derive(Debug)]
struct ClientRow {
    domid: tmem_store::Identity,
    name: String,
    state: &'static str,
    pages: u64,
    puts: f64,
    gets: f64,
    hits: f64,
    flushes: f64,
}

#[derive(Debug)]
struct PoolRow {
    domid: tmem_store::Identity,
    pool: u32,
    kind: String,
    pages: u64,
    puts: f64,
    gets: f64,
    hits: f64,
    flushes: f64,
}

fn client_state(c: &ClientStats) -> &'static str {
    match (c.attached, c.frozen) {
        (true, false) => "up",
        (true, true) => "frozen",
        (false, false) => "detached",
        (false, true) => "det,frozen",
    }
}

/// One frame of `tmem top`, from the previous snapshot, the current one and the time between.
pub fn render_top(prev: &StoreStats, cur: &StoreStats, elapsed: Duration, rows: usize) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let before: HashMap<ClientKey, &ClientStats> = prev
        .clients
        .iter()
        .map(|c| ((c.identity(), c.instance), c))
        .collect();
    let zero_client = ClientStats::default();
    let zero_pool = PoolCounters::default();

    let mut clients = Vec::new();
    let mut pools = Vec::new();
    for c in &cur.clients {
        let p = before
            .get(&(c.identity(), c.instance))
            .copied()
            .unwrap_or(&zero_client);
        clients.push(ClientRow {
            domid: c.identity(),
            name: c.name.clone(),
            state: client_state(c),
            pages: c.pages,
            puts: rate(c.puts, p.puts, secs),
            gets: rate(
                c.succ_gets + c.failed_gets,
                p.succ_gets + p.failed_gets,
                secs,
            ),
            hits: rate(c.succ_gets, p.succ_gets, secs),
            flushes: rate(c.invalidates, p.invalidates, secs),
        });
        for pool in &c.pools {
            let k = &pool.counters;
            let pk = p
                .pools
                .iter()
                .find(|q| q.pool_id == pool.pool_id && q.kind == pool.kind)
                .map(|q| &q.counters)
                .unwrap_or(&zero_pool);
            pools.push(PoolRow {
                domid: c.identity(),
                pool: pool.pool_id,
                kind: pool.kind.clone(),
                pages: k.pages,
                puts: rate(k.total_puts, pk.total_puts, secs),
                gets: rate(k.total_gets, pk.total_gets, secs),
                hits: rate(k.found_gets, pk.found_gets, secs),
                flushes: rate(
                    k.total_flushes + k.total_obj_flushes,
                    pk.total_flushes + pk.total_obj_flushes,
                    secs,
                ),
            });
        }
    }
    let busy = |puts: f64, gets: f64, flushes: f64| puts + gets + flushes;
    clients.sort_by(|a, b| {
        busy(b.puts, b.gets, b.flushes)
            .total_cmp(&busy(a.puts, a.gets, a.flushes))
            .then(b.pages.cmp(&a.pages))
            .then(a.domid.cmp(&b.domid))
    });
    pools.sort_by(|a, b| {
        busy(b.puts, b.gets, b.flushes)
            .total_cmp(&busy(a.puts, a.gets, a.flushes))
            .then(b.pages.cmp(&a.pages))
            .then((a.domid, a.pool).cmp(&(b.domid, b.pool)))
    });

    let g = &cur.global;
    let pg = &prev.global;
    let mut out = format!(
        "tmem top: {} clients, {} pools | {} ops/s, {} errors/s, {} evictions/s | data {} of {} ({}) | {} pages freeable\n\n",
        cur.clients.len(),
        pools.len(),
        fmt_rate(rate(g.total_ops, pg.total_ops, secs)),
        fmt_rate(rate(g.errored_ops, pg.errored_ops, secs)),
        fmt_rate(rate(g.evictions, pg.evictions, secs)),
        human_bytes(g.data_bytes),
        human_bytes(g.mem_limit_bytes),
        percent(g.data_bytes, g.mem_limit_bytes),
        g.freeable_pages,
    );
    let mut t = vec![[
        "DOMID", "NAME", "STATE", "PAGES", "MEMORY", "PUTS/s", "GETS/s", "HITS/s", "HIT%",
        "FLUSH/s",
    ]
    .map(String::from)
    .to_vec()];
    for c in clients.iter().take(rows) {
        t.push(vec![
            c.domid.to_string(),
            if c.name.is_empty() {
                "-".into()
            } else {
                c.name.clone()
            },
            c.state.into(),
            c.pages.to_string(),
            human_bytes(c.pages * PAGE_BYTES),
            fmt_rate(c.puts),
            fmt_rate(c.gets),
            fmt_rate(c.hits),
            percent((c.hits * 1000.0) as u64, (c.gets * 1000.0) as u64),
            fmt_rate(c.flushes),
        ]);
    }
    out.push_str(&columns(&t));
    out.push('\n');
    let mut t = vec![[
        "DOMID", "POOL", "KIND", "PAGES", "PUTS/s", "GETS/s", "HITS/s", "HIT%", "FLUSH/s",
    ]
    .map(String::from)
    .to_vec()];
    for p in pools.iter().take(rows) {
        t.push(vec![
            p.domid.to_string(),
            p.pool.to_string(),
            p.kind.clone(),
            p.pages.to_string(),
            fmt_rate(p.puts),
            fmt_rate(p.gets),
            fmt_rate(p.hits),
            percent((p.hits * 1000.0) as u64, (p.gets * 1000.0) as u64),
            fmt_rate(p.flushes),
        ]);
    }
    out.push_str(&columns(&t));
    out
}

fn snapshot(client: &Client) -> Result<StoreStats, CliError> {
    match client.request(&Op::List {
        target: Target::All,
    })? {
        OkReply::Stats(s) => Ok(*s),
        other => Err(CliError::UnexpectedReply {
            op: "list",
            reply: format!("{other:?}"),
        }),
    }
}

/// Run the live view until interrupted or `iterations` frames have been shown.
pub fn run_top(client: &Client, opts: &TopOptions, out: &mut dyn Write) -> Result<(), CliError> {
    let tty = !opts.plain && std::io::stdout().is_terminal();
    let mut prev = snapshot(client)?;
    let mut prev_at = Instant::now();
    let mut shown = 0u64;
    loop {
        std::thread::sleep(opts.interval);
        let cur = snapshot(client)?;
        let now = Instant::now();
        let frame = render_top(&prev, &cur, now - prev_at, opts.rows);
        let text = if tty {
            format!(
                "{CLEAR}{frame}\n(every {:.1}s; Ctrl-C to quit)\n",
                opts.interval.as_secs_f64()
            )
        } else {
            format!("{frame}\n")
        };
        crate::write_out(out, &text)?;
        shown += 1;
        if opts.iterations.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        prev = cur;
        prev_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::sample;

    #[test]
    fn rates_come_from_the_difference_between_snapshots() {
        let prev = sample();
        let mut cur = sample();
        // Over 2 s, client 1 did 200 puts and 100 gets of which 50 hit; pool 0 got them.
        cur.clients[0].puts += 200;
        cur.clients[0].succ_gets += 50;
        cur.clients[0].failed_gets += 50;
        cur.clients[0].pools[0].counters.total_puts += 200;
        cur.clients[0].pools[0].counters.total_gets += 100;
        cur.clients[0].pools[0].counters.found_gets += 50;
        cur.global.total_ops += 300;
        let f = render_top(&prev, &cur, Duration::from_secs(2), 10);
        let lines: Vec<&str> = f.lines().collect();
        assert!(lines[0].contains("150 ops/s"), "{f}");
        assert!(lines[0].contains("2 clients, 4 pools"), "{f}");
        assert_eq!(
            lines[3],
            "1      web   up          1500   5.9 MiB  100     50.0    25.0    50.0%  0"
        );
        // The idle client comes second.
        assert!(lines[4].starts_with("7      db    det,frozen"), "{f}");
        // Busiest pool first.
        assert_eq!(
            lines[7],
            "1      0     EP    1000   100     50.0    25.0    50.0%  0"
        );
    }

    #[test]
    fn new_clients_count_from_zero_and_rows_are_limited() {
        let prev = StoreStats::default();
        let cur = sample();
        let f = render_top(&prev, &cur, Duration::from_secs(1), 1);
        let lines: Vec<&str> = f.lines().collect();
        // web: 3500 puts in 1 s.
        assert!(lines[3].contains("3500"), "{f}");
        // One client row and one pool row only.
        assert_eq!(lines.len(), 2 + 2 + 1 + 2);
    }

    #[test]
    fn counters_that_went_backwards_do_not_underflow() {
        let prev = sample();
        let mut cur = sample();
        cur.clients[0].puts = 0;
        cur.global.total_ops = 0;
        let f = render_top(&prev, &cur, Duration::from_secs(1), 10);
        assert!(f.contains(" 0 ops/s"), "{f}");
    }
}
