//! Images, bmap files and signatures over HTTP and HTTPS (ureq, rustls): an `http://` or
//! `https://` URL stands wherever a path does ([`Copier::copy`]'s image, [`find_bmap`],
//! [`BmapFile::open`], [`read_signed`](crate::read_signed)).
//!
//! - An uncompressed image is fetched by HTTP Range requests for the bmap's mapped ranges
//!   only, near ranges coalesced ([`COALESCE`]), one request at a time in order on one
//!   kept-alive connection; a server that ignores Range (answers 200) is read in one GET,
//!   its unmapped bytes read and dropped as a stream's are. The bytes between ranges are
//!   never fetched: the reader gives zeros there, which the copy skips, as it skips a
//!   stream's unmapped bytes.
//! - A compressed image is one GET whose body is fed through a pipe to the decoders, exactly
//!   as a compressed file or a pipe is read.
//! - A bmap file (or a signature) is downloaded into an unlinked temporary file, then read as
//!   a spooled FIFO is.
//!
//! The image's size is checked against the bmap's `ImageSize` (Content-Range's total or
//! Content-Length) before anything is written. A body that ends before its Content-Length is
//! an error, never a short image. `user:password@` in the URL is sent as basic
//! authentication (and shown as `user:***@` in every message), redirects are followed, and
//! `http_proxy`/`https_proxy`/`all_proxy`/`no_proxy` (or their upper-case forms) choose a
//! proxy by the URL's scheme, as curl does.
//!
//! [`Copier::copy`]: crate::Copier::copy
//! [`find_bmap`]: crate::find_bmap
//! [`BmapFile::open`]: crate::BmapFile::open

mod client;
mod copy;
mod counted;
mod proxy;
mod ranged;
mod spans;
mod url;

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tracing::debug;

use crate::error::{Error, Result};
use crate::input::Input;

use client::{exists, get_all, http_error};
pub(crate) use copy::copy;
pub use url::redact;
pub(crate) use url::{Url, is_url_path};

/// Mapped ranges closer than this are fetched by one Range request, the gap with them. A
/// request costs a round trip; a gap smaller than what the link carries in one round trip
/// costs less to download than to skip. Round trips of 10–100 ms at 100 Mbit/s–1 Gbit/s
/// carry 0.1–12 MiB: 1 MiB is near the middle of that span, wastes at most 1 MiB per request
/// saved, and bounds the requests to one per MiB of image.
pub const COALESCE: u64 = 1 << 20;

/// The bmap beside the image at `image` as [`find_bmap`](crate::find_bmap) finds it beside a
/// file: `IMAGE.bmap`, then each extension dropped and `.bmap` added. The URL found, as given
/// (credentials included).
pub(crate) fn find_bmap(image: &Url) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let mut stem = Some(image.clone());
    while let Some(s) = stem {
        let candidate = s.with_suffix(".bmap");
        if exists(&candidate)? {
            debug!(bmap = %candidate.shown, "discovered the bmap file");
            return Ok(PathBuf::from(candidate.raw));
        }
        tried.push(candidate.shown());
        stem = s.without_extension();
    }
    Err(Error::NoBmap {
        image: image.shown(),
        tried,
    })
}

/// The image at `url` as a stream from one GET (for a copy of all of it, `--nobmap`).
pub(crate) fn input(url: &Url) -> Result<Input> {
    let network = Arc::new(AtomicU64::new(0));
    Input::from_reader(get_all(url, &network)?, url.shown())
}

/// Downloads `url` into an unlinked temporary file, rewound: a bmap file or a signature.
pub(crate) fn download(url: &Url, what: &str) -> Result<File> {
    let network = Arc::new(AtomicU64::new(0));
    let mut body = get_all(url, &network)?;
    let mut file = tempfile::tempfile().map_err(|e| {
        Error::io(
            format!("make a temporary file for the {what}"),
            url.shown(),
            e,
        )
    })?;
    io::copy(&mut body, &mut file)
        .map_err(|e| http_error(url, format!("download the {what}"), e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(format!("rewind the downloaded {what}"), url.shown(), e))?;
    debug!(url = %url.shown, bytes = body.got, what, "downloaded");
    Ok(file)
}

/// The detached signature at `sig` downloaded to a named temporary file for gpg if `sig` is a
/// URL; `None` for a local path.
pub(crate) fn signature_file(sig: &Path) -> Result<Option<tempfile::NamedTempFile>> {
    let Some(url) = Url::of(sig) else {
        return Ok(None);
    };
    let mut file = download(&url, "bmap signature")?;
    let mut named = tempfile::NamedTempFile::new()
        .map_err(|e| Error::io("make a temporary file for the signature", url.shown(), e))?;
    io::copy(&mut file, named.as_file_mut())
        .map_err(|e| Error::io("keep the downloaded signature", url.shown(), e))?;
    Ok(Some(named))
}

/// Whether the signature candidate `sig` beside a bmap is there: a file, or a URL that
/// answers.
pub(crate) fn is_there(sig: &Path) -> Result<bool> {
    match Url::of(sig) {
        Some(url) => exists(&url),
        None => Ok(sig.is_file()),
    }
}

/// A failure of the download behind a reader, kept for [`copy`](fn@copy) to report as it is.
type Failure = Arc<Mutex<Option<Error>>>;

fn take(failure: &Failure) -> Option<Error> {
    failure.lock().unwrap_or_else(|p| p.into_inner()).take()
}
