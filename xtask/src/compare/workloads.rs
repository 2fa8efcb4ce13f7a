//! The source files of `cargo xtask compare` (listed above its tables in benches/RESULTS.md),
//! made on the filesystem under test, and what is known of them before any tool runs: size,
//! data ranges (by the kernel's `SEEK_DATA`/`SEEK_HOLE`), allocated bytes.

use std::fs::{self, File};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;

use crate::cleanup;
use crate::cmd::{self, Interruptible};
use crate::fs_test;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// The workloads, in the order they run and are reported.
pub const NAMES: &[&str] = &["rootfs", "strided", "dense", "tera", "prealloc"];

/// One-line descriptions for the report.
pub fn describe(name: &str) -> &'static str {
    match name {
        "rootfs" => {
            "4 GiB image, `mkfs.ext4`, loop-mounted, /usr/share and /usr/bin copied in, \
             unmounted; made once under the run's directory, `cp --sparse=auto` onto each \
             filesystem"
        }
        "strided" => "1 GiB, 4 KiB of data every 8 KiB (131072 extents), fsynced",
        "dense" => "1 GiB of pseudo-random data, fsynced",
        "tera" => "1 TiB, 64 MiB of data in 4 chunks of 16 MiB, fsynced",
        "prealloc" => {
            "1 GiB `fallocate`d, 16 chunks of 4 MiB written; the last 8 not fsynced when the \
             warm-up starts"
        }
        _ => "",
    }
}

/// A source file and its layout.
#[derive(Debug)]
pub struct Source {
    pub name: &'static str,
    pub path: PathBuf,
    pub size: u64,
    /// Data ranges by `SEEK_DATA`/`SEEK_HOLE`, merged, clipped to the size.
    pub data: Vec<Range<u64>>,
    pub allocated: u64,
}

impl Source {
    /// Walks SRC's data again. Needed after a tool read it: reading an unwritten
    /// (preallocated) extent leaves zero pages in the page cache, and from then on the
    /// kernel's SEEK_DATA calls that range data.
    pub fn refresh(&mut self) -> Result<()> {
        let file = File::open(&self.path)?;
        self.data = data_ranges(&file, self.size)
            .with_context(|| format!("cannot walk the data of {}", self.path.display()))?;
        Ok(())
    }

    pub fn data_bytes(&self) -> u64 {
        self.data.iter().map(|r| r.end - r.start).sum()
    }
}

/// Makes workload `name` in `dir` (on the filesystem under test). `rootfs` is the root-fs
/// image made by [`make_rootfs`], needed for that workload only.
pub fn make(name: &'static str, dir: &Path, rootfs: Option<&Path>) -> Result<Source> {
    let path = dir.join(format!("{name}.img"));
    match name {
        "rootfs" => {
            let image = rootfs.context("the root-fs image was not made")?;
            // cp follows SEEK_DATA for a sparse file: the copy has the same data and holes.
            let mut cp = Command::new(cmd::program("cp"));
            cp.arg("--sparse=auto").arg(image).arg(&path);
            cmd::run_captured(&mut cp, Interruptible::Yes)?;
            File::open(&path)?.sync_all()?;
        }
        "strided" => strided(&path)?,
        "dense" => chunks(&path, GIB, &[(0, GIB)], false)?,
        "tera" => {
            let chunk = 16 * MIB;
            let at = [0, 300 * GIB, 700 * GIB + 4 * MIB, TIB - chunk];
            let chunks_at: Vec<(u64, u64)> = at.iter().map(|&a| (a, chunk)).collect();
            chunks(&path, TIB, &chunks_at, false)?;
        }
        "prealloc" => prealloc(&path)?,
        _ => bail!("unknown workload {name}"),
    }
    describe_file(name, &path)
}

/// Measures an existing file.
fn describe_file(name: &'static str, path: &Path) -> Result<Source> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file.metadata()?;
    let data = data_ranges(&file, meta.len())
        .with_context(|| format!("cannot walk the data of {}", path.display()))?;
    Ok(Source {
        name,
        path: path.to_owned(),
        size: meta.len(),
        data,
        allocated: meta.blocks() * 512,
    })
}

/// The data ranges of `file` as the kernel's `SEEK_DATA`/`SEEK_HOLE` give them: merged,
/// clipped to `[0, size)`. The oracle of the checks, independent of blockmap's own code.
pub fn data_ranges(file: &File, size: u64) -> std::io::Result<Vec<Range<u64>>> {
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(start) => start,
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(size);
        if end > start {
            match ranges.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => ranges.push(start..end),
            }
        }
        // An empty segment (seen with 1 KiB blocks) must not stop the walk.
        at = end.max(start + 1);
    }
    Ok(ranges)
}

/// Pseudo-random bytes (xorshift64): no zero blocks for `cp --sparse=always` to find.
fn fill_random(buf: &mut [u8], state: &mut u64) {
    for word in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
}

/// A file of `size` bytes with pseudo-random data at each `(offset, length)`, fsynced
/// unless `leave_dirty`.
fn chunks(path: &Path, size: u64, at: &[(u64, u64)], leave_dirty: bool) -> Result<()> {
    let file =
        File::create_new(path).with_context(|| format!("cannot create {}", path.display()))?;
    write_chunks(&file, at)?;
    file.set_len(size)?;
    if !leave_dirty {
        file.sync_all()?;
    }
    Ok(())
}

fn write_chunks(file: &File, at: &[(u64, u64)]) -> Result<()> {
    let mut buf = vec![0u8; MIB as usize];
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for &(start, len) in at {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MIB) as usize;
            fill_random(&mut buf[..n], &mut rng);
            file.write_all_at(&buf[..n], start + done)?;
            done += n as u64;
        }
    }
    Ok(())
}

/// 1 GiB with 4 KiB of data every 8 KiB: 131072 pwrites of one block.
fn strided(path: &Path) -> Result<()> {
    let file =
        File::create_new(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut block = vec![0u8; 4 * KIB as usize];
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut at = 0;
    while at < GIB {
        fill_random(&mut block, &mut rng);
        file.write_all_at(&block, at)?;
        at += 8 * KIB;
    }
    file.set_len(GIB)?;
    file.sync_all()?;
    Ok(())
}

/// 1 GiB preallocated (unwritten extents), 16 chunks of 4 MiB of data, one every 64 MiB;
/// the first 8 fsynced, the last 8 left dirty in the page cache.
fn prealloc(path: &Path) -> Result<()> {
    let file =
        File::create_new(path).with_context(|| format!("cannot create {}", path.display()))?;
    rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, GIB)
        .with_context(|| format!("cannot fallocate {}", path.display()))?;
    let at: Vec<(u64, u64)> = (0..16).map(|i| (i * 64 * MIB + MIB, 4 * MIB)).collect();
    write_chunks(&file, &at[..8])?;
    file.sync_all()?;
    write_chunks(&file, &at[8..])?;
    Ok(())
}

/// A 4 GiB ext4 image holding a copy of /usr/share and /usr/bin (about 950 MiB of data in
/// about a hundred segments): made on a loop device, mounted under `scratch`, filled with
/// `cp -a`, unmounted and detached.
pub fn make_rootfs(path: &Path, scratch: &Path) -> Result<()> {
    let mark = cleanup::depth();
    let result = fill_rootfs(path, scratch);
    // Unmount and detach now, whatever happened: the image is the workload.
    let problems = cleanup::unwind_to(mark);
    result?;
    if !problems.is_empty() {
        bail!("cannot unmount the root-fs image: {}", problems.join("; "));
    }
    Ok(())
}

fn fill_rootfs(path: &Path, scratch: &Path) -> Result<()> {
    let device = fs_test::attach_loop(path, 4 * GIB)?;
    let mut mkfs = Command::new(cmd::program("mkfs.ext4"));
    mkfs.args(["-F", "-q"]).arg(&device);
    cmd::run_captured(&mut mkfs, Interruptible::Yes)?;
    let mountpoint = scratch.join("rootfs");
    fs::create_dir_all(&mountpoint)?;
    let mut mount = Command::new(cmd::program("mount"));
    mount.args(["-t", "ext4"]).arg(&device).arg(&mountpoint);
    fs_test::mount_with(&mut mount, &mountpoint)?;
    let usr = mountpoint.join("usr");
    fs::create_dir(&usr)?;
    let mut copy = Command::new(cmd::program("cp"));
    copy.args(["-a", "/usr/share", "/usr/bin"]).arg(&usr);
    cmd::run_captured(&mut copy, Interruptible::Yes)?;
    Ok(())
}
