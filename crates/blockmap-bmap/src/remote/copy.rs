//! The copy of an image at a URL: the source it is read from, joined to the local copy.

use std::fs::File;
use std::io::{self, PipeWriter};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::debug;

use super::client::{get_all, http_error};
use super::counted::Counted;
use super::ranged::Ranged;
use super::spans::plan_spans;
use super::url::Url;
use super::{Failure, take};
use crate::copy::{Copier, CopyReport};
use crate::error::{Error, Result};
use crate::input::{Input, Opened};
use crate::source::{Compression, Source};

/// Copies the image at `image` by `copier`: see the module's documentation.
pub(crate) fn copy(copier: Copier<'_>, image: &Url, dest: &Path) -> Result<CopyReport> {
    let _span =
        tracing::debug_span!("bmap::copy", image = %image.shown, dest = %dest.display()).entered();
    let started = Instant::now();
    let network = Arc::new(AtomicU64::new(0));
    let compression = compression_of(image)?;
    let (info, bmap_path, ranges) = copier.plan();
    let (size, mapped) = (info.image_size, info.mapped_bytes);
    let bmap_path = bmap_path.to_owned();
    // A DEST this run creates is removed should the download fail after the copy ended.
    let dest_existed = dest.symlink_metadata().is_ok();
    let failure: Failure = Arc::default();
    let (source, feed) = if compression == Compression::None {
        let (spans, count) = plan_spans(ranges, image)?;
        debug!(url = %image.shown, spans = count, "fetching the mapped ranges");
        let ranged = Ranged::open(image, bmap_path, size, spans, &network, &failure)?;
        let source = Source::stream(Box::new(ranged), compression);
        (source, None)
    } else {
        drop(ranges);
        let (source, feed) = piped(image, &bmap_path, size, mapped, &network, &failure)?;
        (source, Some(feed))
    };
    let result = copier.copy_source(
        source,
        crate::copy::Reading {
            rereadable: false,
            plan: None,
        },
        &image.shown(),
        dest,
        started,
    );
    // The feeding thread has its answer once the pipe's reader is gone.
    if let Some(thread) = feed {
        let _ = thread.join();
    }
    let mut report = with_download(result, &failure, dest, dest_existed)?;
    report.network_bytes = Some(network.load(Ordering::Relaxed));
    debug!(
        url = %image.shown,
        network = report.network_bytes,
        mapped,
        "copied from the network"
    );
    Ok(report)
}

/// The compression the URL's path names (its error naming the URL as shown).
fn compression_of(image: &Url) -> Result<Compression> {
    Compression::of(Path::new(image.name())).map_err(|e| match e {
        Error::UnsupportedCompression { kind, .. } => Error::UnsupportedCompression {
            path: image.shown(),
            kind,
        },
        e => e,
    })
}

/// A compressed image: one GET, its body copied into a pipe by a thread (returned), the
/// pipe's read end opened as a local stream is (magic bytes, decoders, archives). Its first
/// bytes arrive and decompress before anything is written.
fn piped(
    image: &Url,
    bmap: &Path,
    size: u64,
    mapped: u64,
    network: &Arc<AtomicU64>,
    failure: &Failure,
) -> Result<(Source, JoinHandle<()>)> {
    let body = get_all(image, network)?;
    let (reader, writer) =
        io::pipe().map_err(|e| Error::io("make a pipe for the download", image.shown(), e))?;
    let feed = feed_pipe(body, writer, image, failure);
    let file = File::from(std::os::fd::OwnedFd::from(reader));
    // What the body is, by its first bytes (as a local image): compressed, archived.
    let opened = Input::from_reader(file, image.shown())
        .and_then(|input| Ok((input.compression(), input.open_image()?)));
    let (compression, opened) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            let _ = feed.join();
            return Err(take(failure).unwrap_or(e));
        }
    };
    let mut stream = match opened {
        Opened::Stream(reader) => Source::stream(reader, compression),
        Opened::Plain(file) => Source::File(file),
    };
    let first = stream.peek();
    if matches!(first, Ok(n) if n > 0 || mapped == 0) {
        return Ok((stream, feed));
    }
    drop(stream);
    let _ = feed.join();
    Err(take(failure).unwrap_or_else(|| match first {
        Err(e) => Error::Corrupt {
            path: image.shown(),
            compression: compression.name(),
            at: 0,
            source: e,
        },
        Ok(_) => Error::ImageSize {
            path: image.shown(),
            bmap: bmap.to_owned(),
            expected: size,
            actual: 0,
        },
    }))
}

/// A thread copying `body` into the pipe's `writer`; its failure kept in `failure` (a
/// broken pipe is the reader gone, not a failure of the download).
fn feed_pipe(
    mut body: Counted,
    mut writer: PipeWriter,
    url: &Url,
    failure: &Failure,
) -> JoinHandle<()> {
    let failed = Arc::clone(failure);
    let url = url.clone();
    std::thread::spawn(move || {
        if let Err(e) = io::copy(&mut body, &mut writer)
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(http_error(&url, "fetch", e));
        }
    })
}

/// The copy's `result` with the download's `failure`: that failure told as it is, before
/// the copy's error (but after an interruption); a DEST that this run created
/// (`!dest_existed`) removed when the copy succeeded all the same.
fn with_download(
    result: Result<CopyReport>,
    failure: &Failure,
    dest: &Path,
    dest_existed: bool,
) -> Result<CopyReport> {
    match (result, take(failure)) {
        (Err(e @ Error::Interrupted { .. }), _) => Err(e),
        (Ok(_), Some(e)) => {
            // The image decoded whole, yet the download broke after the last byte the
            // decoders needed: a failed transfer all the same.
            if !dest_existed {
                let _ = std::fs::remove_file(dest);
            }
            Err(e)
        }
        (Err(_), Some(e)) => Err(e),
        (result, None) => result,
    }
}
