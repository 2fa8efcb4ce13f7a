//! `blockmap map`: the block map of one file, as a table or as JSON (its format:
//! `schemas/map.schema.json`, versioned as [`crate::json`] says).
//!
//! The table streams (one walk, constant memory, whatever the number of extents). The JSON
//! holds the data ranges and the raw extents of one walk (the holes derived from the data),
//! so that the kernel maps the file once.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;

use anyhow::{Context, Result};
use blockmap_core::ranges::RangeIterExt;
use blockmap_core::{BlockMap, MapOptions};
use sparsecopy::human_size as human;

use crate::cli::MapArgs;

pub(crate) fn run(args: &MapArgs) -> Result<()> {
    let options = MapOptions {
        backend: args.backend,
        sync: args.sync,
        ..MapOptions::default()
    };
    let map = BlockMap::open(&args.file, options)?;
    let mut out = BufWriter::with_capacity(1 << 18, io::stdout().lock());
    if args.json {
        write_json(&map, &args.file.to_string_lossy(), &mut out)?;
    } else {
        write_table(&map, &args.file.to_string_lossy(), args.holes, &mut out)?;
    }
    out.flush().context("writing to stdout")?;
    Ok(())
}

fn write_json(map: &BlockMap<File>, path: &str, out: &mut impl Write) -> Result<()> {
    let size = map.size();
    let (data, extents) = map.data_and_extents(0..size)?;
    let holes = data
        .iter()
        .cloned()
        .map(Ok::<_, std::convert::Infallible>)
        .inverted(0..size);

    write!(out, "{{\"version\":{},\"path\":", crate::json::MAP_VERSION)?;
    serde_json::to_writer(&mut *out, path)?;
    write!(
        out,
        ",\"size\":{size},\"block_size\":{},\"backend\":\"{}\",\"data\":",
        map.block_size(),
        map.backend()
    )?;
    write_ranges(out, data.iter().cloned())?;
    write!(out, ",\"holes\":")?;
    write_ranges(out, holes.map(|h| h.unwrap_or_else(|e| match e {})))?;
    // By hand, with itoa, as write_ranges, and no `Vec` of flag names per extent: through
    // `fmt`, formatting a large map's JSON cost more than its FIEMAP walk (benches/RESULTS.md,
    // "Measurements behind design choices").
    let mut num = itoa::Buffer::new();
    out.write_all(b",\"extents\":[")?;
    for (i, e) in extents.iter().enumerate() {
        out.write_all(if i > 0 {
            b",{\"start\":"
        } else {
            b"{\"start\":"
        })?;
        out.write_all(num.format(e.logical.start).as_bytes())?;
        out.write_all(b",\"end\":")?;
        out.write_all(num.format(e.logical.end).as_bytes())?;
        out.write_all(b",\"physical\":")?;
        out.write_all(num.format(e.physical).as_bytes())?;
        out.write_all(b",\"flags\":[")?;
        for (k, name) in e.flag_names().enumerate() {
            if k > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, name)?;
        }
        out.write_all(b"]}")?;
    }
    writeln!(out, "]}}")?;
    Ok(())
}

fn write_ranges(out: &mut impl Write, ranges: impl Iterator<Item = Range<u64>>) -> io::Result<()> {
    let mut num = itoa::Buffer::new();
    out.write_all(b"[")?;
    for (i, r) in ranges.enumerate() {
        out.write_all(if i > 0 { b",[" } else { b"[" })?;
        out.write_all(num.format(r.start).as_bytes())?;
        out.write_all(b",")?;
        out.write_all(num.format(r.end).as_bytes())?;
        out.write_all(b"]")?;
    }
    out.write_all(b"]")
}

fn write_table(map: &BlockMap<File>, path: &str, holes: bool, out: &mut impl Write) -> Result<()> {
    let size = map.size();
    writeln!(
        out,
        "{path}: size {size} ({}), block size {}, backend {}",
        human(size),
        map.block_size(),
        map.backend()
    )?;
    let kind = if holes { "hole" } else { "data" };
    writeln!(
        out,
        "{:<5} {:>20} {:>20} {:>20}",
        "kind", "start", "end", "length"
    )?;
    let (mut count, mut total) = (0u64, 0u64);
    let mut row = |out: &mut dyn Write, r: Range<u64>| -> io::Result<()> {
        count += 1;
        total += r.end - r.start;
        writeln!(
            out,
            "{kind:<5} {:>20} {:>20} {:>20}",
            r.start,
            r.end,
            r.end - r.start
        )
    };
    if holes {
        for r in map.holes(0..size) {
            row(out, r?)?;
        }
    } else {
        for r in map.data(0..size) {
            row(out, r?)?;
        }
    }
    let (data, hole) = if holes {
        (size - total, total)
    } else {
        (total, size - total)
    };
    writeln!(
        out,
        "{count} {kind} range{}: {data} bytes of data ({}), {hole} bytes of holes ({})",
        if count == 1 { "" } else { "s" },
        human(data),
        human(hole)
    )?;
    Ok(())
}
