//! The Xen transport (guest side): ring and data pages shared with gntalloc, an unbound event
//! channel for the backend, keys published in xenstore, then the same ring protocol.
//!
//! Handshake (`docs/protocol.md` §3): find the device tmemd offered (`backend` key of our
//! frontend directory), make sure the backend is in `InitWait` (writing our state
//! `Initialising` asks a backend left in another state to reset), read its limits, share
//! pages, bind the port, publish everything with `state = Initialised` in one transaction,
//! wait for `Connected`, answer `Connected`. A backend that leaves `Connected` (or tmemd that
//! stops answering) ends the connection with `Disconnected`, so the pool map reverts to fake
//! handles and reconnects.

use std::time::{Duration, Instant};

use tmem_abi::xenstore::{frontend_path, key, state};
use tmem_ring::{FrontendRing, Layout, PollPolicy};
use tmem_xen::xenbus::{self, Publish};
use tmem_xen::{BoundPort, Evtchn, GrantShare, Tx, Xs, XsError};

use crate::local::{RingConnection, Signal};
use crate::transport::{Connection, Transport};
use crate::FrontError;

const TOKEN: &str = "tmem-front-backend";

/// Reach tmemd through the `tmem` PV device in xenstore.
#[derive(Debug, Clone)]
pub struct XenTransport {
    /// Domain instance: persistent pools are reattached by `(instance, uuid)`. Non-zero.
    pub instance: u64,
    /// Requested layout; the ring is rounded down to a power of two and both are capped by
    /// what the backend advertises.
    pub layout: Layout,
    pub window: usize,
    /// Default: no spin. A vCPU that spins for an answer holds a physical CPU the backend's
    /// vCPU may be waiting for; measured in tests/xen-qemu's xen-path (one domU, dom0 with 2
    /// vCPUs, 2 host CPUs), synchronous puts ran at 87 pages/s with a 50 µs spin and 773
    /// without, gets 757 and 735, pipelined the same or better without.
    pub poll: PollPolicy,
    pub call_timeout: Duration,
    /// How long one handshake may wait for the backend.
    pub connect_timeout: Duration,
}

impl XenTransport {
    pub fn new(instance: u64) -> XenTransport {
        XenTransport {
            instance: instance.max(1),
            layout: Layout {
                ring_pages: 4,
                data_slots: 128,
            },
            window: 128,
            poll: PollPolicy::sleep_at_once(),
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

fn connect_err(what: impl Into<String>) -> FrontError {
    FrontError::Connect {
        what: what.into(),
        source: None,
    }
}

fn xs_err(e: XsError) -> FrontError {
    FrontError::Connect {
        what: "xenstore".into(),
        source: Some(Box::new(e)),
    }
}

/// Read a state key (absent or garbage: None).
fn read_state(xs: &mut Xs, path: &str) -> Result<Option<u32>, XsError> {
    Ok(xenbus::parse_state(xs.read(Tx::NONE, path)?.as_deref()))
}

/// Wait until `pred(state)` holds or `timeout` passes, woken by the watch on `path`.
fn wait_state(
    xs: &mut Xs,
    path: &str,
    timeout: Duration,
    mut pred: impl FnMut(Option<u32>) -> bool,
) -> Result<Option<u32>, XsError> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = read_state(xs, path)?;
        if pred(s) {
            return Ok(s);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(s);
        }
        if !xs.has_events() {
            tmem_xen::sys::poll_fd(
                xs.as_raw_fd(),
                tmem_xen::sys::POLLIN,
                Some(left.min(Duration::from_millis(200))),
            )?;
        }
        xs.pump()?;
        while xs.take_event().is_some() {}
    }
}

impl Transport for XenTransport {
    fn connect(&mut self) -> Result<Box<dyn Connection>, FrontError> {
        let mut xs = Xs::open().map_err(xs_err)?;
        xs.set_timeout(Duration::from_secs(5));
        let domid = xs.own_domid().map_err(xs_err)?;
        let fe = frontend_path(domid);
        let be = xs
            .read_string(Tx::NONE, &format!("{fe}/{}", key::BACKEND))
            .map_err(xs_err)?
            .ok_or_else(|| {
                connect_err("dom0 offers no tmem device to this domain (is tmemd running?)")
            })?;
        tmem_xen::wire::check_path(&be).map_err(|e| connect_err(e.to_string()))?;
        let backend_id = match xs
            .read_string(Tx::NONE, &format!("{fe}/{}", key::BACKEND_ID))
            .map_err(xs_err)?
        {
            Some(s) => tmem_xen::wire::parse_u32(&s)
                .ok_or_else(|| connect_err(format!("bad backend-id {s:?}")))?,
            None => 0,
        };
        let be_state = format!("{be}/{}", key::STATE);
        let fe_state = format!("{fe}/{}", key::STATE);
        xs.watch(&be_state, TOKEN).map_err(xs_err)?;

        // 1. The backend must be waiting for us; ask a backend in another state to reset.
        if read_state(&mut xs, &be_state).map_err(xs_err)? != Some(state::INIT_WAIT) {
            xs.write(
                Tx::NONE,
                &fe_state,
                state::INITIALISING.to_string().as_bytes(),
            )
            .map_err(xs_err)?;
            let s = wait_state(&mut xs, &be_state, self.connect_timeout, |s| {
                s == Some(state::INIT_WAIT)
            })
            .map_err(xs_err)?;
            if s != Some(state::INIT_WAIT) {
                return Err(connect_err(format!(
                    "tmem backend is not waiting for a frontend (state {s:?}; is tmemd running?)"
                )));
            }
        }
        let limits = xenbus::read_backend_limits(&mut xs, &be)
            .map_err(|e| connect_err(format!("backend limits: {e}")))?;

        // 2. Share the pages and allocate the port.
        let want_order = 31 - self.layout.ring_pages.max(1).leading_zeros();
        let order = want_order.min(limits.max_ring_page_order);
        let layout = Layout {
            ring_pages: 1 << order,
            data_slots: self.layout.data_slots.min(limits.max_data_pages),
        };
        let pages = (layout.ring_pages + layout.data_slots) as usize;
        let share = GrantShare::alloc(backend_id, pages, true)
            .map_err(|e| connect_err(format!("cannot share {pages} pages with gntalloc: {e}")))?;
        let refs = share.refs().to_vec();
        let (ring_refs, data_refs) = refs.split_at(layout.ring_pages as usize);
        let dir = if layout.data_slots > 0 {
            let bytes = xenbus::build_data_dir(data_refs);
            let d = GrantShare::alloc(backend_id, bytes.len() / tmem_abi::PAGE_SIZE, false)
                .map_err(|e| connect_err(format!("cannot share the data directory: {e}")))?;
            d.write_at(0, &bytes);
            Some(d)
        } else {
            None
        };
        let ring = FrontendRing::init(share, layout)
            .map_err(|e| FrontError::Disconnected(format!("ring: {e}")))?;
        let evtchn =
            Evtchn::open().map_err(|e| connect_err(format!("cannot open /dev/xen/evtchn: {e}")))?;
        let port = evtchn
            .bind_unbound(backend_id)
            .map_err(|e| connect_err(format!("cannot allocate an event channel: {e}")))?;
        let port = BoundPort { evtchn, port };

        // 3. Publish and wait for the backend.
        let p = Publish {
            ring_page_order: order,
            ring_refs: ring_refs.to_vec(),
            data_pages: layout.data_slots,
            data_dir_refs: dir.as_ref().map(|d| d.refs().to_vec()).unwrap_or_default(),
            event_channel: port.port,
            instance: self.instance,
        };
        xenbus::publish_frontend(&mut xs, &fe, &p).map_err(xs_err)?;
        let s = wait_state(&mut xs, &be_state, self.connect_timeout, |s| {
            matches!(
                s,
                Some(state::CONNECTED) | Some(state::CLOSING) | Some(state::CLOSED)
            )
        })
        .map_err(xs_err)?;
        if s != Some(state::CONNECTED) {
            let why = xs
                .read_string(Tx::NONE, &format!("{be}/error"))
                .ok()
                .flatten()
                .unwrap_or_else(|| format!("backend state {s:?}"));
            // Let the backend reset for the next attempt.
            let _ = xs.write(Tx::NONE, &fe_state, state::CLOSED.to_string().as_bytes());
            return Err(connect_err(format!(
                "tmem backend refused the connection: {why}"
            )));
        }
        xs.write(Tx::NONE, &fe_state, state::CONNECTED.to_string().as_bytes())
            .map_err(xs_err)?;
        while xs.take_event().is_some() {}
        let signal = XenSignal {
            xs,
            be_state,
            fe_state,
            domid,
            port: Some(port),
            _dir: dir,
        };
        Ok(Box::new(RingConnection::with_signal(
            ring,
            signal,
            0,
            self.window,
            self.poll,
            self.call_timeout,
        )))
    }

    fn describe(&self) -> String {
        "xen:device/tmem/0".into()
    }
}

impl Drop for XenSignal {
    /// After `xl restore` or a migration the domain runs under a new id, and Linux's evtchn
    /// driver has lost the binding of every port a process bound before the save: unbinding
    /// one, or closing the evtchn file with it still bound, hits a BUG() in the guest kernel
    /// (`evtchn_unbind_from_user`, seen on Debian's 6.1 in tests/xen-qemu's save-probe). So a
    /// port of a domain that has moved is left bound and its file open for the life of the
    /// process: one descriptor per save/restore, instead of a dead guest process. The
    /// reconnect that follows gets new grants and a new port.
    fn drop(&mut self) {
        let moved = !matches!(self.xs.own_domid(), Ok(d) if d == self.domid);
        if moved {
            std::mem::forget(self.port.take());
        }
    }
}

/// Event channel for kicks and notifications; xenstore (the backend's `state`) for liveness.
#[derive(Debug)]
struct XenSignal {
    xs: Xs,
    be_state: String,
    fe_state: String,
    /// This domain's id when the connection was made.
    domid: u32,
    /// Always `Some` until the connection is dropped (see `Drop`).
    port: Option<BoundPort>,
    /// The data directory pages stay shared for the life of the connection.
    _dir: Option<GrantShare>,
}

impl Signal for XenSignal {
    fn kick(&mut self) {
        if let Some(p) = &self.port {
            let _ = p.notify();
        }
    }

    fn wait(&mut self, timeout: Duration) -> Result<bool, FrontError> {
        let p = self
            .port
            .as_ref()
            .ok_or_else(|| FrontError::Disconnected("event channel closed".into()))?;
        p.evtchn
            .wait(Some(timeout))
            .map_err(|e| FrontError::Disconnected(format!("event channel: {e}")))
    }

    fn check(&mut self) -> Result<(), FrontError> {
        let dead = |e: XsError| FrontError::Disconnected(format!("xenstore: {e}"));
        self.xs.pump().map_err(dead)?;
        if !self.xs.has_events() {
            return Ok(());
        }
        while self.xs.take_event().is_some() {}
        match read_state(&mut self.xs, &self.be_state).map_err(dead)? {
            Some(state::CONNECTED) => Ok(()),
            s => Err(FrontError::Disconnected(format!(
                "tmem backend left Connected (state {s:?})"
            ))),
        }
    }

    fn goodbye(&mut self) {
        let _ = self.xs.write(
            Tx::NONE,
            &self.fe_state,
            state::CLOSING.to_string().as_bytes(),
        );
        let _ = wait_state(&mut self.xs, &self.be_state, Duration::from_secs(1), |s| {
            s != Some(state::CONNECTED)
        });
        let _ = self.xs.write(
            Tx::NONE,
            &self.fe_state,
            state::CLOSED.to_string().as_bytes(),
        );
    }
}
