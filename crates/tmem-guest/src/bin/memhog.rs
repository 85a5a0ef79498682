//! memhog: allocate more memory than the machine has, fill every page with content that
//! says which page and which pass wrote it, then read and verify everything back in several
//! passes — so that a guest swaps, and any byte its swap device gets wrong is caught.
//!
//! One JSON object per line on stdout: `start`, one per pass (pages/s), one per mismatch
//! (the first few of each pass), and `summary`. Exit status 0 when every page verified, 1 on
//! any mismatch, 2 on a usage error. Uses std only, so it builds as a static binary
//! (`--target x86_64-unknown-linux-musl`, or `-C target-feature=+crt-static`) to copy into a
//! test guest.

use std::process::ExitCode;
use std::time::Instant;

const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;
/// Mismatches printed per pass (all are counted).
const SHOWN: u64 = 8;

const USAGE: &str = "usage: memhog --mib N [--passes P] [--rewrite] [--order seq|random] [--seed S] [--random-bytes B]
  --mib N        memory to allocate and fill, in MiB (more than the guest's RAM to make it swap)
  --passes P     verify passes after the fill (default 3)
  --rewrite      every verify pass also rewrites each page with new content (swap writes too)
  --order O      page order of every pass: seq (default) or random (a fixed permutation)
  --seed S       content seed (default 1)
  --random-bytes B  pseudo-random bytes at the start of each page, a multiple of 8 in 8..=4096
                 (default 4096: incompressible); the rest of the page repeats its first word,
                 so e.g. 512 compresses about 7:1 with lz4 (for zram or zswap comparisons)";

struct Args {
    mib: u64,
    passes: u32,
    rewrite: bool,
    random: bool,
    seed: u64,
    /// Words at the start of each page that are pseudo-random (the rest repeat word 0).
    random_words: usize,
    /// Test hook: change one word of this page after the fill (the verify must catch it).
    corrupt_page: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        mib: 0,
        passes: 3,
        rewrite: false,
        random: false,
        seed: 1,
        random_words: WORDS,
        corrupt_page: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .and_then(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name} {v}: not a number"))
                })
        };
        match flag.as_str() {
            "--mib" => a.mib = value("--mib")?,
            "--passes" => {
                a.passes = u32::try_from(value("--passes")?).map_err(|_| "--passes: too many")?
            }
            "--seed" => a.seed = value("--seed")?,
            "--corrupt-page" => a.corrupt_page = Some(value("--corrupt-page")?),
            "--random-bytes" => {
                let b = value("--random-bytes")?;
                if b == 0 || b % 8 != 0 || b > PAGE as u64 {
                    return Err(format!(
                        "--random-bytes {b}: use a multiple of 8 from 8 to {PAGE}"
                    ));
                }
                a.random_words = (b / 8) as usize;
            }
            "--rewrite" => a.rewrite = true,
            "--order" => match it.next().as_deref() {
                Some("seq") => a.random = false,
                Some("random") => a.random = true,
                other => return Err(format!("--order {other:?}: use seq or random")),
            },
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.mib == 0 {
        return Err("--mib is required and must be at least 1".into());
    }
    if a.mib > (usize::MAX / (1 << 20)) as u64 {
        return Err(format!("--mib {}: too large for this machine", a.mib));
    }
    Ok(a)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Word `w` of page `page` written by generation `gen`: unique per page, position and
/// generation, never zero-filled, cheap enough not to hide the swap device's speed.
#[inline]
fn word(seed: u64, gen: u64, page: u64, w: usize) -> u64 {
    let base = splitmix(seed ^ gen.rotate_left(48) ^ page.wrapping_mul(0x1000_0000_01b3));
    base.wrapping_add((w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// What a page holds: `word` for the first `random_words` words, then word 0 repeated
/// (still unique per page and generation, so a misplaced page is caught).
#[derive(Clone, Copy)]
struct Content {
    seed: u64,
    random_words: usize,
}

impl Content {
    #[inline]
    fn at(self, gen: u64, page: u64, w: usize) -> u64 {
        let w = if w < self.random_words { w } else { 0 };
        word(self.seed, gen, page, w)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The pages in pass order: sequential, or a fixed stride permutation that jumps around.
struct Order {
    pages: u64,
    stride: u64,
}

impl Order {
    fn new(pages: u64, random: bool) -> Order {
        let mut stride = 1;
        if random && pages > 2 {
            stride = 0x9e37_79b1 % pages;
            while stride < 2 || gcd(stride, pages) != 1 {
                stride = (stride + 1) % pages;
            }
        }
        Order { pages, stride }
    }

    fn page(&self, i: u64) -> u64 {
        ((i as u128 * self.stride as u128) % self.pages as u128) as u64
    }
}

fn report_pass(pass: u32, op: &str, pages: u64, start: Instant, errors: u64) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"pass\":{pass},\"op\":\"{op}\",\"pages\":{pages},\"seconds\":{secs:.3},\"pages_per_sec\":{:.0},\"errors\":{errors}}}",
        pages as f64 / secs.max(1e-9)
    );
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("memhog: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let pages = a.mib * 256;
    let words = pages as usize * WORDS;
    let order = Order::new(pages, a.random);
    let content = Content {
        seed: a.seed,
        random_words: a.random_words,
    };
    println!(
        "{{\"start\":{{\"mib\":{},\"pages\":{pages},\"passes\":{},\"rewrite\":{},\"order\":\"{}\",\"random_bytes\":{}}}}}",
        a.mib,
        a.passes,
        a.rewrite,
        if a.random { "random" } else { "seq" },
        a.random_words * 8
    );
    let t0 = Instant::now();
    let mut mem: Vec<u64> = Vec::new();
    if mem.try_reserve_exact(words).is_err() {
        println!("{{\"error\":\"allocation\",\"mib\":{}}}", a.mib);
        return ExitCode::from(1);
    }
    // Pass 0 fills in address order (the vector grows); later passes follow `order`.
    let start = Instant::now();
    mem.extend((0..pages).flat_map(|p| (0..WORDS).map(move |w| content.at(0, p, w))));
    report_pass(0, "fill", pages, start, 0);
    if let Some(p) = a.corrupt_page.filter(|&p| p < pages) {
        mem[p as usize * WORDS + 17] ^= 1 << 40;
    }
    let mut gen = vec![0u8; if a.rewrite { pages as usize } else { 0 }];
    let mut total_errors = 0u64;
    for pass in 1..=a.passes {
        let start = Instant::now();
        let mut errors = 0u64;
        for i in 0..pages {
            let p = order.page(i);
            let g = if a.rewrite {
                u64::from(gen[p as usize])
            } else {
                0
            };
            let page = &mut mem[p as usize * WORDS..(p as usize + 1) * WORDS];
            if let Some((w, &found)) = page
                .iter()
                .enumerate()
                .find(|&(w, &v)| v != content.at(g, p, w))
            {
                errors += 1;
                if errors <= SHOWN {
                    println!(
                        "{{\"error\":\"mismatch\",\"pass\":{pass},\"page\":{p},\"offset\":{},\"expected\":\"{:#018x}\",\"found\":\"{found:#018x}\"}}",
                        w * 8,
                        content.at(g, p, w)
                    );
                }
            }
            if a.rewrite {
                let ng = g as u8 ^ 1;
                gen[p as usize] = ng;
                for (w, v) in page.iter_mut().enumerate() {
                    *v = content.at(u64::from(ng), p, w);
                }
            }
        }
        total_errors += errors;
        let op = if a.rewrite {
            "verify+rewrite"
        } else {
            "verify"
        };
        report_pass(pass, op, pages, start, errors);
    }
    println!(
        "{{\"summary\":{{\"mib\":{},\"pages\":{pages},\"passes\":{},\"errors\":{total_errors},\"seconds\":{:.3}}}}}",
        a.mib,
        a.passes,
        t0.elapsed().as_secs_f64()
    );
    std::hint::black_box(&mem);
    if total_errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_order_visits_every_page_once() {
        for pages in [1u64, 2, 3, 256, 1000, 4096 * 3] {
            let o = Order::new(pages, true);
            let mut seen = vec![false; pages as usize];
            for i in 0..pages {
                let p = o.page(i) as usize;
                assert!(!seen[p], "{pages}: page {p} twice");
                seen[p] = true;
            }
        }
    }

    #[test]
    fn content_depends_on_page_word_and_generation() {
        let a = word(1, 0, 5, 3);
        assert_ne!(a, word(1, 0, 6, 3));
        assert_ne!(a, word(1, 0, 5, 4));
        assert_ne!(a, word(1, 1, 5, 3));
        assert_ne!(a, word(2, 0, 5, 3));
    }

    #[test]
    fn compressible_pages_repeat_their_first_word() {
        let c = Content {
            seed: 3,
            random_words: 64,
        };
        assert_eq!(c.at(0, 9, 63), word(3, 0, 9, 63));
        for w in 64..WORDS {
            assert_eq!(c.at(0, 9, w), word(3, 0, 9, 0));
        }
        assert_ne!(c.at(0, 9, 100), c.at(0, 10, 100));
        assert_ne!(c.at(0, 9, 100), c.at(1, 9, 100));
    }
}
