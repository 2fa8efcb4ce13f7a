//! Workloads shared by the criterion benchmarks: files with known layouts, made once and kept
//! under `target/bench-data` (or `$BLOCKMAP_BENCH_DIR`) so repeated runs measure the same file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where workloads live: `$BLOCKMAP_BENCH_DIR`, else `target/bench-data` of the workspace.
pub fn data_dir() -> PathBuf {
    std::env::var_os("BLOCKMAP_BENCH_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"),
        PathBuf::from,
    )
}

/// A file of `size` bytes with `data` bytes of data at the start of every `period`: with
/// 1 GiB, 4 KiB and 8 KiB, the 131072-extent workload (`strided` of `cargo xtask compare`).
/// Made once, fsynced (so FIEMAP sees settled extents), reused while its size matches.
pub fn strided(dir: &Path, size: u64, data: u64, period: u64) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("strided-{size}-{data}-{period}.img"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
        return Ok(path);
    }
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp)?;
    let block: Vec<u8> = (0..data).map(|i| (i % 251) as u8 + 1).collect();
    let mut at = 0;
    while at < size {
        file.write_all_at(&block[..data.min(size - at) as usize], at)?;
        at += period;
    }
    file.set_len(size)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// A file of `size` bytes that is all data (pseudo-random bytes, no zero blocks to detect): the
/// dense workload. Made once, fsynced, reused while its size matches.
pub fn dense(dir: &Path, size: u64) -> io::Result<PathBuf> {
    chunks(dir, "dense", size, size, 1)
}

/// A file of `size` bytes that is nearly all holes: `count` chunks of `chunk` bytes of
/// pseudo-random data, spread evenly (the first at offset 0). Made once, fsynced, reused while
/// its size matches.
pub fn mostly_holes(dir: &Path, size: u64, chunk: u64, count: u64) -> io::Result<PathBuf> {
    chunks(dir, "holes", size, chunk, count)
}

fn chunks(dir: &Path, name: &str, size: u64, chunk: u64, count: u64) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}-{size}-{chunk}-{count}.img"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
        return Ok(path);
    }
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let stride = size / count.max(1);
    for i in 0..count {
        let start = i * stride;
        let end = (start + chunk).min(size);
        let mut at = start;
        while at < end {
            let n = buf.len().min((end - at) as usize);
            fill_random(&mut buf[..n], &mut rng);
            file.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
    }
    file.set_len(size)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// xorshift64: fast, deterministic, never a zero word after a non-zero seed.
fn fill_random(buf: &mut [u8], state: &mut u64) {
    for word in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
}

/// `n` sorted, disjoint ranges with gaps: the input of the range-algebra benchmarks.
pub fn ranges(n: u64) -> Vec<std::ops::Range<u64>> {
    (0..n)
        .map(|i| i * 8192..i * 8192 + 4096 + (i % 3) * 1024)
        .collect()
}
