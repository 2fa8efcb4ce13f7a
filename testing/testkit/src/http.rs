//! The HTTP servers fs-test starts for the URL tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::env::append_to_report;

/// The HTTP servers of fs-test (`xtask/src/http_servers.rs`): nginx serving [`Http::root`] as
/// `plain` (Range honoured), `norange` (Range ignored), `auth` (basic authentication, the
/// credentials in its URL) and `redirect` (302 to `plain`), and `proxy` (tinyproxy).
#[derive(Debug)]
pub struct Http {
    /// The served directory (mode 1777).
    pub root: PathBuf,
    /// nginx's access log: `port "request" status bytes_sent "range"` a line.
    pub log: PathBuf,
    /// tinyproxy's log.
    pub proxy_log: PathBuf,
    servers: BTreeMap<String, String>,
    report: Option<PathBuf>,
}

/// The HTTP servers for test `test`. Panics when fs-test did not start them: the tests that
/// need them are `#[ignore]`d, and run by `cargo xtask fs-test`.
pub fn http(test: &str) -> Http {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(servers) = var("BLOCKMAP_FS_TEST_HTTP") else {
        panic!("{test}: BLOCKMAP_FS_TEST_HTTP is not set: run it by `cargo xtask fs-test`");
    };
    let path = |name: &str| {
        PathBuf::from(
            var(name).unwrap_or_else(|| panic!("BLOCKMAP_FS_TEST_HTTP is set but {name} is not")),
        )
    };
    let servers: BTreeMap<String, String> = servers
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for name in ["plain", "norange", "auth", "redirect", "proxy"] {
        let url = servers
            .get(name)
            .unwrap_or_else(|| panic!("BLOCKMAP_FS_TEST_HTTP has no {name} server"));
        let authority = url.trim_start_matches("http://");
        let address = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        std::net::TcpStream::connect(address)
            .unwrap_or_else(|e| panic!("the {name} server at {address} does not answer: {e}"));
    }
    let root = path("BLOCKMAP_FS_TEST_HTTP_ROOT");
    assert!(
        root.is_dir(),
        "BLOCKMAP_FS_TEST_HTTP_ROOT={root:?} is not a directory"
    );
    Http {
        root,
        log: path("BLOCKMAP_FS_TEST_HTTP_LOG"),
        proxy_log: path("BLOCKMAP_FS_TEST_HTTP_PROXY_LOG"),
        servers,
        report: var("BLOCKMAP_FS_TEST_REPORT").map(PathBuf::from),
    }
}

impl Http {
    /// The base URL of server `name` (no trailing slash; `auth`'s has its credentials).
    pub fn url(&self, name: &str) -> &str {
        &self.servers[name]
    }

    /// The port of server `name`.
    pub fn port(&self, name: &str) -> u16 {
        let url = self.url(name);
        url.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {url}"))
    }

    /// Appends `fs=http test=<test> cases=<cases>` to fs-test's report.
    pub fn report(&self, test: &str, cases: u64) {
        append_to_report(self.report.as_deref(), test, "http", cases);
    }
}
