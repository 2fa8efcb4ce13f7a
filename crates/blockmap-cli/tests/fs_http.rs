//! `blockmap bmap copy` of images and bmaps given as http:// URLs, against the real servers
//! `cargo xtask fs-test` starts (nginx honouring Range, ignoring it, behind basic
//! authentication, redirecting; tinyproxy as the proxy), and against tiny raw TCP servers in
//! the test that break the protocol on purpose (a body shorter than its Content-Length).
//! Every copy is compared byte for byte with the image; what came over the network is read
//! from nginx's own access log. Outside fs-test every test says it is skipped.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{BLOCKMAP, Http, KIB, MIB, stderr};

/// An image of `size` bytes with pseudo-random data in `data` (holes elsewhere), and its bmap
/// beside it (`NAME.bmap`, made by `blockmap bmap create`). Returns the image's bytes.
fn make_image(http: &Http, name: &str, size: u64, data: &[Range<u64>]) -> Vec<u8> {
    let path = http.root.join(name);
    let file = File::create(&path).unwrap();
    file.set_len(size).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ name.len() as u64;
    for r in data {
        let bytes: Vec<u8> = (r.start..r.end)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        file.write_all_at(&bytes, r.start).unwrap();
    }
    drop(file);
    let out = cli([
        "bmap",
        "create",
        "-o",
        http.root.join(format!("{name}.bmap")).to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "bmap create: {}", stderr(&out));
    fs::read(&path).unwrap()
}

fn cli<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    cli_env(args, &[])
}

/// `blockmap` with `args`, without any proxy variable of ours unless `env` sets one.
fn cli_env<I, S>(args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(BLOCKMAP);
    cmd.args(args).env_remove("RUST_LOG");
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("cannot run blockmap")
}

/// A copy that must succeed, its DEST equal to `image`; returns the summary line.
fn copy_ok(url: &str, dest: &Path, image: &[u8], env: &[(&str, &str)]) -> String {
    let out = cli_env(
        ["bmap", "copy", "--no-progress", url, dest.to_str().unwrap()],
        env,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "bmap copy {url}: {err}");
    assert!(
        fs::read(dest).unwrap() == image,
        "{url}: the copy differs from the image"
    );
    err
}

/// A copy that must fail: exit 1, one line naming `names` (the URL as shown) and holding
/// `cause`, no success line, no DEST left.
fn copy_fails(args: &[&str], dest: &Path, names: &str, cause: &str, env: &[(&str, &str)]) {
    let mut all = vec!["bmap", "copy", "--no-progress"];
    all.extend_from_slice(args);
    all.push(dest.to_str().unwrap());
    let out = cli_env(&all, env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{all:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{all:?}: not one line: {err}");
    assert!(err.contains(names), "{all:?}: does not name {names}: {err}");
    assert!(
        err.contains(cause),
        "{all:?}: does not say {cause:?}: {err}"
    );
    assert!(!err.contains("copied"), "{all:?}: {err}");
    assert!(!dest.exists(), "{all:?}: left {dest:?} behind");
}

/// One line of nginx's access log.
#[derive(Debug)]
struct Logged {
    port: u16,
    method: String,
    path: String,
    status: u16,
    bytes_sent: u64,
    range: String,
}

/// The requests for `path` that server `port` logged.
fn logged(http: &Http, port: u16, path: &str) -> Vec<Logged> {
    let text = fs::read_to_string(&http.log).unwrap();
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split('"').collect();
            let [port_text, request, middle, range, ..] = parts[..] else {
                return None;
            };
            let mut request = request.split(' ');
            let mut middle = middle.split_whitespace();
            Some(Logged {
                port: port_text.trim().parse().ok()?,
                method: request.next()?.to_owned(),
                path: request.next()?.to_owned(),
                status: middle.next()?.parse().ok()?,
                bytes_sent: middle.next()?.parse().ok()?,
                range: range.to_owned(),
            })
        })
        .filter(|l| l.port == port && l.path == path)
        .collect()
}

fn dest_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Headers nginx sends with a 206 answer: well under this.
const HEADERS: u64 = 512;

/// An uncompressed image is fetched by Range requests for its mapped ranges only, near ones
/// coalesced into one request; the bmap is found beside the URL; the copy equals the image
/// and bmaptool's copy of the same URL.
#[test]
#[ignore = "needs fs-test's HTTP servers: run by cargo xtask fs-test"]
fn range_requests_fetch_only_the_mapped_ranges() {
    let test = "range_requests_fetch_only_the_mapped_ranges";
    let http = crate::common::http(test);
    let name = "ranges.img";
    // 2 MiB and, 512 KiB after it, 512 KiB more (one request: the gap is under 1 MiB); 3 MiB
    // at 20 MiB; 4 KiB at 40 MiB: three requests, 6 MiB + 4 KiB mapped, of 64 MiB.
    let data = [
        0..2 * MIB,
        5 * MIB / 2..3 * MIB,
        20 * MIB..23 * MIB,
        40 * MIB..40 * MIB + 4 * KIB,
    ];
    let mapped: u64 = data.iter().map(|r| r.end - r.start).sum();
    let image = make_image(&http, name, 64 * MIB, &data);
    let dir = dest_dir();
    let url = format!("{}/{name}", http.url("plain"));
    let summary = copy_ok(&url, &dir.path().join("copy.img"), &image, &[]);
    assert!(summary.contains("over the network"), "{summary}");

    let port = http.port("plain");
    let gets: Vec<_> = logged(&http, port, &format!("/{name}"))
        .into_iter()
        .filter(|l| l.method == "GET")
        .collect();
    assert_eq!(gets.len(), 3, "{gets:#?}");
    assert!(
        gets.iter()
            .all(|l| l.status == 206 && l.range.starts_with("bytes=")),
        "{gets:#?}"
    );
    let sent: u64 = gets.iter().map(|l| l.bytes_sent).sum();
    // The mapped bytes and the 512 KiB gap that was cheaper to fetch than to skip: 6.5 MiB
    // of 64, not the image.
    let coalesced_gap = MIB / 2;
    assert!(
        sent >= mapped + coalesced_gap && sent <= mapped + coalesced_gap + 3 * HEADERS,
        "sent {sent}, mapped {mapped}: {gets:#?}"
    );
    let bmap_fetches = logged(&http, port, &format!("/{name}.bmap"));
    assert!(
        bmap_fetches
            .iter()
            .any(|l| l.method == "GET" && l.status == 200),
        "the bmap was not fetched beside the image: {bmap_fetches:#?}"
    );

    // The library says the same: the network bytes are the mapped ones and the gap.
    let bmap_url = format!("{url}.bmap");
    let file = blockmap_bmap::BmapFile::open(&bmap_url).unwrap();
    let lib_dest = dir.path().join("lib.img");
    let report = blockmap_bmap::Copier::from_file(file, blockmap_bmap::CopyOptions::new())
        .copy(&url, &lib_dest)
        .unwrap();
    assert_eq!(report.network_bytes, Some(mapped + coalesced_gap));
    assert_eq!(report.mapped_bytes, mapped);
    assert!(fs::read(&lib_dest).unwrap() == image);

    // And `--json` (its schema: bmap-copy-report.schema.json), the one place its
    // network_bytes is a number.
    let json_dest = dir.path().join("json.img");
    let out = cli_env(
        [
            "bmap",
            "copy",
            "--json",
            "--no-progress",
            &url,
            json_dest.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "bmap copy --json {url}: {}",
        stderr(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = testkit::schema::parse(testkit::schema::Doc::BmapCopyReport, &stdout).unwrap();
    assert_eq!(json["network_bytes"], mapped + coalesced_gap, "{json}");
    assert!(fs::read(&json_dest).unwrap() == image);

    // bmaptool copies the same URL to the same bytes.
    let theirs = dir.path().join("bmaptool.img");
    match Command::new("bmaptool")
        .args(["copy", "--no-sig-verify", &url, theirs.to_str().unwrap()])
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "bmaptool copy {url}: {}",
                stderr(&out)
            );
            assert!(
                fs::read(&theirs).unwrap() == image,
                "bmaptool's copy differs"
            );
        }
        Err(e) => panic!("cannot run bmaptool ({e}): .ci/run installs bmap-tools"),
    }
    http.report(test, 3);
}

/// A server that ignores Range answers 200 with the whole image: read in one GET, the
/// unmapped bytes read and dropped, the copy right.
#[test]
#[ignore = "needs fs-test's HTTP servers: run by cargo xtask fs-test"]
fn a_server_that_ignores_range_is_read_in_one_get() {
    let test = "a_server_that_ignores_range_is_read_in_one_get";
    let http = crate::common::http(test);
    let name = "norange.img";
    let size = 16 * MIB;
    let image = make_image(
        &http,
        name,
        size,
        &[MIB..2 * MIB, 9 * MIB..9 * MIB + 8 * KIB],
    );
    let dir = dest_dir();
    let url = format!("{}/{name}", http.url("norange"));
    copy_ok(&url, &dir.path().join("copy.img"), &image, &[]);
    let gets: Vec<_> = logged(&http, http.port("norange"), &format!("/{name}"))
        .into_iter()
        .filter(|l| l.method == "GET")
        .collect();
    assert_eq!(gets.len(), 1, "{gets:#?}");
    assert_eq!(gets[0].status, 200, "{gets:#?}");
    assert!(gets[0].bytes_sent >= size, "{gets:#?}");
    http.report(test, 1);
}

/// Compressed images are one GET each, streamed through the decoders; the bmap is found by
/// dropping the compression's extension, as beside a file.
#[test]
#[ignore = "needs fs-test's HTTP servers: run by cargo xtask fs-test"]
fn compressed_images_stream_from_one_get() {
    let test = "compressed_images_stream_from_one_get";
    let http = crate::common::http(test);
    let name = "packed.img";
    let image = make_image(
        &http,
        name,
        24 * MIB,
        &[0..MIB, 12 * MIB..13 * MIB + 4 * KIB],
    );
    let dir = dest_dir();
    let mut cases = 0;
    for (tool, args, ext) in [
        ("xz", &["-T2", "-1", "-k", "-f"][..], "xz"),
        ("gzip", &["-1", "-k", "-f"][..], "gz"),
        ("zstd", &["-q", "-T2", "-k", "-f"][..], "zst"),
    ] {
        let status = Command::new(tool)
            .args(args)
            .arg(http.root.join(name))
            .status()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(status.success(), "{tool}");
        let packed = format!("{name}.{ext}");
        let url = format!("{}/{packed}", http.url("plain"));
        let summary = copy_ok(
            &url,
            &dir.path().join(format!("copy.{ext}.img")),
            &image,
            &[],
        );
        assert!(summary.contains("compressed"), "{summary}");
        let gets: Vec<_> = logged(&http, http.port("plain"), &format!("/{packed}"))
            .into_iter()
            .filter(|l| l.method == "GET")
            .collect();
        let size = fs::metadata(http.root.join(&packed)).unwrap().len();
        assert_eq!(gets.len(), 1, "{gets:#?}");
        assert!(
            gets[0].status == 200 && gets[0].range == "-" && gets[0].bytes_sent >= size,
            "{gets:#?}"
        );
        cases += 1;
    }
    http.report(test, cases);
}

/// `user:password@` is basic authentication (a wrong password: 401, and never shown);
/// redirects are followed; `http_proxy` (and `HTTP_PROXY`) send the requests through the
/// proxy, `no_proxy` around it.
#[test]
#[ignore = "needs fs-test's HTTP servers: run by cargo xtask fs-test"]
fn authentication_redirects_and_proxies() {
    let test = "authentication_redirects_and_proxies";
    let http = crate::common::http(test);
    let name = "reach.img";
    let image = make_image(&http, name, 8 * MIB, &[MIB..3 * MIB]);
    let dir = dest_dir();
    let mut cases = 0;

    // Basic authentication, from the URL.
    let auth = http.url("auth");
    copy_ok(
        &format!("{auth}/{name}"),
        &dir.path().join("auth.img"),
        &image,
        &[],
    );
    let authed = logged(&http, http.port("auth"), &format!("/{name}"));
    assert!(authed.iter().any(|l| l.status == 206), "{authed:#?}");
    cases += 1;
    let (userinfo, host) = auth.trim_start_matches("http://").split_once('@').unwrap();
    let user = userinfo.split(':').next().unwrap();
    let wrong = format!("http://{user}:not-the-password@{host}/{name}");
    let bmap_file = http.root.join(format!("{name}.bmap"));
    copy_fails(
        &["--bmap", bmap_file.to_str().unwrap(), &wrong],
        &dir.path().join("wrong.img"),
        &format!("http://{user}:***@{host}/{name}"),
        "401",
        &[],
    );
    let out = cli([
        "bmap",
        "copy",
        &wrong,
        dir.path().join("w.img").to_str().unwrap(),
    ]);
    assert!(
        !stderr(&out).contains("not-the-password"),
        "{}",
        stderr(&out)
    );
    cases += 1;

    // A redirect to the plain server: the bmap and the ranges are found there.
    let redirected = format!("{}/{name}", http.url("redirect"));
    copy_ok(&redirected, &dir.path().join("redirect.img"), &image, &[]);
    let moved = logged(&http, http.port("redirect"), &format!("/{name}"));
    assert!(moved.iter().any(|l| l.status == 302), "{moved:#?}");
    cases += 1;

    // Through the proxy: tinyproxy logs a CONNECT to the plain server for each request.
    let plain = format!("{}/{name}", http.url("plain"));
    let target = format!("CONNECT 127.0.0.1:{} ", http.port("plain"));
    let connects = || {
        fs::read_to_string(&http.proxy_log)
            .unwrap_or_default()
            .matches(&target)
            .count()
    };
    for var in ["http_proxy", "HTTP_PROXY"] {
        let before = connects();
        copy_ok(
            &plain,
            &dir.path().join(format!("{var}.img")),
            &image,
            &[(var, http.url("proxy"))],
        );
        // The bmap's HEAD and GET, the signature's two HEADs, the image's range.
        assert!(
            connects() >= before + 5,
            "{var}: the proxy saw {} CONNECTs",
            connects() - before
        );
        cases += 1;
    }
    // A proxy that is not there: the copy fails, naming the proxy…
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_proxy = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    copy_fails(
        &[&plain],
        &dir.path().join("dead.img"),
        &format!("{}.bmap", plain),
        "refused",
        &[("http_proxy", &dead_proxy)],
    );
    // …unless no_proxy lets the host be reached directly.
    copy_ok(
        &plain,
        &dir.path().join("no_proxy.img"),
        &image,
        &[
            ("http_proxy", &dead_proxy),
            ("no_proxy", "localhost,127.0.0.1"),
        ],
    );
    cases += 2;
    http.report(test, cases);
}

/// A raw HTTP server on a free port that answers every request with `respond(request)` and
/// closes the connection, until dropped.
struct RawServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawServer {
    fn start(respond: impl Fn(&str) -> Vec<u8> + Send + 'static) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !stopped.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    request.push(byte[0]);
                }
                let _ = conn.write_all(&respond(&String::from_utf8_lossy(&request)));
                // Dropped: the connection closes, whatever the headers promised.
            }
        });
        RawServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A 404, a refused connection, and a body shorter than its Content-Length (plain and
/// compressed, Range honoured or not): one line naming the URL, exit 1, no DEST left.
#[test]
#[ignore = "needs fs-test's HTTP servers: run by cargo xtask fs-test"]
fn failures_are_one_line_naming_the_url() {
    let test = "failures_are_one_line_naming_the_url";
    let http = crate::common::http(test);
    let name = "fail.img";
    let size = 4 * MIB;
    let image = make_image(&http, name, size, &[0..MIB, 2 * MIB..3 * MIB]);
    let bmap_file = http.root.join(format!("{name}.bmap"));
    let bmap_arg = bmap_file.to_str().unwrap();
    let dir = dest_dir();
    let dest = dir.path().join("out.img");
    let mut cases = 0;

    // 404, with the bmap given, and without (no bmap beside it either).
    let missing = format!("{}/not-there.img", http.url("plain"));
    copy_fails(&["--bmap", bmap_arg, &missing], &dest, &missing, "404", &[]);
    copy_fails(&[&missing], &dest, &missing, "no bmap file found", &[]);
    // A URL bmap that is not there.
    copy_fails(
        &[
            "--bmap",
            &format!("{missing}.bmap"),
            &format!("{}/{name}", http.url("plain")),
        ],
        &dest,
        &format!("{missing}.bmap"),
        "404",
        &[],
    );
    cases += 3;

    // Refused: a port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}/{name}", closed.local_addr().unwrap());
    drop(closed);
    copy_fails(
        &["--bmap", bmap_arg, &refused],
        &dest,
        &refused,
        "refused",
        &[],
    );
    cases += 1;

    // Short bodies: the headers promise the image (or the asked range), half of it comes.
    let whole = Arc::new(image.clone());
    let body = Arc::clone(&whole);
    let short_200 = RawServer::start(move |_| {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body[..body.len() / 2]);
        out
    });
    let body = Arc::clone(&whole);
    let short_206 = RawServer::start(move |request| {
        let range = request
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                let value = value.trim();
                name.eq_ignore_ascii_case("range")
                    .then_some(value)?
                    .strip_prefix("bytes=")
            })
            .and_then(|r| r.split_once('-'))
            .map(|(a, b)| a.parse::<usize>().unwrap()..b.trim().parse::<usize>().unwrap() + 1)
            .unwrap_or(0..body.len());
        let mut out = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {}-{}/{}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            range.start,
            range.end - 1,
            body.len(),
            range.len()
        )
        .into_bytes();
        out.extend_from_slice(&body[range.start..range.start + range.len() / 2]);
        out
    });
    for server in [&short_200, &short_206] {
        let url = format!("http://127.0.0.1:{}/{name}", server.port);
        copy_fails(
            &["--bmap", bmap_arg, &url],
            &dest,
            &url,
            "Content-Length",
            &[],
        );
        cases += 1;
    }
    // Compressed: the gzip of the image, cut short the same way.
    let status = Command::new("gzip")
        .args(["-1", "-k", "-f"])
        .arg(http.root.join(name))
        .status()
        .unwrap();
    assert!(status.success());
    let gz = Arc::new(fs::read(http.root.join(format!("{name}.gz"))).unwrap());
    let body = Arc::clone(&gz);
    let short_gz = RawServer::start(move |_| {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body[..body.len() * 3 / 4]);
        out
    });
    let url = format!("http://127.0.0.1:{}/{name}.gz", short_gz.port);
    copy_fails(
        &["--bmap", bmap_arg, &url],
        &dest,
        &url,
        "Content-Length",
        &[],
    );
    cases += 1;

    // An existing DEST is kept (a file: it was truncated, and says nothing of success).
    fs::write(&dest, b"old").unwrap();
    let out = cli([
        "bmap",
        "copy",
        "--bmap",
        bmap_arg,
        &missing,
        dest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        fs::read(&dest).unwrap(),
        b"old",
        "a 404 is found before DEST is touched"
    );
    cases += 1;
    http.report(test, cases);
}

/// A throw-away GnuPG home with one signing key (its agent stopped when dropped).
struct Keyring {
    home: tempfile::TempDir,
    fingerprint: String,
}

impl Keyring {
    fn new() -> Keyring {
        let mut ring = Keyring {
            home: tempfile::tempdir().unwrap(),
            fingerprint: String::new(),
        };
        ring.gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            "Test Signer <signer@example.com>",
            "ed25519",
            "sign",
            "never",
        ]);
        let listing = ring.gpg(&["--with-colons", "--list-keys"]);
        ring.fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').nth(8))
            .unwrap()
            .to_owned();
        ring
    }

    /// gpg with `args`, which must succeed: its stdout.
    fn gpg(&self, args: &[&str]) -> String {
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--yes", "--no-tty"])
            .args(args)
            .output()
            .expect("cannot run gpg: .ci/run installs gnupg");
        assert!(out.status.success(), "gpg {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .output();
    }
}

/// A signature beside a URL bmap (`.asc`, `.sig`) is fetched and verified, as beside a file;
/// a bad one stops the copy; `--bmap-sig URL` is fetched (a 404 is an error); a clearsigned
/// bmap given as a URL is verified too.
#[test]
#[ignore = "needs fs-test's HTTP servers: run by cargo xtask fs-test"]
fn signatures_beside_a_url_bmap_are_verified() {
    let test = "signatures_beside_a_url_bmap_are_verified";
    let http = crate::common::http(test);
    let ring = Keyring::new();
    let home = ring.home.path().to_str().unwrap().to_owned();
    let env = [("GNUPGHOME", home.as_str())];
    let dir = dest_dir();
    let mut cases = 0;
    let signed_by = format!(
        "signed by Test Signer <signer@example.com> ({})",
        ring.fingerprint
    );
    for ext in ["asc", "sig"] {
        let name = format!("signed-{ext}.img");
        let image = make_image(&http, &name, 4 * MIB, &[MIB..2 * MIB]);
        let bmap_file = http.root.join(format!("{name}.bmap"));
        let sig = http.root.join(format!("{name}.bmap.{ext}"));
        let mut args = vec!["--detach-sign", "-o", sig.to_str().unwrap()];
        if ext == "asc" {
            args.insert(0, "--armor");
        }
        args.push(bmap_file.to_str().unwrap());
        ring.gpg(&args);
        let url = format!("{}/{name}", http.url("plain"));
        let summary = copy_ok(&url, &dir.path().join(format!("{ext}.img")), &image, &env);
        assert!(summary.contains(&signed_by), "{summary}");
        // The signature of another file: a bad signature, nothing written.
        let other = dir.path().join("other");
        fs::write(&other, b"not the bmap").unwrap();
        let mut args = vec!["--detach-sign", "-o", sig.to_str().unwrap()];
        if ext == "asc" {
            args.insert(0, "--armor");
        }
        args.push(other.to_str().unwrap());
        ring.gpg(&args);
        copy_fails(
            &[&url],
            &dir.path().join(format!("bad-{ext}.img")),
            &format!("{url}.bmap.{ext}"),
            "bad signature",
            &env,
        );
        cases += 2;
    }
    // --bmap-sig as a URL: the signature is fetched; one that is not there is an error.
    let name = "given-sig.img";
    let image = make_image(&http, name, 4 * MIB, &[MIB..2 * MIB]);
    let bmap_file = http.root.join(format!("{name}.bmap"));
    let sig = http.root.join("given.sig");
    ring.gpg(&[
        "--detach-sign",
        "-o",
        sig.to_str().unwrap(),
        bmap_file.to_str().unwrap(),
    ]);
    let url = format!("{}/{name}", http.url("plain"));
    let sig_url = format!("{}/given.sig", http.url("plain"));
    let dest = dir.path().join("given.img");
    let out = cli_env(
        [
            "bmap",
            "copy",
            "--bmap-sig",
            &sig_url,
            &url,
            dest.to_str().unwrap(),
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&signed_by), "{}", stderr(&out));
    assert!(fs::read(&dest).unwrap() == image);
    let missing_sig = format!("{}/no-such.sig", http.url("plain"));
    copy_fails(
        &["--bmap-sig", &missing_sig, &url],
        &dir.path().join("missing-sig.img"),
        &missing_sig,
        "404",
        &env,
    );
    cases += 2;

    // A clearsigned bmap, given as a URL.
    let name = "clearsigned.img";
    let image = make_image(&http, name, 4 * MIB, &[0..MIB]);
    let bmap_file = http.root.join(format!("{name}.bmap"));
    let clear = http.root.join("clearsigned.bmap.txt");
    ring.gpg(&[
        "--clearsign",
        "-o",
        clear.to_str().unwrap(),
        bmap_file.to_str().unwrap(),
    ]);
    let out = cli_env(
        [
            "bmap",
            "copy",
            "--bmap",
            &format!("{}/clearsigned.bmap.txt", http.url("plain")),
            &format!("{}/{name}", http.url("plain")),
            dir.path().join("clear.img").to_str().unwrap(),
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&signed_by), "{}", stderr(&out));
    assert!(fs::read(dir.path().join("clear.img")).unwrap() == image);
    cases += 1;
    http.report(test, cases);
}

/// A URL's body is recognised by its first bytes as a local image is: a `.tar.gz` holding the
/// image is copied by the bmap beside it, and `--nobmap` writes all of a plain or compressed
/// URL (one GET; holes become zeros), as bmaptool does.
#[test]
#[ignore = "needs fs-test's HTTP servers: run by cargo xtask fs-test"]
fn archives_and_nobmap_over_http() {
    let test = "archives_and_nobmap_over_http";
    let http = crate::common::http(test);
    let name = "whole.img";
    let image = make_image(&http, name, 6 * MIB, &[0..MIB, 4 * MIB..5 * MIB - 512]);
    let dir = dest_dir();
    let mut cases = 0;

    // An archive: the bmap found beside it by dropping its extensions (whole.img.bmap).
    let status = Command::new("tar")
        .current_dir(&http.root)
        .args(["-czf", "whole.img.tar.gz", name])
        .status()
        .expect("cannot run tar");
    assert!(status.success(), "tar");
    let url = format!("{}/whole.img.tar.gz", http.url("plain"));
    let out = cli([
        "bmap",
        "copy",
        "--no-progress",
        "--bmap",
        http.root.join("whole.img.bmap").to_str().unwrap(),
        &url,
        dir.path().join("tar.img").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{url}: {}", stderr(&out));
    assert!(
        fs::read(dir.path().join("tar.img")).unwrap() == image,
        "{url}"
    );
    cases += 1;

    // --nobmap: every byte of the image, over an existing larger DEST (truncated first).
    let gz = Command::new("gzip")
        .args(["-1", "-k", "-f"])
        .arg(http.root.join(name))
        .status()
        .expect("cannot run gzip");
    assert!(gz.success(), "gzip");
    for packed in [name.to_owned(), format!("{name}.gz")] {
        let url = format!("{}/{packed}", http.url("plain"));
        let dest = dir.path().join("nobmap.img");
        fs::write(&dest, vec![0xa5u8; 8 << 20]).unwrap();
        let out = cli([
            "bmap",
            "copy",
            "--no-progress",
            "--nobmap",
            &url,
            dest.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "--nobmap {url}: {}", stderr(&out));
        assert!(fs::read(&dest).unwrap() == image, "--nobmap {url}");
        let gets = logged(&http, http.port("plain"), &format!("/{packed}"));
        assert!(
            gets.iter().any(|l| l.method == "GET" && l.status == 200),
            "{gets:#?}"
        );
        cases += 1;
    }
    http.report(test, cases);
}
