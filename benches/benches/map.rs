//! Mapping the 131072-extent file (1 GiB, 4 KiB of data every 8 KiB) with each backend, and
//! the bare FIEMAP ioctl cost for comparison (the aim: a map costs a small multiple of the bare
//! ioctl; the figures are in benches/RESULTS.md).

use std::hint::black_box;

use blockmap_core::{Backend, BackendChoice, BlockMap};
use criterion::{Criterion, criterion_group, criterion_main};

fn map(c: &mut Criterion) {
    let path = blockmap_benches::strided(&blockmap_benches::data_dir(), 1 << 30, 4096, 8192)
        .expect("making the 131072-extent workload");
    let mut group = c.benchmark_group("map_131072_extents");
    group.sample_size(20);
    for backend in [Backend::Fiemap, Backend::Seek, Backend::None] {
        let Ok(probe) = BlockMap::open(&path, BackendChoice::Only(backend)) else {
            continue; // not supported on the filesystem holding the workload
        };
        drop(probe);
        group.bench_function(backend.name(), |b| {
            b.iter(|| {
                let map = BlockMap::open(&path, BackendChoice::Only(backend)).unwrap();
                let n = map
                    .data(0..map.size())
                    .try_fold(0usize, |n, r| r.map(|_| n + 1));
                black_box(n.unwrap())
            });
        });
    }
    // The floor: the same FIEMAP calls with nothing done to their answers.
    let file = std::fs::File::open(&path).unwrap();
    group.bench_function("bare_fiemap_ioctl", |b| {
        let mut buf = fiemap_sys::FiemapBuffer::new(4096);
        b.iter(|| {
            let (mut next, mut n) = (0u64, 0usize);
            loop {
                buf.set_request(next, u64::MAX - next, 0);
                fiemap_sys::fiemap_ioctl(&file, &mut buf).unwrap();
                let Some(last) = buf.extents().last() else {
                    break;
                };
                n += buf.extents().len();
                if last.fe_flags & fiemap_sys::FIEMAP_EXTENT_LAST != 0 {
                    break;
                }
                next = last.fe_logical + last.fe_length;
            }
            black_box(n)
        });
    });
    group.finish();
}

criterion_group!(benches, map);
criterion_main!(benches);
