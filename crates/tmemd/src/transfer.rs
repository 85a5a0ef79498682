//! `tmem save` and `tmem restore`: a client's persistent pages leave or enter this tmemd as
//! an image (tmem-image) streamed over the control connection that asked, so tmemd needs no
//! file system access and the administrator's own `tmem` decides where the bytes go.
//!
//! The control thread checks the request and hands the connection to a thread of its own
//! here (at most [`MAX_TRANSFERS`] at once), so a large image never stalls the control
//! socket. A peer that stops reading or writing for [`STALL`] loses its transfer. A restore
//! is all or nothing: the client it builds is destroyed at the first error and only
//! released, detached and waiting for its guest, once the image's trailer and checksum have
//! been checked.

use std::io::{BufReader, BufWriter, Cursor, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tmem_control::{encode_reply, ErrorKind as Kind, OkReply, Op, Reply, Target};
use tmem_image::{
    ImageError, ImageHeader, ImagePage, ImagePool, ImageReader, ImageWriter, PageData,
    PoolKindCode, PAGE_SIZE,
};
use tmem_store::{
    Attach, AttachRefused, ClientId, Identity, KeptPool, Oid, Page, PageKey, PageSink, PageSource,
    PoolKind, Store,
};
use tracing::{info, warn};

use crate::worker::{End, Shared};

/// Transfers running at once; more are refused as busy.
pub const MAX_TRANSFERS: usize = 2;
/// A peer that moves no data for this long loses its transfer.
pub const STALL: Duration = Duration::from_secs(30);
/// Socket buffering of an image, in each direction.
const BUFFER: usize = 256 << 10;

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// A checked transfer request, ready to run on its own thread.
#[derive(Debug)]
pub enum Prepared {
    Save {
        client: ClientId,
        identity: Identity,
        instance: u64,
        name: String,
        pools: Vec<KeptPool>,
    },
    Restore {
        as_identity: Option<Identity>,
    },
}

type Failure = (Kind, String);

/// Check a save or restore in the control thread; `resolve` names the clients a target
/// means. An error is answered at once, like any other request's.
pub fn prepare(
    op: &Op,
    store: &Store,
    resolve: impl Fn(&Target) -> Result<Vec<ClientId>, Failure>,
) -> Result<Prepared, Failure> {
    match op {
        Op::Save { target, live } => {
            let ids = resolve(target)?;
            let [client] = ids[..] else {
                return Err((
                    Kind::InvalidArgument,
                    format!(
                        "a save copies one client and this target names {}; give one domain",
                        ids.len()
                    ),
                ));
            };
            let stats = store.stats();
            let Some(c) = stats.clients.iter().find(|c| c.client_id == client.0) else {
                return Err((Kind::UnknownDomain, "the client went away".into()));
            };
            if c.attached && !live {
                return Err((
                    Kind::Refused,
                    format!(
                        "{} is connected: a save copies a guest that is stopped or \
                         disconnected (xl save suspends it first); stop it, or pass --live \
                         for a point-in-time copy of each page",
                        c.identity()
                    ),
                ));
            }
            let pools = store.persistent_pools(client).map_err(|e| {
                (
                    Kind::Refused,
                    format!("cannot read the client's pools: {e}"),
                )
            })?;
            Ok(Prepared::Save {
                client,
                identity: c.identity(),
                instance: c.instance,
                name: c.name.clone(),
                pools,
            })
        }
        Op::Restore { as_identity } => {
            let as_identity = match as_identity {
                None => None,
                Some(s) => Some(s.parse::<Identity>().map_err(|e| {
                    (
                        Kind::InvalidArgument,
                        format!("bad identity for --as: {e} (e.g. 7 or local:1000:7)"),
                    )
                })?),
            };
            Ok(Prepared::Restore { as_identity })
        }
        other => Err((
            Kind::Malformed,
            format!("{} is not a transfer", other.name()),
        )),
    }
}

/// Run a prepared transfer on its own thread, on the control connection `stream`:
/// `pending` is output not yet sent to the peer, `leftover` input already read past the
/// request line. `who` names the administrator for the audit line.
pub fn spawn(
    prepared: Prepared,
    stream: UnixStream,
    pending: Vec<u8>,
    leftover: Vec<u8>,
    shared: Arc<Shared>,
    who: String,
) {
    let busy = |stream: &UnixStream, pending: &[u8]| {
        let mut s = stream;
        let _ = s.set_nonblocking(false);
        let _ = s.write_all(pending);
        let _ = s.write_all(&encode_reply(Reply::Error {
            kind: Kind::Busy,
            message: format!(
                "{MAX_TRANSFERS} saves or restores are running already; try again when one ends"
            ),
        }));
    };
    if ACTIVE.fetch_add(1, Ordering::AcqRel) >= MAX_TRANSFERS {
        ACTIVE.fetch_sub(1, Ordering::AcqRel);
        busy(&stream, &pending);
        return;
    }
    let run = move || {
        let _slot = Slot;
        if let Err(e) = blocking(&stream) {
            warn!("{who}: transfer connection unusable: {e}");
            return;
        }
        match prepared {
            Prepared::Save {
                client,
                identity,
                instance,
                name,
                pools,
            } => {
                let started = Instant::now();
                match save(&shared.store, &stream, &pending, client, identity, instance, &name, &pools) {
                    Ok((pages, gone)) => info!(
                        op = "save",
                        "administrative action by {who}: save {identity}: {pages} pages in {} pools \
                         sent ({gone} flushed meanwhile) in {:.1}s",
                        pools.len(),
                        started.elapsed().as_secs_f64()
                    ),
                    Err(e) => warn!(
                        op = "save",
                        "administrative action by {who}: save {identity}: failed: {e}"
                    ),
                }
                let _ = stream.shutdown(Shutdown::Both);
            }
            Prepared::Restore { as_identity } => {
                let input = BufReader::with_capacity(BUFFER, Cursor::new(leftover).chain(&stream));
                let started = Instant::now();
                let outcome = restore(&shared, input, as_identity);
                match &outcome {
                    Ok(OkReply::Restored {
                        identity,
                        pools,
                        pages,
                        gone,
                    }) => info!(
                        op = "restore",
                        "administrative action by {who}: restore {identity}: {pages} pages in \
                         {pools} pools stored ({gone} were flushed before the save ended) in \
                         {:.1}s; the client waits for its guest",
                        started.elapsed().as_secs_f64()
                    ),
                    Ok(_) => {}
                    Err((kind, message)) => warn!(
                        op = "restore",
                        "administrative action by {who}: restore: failed ({kind:?}): {message}"
                    ),
                }
                let reply = match outcome {
                    Ok(ok) => Reply::Ok(ok),
                    Err((kind, message)) => Reply::Error { kind, message },
                };
                let mut s = &stream;
                let _ = s.write_all(&pending);
                let _ = s.write_all(&encode_reply(reply));
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("tmemd-transfer".into())
        .spawn(run)
    {
        ACTIVE.fetch_sub(1, Ordering::AcqRel);
        warn!("cannot start a transfer thread: {e}");
    }
}

/// Gives the transfer's place back however its thread ends.
struct Slot;
impl Drop for Slot {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

fn blocking(stream: &UnixStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(STALL))?;
    stream.set_write_timeout(Some(STALL))
}

/// A page read out of the store, as the image carries it.
#[derive(Default)]
struct Capture(Option<PageData>);
impl PageSink for Capture {
    fn write_page(&mut self, src: &Page) {
        self.0 = Some(PageData::Data(Box::new(*src)));
    }
    fn write_filled_page(&mut self, word: u64) {
        self.0 = Some(PageData::Filled(word));
    }
}

#[allow(clippy::too_many_arguments)]
fn save(
    store: &Store,
    stream: &UnixStream,
    pending: &[u8],
    client: ClientId,
    identity: Identity,
    instance: u64,
    name: &str,
    pools: &[KeptPool],
) -> Result<(u64, u64), String> {
    let pages: u64 = pools.iter().map(|p| p.keys.len() as u64).sum();
    let mut out = BufWriter::with_capacity(BUFFER, stream);
    let io = |e: std::io::Error| format!("the peer stopped reading: {e}");
    out.write_all(pending).map_err(io)?;
    out.write_all(&encode_reply(Reply::Ok(OkReply::Saving {
        identity: identity.to_string(),
        pools: pools.len() as u32,
        pages,
    })))
    .map_err(io)?;
    let header = ImageHeader {
        identity: identity.to_string(),
        instance,
        name: name.to_string(),
        pools: pools
            .iter()
            .map(|p| ImagePool {
                kind: PoolKindCode::PrivatePersistent,
                uuid: p.uuid,
                pages: p.keys.len() as u64,
            })
            .collect(),
        pages,
    };
    let mut w = ImageWriter::new(out, &header).map_err(io)?;
    let mut gone = 0;
    for (i, p) in pools.iter().enumerate() {
        for k in &p.keys {
            let mut sink = Capture::default();
            let data = match store.read_kept(client, p.pool, *k, &mut sink) {
                Ok(true) => sink.0.unwrap_or(PageData::Gone),
                Ok(false) => PageData::Gone,
                // The client was destroyed under the save: an image without its trailer
                // tells the peer the copy is incomplete.
                Err(e) => return Err(format!("the client's pages went away during the save: {e}")),
            };
            if data == PageData::Gone {
                gone += 1;
            }
            w.page(&ImagePage {
                pool: i as u32,
                oid: k.oid.0,
                index: k.index,
                data,
            })
            .map_err(io)?;
        }
    }
    w.finish().map_err(io)?;
    Ok((pages - gone, gone))
}

/// A page of an image, as the store's put reads it.
struct Source<'a>(&'a PageData);
impl PageSource for Source<'_> {
    fn read_page(&self, dst: &mut Page) {
        match self.0 {
            PageData::Data(d) => dst.copy_from_slice(&d[..]),
            PageData::Filled(w) => tmem_abi::page::fill_page(dst, *w),
            PageData::Gone => dst.fill(0),
        }
    }
}

/// A bad image is a failed restore (exit status 1), not a usage error: the command line was
/// right, the file was not.
fn bad_image(e: ImageError) -> Failure {
    (Kind::Refused, e.to_string())
}

fn restore(
    shared: &Shared,
    input: impl Read,
    as_identity: Option<Identity>,
) -> Result<OkReply, Failure> {
    let store = &shared.store;
    let (header, mut reader) = ImageReader::new(input).map_err(bad_image)?;
    let identity = match as_identity {
        Some(i) => i,
        None => header.identity.parse::<Identity>().map_err(|e| {
            (
                Kind::Refused,
                format!("the image names its client '{}': {e}", header.identity),
            )
        })?,
    };
    let exists = || {
        (
            Kind::Refused,
            format!(
                "{identity} already has a client in this tmemd (connected, or kept for a \
                 reattach), and two guests must never share one set of pages: `tmem destroy` \
                 it first, or restore with --as another identity"
            ),
        )
    };
    if store.client_by_identity(identity).is_some() {
        return Err(exists());
    }
    let client = match store.attach(identity, header.instance, &header.name) {
        Ok((c, Attach::New)) => c,
        Ok((_, Attach::Reattached)) | Err(AttachRefused::Attached(_)) => return Err(exists()),
        Err(e) => return Err((Kind::Refused, e.to_string())),
    };
    match fill(store, client, &header, &mut reader) {
        Ok(gone) => {
            // Detached like a guest that went away: it waits the reattach grace period.
            shared.release(client, End::Detach);
            Ok(OkReply::Restored {
                identity: identity.to_string(),
                pools: header.pools.len() as u32,
                pages: header.pages - gone,
                gone,
            })
        }
        Err(e) => {
            store.destroy_client(client);
            Err(e)
        }
    }
}

/// Create the image's pools for `client` and store its pages; returns the pages marked gone.
fn fill(
    store: &Store,
    client: ClientId,
    header: &ImageHeader,
    reader: &mut ImageReader<impl Read>,
) -> Result<u64, Failure> {
    let mut ids = Vec::with_capacity(header.pools.len());
    for p in &header.pools {
        let PoolKindCode::PrivatePersistent = p.kind;
        let (id, _) = store
            .new_pool(client, p.uuid, PoolKind::PrivatePersistent)
            .map_err(|e| {
                (
                    Kind::Refused,
                    format!("cannot create a pool of the image: {e}"),
                )
            })?;
        ids.push(id);
    }
    let mut gone = 0;
    while let Some(page) = reader.next_page().map_err(bad_image)? {
        if page.data == PageData::Gone {
            gone += 1;
            continue;
        }
        let key = PageKey {
            oid: Oid(page.oid),
            index: page.index,
        };
        store
            .put(client, ids[page.pool as usize], key, &Source(&page.data))
            .map_err(|e| {
                (
                    Kind::Refused,
                    format!(
                        "tmemd cannot hold the image ({} of {} pages stored): {e}; raise \
                         mem_limit or the client's cap, or free memory",
                        reader.pages_read() - 1 - gone,
                        header.pages
                    ),
                )
            })?;
    }
    const _: () = assert!(PAGE_SIZE == tmem_store::PAGE_SIZE);
    Ok(gone)
}
