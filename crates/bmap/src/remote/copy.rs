//! The copy of an image at a URL: the source it is read from, joined to the local copy.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::debug;

use super::client::{agent, get_all, http_error};
use super::ranged::Ranged;
use super::spans::plan_spans;
use super::url::Url;
use super::{BUFFER, Failure, take};
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
    let compression = Compression::of(Path::new(image.name())).map_err(|e| match e {
        Error::UnsupportedCompression { kind, .. } => Error::UnsupportedCompression {
            path: image.shown(),
            kind,
        },
        e => e,
    })?;
    let (info, bmap_path, ranges) = copier.plan();
    let (size, mapped) = (info.image_size, info.mapped_bytes);
    let bmap_path = bmap_path.to_owned();
    // A DEST this run creates is removed should the download fail after the copy ended.
    let dest_existed = dest.symlink_metadata().is_ok();
    let failure: Failure = Arc::default();
    let mut feed = None;
    let source = if compression == Compression::None {
        let (spans, count) = plan_spans(ranges, image)?;
        debug!(url = %image.shown, spans = count, "fetching the mapped ranges");
        let mut ranged = Ranged {
            agent: agent(image)?,
            url: image.clone(),
            bmap: bmap_path.clone(),
            size,
            spans,
            span: 0..0,
            pos: 0,
            body: None,
            body_at: 0,
            whole: false,
            network: Arc::clone(&network),
            failed: Arc::clone(&failure),
        };
        ranged
            .next_span()
            .map_err(|e| Error::io("read the list of ranges to fetch", image.shown(), e))?;
        // The first request before anything is written: it answers, and its size is right.
        if !ranged.span.is_empty() {
            ranged.pos = ranged.span.start;
            ranged.request()?;
            ranged.pos = 0;
        } else if size > 0 {
            // Nothing mapped: one byte asked for all the same, to check that the image is
            // there and of its size.
            ranged.span = 0..1;
            ranged.request()?;
            ranged.body = None;
            ranged.whole = false;
            ranged.span = size..size;
        }
        Source::Stream {
            reader: BufReader::with_capacity(BUFFER, Box::new(ranged)),
            pos: 0,
            compression,
        }
    } else {
        drop(ranges);
        let body = get_all(image, &network)?;
        let (reader, mut writer) =
            io::pipe().map_err(|e| Error::io("make a pipe for the download", image.shown(), e))?;
        let failed = Arc::clone(&failure);
        let url = image.clone();
        let thread = std::thread::spawn(move || {
            let mut body = body;
            if let Err(e) = io::copy(&mut body, &mut writer)
                && e.kind() != io::ErrorKind::BrokenPipe
            {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(http_error(&url, "fetch", e));
            }
        });
        feed = Some(thread);
        let file = File::from(std::os::fd::OwnedFd::from(reader));
        // What the body is, by its first bytes (as a local image): compressed, archived.
        let opened = Input::from_reader(file, image.shown())
            .and_then(|input| Ok((input.compression(), input.open_image()?)));
        let (compression, opened) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                if let Some(thread) = feed.take() {
                    let _ = thread.join();
                }
                return Err(take(&failure).unwrap_or(e));
            }
        };
        let mut stream = match opened {
            Opened::Stream(reader) => Source::stream(reader, compression),
            Opened::Plain(file) => Source::File(file),
        };
        // Its first bytes arrive and decompress, before anything is written.
        let first = stream.peek();
        if !matches!(first, Ok(n) if n > 0 || mapped == 0) {
            drop(stream);
            if let Some(thread) = feed.take() {
                let _ = thread.join();
            }
            if let Some(e) = take(&failure) {
                return Err(e);
            }
            return Err(match first {
                Err(e) => Error::Corrupt {
                    path: image.shown(),
                    compression: compression.name(),
                    at: 0,
                    source: e,
                },
                Ok(_) => Error::ImageSize {
                    path: image.shown(),
                    bmap: bmap_path,
                    expected: size,
                    actual: 0,
                },
            });
        }
        stream
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
    match (result, take(&failure)) {
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
        (Err(e), None) => Err(e),
        (Ok(mut report), None) => {
            report.network_bytes = Some(network.load(Ordering::Relaxed));
            debug!(
                url = %image.shown,
                network = report.network_bytes,
                mapped,
                "copied from the network"
            );
            Ok(report)
        }
    }
}
