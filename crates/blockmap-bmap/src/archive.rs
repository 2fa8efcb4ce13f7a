//! The image inside an archive, as a stream: the first regular member of a tar (compressed or
//! not) or the first file of a zip, never extracted to disk.
//!
//! The `tar` and `zip` crates hand a member out as a reader borrowed from the archive; a
//! thread owns the archive and sends the member's bytes in bounded chunks
//! ([`CHUNKS`] × [`CHUNK`]) to a [`Member`] reader, which is what the copy reads. After the
//! member, a tar is read on to its end, so that a compressed archive's own checksums are
//! checked and a corrupt archive fails the copy.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use tracing::debug;

use crate::error::{Error, Result};
use crate::input::Container;
use crate::source::Compression;

/// Bytes a chunk holds on its way from the archive's thread.
const CHUNK: usize = 256 << 10;
/// Chunks in flight.
const CHUNKS: usize = 4;

/// What the archive is, for messages.
#[derive(Debug, Clone)]
pub(crate) struct Label {
    pub(crate) path: PathBuf,
    pub(crate) container: Container,
    pub(crate) compression: Compression,
}

impl Label {
    fn kind(&self) -> String {
        match self.compression {
            Compression::None => format!("{} archive", self.container.name()),
            c => format!(
                "{} archive ({} compressed)",
                self.container.name(),
                c.name()
            ),
        }
    }
}

/// An archive's failure, carried through `io::Error` to the copy, which makes it an
/// [`Error::Archive`] (see [`into_error`]).
#[derive(Debug)]
struct ArchiveFailure(String);

impl std::fmt::Display for ArchiveFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArchiveFailure {}

/// The archive's failure inside `e`, if that is what it is.
pub(crate) fn into_error(e: &io::Error, path: &std::path::Path, at: u64) -> Option<Error> {
    let failure = e.get_ref()?.downcast_ref::<ArchiveFailure>()?;
    Some(Error::Archive {
        path: path.to_owned(),
        reason: format!("{} (at byte {at} of the image)", failure.0),
    })
}

/// The first regular member of the tar archive `bytes` (already decompressed).
pub(crate) fn tar(bytes: Box<dyn Read + Send>, label: Label) -> Result<Box<dyn Read + Send>> {
    spawn(label, move |out, label| {
        let mut archive = tar::Archive::new(bytes);
        let mut found = false;
        for entry in archive.entries()? {
            let mut entry = entry?;
            let kind = entry.header().entry_type();
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            // A GNU sparse member (`tar -S`) is made whole by the tar crate.
            let regular =
                kind.is_file() || kind.is_gnu_sparse() || kind == tar::EntryType::Continuous;
            if found || !regular {
                debug!(archive = %label.path.display(), member = name, ?kind, "member skipped");
                continue;
            }
            debug!(archive = %label.path.display(), member = name, size = entry.size(), "the image");
            match pax_sparse(&mut entry)? {
                Some(sparse) => sparse.expand(&mut entry, out)?,
                None => {
                    out.copy_from(&mut entry)?;
                }
            }
            found = true;
        }
        if !found {
            return Err(failure(format!(
                "the {} holds no regular file",
                label.kind()
            )));
        }
        // The end-of-archive blocks and padding, and a compressed format's trailer.
        io::copy(&mut archive.into_inner(), &mut io::sink())?;
        Ok(())
    })
}

/// A member stored sparse in the POSIX (pax) way, as `tar --format=posix -S` writes it: its
/// data segments one after another, where they go listed in pax records (formats 0.0 and 0.1)
/// or in a map before the data (1.0). The tar crate reads only GNU's own sparse headers.
#[derive(Debug, Default)]
struct PaxSparse {
    /// The member's real size.
    size: u64,
    /// (offset, length) of each data segment, in order.
    segments: Vec<(u64, u64)>,
    /// Whether the map is at the start of the data (format 1.0).
    map_in_data: bool,
}

/// Bytes of a map in the data (format 1.0) at most: 1 MiB, some 40000 segments.
const MAX_SPARSE_MAP: usize = 1 << 20;

fn pax_sparse<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Option<PaxSparse>> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(None);
    };
    let mut sparse = PaxSparse::default();
    let (mut major, mut minor, mut any) = (None, None, false);
    let number = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| failure(format!("a pax sparse record that is not a number: {v:?}")))
    };
    let mut offset = None;
    for extension in extensions {
        let extension = extension?;
        let (Ok(key), Ok(value)) = (extension.key(), extension.value()) else {
            continue;
        };
        match key {
            "GNU.sparse.major" => major = Some(number(value)?),
            "GNU.sparse.minor" => minor = Some(number(value)?),
            "GNU.sparse.realsize" | "GNU.sparse.size" => {
                sparse.size = number(value)?;
                any = true;
            }
            // 0.1: "offset,length,offset,length,…"
            "GNU.sparse.map" => {
                let numbers = value
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(number)
                    .collect::<io::Result<Vec<_>>>()?;
                sparse.segments.extend(
                    numbers
                        .chunks(2)
                        .map(|p| (p[0], p.get(1).copied().unwrap_or(0))),
                );
            }
            // 0.0: the pairs as records of their own.
            "GNU.sparse.offset" => offset = Some(number(value)?),
            "GNU.sparse.numbytes" => {
                let start = offset
                    .take()
                    .ok_or_else(|| failure("GNU.sparse.numbytes without its offset".to_owned()))?;
                sparse.segments.push((start, number(value)?));
            }
            _ => {}
        }
    }
    if !any {
        return Ok(None);
    }
    sparse.map_in_data = major == Some(1) && minor == Some(0);
    if !sparse.map_in_data && major.is_some_and(|m| m != 0) {
        return Err(failure(format!(
            "a pax sparse member of format {}.{}, which is not read",
            major.unwrap_or(0),
            minor.unwrap_or(0)
        )));
    }
    Ok(Some(sparse))
}

impl PaxSparse {
    /// Writes the member whole: zeros where it has no data.
    fn expand(mut self, data: &mut dyn Read, out: &mut Sender) -> io::Result<()> {
        if self.map_in_data {
            self.segments = read_sparse_map(data)?;
        }
        let mut at = 0u64;
        for (offset, length) in std::mem::take(&mut self.segments) {
            if offset < at || offset.saturating_add(length) > self.size {
                return Err(failure(format!(
                    "a pax sparse map out of order or past the member's size ({} bytes)",
                    self.size
                )));
            }
            out.zeros(offset - at)?;
            let copied = out.copy_from(&mut data.take(length))?;
            if copied < length {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            at = offset + length;
        }
        out.zeros(self.size - at)
    }
}

/// The map at the start of a 1.0 pax sparse member: the count of segments, then an offset and
/// a length for each, every number on a line, padded to a 512-byte block.
fn read_sparse_map(data: &mut dyn Read) -> io::Result<Vec<(u64, u64)>> {
    let mut numbers = Vec::new();
    let mut line = Vec::new();
    let mut wanted = None;
    let mut block = [0u8; 512];
    let mut read = 0;
    loop {
        data.read_exact(&mut block)?;
        read += block.len();
        if read > MAX_SPARSE_MAP {
            return Err(failure("a pax sparse map larger than 1 MiB".to_owned()));
        }
        for &b in &block {
            if wanted.is_some_and(|w| numbers.len() == w) {
                break;
            }
            if b != b'\n' {
                line.push(b);
                continue;
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let n = text
                .parse::<u64>()
                .map_err(|_| failure(format!("a pax sparse map with {text:?} in it")))?;
            line.clear();
            match wanted {
                None => wanted = Some(usize::try_from(n).unwrap_or(usize::MAX).saturating_mul(2)),
                Some(_) => numbers.push(n),
            }
        }
        if wanted.is_some_and(|w| numbers.len() == w) {
            // The rest of this block is padding; the data begins at the next.
            return Ok(numbers.chunks(2).map(|p| (p[0], p[1])).collect());
        }
    }
}

/// The first file of a zip archive read by its central directory.
pub(crate) fn zip_seekable(file: File, label: Label) -> Result<Box<dyn Read + Send>> {
    spawn(label, move |out, label| {
        let mut archive = zip::ZipArchive::new(file).map_err(zip_error)?;
        for index in 0..archive.len() {
            let mut member = archive.by_index(index).map_err(zip_error)?;
            if !member.is_file() {
                debug!(archive = %label.path.display(), member = ?member.name(), "member skipped");
                continue;
            }
            debug!(archive = %label.path.display(), member = ?member.name(), size = member.size(), "the image");
            out.copy_from(&mut member)?;
            return Ok(());
        }
        Err(failure(format!("the {} holds no file", label.kind())))
    })
}

/// The first file of a zip archive read in order, by its local headers (a pipe).
pub(crate) fn zip_stream(
    mut bytes: Box<dyn Read + Send>,
    label: Label,
) -> Result<Box<dyn Read + Send>> {
    spawn(label, move |out, label| {
        while let Some(mut member) =
            zip::read::read_zipfile_from_stream(&mut bytes).map_err(zip_error)?
        {
            if !member.is_file() {
                debug!(archive = %label.path.display(), member = ?member.name(), "member skipped");
                continue;
            }
            debug!(archive = %label.path.display(), member = ?member.name(), "the image");
            out.copy_from(&mut member)?;
            return Ok(());
        }
        Err(failure(format!("the {} holds no file", label.kind())))
    })
}

fn failure(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, ArchiveFailure(message))
}

fn zip_error(e: zip::result::ZipError) -> io::Error {
    match e {
        zip::result::ZipError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// Runs `produce` on a thread writing into the returned reader. Its error (any but the
/// reader having gone away) ends the reader, named by the archive's label.
fn spawn(
    label: Label,
    produce: impl FnOnce(&mut Sender, &Label) -> io::Result<()> + Send + 'static,
) -> Result<Box<dyn Read + Send>> {
    let (tx, rx) = sync_channel(CHUNKS);
    let path = label.path.clone();
    std::thread::Builder::new()
        .name("bmap-archive".to_owned())
        .spawn(move || {
            let mut out = Sender {
                tx,
                buf: vec![0; CHUNK],
                fill: 0,
            };
            let outcome = produce(&mut out, &label).and_then(|()| out.flush());
            if let Err(e) = outcome {
                if e.kind() == io::ErrorKind::BrokenPipe && e.raw_os_error().is_none() {
                    return; // The reader is gone: nobody to tell.
                }
                let e = if e.get_ref().is_some_and(|i| i.is::<ArchiveFailure>())
                    || e.raw_os_error().is_some()
                {
                    e
                } else {
                    failure(format!("the {} is corrupt: {e}", label.kind()))
                };
                let _ = out.tx.send(Err(e));
            }
        })
        .map_err(|e| Error::io("start the archive reader", path, e))?;
    Ok(Box::new(Member {
        rx,
        chunk: Vec::new(),
        at: 0,
        ended: false,
    }))
}

/// The producing side: chunks filled by reads straight into them, sent when full.
struct Sender {
    tx: SyncSender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    fill: usize,
}

impl Sender {
    /// Reads `r` to its end into chunks: the bytes read.
    fn copy_from(&mut self, r: &mut dyn Read) -> io::Result<u64> {
        let mut copied = 0;
        loop {
            if self.fill == CHUNK {
                self.flush()?;
            }
            match r.read(&mut self.buf[self.fill..]) {
                Ok(0) => return Ok(copied),
                Ok(n) => {
                    self.fill += n;
                    copied += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `n` zero bytes.
    fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            if self.fill == CHUNK {
                self.flush()?;
            }
            let k = (CHUNK - self.fill).min(usize::try_from(n).unwrap_or(usize::MAX));
            self.buf[self.fill..self.fill + k].fill(0);
            self.fill += k;
            n -= k as u64;
        }
        Ok(())
    }

    /// Sends what is filled.
    fn flush(&mut self) -> io::Result<()> {
        if self.fill == 0 {
            return Ok(());
        }
        let mut full = std::mem::replace(&mut self.buf, vec![0; CHUNK]);
        full.truncate(std::mem::take(&mut self.fill));
        self.tx
            .send(Ok(full))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

/// The member's bytes, as the archive's thread sends them; its end is the thread's end.
struct Member {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for Member {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                // The thread is done: all was sent.
                Err(_) => {
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
