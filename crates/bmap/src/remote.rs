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

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::debug;
use ureq::http::{Response, StatusCode, header};
use ureq::{Agent, Body, BodyReader};

use crate::copy::{Copier, CopyReport};
use crate::error::{Error, Result};
use crate::input::{Input, Opened};
use crate::source::{Compression, Source};

/// Mapped ranges closer than this are fetched by one Range request, the gap with them. A
/// request costs a round trip; a gap smaller than what the link carries in one round trip
/// costs less to download than to skip. Round trips of 10–100 ms at 100 Mbit/s–1 Gbit/s
/// carry 0.1–12 MiB: 1 MiB is near the middle of that span, wastes at most 1 MiB per request
/// saved, and bounds the requests to one per MiB of image.
pub const COALESCE: u64 = 1 << 20;
/// Read buffer of a response body.
const BUFFER: usize = 256 << 10;
/// How long a connection may take, and a response's headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// An `http://` or `https://` URL as given, and as shown (its password replaced by `***`).
#[derive(Debug, Clone)]
pub(crate) struct Url {
    raw: String,
    shown: String,
}

impl Url {
    /// The URL in `path`, if it is one (`http://` or `https://`, any case of the scheme).
    pub(crate) fn of(path: &Path) -> Option<Url> {
        let raw = path.to_str()?;
        is_url(raw).then(|| Url {
            raw: raw.to_owned(),
            shown: redact(raw).into_owned(),
        })
    }

    /// The URL for messages, as a path (the type errors carry).
    pub(crate) fn shown(&self) -> PathBuf {
        PathBuf::from(&self.shown)
    }

    /// Where the URL's path ends (before its query or fragment).
    fn path_end(&self) -> usize {
        self.raw.find(['?', '#']).unwrap_or(self.raw.len())
    }

    /// The URL's path, for the compression its name says.
    fn name(&self) -> &str {
        &self.raw[..self.path_end()]
    }

    /// `suffix` added to the URL's path (before its query).
    fn with_suffix(&self, suffix: &str) -> Url {
        let end = self.path_end();
        let raw = format!("{}{suffix}{}", &self.raw[..end], &self.raw[end..]);
        Url {
            shown: redact(&raw).into_owned(),
            raw,
        }
    }

    /// The URL with its last extension dropped (`disk.img.xz` → `disk.img`), if the last
    /// segment of its path has one.
    fn without_extension(&self) -> Option<Url> {
        let end = self.path_end();
        let path = &self.raw[..end];
        let segment_start = path.rfind('/').map_or(0, |i| i + 1);
        let dot = path[segment_start..].rfind('.')?;
        // A name that starts with its only dot (`.img`) has no extension, as for a path.
        if dot == 0 {
            return None;
        }
        let raw = format!("{}{}", &path[..segment_start + dot], &self.raw[end..]);
        Some(Url {
            shown: redact(&raw).into_owned(),
            raw,
        })
    }
}

/// Whether `path` is an `http://` or `https://` URL.
pub(crate) fn is_url_path(path: &Path) -> bool {
    path.to_str().is_some_and(is_url)
}

/// Whether `text` is an `http://` or `https://` URL.
pub(crate) fn is_url(text: &str) -> bool {
    let lower = |n: usize| text.get(..n).map(str::to_ascii_lowercase);
    lower(7).as_deref() == Some("http://") || lower(8).as_deref() == Some("https://")
}

/// `text` with the password of every `scheme://user:password@` in it replaced by `***`: what
/// may be shown of a message that names a URL.
///
/// ```
/// assert_eq!(
///     bmap::redact("https://me:secret@example.org/disk.img: not found"),
///     "https://me:***@example.org/disk.img: not found"
/// );
/// ```
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut done = 0;
    let mut from = 0;
    while let Some(at) = text[from..].find("://") {
        let authority_start = from + at + 3;
        let rest = &text[authority_start..];
        let authority_len = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        if let Some(userinfo_len) = authority.rfind('@')
            && let Some(colon) = authority[..userinfo_len].find(':')
        {
            let password = authority_start + colon + 1..authority_start + userinfo_len;
            out.push_str(&text[done..password.start]);
            out.push_str("***");
            done = password.end;
        }
        from = authority_start + authority_len;
    }
    if done == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

/// An error naming the URL.
fn http_error(url: &Url, what: impl Into<String>, reason: impl ToString) -> Error {
    Error::Http {
        url: url.shown.clone(),
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// The proxy for `url` as curl chooses it: `http_proxy` for `http://`, `https_proxy` for
/// `https://` (lower case first, then upper case), else `all_proxy`; none when the host is
/// in `no_proxy` (`*`, a host name or a domain suffix, comma separated).
fn proxy_for(url: &Url) -> Option<String> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
    };
    let https = url.raw[..8].eq_ignore_ascii_case("https://");
    let proxy = if https {
        var(&["https_proxy", "HTTPS_PROXY"])
    } else {
        var(&["http_proxy", "HTTP_PROXY"])
    }
    .or_else(|| var(&["all_proxy", "ALL_PROXY"]))?;
    let host = host_of(&url.raw);
    if let Some(list) = var(&["no_proxy", "NO_PROXY"])
        && list.split(',').any(|entry| no_proxy_matches(entry, &host))
    {
        debug!(url = %url.shown, "no_proxy: not through the proxy");
        return None;
    }
    Some(proxy)
}

/// The host of a URL, lower case, without port, userinfo or IPv6 brackets.
fn host_of(raw: &str) -> String {
    let after = raw.split_once("://").map_or(raw, |(_, r)| r);
    let authority = after.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.to_ascii_lowercase()
}

/// Whether one `no_proxy` entry covers `host`: `*`, the host itself, or a domain it is in
/// (`example.org` and `.example.org` both cover `a.example.org`); a port is ignored.
fn no_proxy_matches(entry: &str, host: &str) -> bool {
    let entry = entry.trim().to_ascii_lowercase();
    let entry = entry.trim_start_matches("*.").trim_start_matches('.');
    let entry = match entry.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => entry.rsplit_once(':').map_or(entry, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') {
                h
            } else {
                entry
            }
        }),
    };
    !entry.is_empty()
        && (entry == "*"
            || host == entry
            || host
                .strip_suffix(entry)
                .is_some_and(|rest| rest.ends_with('.')))
}

/// A client for `url`: its proxy, redirects followed, statuses left to the caller, no
/// content encoding (the bytes as stored).
fn agent(url: &Url) -> Result<Agent> {
    let proxy =
        match proxy_for(url) {
            Some(p) => {
                debug!(proxy = %redact(&p), "through a proxy");
                Some(ureq::Proxy::new(&p).map_err(|e| {
                    http_error(url, "use the proxy", format!("{}: {e}", redact(&p)))
                })?)
            }
            None => None,
        };
    Ok(Agent::config_builder()
        .http_status_as_error(false)
        .proxy(proxy)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .user_agent(concat!("blockmap/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent())
}

/// A request failed before it had an answer (no connection, a TLS or proxy error…).
fn request_error(url: &Url, e: ureq::Error) -> Error {
    let reason = e.to_string();
    let reason = reason.strip_prefix("io: ").unwrap_or(&reason);
    let through = proxy_for(url).map_or(String::new(), |p| {
        format!(" (through the proxy {})", redact(&p))
    });
    http_error(url, "fetch", format!("{}{through}", redact(reason)))
}

/// A status that is not the one wanted.
fn status_error(url: &Url, status: StatusCode) -> Error {
    http_error(
        url,
        "fetch",
        format!(
            "the server answered {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end(),
    )
}

fn header_u64(response: &Response<Body>, name: header::HeaderName) -> Option<u64> {
    response
        .headers()
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Content-Range: bytes first-last/total`.
fn content_range(response: &Response<Body>) -> Option<(Range<u64>, Option<u64>)> {
    let value = response
        .headers()
        .get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let total = if total.trim() == "*" {
        None
    } else {
        Some(total.trim().parse().ok()?)
    };
    Some((first..last.checked_add(1)?, total))
}

/// Whether a resource answers a HEAD (a GET where HEAD is not allowed) with 2xx;
/// `Ok(false)` for 404 and 410.
fn exists(url: &Url) -> Result<bool> {
    let agent = agent(url)?;
    let mut response = agent
        .head(&url.raw)
        .call()
        .map_err(|e| request_error(url, e))?;
    if matches!(
        response.status(),
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
    ) {
        // Its body is left unread: the connection is closed, not reused.
        response = agent
            .get(&url.raw)
            .call()
            .map_err(|e| request_error(url, e))?;
    }
    let status = response.status();
    debug!(url = %url.shown, status = status.as_u16(), "HEAD");
    match status {
        s if s.is_success() => Ok(true),
        StatusCode::NOT_FOUND | StatusCode::GONE => Ok(false),
        s => Err(status_error(url, s)),
    }
}

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

/// A body being read, with what it must hold (its Content-Length), counted as it comes.
struct Counted {
    reader: BodyReader<'static>,
    /// Bytes still due, if the length is known.
    left: Option<u64>,
    got: u64,
    network: Arc<AtomicU64>,
}

impl Counted {
    fn new(response: Response<Body>, network: &Arc<AtomicU64>) -> Counted {
        let left = header_u64(&response, header::CONTENT_LENGTH);
        Counted {
            reader: response.into_body().into_reader(),
            left,
            got: 0,
            network: Arc::clone(network),
        }
    }
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.left == Some(0) {
            return Ok(0);
        }
        let n = match self.left {
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let expected = self
            .left
            .map_or(String::new(), |l| format!(" of {}", self.got + l));
        let got = loop {
            match self.reader.read(&mut buf[..n]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ureq's word for a body cut short: said as below.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && self.left.is_some() => {
                    break 0;
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "the connection broke after {}{expected} bytes of the response: {}",
                            self.got,
                            redact(&e.to_string())
                        ),
                    ));
                }
                Ok(got) => break got,
            }
        };
        if got == 0 && self.left.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the server closed the connection after {} of the {} bytes its Content-Length announced",
                    self.got,
                    self.got + self.left.unwrap_or(0)
                ),
            ));
        }
        self.got += got as u64;
        if let Some(left) = self.left.as_mut() {
            *left -= got as u64;
        }
        self.network.fetch_add(got as u64, Ordering::Relaxed);
        Ok(got)
    }
}

/// GET `url` (all of it), a 200 required.
fn get_all(url: &Url, network: &Arc<AtomicU64>) -> Result<Counted> {
    let response = agent(url)?
        .get(&url.raw)
        .call()
        .map_err(|e| request_error(url, e))?;
    debug!(url = %url.shown, status = response.status().as_u16(), "GET");
    if response.status() != StatusCode::OK {
        return Err(status_error(url, response.status()));
    }
    Ok(Counted::new(response, network))
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

/// The ranges to fetch, in order, near ones coalesced, written to an unlinked temporary
/// file (16 bytes a span: memory stays small whatever the bmap).
fn plan_spans(
    ranges: impl Iterator<Item = Result<Range<u64>>>,
    image: &Url,
) -> Result<(BufReader<File>, u64)> {
    let spool_error = |e| Error::io("keep the list of ranges to fetch", image.shown(), e);
    let file = tempfile::tempfile().map_err(spool_error)?;
    let mut out = BufWriter::new(file);
    let mut count = 0;
    let mut current: Option<Range<u64>> = None;
    let mut put = |span: Range<u64>, out: &mut BufWriter<File>| -> Result<()> {
        count += 1;
        out.write_all(&span.start.to_le_bytes())
            .and_then(|()| out.write_all(&span.end.to_le_bytes()))
            .map_err(spool_error)
    };
    for range in ranges {
        let range = range?;
        if range.is_empty() {
            continue;
        }
        current = match current {
            Some(span) if range.start.saturating_sub(span.end) < COALESCE => {
                Some(span.start..span.end.max(range.end))
            }
            Some(span) => {
                put(span, &mut out)?;
                Some(range)
            }
            None => Some(range),
        };
    }
    if let Some(span) = current {
        put(span, &mut out)?;
    }
    let mut file = out.into_inner().map_err(|e| spool_error(e.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(spool_error)?;
    Ok((BufReader::new(file), count))
}

/// An uncompressed image read in order, its mapped spans fetched by Range requests, zeros
/// between them (which the copy never writes: they are its unmapped bytes).
struct Ranged {
    agent: Agent,
    url: Url,
    bmap: PathBuf,
    size: u64,
    spans: BufReader<File>,
    /// The span being read or next: `size..size` once there are no more.
    span: Range<u64>,
    pos: u64,
    /// The body open, if any, and the image offset of its next byte.
    body: Option<Counted>,
    body_at: u64,
    /// The server ignored Range: `body` is the whole image, read to its end.
    whole: bool,
    network: Arc<AtomicU64>,
    /// A request's failure, told in full by [`copy`] (the copy sees an I/O error).
    failed: Failure,
}

/// A failure of the download behind a reader, kept for [`copy`] to report as it is.
type Failure = Arc<Mutex<Option<Error>>>;

fn take(failure: &Failure) -> Option<Error> {
    failure.lock().unwrap_or_else(|p| p.into_inner()).take()
}

impl Ranged {
    fn next_span(&mut self) -> io::Result<()> {
        let mut record = [0u8; 16];
        match self.spans.read_exact(&mut record) {
            Ok(()) => {
                let start = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
                let end = u64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
                self.span = start.min(self.size)..end.min(self.size);
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.span = self.size..self.size,
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Requests the bytes from `self.pos` to the span's end. A server that ignores Range
    /// sends the whole image: read and dropped up to `self.pos`, and read on from there.
    /// The first request is made before anything is written: a wrong size is an
    /// [`Error::ImageSize`] then.
    fn request(&mut self) -> Result<()> {
        let wanted = self.pos..self.span.end;
        let response = self
            .agent
            .get(&self.url.raw)
            .header(
                header::RANGE,
                format!("bytes={}-{}", wanted.start, wanted.end - 1),
            )
            .call()
            .map_err(|e| request_error(&self.url, e))?;
        let status = response.status();
        debug!(url = %self.url.shown, status = status.as_u16(), range = ?wanted, "GET Range");
        let size_error = |actual| Error::ImageSize {
            path: self.url.shown(),
            bmap: self.bmap.clone(),
            expected: self.size,
            actual,
        };
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let Some((got, total)) = content_range(&response) else {
                    return Err(http_error(
                        &self.url,
                        "fetch",
                        "a 206 answer without a Content-Range in bytes",
                    ));
                };
                if let Some(total) = total
                    && total != self.size
                {
                    return Err(size_error(total));
                }
                if got != wanted {
                    return Err(http_error(
                        &self.url,
                        "fetch",
                        format!(
                            "asked for bytes {}-{}, the server sent {}-{}",
                            wanted.start,
                            wanted.end - 1,
                            got.start,
                            got.end - 1
                        ),
                    ));
                }
                self.body = Some(Counted::new(response, &self.network));
            }
            StatusCode::OK => {
                debug!(url = %self.url.shown, "the server ignores Range: one GET of it all");
                if let Some(length) = header_u64(&response, header::CONTENT_LENGTH)
                    && length != self.size
                {
                    return Err(size_error(length));
                }
                let mut body = Counted::new(response, &self.network);
                io::copy(&mut (&mut body).take(self.pos), &mut io::sink())
                    .map_err(|e| http_error(&self.url, "fetch", e))?;
                if body.got < self.pos {
                    return Err(size_error(body.got));
                }
                self.body = Some(body);
                self.whole = true;
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let total = response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit_once('/'))
                    .and_then(|(_, t)| t.trim().parse().ok());
                return Err(match total {
                    Some(total) => size_error(total),
                    None => status_error(&self.url, status),
                });
            }
            s => return Err(status_error(&self.url, s)),
        }
        self.body_at = self.pos;
        Ok(())
    }

    /// Zeros for the bytes up to `end`, never fetched (or fetched and dropped already).
    fn zeros(&mut self, buf: &mut [u8], end: u64) -> usize {
        let n = buf
            .len()
            .min(usize::try_from(end - self.pos).unwrap_or(usize::MAX));
        buf[..n].fill(0);
        self.pos += n as u64;
        n
    }

    /// Body bytes up to `end`.
    fn read_body(&mut self, buf: &mut [u8], end: u64) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(end - self.pos).unwrap_or(usize::MAX));
        let body = self.body.as_mut().expect("a body is open");
        let got = body.read(&mut buf[..n])?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the response ended at byte {} of the image", self.pos),
            ));
        }
        self.pos += got as u64;
        self.body_at = self.pos;
        Ok(got)
    }
}

impl Read for Ranged {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        if self.whole {
            if self.pos < self.body_at {
                let end = self.body_at;
                return Ok(self.zeros(buf, end));
            }
            let end = self.size;
            return self.read_body(buf, end);
        }
        while self.pos >= self.span.end && self.span.start < self.size {
            self.next_span()?;
        }
        if self.pos < self.span.start {
            let end = self.span.start;
            return Ok(self.zeros(buf, end));
        }
        if self.body.is_none() {
            if let Err(e) = self.request() {
                let line = e.to_string();
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return Err(io::Error::other(line));
            }
            if self.whole {
                return self.read(buf);
            }
        }
        let end = self.span.end;
        let got = self.read_body(buf, end)?;
        if self.pos == self.span.end {
            self.body = None;
        }
        Ok(got)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_nothing_else() {
        assert_eq!(
            redact("x https://u:p@h:1/a?b=c:d@e y http://h/x:y@z"),
            "x https://u:***@h:1/a?b=c:d@e y http://h/x:y@z"
        );
        assert_eq!(redact("ftp://u@h/x"), "ftp://u@h/x");
        assert_eq!(redact("no url: a:b@c"), "no url: a:b@c");
    }

    #[test]
    fn bmap_candidates_are_those_of_a_path() {
        let url = Url::of(Path::new("https://u:p@h/dir.d/disk.img.xz?t=1")).unwrap();
        let mut names = Vec::new();
        let mut stem = Some(url);
        while let Some(s) = stem {
            names.push(s.with_suffix(".bmap").raw);
            stem = s.without_extension();
        }
        assert_eq!(
            names,
            [
                "https://u:p@h/dir.d/disk.img.xz.bmap?t=1",
                "https://u:p@h/dir.d/disk.img.bmap?t=1",
                "https://u:p@h/dir.d/disk.bmap?t=1",
            ]
        );
        // The same as for the path.
        let dir = tempfile::tempdir().unwrap();
        let err = crate::find_bmap(dir.path().join("disk.img.xz")).unwrap_err();
        let Error::NoBmap { tried, .. } = err else {
            panic!("{err}")
        };
        let tails: Vec<_> = tried
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(tails, ["disk.img.xz.bmap", "disk.img.bmap", "disk.bmap"]);
    }

    #[test]
    fn no_proxy_entries_match_as_curl_matches() {
        for (entry, host, matches) in [
            ("*", "a.b", true),
            ("example.org", "example.org", true),
            ("example.org", "a.example.org", true),
            (".example.org", "a.example.org", true),
            ("*.example.org", "a.example.org", true),
            ("example.org", "badexample.org", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1:8080", "127.0.0.1", true),
            ("127.0.0.2", "127.0.0.1", false),
            ("", "a", false),
            ("[::1]", "::1", true),
        ] {
            assert_eq!(no_proxy_matches(entry, host), matches, "{entry} {host}");
        }
        assert_eq!(host_of("http://u:p@Host.Example:80/x"), "host.example");
        assert_eq!(host_of("http://[::1]:80/x"), "::1");
    }
}
