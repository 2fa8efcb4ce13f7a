//! The pure range algebra on 10^6 ranges: merge, invert, clip and block rounding, streaming.

use std::convert::Infallible;
use std::hint::black_box;

use blockmap_core::ranges::RangeIterExt;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn algebra(c: &mut Criterion) {
    let input = blockmap_benches::ranges(1_000_000);
    let end = input.last().unwrap().end;
    let ok = || input.iter().cloned().map(Ok::<_, Infallible>);
    let mut group = c.benchmark_group("ranges_1e6");
    group.throughput(Throughput::Elements(input.len() as u64));
    group.bench_function("merge", |b| b.iter(|| black_box(ok().merged().count())));
    group.bench_function("invert", |b| {
        b.iter(|| black_box(ok().inverted(0..end).count()))
    });
    group.bench_function("clip", |b| {
        b.iter(|| black_box(ok().clipped(end / 4..end / 2).count()));
    });
    group.bench_function("round_out_4k", |b| {
        b.iter(|| black_box(ok().rounded_out(4096).count()));
    });
    group.finish();
}

criterion_group!(benches, algebra);
criterion_main!(benches);
