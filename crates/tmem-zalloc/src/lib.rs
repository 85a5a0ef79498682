//! A size-class allocator for compressed pages inside page-memory frames (zsmalloc's idea).
//!
//! It is bookkeeping only: it never sees a byte of page data, does no I/O and has no
//! `unsafe`. The caller owns the frames (4 KiB each, named by `u32`) and the bytes in them;
//! the allocator says where an object lives ([`Span`]: one or two pieces of frames), which
//! frames it needs ([`ZAlloc::alloc`] asks for them) and which it gives back ([`ZAlloc::free`],
//! [`ZAlloc::compact`]).
//!
//! # Design
//! * **Size classes** every [`STEP`] (32) bytes up to [`FRAME`]. A class's *run* is 1 to
//!   [`MAX_RUN_FRAMES`] (8) frames seen as one byte range, cut into equal slots; each class
//!   takes the shortest run whose unused tail is at most 3% of it (else the run that wastes
//!   least). Classes whose runs have the same length and slot count are merged into the
//!   biggest of them (the memory per object, run bytes / slots, is the same), as zsmalloc
//!   does.
//! * **Objects may span a frame boundary** inside their run (at most two pieces, since no
//!   object is longer than a frame). Why: lz4 output for real pages is mostly 1.2–3 KiB, and
//!   with one-frame runs only 2, 3, ... slots fit a frame, so a 2.1 KiB object would take a
//!   whole frame (zero gain) and a 1.4 KiB one 2 KiB (30% lost). With runs of up to eight
//!   frames an object takes at most a few percent more than its length (the test
//!   `every_length_has_a_class_that_fits_it_and_wastes_little` bounds it). The price is
//!   that a reader may copy from two frames, and a class's first object takes a whole run.
//! * **Handles are stable**: a [`Handle`] names the object, not its place, so compaction moves
//!   objects without the caller's index changing; the caller asks for the [`Span`] under the
//!   same lock it holds when calling [`ZAlloc::compact`].
//! * **Compaction** per class: runs that are not full, emptiest first, move their objects into
//!   the fullest ones until the two meet; every run emptied gives its frames back. A move's
//!   destination is a free slot of a run that is never a source in the same pass, so the
//!   caller may copy the moves in any order, and must copy them all before reusing a freed
//!   frame.

#![forbid(unsafe_code)]

/// Bytes in a frame.
pub const FRAME: usize = 4096;
/// Size-class granularity in bytes.
pub const STEP: usize = 32;
/// Most frames in one run.
pub const MAX_RUN_FRAMES: usize = 8;

const NIL: u32 = u32::MAX;

/// Names an allocated object until it is freed (stable across compaction).
pub type Handle = u32;

/// A contiguous piece of an object inside one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Piece {
    pub frame: u32,
    pub off: u32,
    pub len: u32,
}

/// Where an object's bytes are, in order: one piece, or two when it crosses a frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pieces: [Piece; 2],
    n: u8,
}

impl Span {
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces[..self.n as usize]
    }
    /// The object's length in bytes.
    pub fn len(&self) -> usize {
        self.pieces().iter().map(|p| p.len as usize).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Up to [`MAX_RUN_FRAMES`] frame numbers (a run's frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frames {
    ids: [u32; MAX_RUN_FRAMES],
    n: u8,
}

impl Frames {
    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..self.n as usize]
    }
}

/// One size class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassInfo {
    /// Slot size in bytes (the largest object it takes).
    pub size: u32,
    /// Frames per run.
    pub frames: u32,
    /// Slots per run.
    pub slots: u32,
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// Length 0 or more than [`FRAME`].
    BadLength(usize),
    /// A new run was needed and the caller had no frames for it.
    NoFrames,
}

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllocError::BadLength(n) => write!(f, "object of {n} bytes: must be 1 to {FRAME}"),
            AllocError::NoFrames => write!(f, "no frames for a new run"),
        }
    }
}

impl std::error::Error for AllocError {}

/// One object moved by compaction: copy `len` bytes from `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub handle: Handle,
    pub from: Span,
    pub to: Span,
}

/// What [`ZAlloc::compact`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// Copy every one of these (any order) before reusing `freed`.
    pub moves: Vec<Move>,
    /// Frames no run uses any more.
    pub freed: Vec<u32>,
}

/// Totals, kept as objects come and go (no walk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZStats {
    /// Live objects.
    pub objects: u64,
    /// Their bytes (what the caller asked for).
    pub object_bytes: u64,
    /// Their slots' bytes (object bytes plus rounding to the class).
    pub slot_bytes: u64,
    /// Frames held by runs.
    pub frames: u64,
}

impl ZStats {
    /// Bytes of frames held: the memory the objects actually take.
    pub fn held_bytes(&self) -> u64 {
        self.frames * FRAME as u64
    }
}

#[derive(Debug)]
struct Run {
    class: u16,
    frames: Frames,
    used: u32,
    /// Free slot numbers (popped from the end).
    free: Vec<u32>,
    /// The handle in each slot ([`NIL`]: free).
    owner: Vec<Handle>,
    /// Its index in its class's `partial` list ([`NIL`]: full).
    pos: u32,
}

#[derive(Debug)]
struct Class {
    info: ClassInfo,
    /// Runs with a free slot.
    partial: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Obj {
    /// [`NIL`]: this handle is free.
    run: u32,
    slot: u32,
    len: u32,
}

/// The allocator. Not thread-safe by itself: the caller keeps it under its own lock.
#[derive(Debug)]
pub struct ZAlloc {
    classes: Vec<Class>,
    /// Class index for each length step (`(len - 1) / STEP`).
    by_step: Vec<u16>,
    runs: Vec<Option<Run>>,
    run_free: Vec<u32>,
    objs: Vec<Obj>,
    obj_free: Vec<Handle>,
    stats: ZStats,
}

impl Default for ZAlloc {
    fn default() -> Self {
        ZAlloc::new()
    }
}

/// The class table: for each slot size, the run length (1..=MAX_RUN_FRAMES frames) that
/// leaves the smallest fraction of the run unused, then merged as the module docs say.
fn class_table() -> (Vec<ClassInfo>, Vec<u16>) {
    let mut classes: Vec<ClassInfo> = Vec::new();
    let mut by_step = vec![0u16; FRAME / STEP];
    // From the largest size down, so each merged group keeps its biggest member.
    for step in (0..FRAME / STEP).rev() {
        let size = (step + 1) * STEP;
        let mut best = (usize::MAX, 1usize);
        for k in 1..=MAX_RUN_FRAMES {
            let waste = (k * FRAME) % size;
            if waste * 100 <= 3 * k * FRAME {
                best = (waste, k);
                break;
            }
            // Compare waste / (k * FRAME) without floats: a / (k1 F) < b / (k2 F).
            if waste * best.1 < best.0.saturating_mul(k) {
                best = (waste, k);
            }
        }
        let k = best.1;
        let info = ClassInfo {
            size: size as u32,
            frames: k as u32,
            slots: (k * FRAME / size) as u32,
        };
        match classes.last() {
            Some(c) if c.frames == info.frames && c.slots == info.slots => {}
            _ => classes.push(info),
        }
        by_step[step] = (classes.len() - 1) as u16;
    }
    // Indices were assigned largest-first; keep that order (class 0 is the biggest).
    (classes, by_step)
}

impl ZAlloc {
    pub fn new() -> ZAlloc {
        let (infos, by_step) = class_table();
        ZAlloc {
            classes: infos
                .into_iter()
                .map(|info| Class {
                    info,
                    partial: Vec::new(),
                })
                .collect(),
            by_step,
            runs: Vec::new(),
            run_free: Vec::new(),
            objs: Vec::new(),
            obj_free: Vec::new(),
            stats: ZStats::default(),
        }
    }

    /// Every size class, largest first.
    pub fn classes(&self) -> impl Iterator<Item = ClassInfo> + '_ {
        self.classes.iter().map(|c| c.info)
    }

    /// The class an object of `len` bytes goes to.
    pub fn class_for(&self, len: usize) -> Option<ClassInfo> {
        if len == 0 || len > FRAME {
            return None;
        }
        Some(self.classes[self.by_step[(len - 1) / STEP] as usize].info)
    }

    pub fn stats(&self) -> ZStats {
        self.stats
    }

    /// Whether an object of `len` bytes would need a new run (and so `n` frames).
    pub fn frames_needed(&self, len: usize) -> Option<usize> {
        if len == 0 || len > FRAME {
            return None;
        }
        let c = &self.classes[self.by_step[(len - 1) / STEP] as usize];
        Some(if c.partial.is_empty() {
            c.info.frames as usize
        } else {
            0
        })
    }

    /// Allocate `len` bytes. If the class has no free slot, `new_frames(n)` is asked for `n`
    /// frames for a new run (it returns exactly `n`, or `None`).
    pub fn alloc(
        &mut self,
        len: usize,
        new_frames: impl FnOnce(usize) -> Option<Vec<u32>>,
    ) -> Result<Handle, AllocError> {
        if len == 0 || len > FRAME {
            return Err(AllocError::BadLength(len));
        }
        let ci = self.by_step[(len - 1) / STEP] as usize;
        let rid = match self.classes[ci].partial.last() {
            Some(&r) => r,
            None => {
                let info = self.classes[ci].info;
                let got = new_frames(info.frames as usize).ok_or(AllocError::NoFrames)?;
                if got.len() != info.frames as usize {
                    return Err(AllocError::NoFrames);
                }
                self.new_run(ci, &got)
            }
        };
        let h = self.new_handle();
        let slot = self.take_slot(rid, h);
        self.objs[h as usize] = Obj {
            run: rid,
            slot,
            len: len as u32,
        };
        self.stats.objects += 1;
        self.stats.object_bytes += len as u64;
        self.stats.slot_bytes += self.classes[ci].info.size as u64;
        Ok(h)
    }

    /// Free an object; the frames of its run if that left the run empty (the caller may
    /// reuse them at once). Unknown or already freed handles are ignored (`None`).
    pub fn free(&mut self, h: Handle) -> Option<Frames> {
        let o = *self.objs.get(h as usize)?;
        if o.run == NIL {
            return None;
        }
        self.objs[h as usize].run = NIL;
        self.obj_free.push(h);
        let ci = self.run(o.run).class as usize;
        self.stats.objects -= 1;
        self.stats.object_bytes -= o.len as u64;
        self.stats.slot_bytes -= self.classes[ci].info.size as u64;
        self.put_slot(o.run, o.slot);
        if self.run(o.run).used == 0 {
            Some(self.drop_run(o.run))
        } else {
            None
        }
    }

    /// Where object `h` is (`None` for a handle not allocated).
    pub fn span(&self, h: Handle) -> Option<Span> {
        let o = self.objs.get(h as usize)?;
        if o.run == NIL {
            return None;
        }
        Some(self.span_at(o.run, o.slot, o.len))
    }

    /// Object `h`'s length.
    pub fn len_of(&self, h: Handle) -> Option<usize> {
        let o = self.objs.get(h as usize)?;
        (o.run != NIL).then_some(o.len as usize)
    }

    /// The run frames that hold object `h` and the class slot, for a caller that records
    /// where objects are (durable page memory).
    pub fn frames_of(&self, h: Handle) -> Option<(Frames, ClassInfo, u32)> {
        let o = self.objs.get(h as usize)?;
        if o.run == NIL {
            return None;
        }
        let r = self.run(o.run);
        Some((r.frames, self.classes[r.class as usize].info, o.slot))
    }

    /// Bytes that compaction could give back at most: for each class, held runs minus the
    /// runs its objects would fill, in frames.
    pub fn reclaimable_frames(&self) -> u64 {
        let mut n = 0u64;
        for c in &self.classes {
            if c.partial.len() < 2 {
                continue;
            }
            let free: u64 = c
                .partial
                .iter()
                .map(|&r| (c.info.slots - self.run(r).used) as u64)
                .sum();
            n += free / c.info.slots as u64 * c.info.frames as u64;
        }
        n
    }

    /// Compact: move at most `budget` objects so that runs empty and give their frames back
    /// (see the module docs for the copy rule).
    pub fn compact(&mut self, budget: usize) -> Compaction {
        let mut out = Compaction::default();
        let mut budget = budget;
        for ci in 0..self.classes.len() {
            if budget == 0 {
                break;
            }
            if self.classes[ci].partial.len() < 2 {
                continue;
            }
            let mut list = self.classes[ci].partial.clone();
            list.sort_by_key(|&r| self.run(r).used);
            let (mut i, mut j) = (0usize, list.len() - 1);
            while i < j && budget > 0 {
                let (src, dst) = (list[i], list[j]);
                // Any occupied slot of the source.
                let Some(slot) = self.run(src).owner.iter().position(|&h| h != NIL) else {
                    i += 1;
                    continue;
                };
                let slot = slot as u32;
                let h = self.run(src).owner[slot as usize];
                let len = self.objs[h as usize].len;
                let from = self.span_at(src, slot, len);
                let nslot = self.take_slot(dst, h);
                self.put_slot(src, slot);
                self.objs[h as usize].run = dst;
                self.objs[h as usize].slot = nslot;
                out.moves.push(Move {
                    handle: h,
                    from,
                    to: self.span_at(dst, nslot, len),
                });
                budget -= 1;
                if self.run(src).used == 0 {
                    let f = self.drop_run(src);
                    out.freed.extend_from_slice(f.as_slice());
                    i += 1;
                }
                if self.run_opt(dst).is_some_and(|r| r.pos == NIL) {
                    j -= 1;
                }
            }
        }
        out
    }

    /// The run an allocation that needs new frames just made, for a caller that records
    /// runs (durable page memory): its frames and class. `None` if `h` is not allocated.
    pub fn run_of(&self, h: Handle) -> Option<(Frames, ClassInfo)> {
        self.frames_of(h).map(|(f, c, _)| (f, c))
    }

    // ---- rebuilding after a restart ----------------------------------------------------

    /// Recovery: a run of the class with slot size `size` and `frames.len()` frames, in that
    /// order (as recorded). `None` if no class has that shape.
    pub fn restore_run(&mut self, size: u32, frames: &[u32]) -> Option<u32> {
        let ci = self
            .classes
            .iter()
            .position(|c| c.info.size == size && c.info.frames as usize == frames.len())?;
        Some(self.new_run(ci, frames))
    }

    /// Recovery: object of `len` bytes in slot `slot` of restored run `run`. `None` if the
    /// slot is out of range or taken, or `len` does not fit it.
    pub fn restore_object(&mut self, run: u32, slot: u32, len: usize) -> Option<Handle> {
        let r = self.run_opt(run)?;
        let info = self.classes[r.class as usize].info;
        if slot >= info.slots || len == 0 || len > info.size as usize {
            return None;
        }
        if r.owner[slot as usize] != NIL {
            return None;
        }
        let h = self.new_handle();
        let r = self.run_mut(run);
        r.free.retain(|&s| s != slot);
        // Put the slot at the end of the free list, then take it the ordinary way.
        r.free.push(slot);
        let got = self.take_slot(run, h);
        debug_assert_eq!(got, slot);
        self.objs[h as usize] = Obj {
            run,
            slot,
            len: len as u32,
        };
        self.stats.objects += 1;
        self.stats.object_bytes += len as u64;
        self.stats.slot_bytes += info.size as u64;
        Some(h)
    }

    /// Recovery: drop restored runs that got no object; their frames.
    pub fn drop_empty_runs(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        for rid in 0..self.runs.len() as u32 {
            if self.run_opt(rid).is_some_and(|r| r.used == 0) {
                out.extend_from_slice(self.drop_run(rid).as_slice());
            }
        }
        out
    }

    /// Whether run `run` (from [`ZAlloc::restore_run`]) still exists.
    pub fn run_alive(&self, run: u32) -> bool {
        self.run_opt(run).is_some()
    }

    /// Where slot `slot` of a run of class `c` starts: the index of its frame in the run and
    /// the offset in it (the inverse of what [`ZAlloc::span`] reports).
    pub fn slot_at(c: ClassInfo, frame_index: u32, off: u32) -> Option<u32> {
        let start = frame_index as u64 * FRAME as u64 + off as u64;
        (start.is_multiple_of(c.size as u64) && start / (c.size as u64) < c.slots as u64)
            .then(|| (start / c.size as u64) as u32)
    }

    /// Check every internal invariant (tests; costs a walk of everything).
    pub fn check(&self) -> Result<(), String> {
        let mut objects = 0u64;
        let mut bytes = 0u64;
        let mut slot_bytes = 0u64;
        let mut frames = 0u64;
        for (rid, r) in self.runs.iter().enumerate() {
            let Some(r) = r else { continue };
            let c = &self.classes[r.class as usize];
            frames += c.info.frames as u64;
            let used = r.owner.iter().filter(|&&h| h != NIL).count() as u32;
            if used != r.used || used == 0 {
                return Err(format!("run {rid}: used {} counted {used}", r.used));
            }
            if r.free.len() as u32 + used != c.info.slots {
                return Err(format!("run {rid}: free list length"));
            }
            for &s in &r.free {
                if r.owner[s as usize] != NIL {
                    return Err(format!("run {rid}: slot {s} free and owned"));
                }
            }
            let full = used == c.info.slots;
            if full != (r.pos == NIL) {
                return Err(format!("run {rid}: full {full} but pos {}", r.pos));
            }
            if !full && c.partial.get(r.pos as usize) != Some(&(rid as u32)) {
                return Err(format!("run {rid}: not at its partial position"));
            }
            for (s, &h) in r.owner.iter().enumerate() {
                if h == NIL {
                    continue;
                }
                let o = self.objs[h as usize];
                if o.run != rid as u32 || o.slot != s as u32 {
                    return Err(format!("handle {h}: points elsewhere"));
                }
                if o.len == 0 || o.len > c.info.size {
                    return Err(format!(
                        "handle {h}: length {} in class {}",
                        o.len, c.info.size
                    ));
                }
                objects += 1;
                bytes += o.len as u64;
                slot_bytes += c.info.size as u64;
            }
        }
        let want = ZStats {
            objects,
            object_bytes: bytes,
            slot_bytes,
            frames,
        };
        if want != self.stats {
            return Err(format!("stats {:?}, counted {want:?}", self.stats));
        }
        for c in &self.classes {
            for &r in &c.partial {
                if self.run_opt(r).is_none() {
                    return Err(format!("partial list names dropped run {r}"));
                }
            }
        }
        Ok(())
    }

    // ---- internals ---------------------------------------------------------------------

    fn run(&self, r: u32) -> &Run {
        match self.run_opt(r) {
            Some(r) => r,
            None => broken(),
        }
    }

    fn run_opt(&self, r: u32) -> Option<&Run> {
        self.runs.get(r as usize).and_then(|r| r.as_ref())
    }

    fn run_mut(&mut self, r: u32) -> &mut Run {
        match self.runs.get_mut(r as usize).and_then(|r| r.as_mut()) {
            Some(r) => r,
            None => broken(),
        }
    }

    fn new_run(&mut self, ci: usize, frames: &[u32]) -> u32 {
        let info = self.classes[ci].info;
        let mut ids = [NIL; MAX_RUN_FRAMES];
        ids[..frames.len()].copy_from_slice(frames);
        let run = Run {
            class: ci as u16,
            frames: Frames {
                ids,
                n: frames.len() as u8,
            },
            used: 0,
            free: (0..info.slots).rev().collect(),
            owner: vec![NIL; info.slots as usize],
            pos: self.classes[ci].partial.len() as u32,
        };
        let rid = match self.run_free.pop() {
            Some(r) => {
                self.runs[r as usize] = Some(run);
                r
            }
            None => {
                self.runs.push(Some(run));
                (self.runs.len() - 1) as u32
            }
        };
        self.classes[ci].partial.push(rid);
        self.stats.frames += info.frames as u64;
        rid
    }

    /// A handle for a new object: a freed one, or a new entry (filled in by the caller).
    fn new_handle(&mut self) -> Handle {
        self.obj_free.pop().unwrap_or_else(|| {
            self.objs.push(Obj {
                run: NIL,
                slot: 0,
                len: 0,
            });
            (self.objs.len() - 1) as Handle
        })
    }

    /// Take a free slot of run `rid` for `h` (the run must have one).
    fn take_slot(&mut self, rid: u32, h: Handle) -> u32 {
        let r = self.run_mut(rid);
        let Some(slot) = r.free.pop() else { broken() };
        r.owner[slot as usize] = h;
        r.used += 1;
        if r.free.is_empty() {
            let (ci, pos) = (r.class as usize, r.pos);
            r.pos = NIL;
            self.unlist(ci, pos);
        }
        slot
    }

    /// Give slot `slot` of run `rid` back.
    fn put_slot(&mut self, rid: u32, slot: u32) {
        let r = self.run_mut(rid);
        r.owner[slot as usize] = NIL;
        r.free.push(slot);
        r.used -= 1;
        if r.pos == NIL {
            let ci = r.class as usize;
            let pos = self.classes[ci].partial.len() as u32;
            self.run_mut(rid).pos = pos;
            self.classes[ci].partial.push(rid);
        }
    }

    fn unlist(&mut self, ci: usize, pos: u32) {
        let list = &mut self.classes[ci].partial;
        list.swap_remove(pos as usize);
        if let Some(&moved) = list.get(pos as usize) {
            self.run_mut(moved).pos = pos;
        }
    }

    /// Drop empty run `rid`; its frames.
    fn drop_run(&mut self, rid: u32) -> Frames {
        let r = self.run(rid);
        let (ci, pos, frames) = (r.class as usize, r.pos, r.frames);
        if pos != NIL {
            self.unlist(ci, pos);
        }
        self.runs[rid as usize] = None;
        self.run_free.push(rid);
        self.stats.frames -= self.classes[ci].info.frames as u64;
        frames
    }

    fn span_at(&self, rid: u32, slot: u32, len: u32) -> Span {
        let r = self.run(rid);
        let size = self.classes[r.class as usize].info.size;
        let start = slot * size;
        let (fi, off) = ((start as usize) / FRAME, start % FRAME as u32);
        let first = len.min(FRAME as u32 - off);
        let mut pieces = [Piece::default(); 2];
        pieces[0] = Piece {
            frame: r.frames.ids[fi],
            off,
            len: first,
        };
        let mut n = 1;
        if first < len {
            pieces[1] = Piece {
                frame: r.frames.ids[fi + 1],
                off: 0,
                len: len - first,
            };
            n = 2;
        }
        Span { pieces, n }
    }
}

#[cold]
fn broken() -> ! {
    // Every run id held in a class list or an object names a live run: an internal
    // invariant, not reachable from the caller's input.
    panic!("tmem-zalloc: internal invariant broken")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_has_a_class_that_fits_it_and_wastes_little() {
        let z = ZAlloc::new();
        let (mut worst, mut sum, mut n) = (0.0f64, 0.0f64, 0u32);
        for len in 1..=FRAME {
            let c = z.class_for(len).unwrap();
            assert!(c.size as usize >= len, "{len} in {c:?}");
            assert!(c.slots >= 1 && c.frames as usize <= MAX_RUN_FRAMES);
            let tail = c.frames as usize * FRAME - c.slots as usize * c.size as usize;
            assert!(tail * 100 <= c.frames as usize * FRAME * 9, "{len}: {c:?}");
            // Memory an object really takes (its share of the run) over its length, for
            // the lengths compression produces (a store keeps bigger ones raw).
            let cost = (c.frames as usize * FRAME) as f64 / c.slots as f64;
            if (512..=3072).contains(&len) {
                worst = worst.max(cost / len as f64);
                sum += cost / len as f64;
                n += 1;
            }
        }
        let mean = sum / n as f64;
        eprintln!("object cost over length, 512..=3072 bytes: worst {worst:.3}, mean {mean:.3}");
        assert!(
            worst < 1.10 && mean < 1.03,
            "worst {worst:.3}, mean {mean:.3}"
        );
        assert!(z.classes().count() > 40);
        assert_eq!(z.class_for(0), None);
        assert_eq!(z.class_for(FRAME + 1), None);
        assert_eq!(z.class_for(FRAME).unwrap().size as usize, FRAME);
    }

    #[test]
    fn an_object_crossing_a_frame_boundary_has_two_pieces() {
        let mut z = ZAlloc::new();
        let c = z.class_for(2500).unwrap();
        assert!(c.frames > 1, "{c:?}");
        let mut next = 100u32;
        let mut hs = Vec::new();
        for _ in 0..c.slots {
            hs.push(
                z.alloc(2500, |n| {
                    let v = (next..next + n as u32).collect();
                    next += n as u32;
                    Some(v)
                })
                .unwrap(),
            );
        }
        let two = hs
            .iter()
            .filter(|&&h| z.span(h).unwrap().pieces().len() == 2)
            .count();
        assert!(two > 0);
        for &h in &hs {
            assert_eq!(z.span(h).unwrap().len(), 2500);
        }
        assert_eq!(z.stats().frames, c.frames as u64);
        z.check().unwrap();
    }

    #[test]
    fn a_rebuilt_allocator_matches_the_one_it_was_recorded_from() {
        let mut z = ZAlloc::new();
        let mut next = 0u32;
        let mut hs = Vec::new();
        for i in 0..300usize {
            let len = 100 + (i * 37) % 3000;
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
            if i % 3 == 0 {
                z.free(h);
            }
        }
        // Record runs (frames + class) and objects (first piece + length), as a page file
        // does, then rebuild from that alone.
        let mut runs: std::collections::BTreeMap<u32, (Frames, ClassInfo)> = Default::default();
        let mut objs = Vec::new();
        for (i, &h) in hs.iter().enumerate() {
            if i % 3 == 0 {
                continue;
            }
            let (f, c) = z.run_of(h).unwrap();
            runs.insert(f.as_slice()[0], (f, c));
            let s = z.span(h).unwrap();
            objs.push((h, s.pieces()[0], s.len()));
        }
        let mut y = ZAlloc::new();
        let mut rid = std::collections::BTreeMap::new();
        for (&first, (f, c)) in &runs {
            rid.insert(
                first,
                (y.restore_run(c.size, f.as_slice()).unwrap(), *f, *c),
            );
        }
        for (h, p, len) in objs {
            let (run, f, c) = runs
                .iter()
                .find(|(_, (f, _))| f.as_slice().contains(&p.frame))
                .map(|(first, _)| rid[first])
                .unwrap();
            let fi = f.as_slice().iter().position(|&x| x == p.frame).unwrap() as u32;
            let slot = ZAlloc::slot_at(c, fi, p.off).unwrap();
            let g = y.restore_object(run, slot, len).unwrap();
            assert_eq!(y.span(g), z.span(h));
            assert_eq!(y.restore_object(run, slot, len), None, "slot taken twice");
        }
        assert!(y.drop_empty_runs().is_empty());
        y.check().unwrap();
        let (a, b) = (y.stats(), z.stats());
        assert_eq!(
            (a.objects, a.object_bytes, a.frames),
            (b.objects, b.object_bytes, b.frames)
        );
    }

    #[test]
    fn compaction_empties_runs() {
        let mut z = ZAlloc::new();
        let mut next = 0u32;
        let mut frames = |n: usize| {
            let v: Vec<u32> = (next..next + n as u32).collect();
            next += n as u32;
            Some(v)
        };
        let hs: Vec<Handle> = (0..400)
            .map(|_| z.alloc(700, &mut frames).unwrap())
            .collect();
        let before = z.stats().frames;
        for (i, &h) in hs.iter().enumerate() {
            if i % 3 != 0 {
                z.free(h);
            }
        }
        z.check().unwrap();
        let held = z.stats().frames;
        let c = z.compact(usize::MAX);
        z.check().unwrap();
        assert!(!c.moves.is_empty());
        assert_eq!(held - z.stats().frames, c.freed.len() as u64);
        // A third of the objects: about a third of the frames, within one run per class.
        let per = z.class_for(700).unwrap();
        let need = (134u64).div_ceil(per.slots as u64) * per.frames as u64;
        assert!(
            z.stats().frames <= need,
            "{} > {need} (was {before})",
            z.stats().frames
        );
    }
}
