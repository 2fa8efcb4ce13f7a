//! The HTTP client (ureq): the agent for a URL, requests, statuses and headers, errors.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tracing::debug;
use ureq::http::{Response, StatusCode, header};
use ureq::{Agent, Body};

use super::counted::Counted;
use super::proxy::proxy_for;
use super::url::{Url, redact};
use crate::error::{Error, Result};

/// How long a connection may take, and a response's headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// An error naming the URL.
pub(super) fn http_error(url: &Url, what: impl Into<String>, reason: impl ToString) -> Error {
    Error::Http {
        url: url.shown.clone(),
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// A client for `url`: its proxy, redirects followed, statuses left to the caller, no
/// content encoding (the bytes as stored).
pub(super) fn agent(url: &Url) -> Result<Agent> {
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
pub(super) fn request_error(url: &Url, e: ureq::Error) -> Error {
    let reason = e.to_string();
    let reason = reason.strip_prefix("io: ").unwrap_or(&reason);
    let through = proxy_for(url).map_or(String::new(), |p| {
        format!(" (through the proxy {})", redact(&p))
    });
    http_error(url, "fetch", format!("{}{through}", redact(reason)))
}

/// A status that is not the one wanted.
pub(super) fn status_error(url: &Url, status: StatusCode) -> Error {
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

pub(super) fn header_u64(response: &Response<Body>, name: header::HeaderName) -> Option<u64> {
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
pub(super) fn content_range(response: &Response<Body>) -> Option<(Range<u64>, Option<u64>)> {
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
pub(super) fn exists(url: &Url) -> Result<bool> {
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

/// GET `url` (all of it), a 200 required.
pub(super) fn get_all(url: &Url, network: &Arc<AtomicU64>) -> Result<Counted> {
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
