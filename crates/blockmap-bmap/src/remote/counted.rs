//! A response body read to its Content-Length, and counted.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ureq::http::{Response, header};
use ureq::{Body, BodyReader};

use super::client::header_u64;
use super::url::redact;

/// A body being read, with what it must hold (its Content-Length), counted as it comes.
pub(super) struct Counted {
    pub(super) reader: BodyReader<'static>,
    /// Bytes still due, if the length is known.
    pub(super) left: Option<u64>,
    pub(super) got: u64,
    pub(super) network: Arc<AtomicU64>,
}

impl Counted {
    pub(super) fn new(response: Response<Body>, network: &Arc<AtomicU64>) -> Counted {
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
        let got = loop {
            match self.reader.read(&mut buf[..n]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ureq's word for a body cut short: said as below.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && self.left.is_some() => {
                    break 0;
                }
                Err(e) => {
                    let expected = self
                        .left
                        .map_or(String::new(), |l| format!(" of {}", self.got + l));
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
