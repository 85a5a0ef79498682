//! Ephemeral pages on their account's LRU list, accounts, and the choice of what to evict.

use crate::meta::{Account, Meta, NIL};

impl Meta {
    // ---- LRU ---------------------------------------------------------------------------
    pub(crate) fn lru_push(&mut self, head: u32, id: u32) {
        let tail = self.prev(head);
        self.set_next(tail, id);
        self.set_prev(id, tail);
        self.set_next(id, head);
        self.set_prev(head, id);
        self.stamp = self.stamp.wrapping_add(1);
        let s = self.stamp;
        let (l, i) = self.lm(id);
        l.stamp[i] = s;
    }
    pub(crate) fn lru_unlink(&mut self, id: u32) {
        let p = self.prev(id);
        let n = self.next(id);
        if p == NIL || n == NIL {
            return;
        }
        self.set_next(p, n);
        self.set_prev(n, p);
        self.set_prev(id, NIL);
        self.set_next(id, NIL);
    }

    pub(crate) fn new_account(&mut self, weight: u32) -> u32 {
        let head = self.alloc_extra();
        self.set_prev(head, head);
        self.set_next(head, head);
        let a = Account {
            head,
            eph: 0,
            eph_bytes: 0,
            weight,
            closed: false,
        };
        if let Some(i) = self.acct_free.pop() {
            self.accounts[i as usize] = Some(a);
            i
        } else {
            self.accounts.push(Some(a));
            (self.accounts.len() - 1) as u32
        }
    }
    /// Free account `a` now if its list is empty, else when its last ephemeral page goes.
    pub(crate) fn free_account(&mut self, a: u32) {
        let Some(Some(acc)) = self.accounts.get_mut(a as usize) else {
            return;
        };
        if acc.eph > 0 {
            acc.closed = true;
            return;
        }
        if let Some(acc) = self.accounts[a as usize].take() {
            self.free_extra(acc.head);
            self.acct_free.push(a);
        }
    }

    // ---- eviction ------------------------------------------------------------------------
    /// The account to evict from: the one furthest over its weighted share of the memory
    /// ephemeral pages take (bytes, not pages: a client whose pages compress well keeps more
    /// of them in its share), else the one holding the globally oldest ephemeral page.
    pub(crate) fn pick_victim_account(&self) -> Option<u32> {
        let total_w: u128 = self
            .accounts
            .iter()
            .flatten()
            .filter(|a| a.eph_bytes > 0)
            .map(|a| a.weight as u128)
            .sum();
        let g = self.g.eph_bytes as u128;
        let mut best: Option<(u128, u32)> = None;
        let mut oldest: Option<(u32, u32)> = None;
        for (i, a) in self.accounts.iter().enumerate() {
            let Some(a) = a else { continue };
            if a.eph == 0 {
                continue;
            }
            // Over share: eph_bytes / g > weight / total_w.
            let lhs = a.eph_bytes as u128 * total_w;
            let rhs = g * a.weight as u128;
            if lhs > rhs {
                let excess = lhs - rhs;
                if best.is_none_or(|(e, _)| e < excess) {
                    best = Some((excess, i as u32));
                }
            }
            let first = self.next(a.head);
            let (l, j) = self.l(first);
            let age = self.stamp.wrapping_sub(l.stamp[j]);
            if oldest.is_none_or(|(o, _)| o < age) {
                oldest = Some((age, i as u32));
            }
        }
        best.map(|b| b.1).or(oldest.map(|o| o.1))
    }

    /// Evict the oldest ephemeral page of `account`. `None` if it has none; else its frame.
    pub(crate) fn evict_from(&mut self, account: u32) -> Option<Option<u32>> {
        self.g.evict_attempts += 1;
        let head = self.accounts.get(account as usize)?.as_ref()?.head;
        let node = self.next(head);
        if node == head || node == NIL {
            return None;
        }
        let obj = {
            let (l, i) = self.l(node);
            l.n[i].obj
        };
        self.g.evictions += 1;
        // Charged to the pool (and, for a private pool, its owner) so an operator can see
        // whose pages the memory pressure takes.
        if let Some(gid) = self.objs[obj as usize].as_ref().map(|o| o.pool) {
            let p = self.pool_mut(gid);
            p.c.evictions += 1;
            if let Some(cl) = p.owner.and_then(|o| self.clients.get_mut(&o)) {
                cl.c.evictions += 1;
            }
        }
        Some(self.remove_page(obj, node))
    }

    /// Evict by the weighted-LRU policy. `None` if nothing is evictable.
    pub(crate) fn evict_one(&mut self) -> Option<Option<u32>> {
        let a = self.pick_victim_account();
        match a {
            Some(a) => self.evict_from(a),
            None => {
                self.g.evict_attempts += 1;
                None
            }
        }
    }
}

/// Move an ephemeral page to the MRU end of its account's list.
pub(crate) fn touch(m: &mut Meta, gid: u32, node: u32) {
    let p = m.pool(gid);
    if p.kind.is_persistent() {
        return;
    }
    let account = p.account;
    if let Some(Some(a)) = m.accounts.get(account as usize) {
        let head = a.head;
        m.lru_unlink(node);
        m.lru_push(head, node);
    }
}
