//! An uncompressed image read in order by Range requests.

use std::io::{self, Read};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tracing::debug;
use ureq::Agent;
use ureq::http::{StatusCode, header};

use super::Failure;
use super::client::{agent, content_range, header_u64, http_error, request_error, status_error};
use super::counted::Counted;
use super::spans::Spans;
use super::url::Url;
use crate::error::{Error, Result};

/// An uncompressed image read in order, its mapped spans fetched by Range requests, zeros
/// between them (which the copy never writes: they are its unmapped bytes).
pub(super) struct Ranged {
    agent: Agent,
    url: Url,
    bmap: PathBuf,
    size: u64,
    spans: Spans,
    /// The span being read or next: `size..size` once there are no more.
    span: Range<u64>,
    pos: u64,
    /// The body open, if any, and the image offset of its next byte.
    body: Option<Counted>,
    body_at: u64,
    /// The server ignored Range: `body` is the whole image, read to its end.
    whole: bool,
    network: Arc<AtomicU64>,
    /// A request's failure, told in full by [`copy`](fn@super::copy) (the copy sees an I/O error).
    failed: Failure,
}

impl Ranged {
    /// The image at `url`, `size` bytes as the bmap at `bmap` says, read by the spans of
    /// `spans`. Its first request is made here, before anything is written: the server
    /// answers, and the image has its size.
    pub(super) fn open(
        url: &Url,
        bmap: PathBuf,
        size: u64,
        spans: Spans,
        network: &Arc<AtomicU64>,
        failed: &Failure,
    ) -> Result<Ranged> {
        let mut ranged = Ranged {
            agent: agent(url)?,
            url: url.clone(),
            bmap,
            size,
            spans,
            span: 0..0,
            pos: 0,
            body: None,
            body_at: 0,
            whole: false,
            network: Arc::clone(network),
            failed: Arc::clone(failed),
        };
        ranged
            .next_span()
            .map_err(|e| Error::io("read the list of ranges to fetch", url.shown(), e))?;
        ranged.first_request()?;
        Ok(ranged)
    }

    /// The request for the first span, its body kept for the read; with nothing mapped, one
    /// byte asked for all the same, to check that the image is there and of its size.
    fn first_request(&mut self) -> Result<()> {
        if !self.span.is_empty() {
            self.pos = self.span.start;
            self.request()?;
            self.pos = 0;
        } else if self.size > 0 {
            self.span = 0..1;
            self.request()?;
            self.body = None;
            self.whole = false;
            self.span = self.size..self.size;
        }
        Ok(())
    }

    fn next_span(&mut self) -> io::Result<()> {
        self.span = match self.spans.next()? {
            Some(span) => span.start.min(self.size)..span.end.min(self.size),
            None => self.size..self.size,
        };
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
