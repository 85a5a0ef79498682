//! The allocator against a byte model: random alloc / free / compact sequences over a fixed
//! set of frames whose bytes are simulated. After every step each live object's bytes are
//! read back through its span and compared with what was written; spans never overlap and
//! lie only in frames the allocator holds; frames given back are scribbled over, so an
//! allocator still pointing into one is caught; totals match a count.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use tmem_zalloc::{AllocError, Handle, Span, ZAlloc, FRAME};

#[derive(Debug, Clone)]
enum Op {
    Alloc { len: usize, seed: u8 },
    Free(usize),
    Compact(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Lengths like compressed pages, plus the extremes.
        5 => (1usize..=FRAME, any::<u8>()).prop_map(|(len, seed)| Op::Alloc { len, seed }),
        3 => (300usize..=2600, any::<u8>()).prop_map(|(len, seed)| Op::Alloc { len, seed }),
        1 => prop_oneof![Just(1usize), Just(FRAME), Just(FRAME - 1), Just(32), Just(33)]
            .prop_map(|len| Op::Alloc { len, seed: 7 }),
        5 => any::<usize>().prop_map(Op::Free),
        1 => (0usize..50).prop_map(Op::Compact),
    ]
}

struct Mem {
    bytes: Vec<[u8; FRAME]>,
    free: Vec<u32>,
    held: BTreeSet<u32>,
}

impl Mem {
    fn give_back(&mut self, f: u32) {
        assert!(
            self.held.remove(&f),
            "frame {f} given back twice or never given"
        );
        self.bytes[f as usize] = [0xEE; FRAME];
        self.free.push(f);
    }
    fn write(&mut self, s: &Span, data: &[u8]) {
        assert_eq!(s.len(), data.len());
        let mut at = 0;
        for p in s.pieces() {
            assert!(
                self.held.contains(&p.frame),
                "span in a frame not held: {p:?}"
            );
            let (o, l) = (p.off as usize, p.len as usize);
            assert!(o + l <= FRAME, "piece past its frame: {p:?}");
            self.bytes[p.frame as usize][o..o + l].copy_from_slice(&data[at..at + l]);
            at += l;
        }
    }
    fn read(&self, s: &Span) -> Vec<u8> {
        let mut v = Vec::with_capacity(s.len());
        for p in s.pieces() {
            let (o, l) = (p.off as usize, p.len as usize);
            v.extend_from_slice(&self.bytes[p.frame as usize][o..o + l]);
        }
        v
    }
}

fn content(len: usize, seed: u8, serial: u32) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(serial * 7 + seed as u32) as u8
        })
        .collect()
}

fn check(z: &ZAlloc, mem: &Mem, model: &BTreeMap<Handle, Vec<u8>>) {
    z.check().unwrap();
    let st = z.stats();
    assert_eq!(st.objects, model.len() as u64);
    assert_eq!(
        st.object_bytes,
        model.values().map(|v| v.len() as u64).sum::<u64>()
    );
    assert_eq!(st.frames, mem.held.len() as u64);
    let mut used: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    for (&h, want) in model {
        let s = z.span(h).expect("live handle has a span");
        assert_eq!(z.len_of(h), Some(want.len()));
        assert_eq!(&mem.read(&s), want, "handle {h}: bytes differ");
        for p in s.pieces() {
            assert!(mem.held.contains(&p.frame));
            used.entry(p.frame)
                .or_default()
                .push((p.off, p.off + p.len));
        }
    }
    for (f, mut v) in used {
        v.sort();
        for w in v.windows(2) {
            assert!(w[0].1 <= w[1].0, "frame {f}: pieces {w:?} overlap");
        }
    }
}

fn run(ops: Vec<Op>, nframes: u32) {
    let mut z = ZAlloc::new();
    let mut mem = Mem {
        bytes: vec![[0xEE; FRAME]; nframes as usize],
        free: (0..nframes).rev().collect(),
        held: BTreeSet::new(),
    };
    let mut model: BTreeMap<Handle, Vec<u8>> = BTreeMap::new();
    let mut serial = 0u32;
    for op in ops {
        match op {
            Op::Alloc { len, seed } => {
                serial += 1;
                let data = content(len, seed, serial);
                let need = z.frames_needed(len).unwrap();
                let r = z.alloc(len, |n| {
                    if mem.free.len() < n {
                        return None;
                    }
                    let v: Vec<u32> = (0..n).map(|_| mem.free.pop().unwrap()).collect();
                    mem.held.extend(v.iter().copied());
                    Some(v)
                });
                match r {
                    Ok(h) => {
                        assert!(!model.contains_key(&h), "handle {h} handed out twice");
                        mem.write(&z.span(h).unwrap(), &data);
                        model.insert(h, data);
                    }
                    Err(AllocError::NoFrames) => assert!(need > 0 && mem.free.len() < need),
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Free(i) => {
                if model.is_empty() {
                    // A handle never allocated (or already freed) is ignored.
                    assert_eq!(z.free(i as Handle), None);
                    continue;
                }
                let h = *model.keys().nth(i % model.len()).unwrap();
                let span = z.span(h).unwrap();
                model.remove(&h);
                // The caller scribbles over what it frees: a neighbour sharing bytes breaks.
                mem.write(&span, &vec![0xAB; span.len()]);
                if let Some(fs) = z.free(h) {
                    for &f in fs.as_slice() {
                        mem.give_back(f);
                    }
                }
                assert_eq!(z.free(h), None, "double free must be ignored");
                assert_eq!(z.span(h), None);
            }
            Op::Compact(budget) => {
                let c = z.compact(budget);
                assert!(c.moves.len() <= budget);
                // Copy every move first (destinations are free slots: any order works),
                // then scribble the sources, then give the freed frames back.
                let copies: Vec<Vec<u8>> = c.moves.iter().map(|m| mem.read(&m.from)).collect();
                for (m, data) in c.moves.iter().zip(&copies) {
                    assert_eq!(z.span(m.handle), Some(m.to));
                    mem.write(&m.to, data);
                }
                for m in &c.moves {
                    // Only scribble a source that no destination reuses.
                    let reused = c.moves.iter().any(|o| {
                        o.to.pieces().iter().any(|q| {
                            m.from.pieces().iter().any(|p| {
                                p.frame == q.frame && p.off < q.off + q.len && q.off < p.off + p.len
                            })
                        })
                    });
                    assert!(!reused, "a move's destination overlaps another's source");
                    mem.write(&m.from, &vec![0xCD; m.from.len()]);
                }
                for &f in &c.freed {
                    mem.give_back(f);
                }
            }
        }
        check(&z, &mem, &model);
    }
    // Free everything: every frame comes back.
    let hs: Vec<Handle> = model.keys().copied().collect();
    for h in hs {
        if let Some(fs) = z.free(h) {
            for &f in fs.as_slice() {
                mem.give_back(f);
            }
        }
    }
    assert_eq!(z.stats().frames, 0);
    assert_eq!(mem.free.len() as u32, nframes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn alloc_free_compact_against_a_byte_model(
        ops in proptest::collection::vec(op(), 1..300),
        nframes in prop_oneof![Just(4u32), Just(16), Just(64), Just(400)],
    ) {
        run(ops, nframes);
    }
}

#[test]
fn compaction_after_random_frees_gives_back_what_it_can() {
    // A long deterministic run: fill, free two of three, compact fully, check the frames
    // held are within one run per class of the minimum.
    let mut z = ZAlloc::new();
    let mut next = 0u32;
    let mut hs = Vec::new();
    let mut x = 12345u64;
    for _ in 0..5000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 200 + (x % 2800) as usize;
        hs.push(
            z.alloc(len, |n| {
                let v = (next..next + n as u32).collect();
                next += n as u32;
                Some(v)
            })
            .unwrap(),
        );
    }
    for (i, &h) in hs.iter().enumerate() {
        if i % 3 != 0 {
            z.free(h);
        }
    }
    let before = z.stats();
    let reclaimable = z.reclaimable_frames();
    let c = z.compact(usize::MAX);
    z.check().unwrap();
    let after = z.stats();
    assert_eq!(before.frames - after.frames, c.freed.len() as u64);
    assert_eq!(c.freed.len() as u64, reclaimable);
    let classes = z.classes().count() as u64;
    let ideal = after.slot_bytes.div_ceil(FRAME as u64);
    assert!(
        after.frames <= ideal + classes * tmem_zalloc::MAX_RUN_FRAMES as u64,
        "{after:?}, ideal {ideal}"
    );
    eprintln!(
        "frames before compaction {}, after {}, object bytes / held bytes {:.3}",
        before.frames,
        after.frames,
        after.object_bytes as f64 / after.held_bytes() as f64
    );
}
