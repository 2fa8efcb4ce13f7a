//! The `--json` documents: one JSON object each, on one line of stdout, whose first field,
//! `version`, is the major version of its format. Each format is described by a JSON Schema
//! in the crate's `schemas/` folder (README, "Machine output"): a field added keeps the
//! version, a field changed or removed bumps it.

use std::io::{self, Write};

use anyhow::{Context, Result};
use serde::Serialize;

/// `map --json` (schemas/map.schema.json).
pub(crate) const MAP_VERSION: u32 = 1;
/// `copy --json` (schemas/copy-report.schema.json).
pub(crate) const COPY_VERSION: u32 = 1;
/// `bmap copy --json` (schemas/bmap-copy-report.schema.json).
pub(crate) const BMAP_COPY_VERSION: u32 = 1;

/// A report with the format's version first.
#[derive(Serialize)]
struct Versioned<'a, T> {
    version: u32,
    #[serde(flatten)]
    report: &'a T,
}

/// Prints `report` as one object, `version` first, and a newline, on stdout.
pub(crate) fn print_report(version: u32, report: &impl Serialize) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, &Versioned { version, report })
        .context("writing the report")?;
    writeln!(out).context("writing the report")?;
    out.flush().context("writing the report")
}
