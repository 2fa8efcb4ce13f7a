//! What the CLI's tests share beyond the test kit (`testing/testkit`, re-exported here): the
//! binary under test, and the check of a file's maps, the library's and `blockmap map
//! --json`'s, against its model.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::process::{Command, Output};

use blockmap_core::{Backend, BackendChoice};
pub use testkit::*;

/// The path of the `blockmap` binary under test.
pub const BLOCKMAP: &str = env!("CARGO_BIN_EXE_blockmap");

/// Runs `blockmap` with `args`.
pub fn run_cli<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(BLOCKMAP)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot run the blockmap binary")
}

/// `blockmap map --json [extra…] PATH`, checked for its exact shape and parsed. `file`, if
/// given, is walked by the kernel just before.
pub fn cli_map(path: &Path, file: Option<&File>, extra: &[&str]) -> Result<CliMap, String> {
    let kernel = match file {
        Some(f) => kernel_walk(f)?,
        None => None,
    };
    let mut args: Vec<&std::ffi::OsStr> = vec!["map".as_ref(), "--json".as_ref()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.push(path.as_os_str());
    let out = run_cli(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "`blockmap map --json {extra:?} {path:?}` failed ({}): {stderr}",
        out.status
    );
    CliMap::parse(&String::from_utf8_lossy(&out.stdout), kernel)
}

/// Everything [`check_against_model`] saw, for the callers' own checks.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The library's maps, [`ASKS`] order, those not supported left out.
    pub maps: Vec<LibMap>,
    pub cli: CliMap,
}

impl Checked {
    pub fn auto(&self) -> &LibMap {
        &self.maps[0]
    }

    /// The map taken with `backend` and FIEMAP batch `batch`, if it was supported.
    pub fn only(&self, backend: Backend, batch: u32) -> Option<&LibMap> {
        self.maps
            .iter()
            .find(|m| m.ask.backend == BackendChoice::Only(backend) && m.ask.batch == batch)
    }
}
///   library's `auto` data when that did not change around the CLI's run.
/// The check of a file against its model: maps it through the library (every [`ASKS`] that
/// works, of the whole file and of each of `windows`) and through `blockmap map --json`, each
/// right after a kernel walk; then reads the file and checks that
/// - the file's bytes are the model's;
/// - every map has the model's size, tiles its window clipped to `[0, size)` with sorted,
///   merged, non-empty data and holes, has every non-zero byte of it inside data, and (but for
///   the none backend) no more data than the kernel walk taken just before it;
/// - `auto` chose the first of FIEMAP and SEEK that works, and only FIEMAP has extents;
/// - the CLI says what the library says (size, block size, backend), and its data equals the
///   library's `auto` data when that did not change around the CLI's run.
pub fn check_against_model(path: &Path, file: &File, model: &Model) -> Result<Checked, String> {
    check_against_model_in(path, file, model, &[])
}

/// [`check_against_model`], with windowed maps of `windows` too.
pub fn check_against_model_in(
    path: &Path,
    file: &File,
    model: &Model,
    windows: &[Range<u64>],
) -> Result<Checked, String> {
    let mut maps = Vec::new();
    let mut windowed = Vec::new();
    for ask in ASKS {
        if let Some(m) = lib_map(path, file, ask)? {
            maps.push(m);
        }
        for w in windows {
            if let Some(m) = lib_map_window(path, file, ask, w.clone())? {
                windowed.push(m);
            }
        }
    }
    let cli = cli_map(path, Some(file), &[])?;
    let auto_after = lib_map(path, file, ASKS[0])?
        .expect("auto always maps")
        .data;

    // Only now read anything.
    model.compare_with(file)?;
    let nonzero = model.nonzero_runs();
    let size = model.len();
    for m in maps.iter().chain(&windowed) {
        check_lib_map(m, size, &nonzero)?;
    }
    let auto = &maps[0];
    let works = |b| maps.iter().any(|m| m.ask.backend == BackendChoice::Only(b));
    let best = [Backend::Fiemap, Backend::Seek]
        .into_iter()
        .find(|&b| works(b))
        .unwrap_or(Backend::None);
    ensure!(
        auto.backend == best,
        "auto chose {} but the best backend that works is {best}",
        auto.backend
    );
    for m in &maps[1..] {
        if let BackendChoice::Only(b) = m.ask.backend {
            ensure!(m.backend == b, "{}: got backend {}", m.ask, m.backend);
        }
    }

    ensure!(
        cli.path == path.to_string_lossy(),
        "map --json: path {:?}, expected {path:?}",
        cli.path
    );
    ensure!(
        cli.size == size,
        "map --json: size {}, the file has {size} bytes",
        cli.size
    );
    ensure!(
        cli.block_size == u64::from(auto.block_size),
        "map --json: block_size {}, the library says {}",
        cli.block_size,
        auto.block_size
    );
    ensure!(
        cli.backend == auto.backend.name(),
        "map --json: backend {}, the library's auto chose {}",
        cli.backend,
        auto.backend
    );
    check_tiling(&cli.data, &cli.holes, 0..size).map_err(|e| format!("map --json: {e}"))?;
    check_data(
        "map --json",
        &cli.backend,
        &cli.data,
        cli.kernel.as_ref(),
        &nonzero,
    )?;
    if cli.backend == "fiemap" {
        ensure!(
            cli.data.is_empty() || !cli.extents.is_empty(),
            "map --json: data {} but no extents",
            short(&cli.data)
        );
    } else {
        ensure!(
            cli.extents.is_empty(),
            "map --json: extents from backend {}",
            cli.backend
        );
    }
    for e in &cli.extents {
        ensure!(e.start < e.end, "map --json: empty extent {e:?}");
    }
    if auto.data == auto_after {
        ensure!(
            cli.data == auto.data,
            "map --json data {} differ from the library's auto data {}",
            short(&cli.data),
            short(&auto.data)
        );
    }
    Ok(Checked { maps, cli })
}

/// `blockmap ARGS`, run to its end.
pub fn blockmap(args: &[&str]) -> Output {
    run_cli(args)
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What a run said on stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that a run succeeded, showing its stderr if not.
#[track_caller]
pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
}
