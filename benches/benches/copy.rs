//! Copying three workloads with each fast path of `sparsecopy` forced through [`Options`]:
//! `copy_file_range` per data range, read/write through the reused buffer, and reflink where
//! the filesystem holding the workloads shares extents (skipped with a note elsewhere).
//!
//! | group | file |
//! | --- | --- |
//! | `copy_131072_extents` | 1 GiB, 4 KiB of data every 8 KiB (compare's `strided`) |
//! | `copy_dense` | 1 GiB of data, no holes |
//! | `copy_mostly_holes` | 1 GiB, 16 chunks of 1 MiB of data spread evenly |
//!
//! The throughput is the data bytes moved (holes cost no bytes), so MiB/s compare across
//! workloads. Each iteration copies into a destination that does not exist yet, as
//! `blockmap copy SRC NEW` does; removing the previous copy is not timed. The workloads live
//! in `target/bench-data` (or `$BLOCKMAP_BENCH_DIR`; point it at an xfs or btrfs mount to
//! measure reflink), next to the destinations.

// A benchmark tells its reader on stderr why a case was skipped.
#![allow(clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use sparsecopy::{Method, Options, Reflink, Window};

/// The fast paths, each forced: an error instead of a silent fallback.
fn paths() -> [(&'static str, Options); 3] {
    [
        (
            "copy_file_range",
            Options::new()
                .reflink(Reflink::Never)
                .method(Method::CopyFileRange),
        ),
        (
            "read_write",
            Options::new()
                .reflink(Reflink::Never)
                .method(Method::ReadWrite),
        ),
        ("reflink", Options::new().reflink(Reflink::Always)),
    ]
}

fn copy(c: &mut Criterion) {
    let dir = blockmap_benches::data_dir();
    let workloads = [
        (
            "copy_131072_extents",
            blockmap_benches::strided(&dir, 1 << 30, 4096, 8192),
            512 << 20,
        ),
        (
            "copy_dense",
            blockmap_benches::dense(&dir, 1 << 30),
            1 << 30,
        ),
        (
            "copy_mostly_holes",
            blockmap_benches::mostly_holes(&dir, 1 << 30, 1 << 20, 16),
            16 << 20,
        ),
    ];
    let dst = dir.join("copy-destination.img");
    for (name, src, data_bytes) in workloads {
        let src = src.unwrap_or_else(|e| panic!("making the {name} workload: {e}"));
        let mut group = c.benchmark_group(name);
        // One copy takes up to a second or two: few samples of one iteration each keep
        // `cargo bench --bench copy` within minutes.
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(8))
            .throughput(Throughput::Bytes(data_bytes));
        for (path, options) in paths() {
            // Probe once: a path the filesystem refuses (reflink on ext4) is skipped.
            if let Err(e) = copy_once(&src, &dst, &options) {
                eprintln!("{name}/{path}: skipped: {e}");
                continue;
            }
            group.bench_function(path, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += copy_once(&src, &dst, &options).unwrap();
                    }
                    total
                });
            });
        }
        group.finish();
    }
    let _ = std::fs::remove_file(&dst);
}

/// Removes the previous copy (untimed), then times one copy of `src` into a new `dst`.
fn copy_once(src: &Path, dst: &Path, options: &Options) -> sparsecopy::Result<Duration> {
    match std::fs::remove_file(dst) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("removing {dst:?}: {e}"),
        _ => {}
    }
    let started = Instant::now();
    sparsecopy::copy(src, dst, Window::new(), options)?;
    Ok(started.elapsed())
}

criterion_group!(benches, copy);
criterion_main!(benches);
