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
/// 1 GiB, 4 KiB and 8 KiB, the 131072-extent workload of SPEC section 7. Made once, fsynced
/// (so FIEMAP sees settled extents), reused while its size matches.
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

/// `n` sorted, disjoint ranges with gaps: the input of the range-algebra benchmarks.
pub fn ranges(n: u64) -> Vec<std::ops::Range<u64>> {
    (0..n)
        .map(|i| i * 8192..i * 8192 + 4096 + (i % 3) * 1024)
        .collect()
}
