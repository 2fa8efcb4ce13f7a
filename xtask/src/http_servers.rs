//! The HTTP servers of fs-test, for `blockmap bmap copy` of URLs (`tests/fs_http.rs`): one
//! nginx serving `<dir>/http/www` on 127.0.0.1 in four ways, each on a free port, and
//! tinyproxy as a forward proxy. ureq, our client, reaches every target through a proxy with
//! CONNECT, which stock nginx does not serve: hence tinyproxy.
//!
//! | name | what |
//! | --- | --- |
//! | `plain` | the directory, Range requests honoured |
//! | `norange` | the same with `max_ranges 0`: a Range request gets the whole file, 200 |
//! | `auth` | the same behind basic authentication (a generated `{PLAIN}` htpasswd); its URL carries `user:password@` |
//! | `redirect` | every request answered 302 to the same path on `plain` |
//! | `proxy` | tinyproxy, which logs every CONNECT |
//!
//! Exported to the tests: `BLOCKMAP_FS_TEST_HTTP` (`name=URL` pairs, comma separated),
//! `BLOCKMAP_FS_TEST_HTTP_ROOT` (the served directory, mode 1777),
//! `BLOCKMAP_FS_TEST_HTTP_LOG` (nginx's access log: `port "request" status bytes_sent
//! "range"` a line) and `BLOCKMAP_FS_TEST_HTTP_PROXY_LOG` (tinyproxy's log). Both processes
//! run in the foreground, in their own process groups, and are stopped by the clean-up stack.

use std::fmt::Write as _;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cleanup::{self, Undo};
use crate::cmd;

/// How long a server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The user of the `auth` server.
const USER: &str = "blockmap";

/// Starts the servers under `<dir>/http`; returns the environment for the tests.
pub fn start(dir: &Path) -> Result<Vec<(&'static str, String)>> {
    for program in ["nginx", "tinyproxy"] {
        if cmd::find_program(program).is_none() {
            bail!("{program} is not installed (apt-get install {program}; .ci/run does)");
        }
    }
    let base = dir.join("http");
    let www = base.join("www");
    let temp = base.join("temp");
    for d in [&base, &www, &temp] {
        fs::create_dir(d)?;
    }
    fs::set_permissions(&www, fs::Permissions::from_mode(0o1777))?;
    // Free ports, taken by binding port 0 and let go just before the servers bind them.
    let listeners = (0..5)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let ports = listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<Result<Vec<u16>>>()?;
    let [plain, norange, auth, redirect, proxy] = ports[..] else {
        unreachable!("five listeners")
    };
    let password = format!("{:016x}", fastrand::u64(..));
    fs::write(
        base.join("htpasswd"),
        format!("{USER}:{{PLAIN}}{password}\n"),
    )?;
    let access_log = base.join("access.log");
    let (b, t) = (base.display(), temp.display());
    let server = |port: u16, extra: &str| {
        format!(
            "  server {{ listen 127.0.0.1:{port}; root {}; access_log {} bytes; {extra} }}\n",
            www.display(),
            access_log.display()
        )
    };
    let mut conf = String::new();
    let _ = write!(
        conf,
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {b}/nginx.pid;\n\
         error_log {b}/nginx-error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n\
         \x20 log_format bytes '$server_port \"$request\" $status $bytes_sent \"$http_range\"';\n\
         \x20 access_log off;\n\
         \x20 client_body_temp_path {t}; proxy_temp_path {t}; fastcgi_temp_path {t};\n\
         \x20 uwsgi_temp_path {t}; scgi_temp_path {t};\n"
    );
    conf.push_str(&server(plain, ""));
    conf.push_str(&server(norange, "max_ranges 0;"));
    conf.push_str(&server(
        auth,
        &format!("auth_basic \"blockmap\"; auth_basic_user_file {b}/htpasswd;"),
    ));
    conf.push_str(&server(
        redirect,
        &format!("return 302 http://127.0.0.1:{plain}$request_uri;"),
    ));
    conf.push_str("}\n");
    fs::write(base.join("nginx.conf"), conf)?;
    let proxy_log = base.join("proxy.log");
    fs::write(
        base.join("tinyproxy.conf"),
        format!(
            "Port {proxy}\nListen 127.0.0.1\nTimeout 60\nMaxClients 32\nLogLevel Info\n\
             LogFile \"{}\"\n",
            proxy_log.display()
        ),
    )?;
    drop(listeners);

    let mut nginx = Command::new(cmd::program("nginx"));
    nginx
        .arg("-p")
        .arg(&base)
        .arg("-e")
        .arg(base.join("nginx-error.log"))
        .arg("-c")
        .arg(base.join("nginx.conf"));
    spawn("nginx", &mut nginx, &[plain, norange, auth, redirect])?;
    let mut tinyproxy = Command::new(cmd::program("tinyproxy"));
    tinyproxy
        .arg("-d")
        .arg("-c")
        .arg(base.join("tinyproxy.conf"));
    spawn("tinyproxy", &mut tinyproxy, &[proxy])?;

    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let servers = [
        ("plain", url(plain)),
        ("norange", url(norange)),
        ("auth", format!("http://{USER}:{password}@127.0.0.1:{auth}")),
        ("redirect", url(redirect)),
        ("proxy", url(proxy)),
    ]
    .map(|(name, url)| format!("{name}={url}"))
    .join(",");
    Ok(vec![
        ("BLOCKMAP_FS_TEST_HTTP", servers),
        ("BLOCKMAP_FS_TEST_HTTP_ROOT", www.display().to_string()),
        (
            "BLOCKMAP_FS_TEST_HTTP_LOG",
            access_log.display().to_string(),
        ),
        (
            "BLOCKMAP_FS_TEST_HTTP_PROXY_LOG",
            proxy_log.display().to_string(),
        ),
    ])
}

/// Runs `command` in its own process group (a Ctrl-C is fs-test's to handle), records it for
/// clean-up, and waits until every port of `ports` accepts a connection.
fn spawn(name: &'static str, command: &mut Command, ports: &[u16]) -> Result<()> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run `{}`", cmd::describe(command)))?;
    let exited = child.try_wait()?;
    cleanup::push(Undo::StopServer { name, child });
    if let Some(status) = exited {
        bail!("`{}` exited at once: {status}", cmd::describe(command));
    }
    let started = Instant::now();
    for &port in ports {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            cleanup::check_interrupted()?;
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "`{}` did not listen on port {port} within {} s",
                    cmd::describe(command),
                    START_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
