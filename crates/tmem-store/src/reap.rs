//! Reclaim in bounded chunks: a destroyed pool or a flushed big object is unlinked at once
//! (no guest can name it again, so none of its pages is ever served), and its pages are freed
//! later, at most [`REAP_CHUNK`] per metadata-lock acquisition, so that destroying 1 GiB does
//! not stall every other guest for the whole walk.
//!
//! Until a page is freed it stays counted (global, pool, client and account counters) and its
//! frame stays in use, so memory accounting is right at every instant. Ephemeral pages waiting
//! here stay on their LRU list: eviction may take them first, which is fine (the reaper skips a
//! node that no longer belongs to its object).
//!
//! Jobs run strictly first in, first out (an unfinished job goes back to the front), so a
//! flushed object's job always ends before a later job for its destroyed pool frees the pool.

use crate::meta::{Meta, NIL};
use crate::pagemap::NodeDrain;
use crate::Oid;
use std::collections::hash_map;

/// Pages (or objects visited) freed per metadata-lock acquisition: about 100 µs of work.
pub(crate) const REAP_CHUNK: usize = 2048;

/// Pages a put that finds memory full frees from pending reaps before it evicts.
pub(crate) const HELP_REAP: usize = 256;

/// One destroyed pool or flushed object whose pages are still stored.
#[derive(Debug)]
pub(crate) struct Reap {
    /// The global pool id; it is not reused until a pool job ends.
    gid: u32,
    /// A destroyed pool: the objects not started yet. `None` for a flushed object.
    objs: Option<hash_map::IntoValues<Oid, u32>>,
    /// The object being emptied and its nodes not visited yet.
    cur: Option<(u32, NodeDrain)>,
}

impl Meta {
    /// Queue destroyed pool `gid` (already unlinked from its client and the shared map):
    /// its object map is taken at once, so no new object can appear and none can be found.
    pub(crate) fn queue_pool_reap(&mut self, gid: u32) {
        let empty = std::collections::HashMap::with_hasher(self.obj_hash);
        let objs = std::mem::replace(&mut self.pool_mut(gid).objs, empty);
        self.reap.push_back(Reap {
            gid,
            objs: Some(objs.into_values()),
            cur: None,
        });
    }

    /// Queue the object `oid` of pool `gid`: unlinked from the pool now, and no longer
    /// charged to the pool or its owner; emptied later.
    pub(crate) fn queue_object_reap(&mut self, gid: u32, oid: &Oid) {
        let Some(obj) = self.pool_mut(gid).objs.remove(oid) else {
            return;
        };
        let pages = self.objs[obj as usize]
            .as_ref()
            .map_or(0, |o| o.pages.len() as u64);
        let p = self.pool_mut(gid);
        p.c.pages -= pages;
        let (owner, persistent) = (p.owner, p.kind.is_persistent());
        if let Some(cl) = owner.and_then(|o| self.clients.get_mut(&o)) {
            cl.pages -= pages;
            if persistent {
                cl.pers_pages -= pages;
            }
        }
        if let Some(drain) = self.start_object(obj, gid) {
            self.reap.push_back(Reap {
                gid,
                objs: None,
                cur: Some((obj, drain)),
            });
        }
    }

    /// Whether reclaim work is waiting.
    pub(crate) fn reap_pending(&self) -> bool {
        !self.reap.is_empty()
    }

    /// Free up to `budget` pages of pending jobs (an object started counts as one too); their
    /// frames go to `out`. Returns whether work remains.
    pub(crate) fn reap_chunk(&mut self, budget: usize, out: &mut Vec<u32>) -> bool {
        self.reap_chunks_run += 1;
        let mut left = budget;
        while let Some(mut job) = self.reap.pop_front() {
            loop {
                if left == 0 {
                    self.reap.push_front(job);
                    return true;
                }
                if let Some((obj, nodes)) = job.cur.as_mut() {
                    let obj = *obj;
                    match nodes.next() {
                        Some(n) => {
                            left -= 1;
                            // Skip a node evicted meanwhile (it may even hold another page
                            // now, of another object: a reaped object gets no new pages).
                            if self.node_obj(n) == obj {
                                out.extend(self.remove_page(obj, n));
                            }
                        }
                        None => {
                            job.cur = None;
                            self.free_object(obj);
                        }
                    }
                    continue;
                }
                match job.objs.as_mut().map(Iterator::next) {
                    Some(Some(obj)) => {
                        left -= 1;
                        job.cur = self.start_object(obj, job.gid).map(|d| (obj, d));
                    }
                    Some(None) => {
                        self.free_pool_slot(job.gid);
                        break;
                    }
                    None => break,
                }
            }
        }
        false
    }

    /// Mark object slot `obj` of pool `gid` as being reaped and take its page map. `None` if
    /// eviction emptied (and freed) it meanwhile.
    fn start_object(&mut self, obj: u32, gid: u32) -> Option<NodeDrain> {
        let o = self.objs.get_mut(obj as usize)?.as_mut()?;
        if o.pool != gid {
            return None;
        }
        o.reaping = true;
        let pages = std::mem::take(&mut o.pages);
        self.obj_heap_bytes -= pages.heap_bytes();
        Some(pages.into_nodes())
    }

    fn node_obj(&self, n: u32) -> u32 {
        let (l, i) = self.l(n);
        l.n.get(i).map_or(NIL, |x| x.obj)
    }

    /// Release a pool slot whose job has ended: its pages and objects are all gone.
    fn free_pool_slot(&mut self, gid: u32) {
        if let Some(p) = self.pools.get_mut(gid as usize).and_then(Option::take) {
            if p.kind.is_shared() {
                self.free_account(p.account);
            }
            self.release_pool_record(p.rec);
            self.pool_free.push(gid);
        }
    }
}
