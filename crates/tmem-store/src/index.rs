//! Pages in the index: linking a page into its pool's object (creating the object) and
//! unlinking it again, with every counter that follows a page.

use crate::meta::{cost_of, Meta, Obj, EXTRA, NIL};
use crate::pagemap::PageMap;
use crate::PageKey;

impl Meta {
    pub(crate) fn insert_page(&mut self, gid: u32, key: &PageKey, node: u32) {
        let obj = match self.pool(gid).objs.get(&key.oid) {
            Some(&o) => o,
            None => {
                let o = Obj {
                    pool: gid,
                    oid: key.oid,
                    pages: PageMap::default(),
                    reaping: false,
                };
                let slot = if let Some(s) = self.obj_free.pop() {
                    self.objs[s as usize] = Some(o);
                    s
                } else {
                    self.objs.push(Some(o));
                    (self.objs.len() - 1) as u32
                };
                let p = self.pool_mut(gid);
                p.objs.insert(key.oid, slot);
                p.c.objects += 1;
                p.c.objects_max = p.c.objects_max.max(p.c.objects);
                self.g.objects += 1;
                self.g.objects_max = self.g.objects_max.max(self.g.objects);
                slot
            }
        };
        if let Some(o) = self.objs[obj as usize].as_mut() {
            let before = o.pages.heap_bytes();
            o.pages.insert(key.index, node);
            self.obj_heap_bytes = self.obj_heap_bytes + o.pages.heap_bytes() - before;
        }
        {
            let (l, i) = self.lm(node);
            l.n[i].obj = obj;
            l.n[i].index = key.index;
        }
        let zc = self.z_cost(node);
        let cost = cost_of(node, zc);
        let p = self.pool_mut(gid);
        p.c.pages += 1;
        p.c.pages_max = p.c.pages_max.max(p.c.pages);
        p.c.mem_bytes += cost;
        if let Some((len, _)) = zc {
            p.c.compressed_pages += 1;
            p.c.compressed_bytes += len;
        }
        let (kind, account, owner) = (p.kind, p.account, p.owner);
        if let Some(o) = owner {
            if let Some(cl) = self.clients.get_mut(&o) {
                cl.pages += 1;
                cl.bytes += cost;
                if kind.is_persistent() {
                    cl.pers_pages += 1;
                    cl.pers_bytes += cost;
                }
            }
        }
        let z = self.is_z(node);
        if node & EXTRA != 0 && !z {
            self.g.same_pages += 1;
            if self.fill_of(node) == 0 {
                self.g.zero_pages += 1;
            }
        }
        self.g.pages += 1;
        self.g.pages_max = self.g.pages_max.max(self.g.pages);
        if !kind.is_persistent() {
            let head = match self.accounts[account as usize].as_mut() {
                Some(a) => {
                    a.eph += 1;
                    a.eph_bytes += cost;
                    a.head
                }
                None => return,
            };
            self.lru_push(head, node);
            self.g.eph += 1;
            self.g.eph_max = self.g.eph_max.max(self.g.eph);
            // Evicting a compressed page gives memory back too.
            if node & EXTRA == 0 || z {
                self.g.eph_data += 1;
            }
            self.g.eph_bytes += cost;
            if let Some(o) = owner {
                if let Some(cl) = self.clients.get_mut(&o) {
                    let e = self.accounts[account as usize]
                        .as_ref()
                        .map_or(0, |a| a.eph);
                    cl.c.eph_max = cl.c.eph_max.max(e);
                }
            }
        }
    }

    /// Remove one page. Returns its frame if it had one (the caller frees it).
    pub(crate) fn remove_page(&mut self, obj: u32, node: u32) -> Option<u32> {
        let index = {
            let (l, i) = self.l(node);
            l.n[i].index
        };
        let (gid, reaping) = match self.objs[obj as usize].as_mut() {
            Some(o) => {
                // A reaped object's map was taken by its job: nothing to remove there.
                let before = o.pages.heap_bytes();
                o.pages.remove(index);
                self.obj_heap_bytes = self.obj_heap_bytes + o.pages.heap_bytes() - before;
                (o.pool, o.reaping)
            }
            None => return None,
        };
        if !reaping
            && self.objs[obj as usize]
                .as_ref()
                .is_some_and(|o| o.pages.is_empty())
        {
            self.free_object(obj);
        }
        let zc = self.z_cost(node);
        let cost = cost_of(node, zc);
        let p = self.pool_mut(gid);
        let (kind, account, owner) = (p.kind, p.account, p.owner);
        // A reaped object's pages were taken off its pool and client when it was unlinked;
        // the memory they take goes only now.
        if !reaping {
            p.c.pages -= 1;
        }
        p.c.mem_bytes -= cost;
        if let Some((len, _)) = zc {
            p.c.compressed_pages -= 1;
            p.c.compressed_bytes -= len;
        }
        if let Some(cl) = owner.and_then(|o| self.clients.get_mut(&o)) {
            if !reaping {
                cl.pages -= 1;
                if kind.is_persistent() {
                    cl.pers_pages -= 1;
                }
            }
            // A reaped object's memory stays charged to its owner until it is freed (a
            // destroyed pool has no owner any more: its memory went off at close).
            cl.bytes -= cost;
            if kind.is_persistent() {
                cl.pers_bytes -= cost;
            }
        }
        self.g.pages -= 1;
        let z = self.is_z(node);
        if kind.is_persistent() {
            self.unpublish(node);
        } else {
            self.lru_unlink(node);
            let orphan = match self.accounts[account as usize].as_mut() {
                Some(a) => {
                    a.eph -= 1;
                    a.eph_bytes -= cost;
                    a.closed && a.eph == 0
                }
                None => false,
            };
            if orphan {
                self.free_account(account);
            }
            self.g.eph -= 1;
            if node & EXTRA == 0 || z {
                self.g.eph_data -= 1;
            }
            self.g.eph_bytes -= cost;
        }
        if z {
            self.free_z(node);
            self.free_extra(node);
            None
        } else if node & EXTRA != 0 {
            self.g.same_pages -= 1;
            if self.fill_of(node) == 0 {
                self.g.zero_pages -= 1;
            }
            self.free_extra(node);
            None
        } else {
            let (l, i) = self.lm(node);
            l.n[i].obj = NIL;
            l.n[i].prev = NIL;
            l.n[i].next = NIL;
            Some(node)
        }
    }

    /// Free object slot `obj` (its pages are gone), unlinking it from its pool's map if it is
    /// still there (a reaped object was unlinked at once, and its oid may name another
    /// object by now).
    pub(crate) fn free_object(&mut self, obj: u32) {
        let Some(o) = self.objs.get_mut(obj as usize).and_then(Option::take) else {
            return;
        };
        self.obj_heap_bytes -= o.pages.heap_bytes();
        let p = self.pool_mut(o.pool);
        if p.objs.get(&o.oid) == Some(&obj) {
            p.objs.remove(&o.oid);
        }
        p.c.objects -= 1;
        self.g.objects -= 1;
        self.obj_free.push(obj);
    }

    pub(crate) fn empty_object(&mut self, obj: u32, out: &mut Vec<u32>) {
        let nodes: Vec<u32> = match self.objs[obj as usize].as_ref() {
            Some(o) => o.pages.nodes(),
            None => return,
        };
        for n in nodes {
            if let Some(f) = self.remove_page(obj, n) {
                out.push(f);
            }
        }
    }
}
