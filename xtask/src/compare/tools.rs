//! The commands `cargo xtask compare` times, how one run is timed (wall clock, peak RSS from
//! GNU `time`, a per-command timeout), and how each copy is checked.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::process::{Pid, Signal, kill_process_group};

use super::workloads::{self, Source};
use crate::cleanup;
use crate::cmd::{self, Interruptible};

/// What a tool does to the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Copies SRC to a new DST on the same filesystem.
    Copy,
    /// Maps SRC, output to /dev/null.
    Map,
    /// Makes SRC's bmap file (with checksums) in the scratch directory.
    BmapCreate,
    /// Copies SRC to a new DST by the bmap `bmaptool create` made, verifying the checksums,
    /// with the final fsync.
    BmapCopy,
    /// As `BmapCopy`, of the image compressed (the suffix: `xz`, `zst`, `gz`, `bz2`; see
    /// [`COMPRESSORS`]).
    BmapCopyOf(&'static str),
    /// As `BmapCopy`, of the plain image served by a local nginx (`http://127.0.0.1:…`).
    BmapCopyUrl,
}

/// The compressed images of the bmap rows: suffix, and the command that makes one from stdin.
pub const COMPRESSORS: &[(&str, &[&str])] = &[
    ("xz", &["xz", "-T2", "-1", "-c"]),
    ("zst", &["zstd", "-T2", "-3", "-c", "-q"]),
    ("gz", &["gzip", "-1", "-c"]),
    ("bz2", &["pbzip2", "-p2", "-c"]),
];

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Copy => "copy",
            Op::Map => "map",
            Op::BmapCreate => "bmap create",
            Op::BmapCopy => "bmap copy",
            Op::BmapCopyOf("xz") => "bmap copy .xz",
            Op::BmapCopyOf("zst") => "bmap copy .zst",
            Op::BmapCopyOf("gz") => "bmap copy .gz",
            Op::BmapCopyOf("bz2") => "bmap copy .bz2",
            Op::BmapCopyOf(other) => unreachable!("no compressor {other}"),
            Op::BmapCopyUrl => "bmap copy URL",
        }
    }
}

/// One tool, as shown in the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tool {
    pub op: Op,
    pub name: &'static str,
}

/// The tools in table order; the first of each op is the baseline of the ratios.
pub const TOOLS: &[Tool] = &[
    Tool::copy("blockmap copy"),
    Tool::copy("cp --sparse=auto"),
    Tool::copy("cp --sparse=always"),
    Tool::copy("dd conv=sparse"),
    Tool::copy("bmaptool copy"),
    Tool::copy("reference sparse_copy"),
    Tool::map("blockmap map --json"),
    Tool::map("filefrag -e"),
    Tool::map("xfs_io fiemap"),
    Tool::map("xfs_io seek -a -r 0"),
    Tool::map("reference get_mapped_ranges"),
    Tool {
        op: Op::BmapCreate,
        name: "blockmap bmap create",
    },
    Tool {
        op: Op::BmapCreate,
        name: "bmaptool create",
    },
    Tool {
        op: Op::BmapCopy,
        name: "blockmap bmap copy",
    },
    Tool {
        op: Op::BmapCopy,
        name: "bmaptool copy --bmap",
    },
    Tool {
        op: Op::BmapCopyOf("xz"),
        name: "blockmap bmap copy .xz",
    },
    Tool {
        op: Op::BmapCopyOf("xz"),
        name: "bmaptool copy .xz",
    },
    Tool {
        op: Op::BmapCopyOf("zst"),
        name: "blockmap bmap copy .zst",
    },
    Tool {
        op: Op::BmapCopyOf("zst"),
        name: "bmaptool copy .zst",
    },
    Tool {
        op: Op::BmapCopyOf("gz"),
        name: "blockmap bmap copy .gz",
    },
    Tool {
        op: Op::BmapCopyOf("gz"),
        name: "bmaptool copy .gz",
    },
    Tool {
        op: Op::BmapCopyOf("bz2"),
        name: "blockmap bmap copy .bz2",
    },
    Tool {
        op: Op::BmapCopyOf("bz2"),
        name: "bmaptool copy .bz2",
    },
    Tool {
        op: Op::BmapCopyUrl,
        name: "blockmap bmap copy URL",
    },
    Tool {
        op: Op::BmapCopyUrl,
        name: "bmaptool copy URL",
    },
];

/// The workload of the bmap rows: the root-filesystem image, the image people flash.
pub const BMAP_WORKLOAD: &str = "rootfs";

impl Tool {
    const fn copy(name: &'static str) -> Tool {
        Tool { op: Op::Copy, name }
    }
    const fn map(name: &'static str) -> Tool {
        Tool { op: Op::Map, name }
    }

    /// Why this tool is not run on this workload, if it is not.
    pub fn skip_reason(self, workload: &str, ctx: &Setup) -> Option<String> {
        if self.name.starts_with("reference") && ctx.reference.is_none() {
            return Some("skipped: no --reference given".into());
        }
        if matches!(
            self.op,
            Op::BmapCreate | Op::BmapCopy | Op::BmapCopyOf(_) | Op::BmapCopyUrl
        ) && workload != BMAP_WORKLOAD
        {
            return Some(format!("skipped: bmap rows on `{BMAP_WORKLOAD}` only"));
        }
        if self.op == Op::BmapCopyUrl && ctx.http.is_none() {
            return Some("skipped: no HTTP server (nginx) started".into());
        }
        if self.name == "dd conv=sparse" && workload == "tera" {
            // dd reads every byte, holes included: 1 TiB of zeros, minutes on this machine.
            return Some("skipped: >60 s (reads the whole 1 TiB, holes included)".into());
        }
        None
    }

    /// `bmaptool --quiet copy --bmap` or `blockmap bmap copy --no-progress --bmap`, whichever
    /// tool this is, for its arguments (the bmap, the image, the destination) to follow.
    fn bmap_copy(self, ctx: &Setup) -> Command {
        let mut c;
        if self.name.starts_with("bmaptool") {
            c = Command::new(cmd::program("bmaptool"));
            c.args(["--quiet", "copy", "--bmap"]);
        } else {
            c = Command::new(&ctx.blockmap);
            c.args(["bmap", "copy", "--no-progress", "--bmap"]);
        }
        c
    }

    /// The command line of one run; `dst` is the copy's destination (unused by maps).
    pub fn command(self, ctx: &Setup, src: &Source, dst: &Path) -> Command {
        let program = |name: &str| Command::new(cmd::program(name));
        let mut c;
        match self.name {
            "blockmap copy" => {
                c = Command::new(&ctx.blockmap);
                c.arg("copy").arg(&src.path).arg(dst).arg("--no-progress");
            }
            "cp --sparse=auto" | "cp --sparse=always" => {
                c = program("cp");
                c.arg(&self.name[3..]).arg(&src.path).arg(dst);
            }
            "dd conv=sparse" => {
                c = program("dd");
                c.arg(arg_path("if=", &src.path))
                    .arg(arg_path("of=", dst))
                    .args(["conv=sparse", "bs=1M", "status=none"]);
            }
            "bmaptool copy" | "bmaptool copy --bmap" | "blockmap bmap copy" => {
                c = self.bmap_copy(ctx);
                c.arg(ctx.bmap_of(src)).arg(&src.path).arg(dst);
            }
            _ if matches!(self.op, Op::BmapCopyOf(_)) => {
                let Op::BmapCopyOf(ext) = self.op else {
                    unreachable!()
                };
                c = self.bmap_copy(ctx);
                c.arg(ctx.bmap_of(src))
                    .arg(ctx.compressed(src, ext))
                    .arg(dst);
            }
            "blockmap bmap copy URL" | "bmaptool copy URL" => {
                c = self.bmap_copy(ctx);
                c.arg(ctx.bmap_of(src)).arg(ctx.url_of(src)).arg(dst);
            }
            "blockmap bmap create" => {
                c = Command::new(&ctx.blockmap);
                c.args(["bmap", "create", "-o"])
                    .arg(ctx.created_bmap())
                    .arg(&src.path);
            }
            "bmaptool create" => {
                c = program("bmaptool");
                c.args(["--quiet", "create", "-o"])
                    .arg(ctx.created_bmap())
                    .arg(&src.path);
            }
            "reference sparse_copy" => {
                c = python(ctx, REFERENCE_COPY);
                c.arg(&src.path).arg(dst);
            }
            "blockmap map --json" => {
                c = Command::new(&ctx.blockmap);
                c.args(["map", "--json"]).arg(&src.path);
            }
            "filefrag -e" => {
                c = program("filefrag");
                c.arg("-e").arg(&src.path);
            }
            "xfs_io fiemap" | "xfs_io seek -a -r 0" => {
                c = program("xfs_io");
                c.args(["-r", "-c", &self.name[7..]]).arg(&src.path);
            }
            "reference get_mapped_ranges" => {
                c = python(ctx, REFERENCE_MAP);
                c.arg(&src.path);
            }
            other => unreachable!("no command for {other}"),
        }
        c
    }
}

fn arg_path(prefix: &str, path: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(prefix);
    s.push(path);
    s
}

/// The reference module predates Python 3.7, which dropped `os.errno`: patch it back in, then
/// import the module from the copy made at run time (argv[1] is its directory).
const REFERENCE_PRELUDE: &str = "import errno, os, sys\nos.errno = errno\n\
                                 sys.path.insert(0, sys.argv[1])\nimport filemap\n";
const REFERENCE_COPY: &str = "filemap.sparse_copy(sys.argv[2], sys.argv[3])\n";
const REFERENCE_MAP: &str = "fm = filemap.filemap(sys.argv[2])\n\
                             n = sum(1 for _ in fm.get_mapped_ranges(0, fm.blocks_cnt))\n\
                             print(n)\n";

fn python(ctx: &Setup, body: &str) -> Command {
    let mut c = Command::new(cmd::program("python3"));
    let dir = ctx
        .reference
        .as_deref()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    c.arg("-c")
        .arg(format!("{REFERENCE_PRELUDE}{body}"))
        .arg(dir);
    c
}

/// What every run needs to know.
#[derive(Debug)]
pub struct Setup {
    /// The release `blockmap` binary.
    pub blockmap: PathBuf,
    /// GNU time.
    pub time: PathBuf,
    /// The run-time copy of the reference module, if there is one.
    pub reference: Option<PathBuf>,
    /// Where bmap files and command stderr go (not on the filesystem under test).
    pub scratch: PathBuf,
    /// The fs under test's name (bmap file names).
    pub fs: String,
    pub timeout: Duration,
    /// Every run, in the order run (`target/compare-runs.tsv`): what preceded a slow run.
    pub runs_log: PathBuf,
    /// The loop device's backing file, synced after the filesystem between runs.
    pub backing: PathBuf,
    /// The local HTTP server of the URL rows: its base URL and the directory it serves.
    pub http: Option<(String, PathBuf)>,
}

impl Setup {
    pub fn bmap_of(&self, src: &Source) -> PathBuf {
        self.scratch.join(format!("{}-{}.bmap", self.fs, src.name))
    }

    /// SRC compressed with the compressor of suffix `ext` (made by `compare` beforehand).
    pub fn compressed(&self, src: &Source, ext: &str) -> PathBuf {
        self.scratch
            .join(format!("{}-{}.img.{ext}", self.fs, src.name))
    }

    /// The served name of SRC (a symbolic link in the served directory, made by `compare`).
    pub fn served(&self, src: &Source) -> Option<PathBuf> {
        let (_, root) = self.http.as_ref()?;
        Some(root.join(format!("{}-{}.img", self.fs, src.name)))
    }

    /// SRC's URL on the local HTTP server (`served`).
    pub fn url_of(&self, src: &Source) -> String {
        let base = self.http.as_ref().map_or("", |(base, _)| base);
        format!("{base}/{}-{}.img", self.fs, src.name)
    }

    /// Where the timed `bmap create` runs write (checked, then removed, after each run).
    pub fn created_bmap(&self) -> PathBuf {
        self.scratch.join("created.bmap")
    }
}

/// One timed run.
#[derive(Debug)]
pub struct Measured {
    pub secs: f64,
    pub rss_kib: Option<u64>,
    /// `None` when the command exited 0; else what went wrong.
    pub failure: Option<String>,
    pub timed_out: bool,
}

/// Runs `c` under GNU time (for the peak RSS), with stdin and stdout on /dev/null, stderr
/// kept in a file, killed (its whole process group) after the timeout. The wall time is
/// taken around the whole, so it includes `time`'s own fork and exec, the same for every
/// tool.
pub fn measure(ctx: &Setup, c: &Command) -> Result<Measured> {
    let rss_file = ctx.scratch.join("rss.txt");
    let err_file = ctx.scratch.join("stderr.txt");
    let mut timed = Command::new(&ctx.time);
    timed
        .args(["-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(c.get_program())
        .args(c.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err_file)?)
        .process_group(0);
    let started = Instant::now();
    let mut child = timed
        .spawn()
        .with_context(|| format!("cannot run `{}`", cmd::describe(c)))?;
    let tracked = cleanup::track_child(&child);
    let group = Pid::from_child(&child);
    let (done, wait_done) = mpsc::channel::<()>();
    let timeout = ctx.timeout;
    let watchdog = thread::spawn(move || {
        let expired = wait_done.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout);
        if expired {
            // ESRCH (it ended meanwhile) is fine.
            let _ = kill_process_group(group, Signal::KILL);
        }
        expired
    });
    let status = child.wait();
    let secs = started.elapsed().as_secs_f64();
    drop(done);
    drop(tracked);
    let timed_out = watchdog.join().unwrap_or(false);
    let status = status.with_context(|| format!("waiting for `{}`", cmd::describe(c)))?;
    cleanup::check_interrupted()?;
    let rss_kib = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()));
    let failure = if timed_out {
        Some(format!("timeout >{} s", timeout.as_secs()))
    } else if status.success() {
        None
    } else {
        let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
        let first = stderr
            .lines()
            .find(|l| !l.starts_with("Command exited"))
            .unwrap_or("");
        Some(format!("{status}: {}", first.trim()))
    };
    Ok(Measured {
        secs,
        rss_kib,
        failure,
        timed_out,
    })
}

/// The verdict on one copy.
#[derive(Debug)]
pub struct Checked {
    /// `None` if DST equals SRC and has no data where SRC has holes.
    pub failure: Option<String>,
    /// DST's `st_blocks * 512`.
    pub allocated: u64,
}

/// Checks DST against SRC without reading the holes of both: sizes equal; the bytes equal
/// over every range that is data in either (outside those both read as zeros, by the kernel's
/// word); and DST has no data where SRC has a hole (a copy that filled holes fails).
/// `src.data` must be SRC's map as it is now (see [`Source::refresh`]).
/// `full_cmp` also runs `cmp` on the whole files, an oracle independent of this code (never
/// on the 1 TiB workload).
pub fn check_copy(src: &Source, dst: &Path, full_cmp: bool) -> Result<Checked> {
    let file =
        File::open(dst).with_context(|| format!("cannot open the copy {}", dst.display()))?;
    let meta = file.metadata()?;
    let allocated = meta.blocks() * 512;
    let verdict = |failure| Ok(Checked { failure, allocated });
    if meta.len() != src.size {
        return verdict(Some(format!("size {} instead of {}", meta.len(), src.size)));
    }
    let dst_data = workloads::data_ranges(&file, meta.len())?;
    let filled = bytes_outside(&dst_data, &src.data);
    let src_file = File::open(&src.path)?;
    // Comparing a few bytes of holes too costs nothing and turns 131072 small reads into a
    // few thousand large ones.
    let ranges = coalesce(union(&src.data, &dst_data), 1 << 20);
    if let Some(at) = first_difference(&src_file, &file, &ranges)? {
        return verdict(Some(format!("differs from SRC at byte {at}")));
    }
    if full_cmp {
        let mut c = Command::new(cmd::program("cmp"));
        c.arg(&src.path).arg(dst);
        let out = cmd::output(&mut c, Interruptible::Yes)?;
        if !out.status.success() {
            return verdict(Some(format!(
                "cmp: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )));
        }
    }
    if filled > 0 {
        let amount = if filled < 1 << 20 {
            format!("{} KiB", filled.div_ceil(1024))
        } else {
            format!("{:.1} MiB", filled as f64 / (1 << 20) as f64)
        };
        return verdict(Some(format!(
            "filled holes: {amount} of data where SRC has holes"
        )));
    }
    verdict(None)
}

/// Checks `blockmap map --json` (run again, untimed, output kept) against SRC's data as the
/// kernel's `SEEK_DATA` walk gives it.
pub fn check_map(setup: &Setup, src: &Source) -> Result<Option<String>> {
    let mut c = Command::new(&setup.blockmap);
    c.args(["map", "--json"]).arg(&src.path);
    let out = cmd::run_captured(&mut c, Interruptible::Yes)?;
    let json: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("`{}` printed no JSON object", cmd::describe(&c)))?;
    let data: Option<Vec<Range<u64>>> = json["data"].as_array().and_then(|pairs| {
        pairs
            .iter()
            .map(|p| Some(p.get(0)?.as_u64()?..p.get(1)?.as_u64()?))
            .collect()
    });
    let Some(data) = data else {
        return Ok(Some("no \"data\" list of [start, end] pairs".into()));
    };
    if data == src.data {
        return Ok(None);
    }
    let bytes = |r: &[Range<u64>]| r.iter().map(|r| r.end - r.start).sum::<u64>();
    let differ = || {
        format!(
            "data ranges differ from SEEK_DATA's: {} ranges, {} bytes against {} ranges, {} bytes",
            data.len(),
            bytes(&data),
            src.data.len(),
            bytes(&src.data)
        )
    };
    // Less data than SEEK_DATA is right only where the difference reads as zeros (pages of
    // zeros a read left in the cache over unwritten extents, which SEEK_DATA calls data).
    if bytes_outside(&data, &src.data) > 0 {
        return Ok(Some(differ()));
    }
    let file = File::open(&src.path)?;
    let missing = difference(&src.data, &data);
    if let Some(at) = first_nonzero(&file, &missing)? {
        return Ok(Some(format!("{}; byte {at} is not zero", differ())));
    }
    Ok(None)
}

/// Checks a bmap file made by a timed `bmap create`: it parses and its own checksum holds
/// (the `blockmap-bmap` crate's reader, tested against bmaptool's files), it is of SRC's size, it has a
/// checksum per range, and its mapped blocks cover SRC's data.
pub fn check_bmap(path: &Path, src: &Source) -> Result<Option<String>> {
    let bmap = match blockmap_bmap::Bmap::read(path) {
        Ok(b) => b,
        Err(e) => return Ok(Some(e.to_string())),
    };
    if bmap.image_size != src.size {
        return Ok(Some(format!(
            "ImageSize {} instead of {}",
            bmap.image_size, src.size
        )));
    }
    if bmap.ranges.iter().any(|r| r.checksum.is_none()) {
        return Ok(Some("a range without its checksum".into()));
    }
    let mapped: Vec<Range<u64>> = bmap
        .ranges
        .iter()
        .map(|r| r.bytes(bmap.block_size, bmap.image_size))
        .collect();
    let file = File::open(&src.path)?;
    // Data left out must read as zeros (see `check_map`).
    let missing = difference(&src.data, &mapped);
    if let Some(at) = first_nonzero(&file, &missing)? {
        return Ok(Some(format!("byte {at} is data but not mapped")));
    }
    Ok(None)
}

/// The parts of `a` not covered by `b` (both sorted, disjoint).
fn difference(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        let mut at = r.start;
        while at < r.end {
            while j < b.len() && b[j].end <= at {
                j += 1;
            }
            match b.get(j) {
                Some(cover) if cover.start <= at => at = cover.end.min(r.end),
                Some(cover) if cover.start < r.end => {
                    out.push(at..cover.start);
                    at = cover.start;
                }
                _ => {
                    out.push(at..r.end);
                    at = r.end;
                }
            }
        }
    }
    out
}

/// The first byte inside `ranges` of `file` that is not zero.
fn first_nonzero(file: &File, ranges: &[Range<u64>]) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    for r in ranges {
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(CHUNK) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Ok(Some(at + i as u64));
            }
            at += n as u64;
        }
    }
    Ok(None)
}

/// Bytes of `a` not covered by `b` (both sorted, disjoint).
fn bytes_outside(a: &[Range<u64>], b: &[Range<u64>]) -> u64 {
    difference(a, b).iter().map(|r| r.end - r.start).sum()
}

/// The merged union of two sorted, disjoint range lists.
fn union(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut all: Vec<Range<u64>> = a.iter().chain(b).cloned().collect();
    all.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Merges ranges separated by gaps shorter than `gap`.
fn coalesce(ranges: Vec<Range<u64>>, gap: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start - last.end < gap => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// The first offset inside `ranges` where the two files differ.
fn first_difference(a: &File, b: &File, ranges: &[Range<u64>]) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 1 << 20;
    let (mut x, mut y) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    for r in ranges {
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(CHUNK) as usize;
            a.read_exact_at(&mut x[..n], at)?;
            b.read_exact_at(&mut y[..n], at)?;
            if x[..n] != y[..n] {
                let i = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q);
                return Ok(Some(at + i.unwrap_or(0) as u64));
            }
            at += n as u64;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_outside_counts_the_uncovered_parts() {
        // a: [0,10) [20,30)    b: [5,8) [25,40)
        // uncovered: [0,5) [8,10) [20,25) = 5 + 2 + 5
        assert_eq!(bytes_outside(&[0..10, 20..30], &[5..8, 25..40]), 12);
        assert_eq!(bytes_outside(&[0..10], &[0..10]), 0);
        assert_eq!(bytes_outside(&[0..10], &[]), 10);
        assert_eq!(bytes_outside(&[], &[0..10]), 0);
    }

    #[test]
    fn difference_keeps_the_uncovered_parts() {
        assert_eq!(
            difference(&[0..10, 20..30], &[5..8, 25..40]),
            vec![0..5, 8..10, 20..25]
        );
        assert_eq!(difference(&[0..10], &[]), vec![0..10]);
        assert_eq!(difference(&[], &[0..10]), vec![]);
    }

    #[test]
    fn coalesce_bridges_small_gaps_only() {
        assert_eq!(coalesce(vec![0..4, 6..8, 20..30], 3), vec![0..8, 20..30]);
    }

    #[test]
    fn union_merges_touching_and_overlapping() {
        assert_eq!(union(&[0..4, 10..12], &[4..6, 11..20]), vec![0..6, 10..20]);
    }
}
