//! `tmem top`: rates computed from two successive statistics snapshots, the busiest clients
//! and pools first. The frame is a pure function of the two snapshots; the loop around it
//! only fetches, waits and prints: plain frames one after another when stdout is not a
//! terminal, a full-screen view (crossterm) that quits on `q` when it is. Either way, when
//! tmemd stops or restarts it says so and waits for it.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tmem_control::{OkReply, Op, Target};
use tmem_store::{ClientStats, PoolCounters, StoreStats};

use crate::client::Client;
use crate::command::TopOptions;
use crate::error::CliError;
use crate::render::{columns, human_bytes, percent, PAGE_BYTES};

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
    // Two short header lines: one long one wrapped at 120 columns.
    let mut out = format!(
        "tmem top: {} clients, {} pools | {} ops/s, {} errors/s, {} evictions/s\n\
         memory: data {} of {} ({}) | {} freeable ({} pages)\n\n",
        cur.clients.len(),
        pools.len(),
        fmt_rate(rate(g.total_ops, pg.total_ops, secs)),
        fmt_rate(rate(g.errored_ops, pg.errored_ops, secs)),
        fmt_rate(rate(g.evictions, pg.evictions, secs)),
        human_bytes(g.data_bytes),
        human_bytes(g.mem_limit_bytes),
        percent(g.data_bytes, g.mem_limit_bytes),
        human_bytes(g.freeable_bytes),
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

/// What one refresh has to show.
#[derive(Debug, PartialEq)]
enum View {
    /// Rates over the last interval.
    Frame(String),
    /// tmemd cannot be reached (stopped, restarting): waiting for it.
    Waiting(String),
    /// The first snapshot after a (re)connect: rates need a second one.
    Collecting,
}

/// The refresh loop's state: the last snapshot, forgotten when tmemd goes away (a restarted
/// tmemd counts from zero again).
#[derive(Debug, Default)]
struct Refresher {
    prev: Option<(StoreStats, Instant)>,
}

impl Refresher {
    fn step(&mut self, client: &Client, rows: usize) -> Result<View, CliError> {
        match snapshot(client) {
            Ok(cur) => {
                let now = Instant::now();
                let view = match self.prev.take() {
                    Some((prev, at)) => View::Frame(render_top(&prev, &cur, now - at, rows)),
                    None => View::Collecting,
                };
                self.prev = Some((cur, now));
                Ok(view)
            }
            Err(e @ (CliError::NotRunning { .. } | CliError::Unreachable { .. })) => {
                self.prev = None;
                Ok(View::Waiting(format!(
                    "waiting for tmemd to come back: {}",
                    e.one_line()
                )))
            }
            Err(e) => Err(e),
        }
    }
}

/// Run the live view until `q` (on a terminal), an interrupt, or `iterations` frames.
/// When tmemd stops or restarts, wait for it and go on.
pub fn run_top(client: &Client, opts: &TopOptions, out: &mut dyn Write) -> Result<(), CliError> {
    if !opts.plain && std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        return screen::run(client, opts);
    }
    let mut r = Refresher::default();
    let mut shown = 0u64;
    let mut waiting = false;
    loop {
        match r.step(client, opts.rows)? {
            View::Frame(frame) => {
                waiting = false;
                crate::write_out(out, &format!("{frame}\n"))?;
                shown += 1;
                if opts.iterations.is_some_and(|n| shown >= n) {
                    return Ok(());
                }
            }
            View::Waiting(why) => {
                // Once per outage, not every interval.
                if !waiting {
                    crate::write_out(out, &format!("tmem top: {why}\n"))?;
                }
                waiting = true;
            }
            View::Collecting => {}
        }
        std::thread::sleep(opts.interval);
    }
}

/// The full-screen view on a terminal (crossterm): alternate screen, raw keys, every line
/// cut to the terminal's width so nothing wraps.
mod screen {
    use std::io::Write;
    use std::time::Instant;

    use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
    use crossterm::{cursor, queue, style, terminal};

    use super::{Refresher, View};
    use crate::client::Client;
    use crate::command::TopOptions;
    use crate::error::CliError;

    /// Puts the terminal back however the view ends (error included).
    struct Restore;

    impl Drop for Restore {
        fn drop(&mut self) {
            let mut out = std::io::stdout();
            let _ = crossterm::execute!(out, cursor::Show, terminal::LeaveAlternateScreen);
            let _ = terminal::disable_raw_mode();
        }
    }

    fn io(what: &'static str) -> impl Fn(std::io::Error) -> CliError {
        move |source| CliError::Output {
            what: what.into(),
            source,
        }
    }

    pub(super) fn run(client: &Client, opts: &TopOptions) -> Result<(), CliError> {
        terminal::enable_raw_mode().map_err(io("cannot set up the terminal"))?;
        let _restore = Restore;
        crossterm::execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )
        .map_err(io("cannot set up the terminal"))?;
        let mut r = Refresher::default();
        let mut text = String::from("collecting statistics ...");
        let mut shown = 0u64;
        loop {
            match r.step(client, opts.rows)? {
                View::Frame(frame) => {
                    text = frame;
                    shown += 1;
                }
                View::Waiting(why) => text = why,
                View::Collecting => {}
            }
            draw(&text, opts)?;
            if opts.iterations.is_some_and(|n| shown >= n) {
                return Ok(());
            }
            // Sleep until the next refresh, answering keys and resizes meanwhile.
            let until = Instant::now() + opts.interval;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if !event::poll(left).map_err(io("cannot read the terminal"))? {
                    break;
                }
                match event::read().map_err(io("cannot read the terminal"))? {
                    Event::Key(k) if quits(&k) => return Ok(()),
                    Event::Resize(..) => draw(&text, opts)?,
                    _ => {}
                }
            }
        }
    }

    /// `q`, Esc and Ctrl-C quit (raw mode turns Ctrl-C into a key).
    fn quits(k: &KeyEvent) -> bool {
        k.kind != KeyEventKind::Release
            && match k.code {
                KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
                KeyCode::Char('c') => k.modifiers.contains(KeyModifiers::CONTROL),
                _ => false,
            }
    }

    fn draw(text: &str, opts: &TopOptions) -> Result<(), CliError> {
        // A terminal that reports no size (0) is not cut.
        let (cols, rows) = match terminal::size() {
            Ok((c, r)) => (
                if c == 0 { usize::MAX } else { usize::from(c) },
                if r == 0 { usize::MAX } else { usize::from(r) },
            ),
            Err(_) => (usize::MAX, usize::MAX),
        };
        let footer = format!("(every {:.1}s; q to quit)", opts.interval.as_secs_f64());
        let mut out = std::io::stdout().lock();
        let err = io("cannot write to the terminal");
        queue!(
            out,
            terminal::Clear(terminal::ClearType::All),
            cursor::MoveTo(0, 0)
        )
        .map_err(&err)?;
        let body: Vec<&str> = text.lines().collect();
        let room = rows.saturating_sub(2);
        for line in body.iter().take(room).copied().chain(["", footer.as_str()]) {
            let cut: String = line.chars().take(cols).collect();
            queue!(out, style::Print(cut), cursor::MoveToNextLine(1)).map_err(&err)?;
        }
        out.flush().map_err(&err)
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
        // No line wraps at 120 columns, headers included.
        assert!(lines.iter().all(|l| l.len() <= 120), "{f}");
        assert_eq!(
            lines[4],
            "1      web   up          1500   5.9 MiB  100     50.0    25.0    50.0%  0"
        );
        // The idle client comes second.
        assert!(lines[5].starts_with("7      db    det,frozen"), "{f}");
        // Busiest pool first.
        assert_eq!(
            lines[8],
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
        assert!(lines[4].contains("3500"), "{f}");
        // One client row and one pool row only.
        assert_eq!(lines.len(), 3 + 2 + 1 + 2);
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
