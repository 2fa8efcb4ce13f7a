//! The command line, as SPEC section 3 defines it.

use std::path::PathBuf;

use blockmap_core::BackendChoice;
use clap::{Args, Parser, Subcommand};

/// Block maps of files (where the data is, where the holes are) and sparse copies.
#[derive(Debug, Parser)]
#[command(name = "blockmap", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Show what the libraries do (-v debug, -vv trace) on stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print the data ranges (or holes) of a file or block device.
    Map(MapArgs),
}

/// `blockmap map [--backend …] [--json] [--holes] [--sync] FILE`
#[derive(Debug, Args)]
pub(crate) struct MapArgs {
    /// How to find the data: auto picks the best that works (fiemap, then seek, then none).
    #[arg(long, value_name = "auto|fiemap|seek|none", default_value = "auto")]
    pub backend: BackendChoice,

    /// Print one JSON object: path, size, block_size, backend, data, holes, extents.
    #[arg(long)]
    pub json: bool,

    /// List the holes instead of the data ranges (table output).
    #[arg(long)]
    pub holes: bool,

    /// fsync the file before mapping it (never needed for a correct map).
    #[arg(long)]
    pub sync: bool,

    /// The file or block device to map.
    pub file: PathBuf,
}
