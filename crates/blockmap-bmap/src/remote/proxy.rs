//! The proxy for a URL, chosen from the environment as curl chooses it.

use tracing::debug;

use super::url::Url;

/// The proxy for `url` as curl chooses it: `http_proxy` for `http://`, `https_proxy` for
/// `https://` (lower case first, then upper case), else `all_proxy`; none when the host is
/// in `no_proxy` (`*`, a host name or a domain suffix, comma separated).
pub(super) fn proxy_for(url: &Url) -> Option<String> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
    };
    // `get`: `http://` is shorter than 8 bytes, and byte 8 may be inside a character.
    let https = url
        .raw
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
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
pub(super) fn host_of(raw: &str) -> String {
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
pub(super) fn no_proxy_matches(entry: &str, host: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// URLs shorter than `https://`, or with a character across its eighth byte, are asked
    /// for their proxy without a panic.
    #[test]
    fn short_and_multibyte_urls_have_a_proxy_or_none() {
        for raw in ["http://", "HTTP://", "http://é/x", "https://h"] {
            let url = Url::of(std::path::Path::new(raw)).expect(raw);
            let _ = proxy_for(&url);
        }
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
