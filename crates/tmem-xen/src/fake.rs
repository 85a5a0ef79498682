//! A fake xenstored for tests: an in-memory tree served over one end of a socket pair with
//! the real wire protocol (read, write, mkdir, rm, directory, perms, watches, transactions,
//! domain queries). Not a security model: permissions are stored and reported, not enforced.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::wire::{join_nul, split_nul, ty, Decoder, Message, Perm};
use crate::xs::{Xs, XsError};

#[derive(Debug, Default)]
struct Node {
    value: Vec<u8>,
    perms: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    tree: BTreeMap<String, Node>,
    /// (connection id, path, token)
    watches: Vec<(usize, String, String)>,
    /// Events to deliver, by connection.
    outbox: BTreeMap<usize, Vec<Message>>,
    introduced: BTreeSet<u32>,
    next_tx: u32,
    /// Fail this many upcoming transaction commits with EAGAIN.
    conflicts: u32,
    log: Vec<(u32, String)>,
    /// Bumped by [`FakeXenstore::stop`]: connections of an older epoch are dropped.
    epoch: u64,
    /// Stopped: new connections are refused until [`FakeXenstore::start`].
    down: bool,
}

/// Handle on the fake store: inspect and poke the tree, fire special watches, connect clients.
#[derive(Debug, Clone, Default)]
pub struct FakeXenstore {
    state: Arc<Mutex<State>>,
    conns: Arc<Mutex<usize>>,
}

fn parent(path: &str) -> Option<&str> {
    if path == "/" || !path.starts_with('/') {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

fn under(path: &str, watch: &str) -> bool {
    path == watch
        || (path.starts_with(watch)
            && (watch.ends_with('/') || path[watch.len()..].starts_with('/')))
}

impl State {
    fn ensure(&mut self, path: &str) {
        if self.tree.contains_key(path) {
            return;
        }
        if let Some(p) = parent(path) {
            self.ensure(p);
        }
        let perms = parent(path)
            .and_then(|p| self.tree.get(p))
            .map(|n| n.perms.clone())
            .unwrap_or_else(|| vec!["n0".into()]);
        self.tree.insert(
            path.to_owned(),
            Node {
                value: Vec::new(),
                perms,
            },
        );
    }

    /// Remove `path` and everything beneath it. Like xenstored, this fires the watches on the
    /// node and its parents, and also those set beneath it (each with its own path).
    fn remove(&mut self, path: &str) {
        let gone: Vec<String> = self
            .tree
            .keys()
            .filter(|k| under(k, path))
            .cloned()
            .collect();
        for k in &gone {
            self.tree.remove(k);
        }
        self.fire(path);
        let beneath: Vec<(usize, String, String)> = self
            .watches
            .iter()
            .filter(|(_, w, _)| w.as_str() != path && under(w, path))
            .map(|(c, w, t)| (*c, w.clone(), t.clone()))
            .collect();
        for (c, w, token) in beneath {
            self.event(c, &w, &token);
        }
    }

    /// Queue a watch event for connection `c`.
    fn event(&mut self, c: usize, path: &str, token: &str) {
        self.outbox.entry(c).or_default().push(Message {
            ty: ty::WATCH_EVENT,
            req_id: 0,
            tx_id: 0,
            payload: join_nul(&[path.as_bytes(), token.as_bytes()]),
        });
    }

    fn fire(&mut self, path: &str) {
        let hits: Vec<(usize, String)> = self
            .watches
            .iter()
            .filter(|(_, w, _)| under(path, w))
            .map(|(c, _, t)| (*c, t.clone()))
            .collect();
        for (c, token) in hits {
            self.event(c, path, &token);
        }
    }

    fn handle(&mut self, conn: usize, m: &Message) -> Result<Vec<u8>, &'static str> {
        let args = split_nul(&m.payload).map_err(|_| "EINVAL")?;
        let arg = |i: usize| args.get(i).cloned().ok_or("EINVAL");
        self.log
            .push((m.ty, args.first().cloned().unwrap_or_default()));
        match m.ty {
            ty::READ => {
                let p = arg(0)?;
                self.tree.get(&p).map(|n| n.value.clone()).ok_or("ENOENT")
            }
            ty::WRITE => {
                let i = m.payload.iter().position(|b| *b == 0).ok_or("EINVAL")?;
                let p = String::from_utf8(m.payload[..i].to_vec()).map_err(|_| "EINVAL")?;
                self.ensure(&p);
                self.tree.get_mut(&p).expect("ensured").value = m.payload[i + 1..].to_vec();
                self.fire(&p);
                Ok(b"OK\0".to_vec())
            }
            ty::MKDIR => {
                let p = arg(0)?;
                if !self.tree.contains_key(&p) {
                    self.ensure(&p);
                    self.fire(&p);
                }
                Ok(b"OK\0".to_vec())
            }
            ty::RM => {
                let p = arg(0)?;
                if !self.tree.contains_key(&p) {
                    return Err("ENOENT");
                }
                self.remove(&p);
                Ok(b"OK\0".to_vec())
            }
            ty::DIRECTORY => {
                let p = arg(0)?;
                if !self.tree.contains_key(&p) {
                    return Err("ENOENT");
                }
                let prefix = if p == "/" {
                    "/".to_owned()
                } else {
                    format!("{p}/")
                };
                let kids: Vec<&[u8]> = self
                    .tree
                    .keys()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                    .map(str::as_bytes)
                    .collect();
                Ok(join_nul(&kids))
            }
            ty::GET_PERMS => {
                let p = arg(0)?;
                let n = self.tree.get(&p).ok_or("ENOENT")?;
                let v: Vec<&[u8]> = n.perms.iter().map(|s| s.as_bytes()).collect();
                Ok(join_nul(&v))
            }
            ty::SET_PERMS => {
                let p = arg(0)?;
                if args.len() < 2 {
                    return Err("EINVAL");
                }
                for s in &args[1..] {
                    Perm::parse(s).map_err(|_| "EINVAL")?;
                }
                let n = self.tree.get_mut(&p).ok_or("ENOENT")?;
                n.perms = args[1..].to_vec();
                self.fire(&p);
                Ok(b"OK\0".to_vec())
            }
            ty::WATCH => {
                let (p, t) = (arg(0)?, arg(1)?);
                // xenstored fires every new watch once.
                self.event(conn, &p, &t);
                self.watches.push((conn, p, t));
                Ok(b"OK\0".to_vec())
            }
            ty::UNWATCH => {
                let (p, t) = (arg(0)?, arg(1)?);
                let before = self.watches.len();
                self.watches
                    .retain(|(c, wp, wt)| !(*c == conn && *wp == p && *wt == t));
                if self.watches.len() == before {
                    return Err("ENOENT");
                }
                Ok(b"OK\0".to_vec())
            }
            ty::TRANSACTION_START => {
                self.next_tx += 1;
                Ok(format!("{}\0", self.next_tx).into_bytes())
            }
            ty::TRANSACTION_END => {
                if arg(0)? == "T" && self.conflicts > 0 {
                    self.conflicts -= 1;
                    return Err("EAGAIN");
                }
                Ok(b"OK\0".to_vec())
            }
            ty::GET_DOMAIN_PATH => Ok(format!("/local/domain/{}\0", arg(0)?).into_bytes()),
            ty::IS_DOMAIN_INTRODUCED => {
                let d: u32 = arg(0)?.parse().map_err(|_| "EINVAL")?;
                Ok(if self.introduced.contains(&d) {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                })
            }
            _ => Err("ENOSYS"),
        }
    }
}

impl FakeXenstore {
    pub fn new() -> FakeXenstore {
        let f = FakeXenstore::default();
        f.state().ensure("/local/domain");
        f
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client connected to this store through a socket pair, served by a thread that ends
    /// when the client closes.
    pub fn connect(&self) -> (Xs, JoinHandle<()>) {
        self.try_connect().expect("the fake xenstored is stopped")
    }

    /// Like [`FakeXenstore::connect`], but refused (as a stopped xenstored's socket would be)
    /// while the store is stopped.
    pub fn try_connect(&self) -> Result<(Xs, JoinHandle<()>), XsError> {
        let epoch = {
            let s = self.state();
            if s.down {
                return Err(XsError::Open {
                    path: "fake-xenstored".into(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            s.epoch
        };
        let (a, b) = UnixStream::pair().expect("socketpair");
        let id = {
            let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            *c += 1;
            *c
        };
        let me = self.clone();
        let join = std::thread::spawn(move || me.serve(id, epoch, b));
        let xs = Xs::from_stream(a, Path::new("fake-xenstored")).expect("nonblocking");
        Ok((xs, join))
    }

    /// xenstored goes away: every connection is closed (its watches gone) and new ones are
    /// refused until [`FakeXenstore::start`]. The tree is kept, as across a live update.
    pub fn stop(&self) {
        let mut s = self.state();
        s.down = true;
        s.epoch += 1;
    }

    /// xenstored is back: connections are accepted again.
    pub fn start(&self) {
        self.state().down = false;
    }

    /// How many watches are registered (by every connection).
    pub fn watch_count(&self) -> usize {
        self.state().watches.len()
    }

    fn serve(&self, id: usize, epoch: u64, mut s: UnixStream) {
        let mut dec = Decoder::default();
        let mut buf = [0u8; 8192];
        s.set_read_timeout(Some(std::time::Duration::from_millis(5)))
            .expect("timeout");
        loop {
            {
                let mut st = self.state();
                if st.epoch != epoch {
                    st.watches.retain(|(c, _, _)| *c != id);
                    st.outbox.remove(&id);
                    drop(st);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
            // Deliver events queued for this connection (also those caused by others).
            let out = self.state().outbox.remove(&id).unwrap_or_default();
            // One write for the lot, as a busy xenstored's output looks.
            let bytes: Vec<u8> = out
                .iter()
                .flat_map(|m| m.encode().expect("small"))
                .collect();
            if !bytes.is_empty() && s.write_all(&bytes).is_err() {
                return;
            }
            match s.read(&mut buf) {
                Ok(0) => {
                    self.state().watches.retain(|(c, _, _)| *c != id);
                    return;
                }
                Ok(n) => dec.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
            while let Ok(Some(m)) = dec.next_message() {
                let r = self.state().handle(id, &m);
                let reply = match r {
                    Ok(p) => Message {
                        ty: m.ty,
                        req_id: m.req_id,
                        tx_id: m.tx_id,
                        payload: p,
                    },
                    Err(errno) => Message {
                        ty: ty::ERROR,
                        req_id: m.req_id,
                        tx_id: m.tx_id,
                        payload: join_nul(&[errno.as_bytes()]),
                    },
                };
                if s.write_all(&reply.encode().expect("small")).is_err() {
                    return;
                }
            }
        }
    }

    // ---- test controls -------------------------------------------------------------------

    pub fn read(&self, path: &str) -> Option<String> {
        self.state()
            .tree
            .get(path)
            .map(|n| String::from_utf8_lossy(&n.value).into_owned())
    }

    pub fn perms(&self, path: &str) -> Option<Vec<String>> {
        self.state().tree.get(path).map(|n| n.perms.clone())
    }

    pub fn exists(&self, path: &str) -> bool {
        self.state().tree.contains_key(path)
    }

    /// Write as a guest would (fires watches).
    pub fn write(&self, path: &str, value: &str) {
        let mut s = self.state();
        s.ensure(path);
        s.tree.get_mut(path).expect("ensured").value = value.as_bytes().to_vec();
        s.fire(path);
    }

    pub fn rm(&self, path: &str) {
        self.state().remove(path);
    }

    /// A domain appears as the toolstack makes it: home directory, name, introduced.
    pub fn introduce(&self, domid: u32, name: &str) {
        let home = format!("/local/domain/{domid}");
        {
            let mut s = self.state();
            s.ensure(&home);
            s.tree.get_mut(&home).expect("ensured").perms = vec![format!("n{domid}")];
            s.introduced.insert(domid);
        }
        self.write(&format!("{home}/name"), name);
        self.write(&format!("{home}/domid"), &domid.to_string());
        self.state().fire("@introduceDomain");
    }

    /// A domain dies and the toolstack removes its home directory.
    pub fn release(&self, domid: u32) {
        self.state().introduced.remove(&domid);
        self.rm(&format!("/local/domain/{domid}"));
        self.state().fire("@releaseDomain");
    }

    /// Make the next `n` transaction commits fail with EAGAIN.
    pub fn conflict_next(&self, n: u32) {
        self.state().conflicts = n;
    }

    /// Requests seen so far: (type, first argument).
    pub fn log(&self) -> Vec<(u32, String)> {
        self.state().log.clone()
    }
}
