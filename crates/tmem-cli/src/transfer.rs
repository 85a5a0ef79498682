//! `tmem save` and `tmem restore`: an image of one client's persistent pages streamed over
//! a control connection of its own. A save is checked as it arrives (the same reader tmemd
//! uses, so the checksum is verified end to end) and written to `FILE.partial`, renamed to
//! `FILE` only when complete: a file named FILE is always a whole image.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tmem_control::{encode_request, OkReply, Op, Target};
use tmem_image::{ImageError, ImageReader};

use crate::client::{interpret_reply, Client};
use crate::error::CliError;

/// How long tmemd may send or take nothing before we give up.
const STALL: Duration = Duration::from_secs(60);
/// How long tmemd may take to answer once the whole image is sent (it checks the trailer).
const FINAL_ANSWER: Duration = Duration::from_secs(120);

/// Where an image goes to or comes from: a file, or `-` for stdout / stdin.
fn is_stdio(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Output { what, source }
}

/// A one-line progress display on stderr, drawn only on a terminal.
struct Progress {
    label: String,
    total: u64,
    unit: &'static str,
    on: bool,
    last: Instant,
}

impl Progress {
    fn new(label: String, total: u64, unit: &'static str) -> Progress {
        Progress {
            label,
            total,
            unit,
            on: io::stderr().is_terminal(),
            last: Instant::now() - Duration::from_secs(1),
        }
    }
    fn show(&mut self, done: u64) {
        if !self.on || self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        let pct = (done.min(self.total) * 100)
            .checked_div(self.total)
            .unwrap_or(100);
        let width = 30;
        let filled = (pct as usize * width) / 100;
        eprint!(
            "\r{} [{}{}] {pct:>3}% {done}/{} {}",
            self.label,
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.total,
            self.unit
        );
        let _ = io::stderr().flush();
    }
    fn end(&mut self) {
        if self.on {
            self.last = Instant::now() - Duration::from_secs(1);
            self.show(self.total);
            eprintln!();
        }
    }
}

/// Copies what is read to a writer: the image is checked and stored in one pass.
struct Tee<R, W> {
    input: R,
    copy: W,
    failed: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        if let Err(e) = self.copy.write_all(&buf[..n]) {
            let kind = e.kind();
            self.failed = Some(e);
            return Err(io::Error::new(kind, "writing the image failed"));
        }
        Ok(n)
    }
}

fn image_error(e: ImageError, what: &str) -> CliError {
    match e {
        ImageError::Truncated(_) => CliError::Failed(format!(
            "tmemd ended the {what} before the image was complete; see tmemd's log \
             (journalctl -u tmemd)"
        )),
        other => CliError::Protocol(format!("tmemd sent a bad image: {other}")),
    }
}

/// `tmem save DOMAIN FILE`.
pub fn save(
    client: &Client,
    target: Target,
    live: bool,
    file: &Path,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let unreachable = |source| CliError::Unreachable {
        path: client.path().to_path_buf(),
        source,
    };
    let stream = client.connect()?;
    stream.set_read_timeout(Some(STALL)).map_err(unreachable)?;
    stream.set_write_timeout(Some(STALL)).map_err(unreachable)?;
    (&stream)
        .write_all(&encode_request(&Op::Save { target, live }))
        .map_err(unreachable)?;
    let mut input = BufReader::with_capacity(256 << 10, &stream);
    let (identity, pages) = match reply_line(client, &mut input)? {
        OkReply::Saving {
            identity, pages, ..
        } => (identity, pages),
        other => {
            return Err(CliError::UnexpectedReply {
                op: "save",
                reply: format!("{other:?}"),
            })
        }
    };
    let partial = partial_name(file);
    let sink: Box<dyn Write> = if is_stdio(file) {
        Box::new(io::stdout().lock())
    } else {
        Box::new(
            File::create(&partial)
                .map_err(io_err(format!("cannot create {}", partial.display())))?,
        )
    };
    let mut tee = Tee {
        input,
        copy: io::BufWriter::with_capacity(256 << 10, sink),
        failed: None,
    };
    let mut progress = Progress::new(format!("saving {identity}"), pages, "pages");
    let result = (|| {
        let (_, mut reader) = ImageReader::new(&mut tee).map_err(|e| image_error(e, "save"))?;
        while reader
            .next_page()
            .map_err(|e| image_error(e, "save"))?
            .is_some()
        {
            progress.show(reader.pages_read());
        }
        Ok::<u64, CliError>(reader.pages_read())
    })();
    progress.end();
    let result = match (result, tee.failed.take()) {
        (_, Some(e)) => Err(io_err(format!("writing {}", file.display()))(e)),
        (r, None) => r,
    };
    let finish = result.and_then(|n| {
        let mut copy = tee.copy;
        copy.flush()
            .map_err(io_err(format!("writing {}", file.display())))?;
        drop(copy);
        if !is_stdio(file) {
            File::open(&partial)
                .and_then(|f| f.sync_all())
                .map_err(io_err(format!("syncing {}", partial.display())))?;
            std::fs::rename(&partial, file).map_err(io_err(format!(
                "renaming {} to {}",
                partial.display(),
                file.display()
            )))?;
        }
        Ok(n)
    });
    match finish {
        Ok(n) => {
            if is_stdio(file) {
                eprintln!("saved {identity}: {n} pages");
                Ok(())
            } else {
                writeln!(out, "saved {identity}: {n} pages to {}", file.display())
                    .map_err(io_err("writing output"))
            }
        }
        Err(e) => {
            if !is_stdio(file) {
                let _ = std::fs::remove_file(&partial);
            }
            Err(e)
        }
    }
}

/// Read tmemd's one reply line (the image, if any, follows it in `input`).
fn reply_line(client: &Client, input: &mut impl BufRead) -> Result<OkReply, CliError> {
    let unreachable = |source| CliError::Unreachable {
        path: client.path().to_path_buf(),
        source,
    };
    let mut line = Vec::new();
    input
        .take(1 << 20)
        .read_until(b'\n', &mut line)
        .map_err(unreachable)?;
    if line.is_empty() {
        return Err(unreachable(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "tmemd closed the connection without answering",
        )));
    }
    interpret_reply(&line)
}

fn partial_name(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// `tmem restore FILE`.
pub fn restore(
    client: &Client,
    file: &Path,
    as_identity: Option<String>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let unreachable = |source| CliError::Unreachable {
        path: client.path().to_path_buf(),
        source,
    };
    let (mut input, size): (Box<dyn Read>, u64) = if is_stdio(file) {
        (Box::new(io::stdin().lock()), 0)
    } else {
        let f = File::open(file).map_err(io_err(format!("cannot open {}", file.display())))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(f), size)
    };
    let stream = client.connect()?;
    stream.set_read_timeout(Some(STALL)).map_err(unreachable)?;
    stream.set_write_timeout(Some(STALL)).map_err(unreachable)?;
    let mut sent_ok = (&stream)
        .write_all(&encode_request(&Op::Restore { as_identity }))
        .is_ok();
    let mut progress = Progress::new(
        format!("restoring {}", file.display()),
        size.div_ceil(1 << 20),
        "MiB",
    );
    let mut buf = vec![0u8; 256 << 10];
    let mut sent = 0u64;
    while sent_ok {
        let n = input
            .read(&mut buf)
            .map_err(io_err(format!("reading {}", file.display())))?;
        if n == 0 {
            break;
        }
        // tmemd stops reading at the first error in the image and answers: read that
        // answer rather than reporting a broken pipe.
        sent_ok = (&stream).write_all(&buf[..n]).is_ok();
        sent += n as u64;
        progress.show(sent >> 20);
    }
    progress.end();
    let _ = stream.shutdown(Shutdown::Write);
    stream
        .set_read_timeout(Some(FINAL_ANSWER))
        .map_err(unreachable)?;
    match reply_line(client, &mut BufReader::new(&stream))? {
        OkReply::Restored {
            identity,
            pools,
            pages,
            gone,
        } => {
            let flushed = if gone > 0 {
                format!(" ({gone} flushed during the save were left out)")
            } else {
                String::new()
            };
            writeln!(
                out,
                "restored {identity}: {pages} pages in {pools} pool{}{flushed}; they wait for \
                 the guest to reattach",
                if pools == 1 { "" } else { "s" }
            )
            .map_err(io_err("writing output"))
        }
        other => Err(CliError::UnexpectedReply {
            op: "restore",
            reply: format!("{other:?}"),
        }),
    }
}
