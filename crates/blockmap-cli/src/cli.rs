//! The command line, as README.md's "Use" documents it.

use std::path::PathBuf;

use blockmap_core::BackendChoice;
use clap::{Args, Parser, Subcommand, ValueEnum};

// `super::`, not `crate::`: the CLI's tests compile this file and `size.rs` into one module.
use super::size::{SIZE_HELP, parse_size};

/// Block maps of files (where the data is, where the holes are) and sparse copies that move
/// only data.
#[derive(Debug, Parser)]
#[command(name = "blockmap", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Show what the libraries do (-v debug, -vv trace) on stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print nothing on stderr but errors and warnings: no summary line, and no progress bar
    /// unless --progress asks for one. Output on stdout (--json, map's table) is unchanged;
    /// -v's logs still show.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Print the man page (man) or a shell's completion script on stdout, and exit. Install
    /// them as the README says (`blockmap --generate man > blockmap.1`).
    #[arg(long, value_enum, value_name = "WHAT", exclusive = true)]
    pub generate: Option<Generate>,

    // Required, unless --generate is given (`main` says so).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--generate`: what to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Generate {
    /// The man page, roff: every command and its options on one page.
    Man,
    /// The bash completion script.
    CompleteBash,
    /// The zsh completion script.
    CompleteZsh,
    /// The fish completion script.
    CompleteFish,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print the data ranges (or holes) of a file or block device.
    Map(MapArgs),
    /// Copy SRC to DST touching only data, as `dd bs=1 skip=S seek=K count=L conv=notrunc`.
    Copy(CopyArgs),
    /// Create bmap files and copy images by them, as bmaptool does.
    #[command(subcommand)]
    Bmap(BmapCommand),
}

/// `blockmap bmap create|copy`.
#[derive(Debug, Subcommand)]
pub(crate) enum BmapCommand {
    /// Write the bmap of an image (its mapped blocks, with a checksum per range).
    Create(BmapCreateArgs),
    /// Copy an image (plain, .gz, .xz, .zst, .bz2, .lz4, tar or zip; a file or a pipe) to a
    /// file or block device by its bmap, writing only the mapped blocks and verifying their
    /// checksums.
    Copy(BmapCopyArgs),
}

/// `blockmap bmap create IMAGE [-o FILE] [--no-checksum]`
#[derive(Debug, Args)]
pub(crate) struct BmapCreateArgs {
    /// Write the bmap to FILE (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Leave out the checksums of the ranges.
    #[arg(long)]
    pub no_checksum: bool,

    /// How to find the image's data: auto picks the best that works.
    #[arg(long, value_name = "auto|fiemap|seek|none", default_value = "auto")]
    pub backend: BackendChoice,

    /// The image to map.
    pub image: PathBuf,
}

/// `blockmap bmap copy [--bmap FILE] [--no-verify] IMAGE DEST`
#[derive(Debug, Args)]
#[command(
    after_help = "Without --bmap, the bmap is looked for beside IMAGE as bmaptool does: \
    IMAGE.bmap, then with each extension dropped (disk.img.xz: disk.img.xz.bmap, disk.img.bmap, \
    disk.bmap).\n\
    A regular DEST becomes the image: created, or truncated and resized to the image size, so \
    that unmapped blocks read as zeros. A block device DEST must hold the image; its unmapped \
    blocks are left as they are."
)]
pub(crate) struct BmapCopyArgs {
    /// The bmap file of the image (a path, or an http:// or https:// URL).
    #[arg(long, value_name = "FILE", conflicts_with = "nobmap")]
    pub bmap: Option<PathBuf>,

    /// Copy without a bmap: a plain image's own block map says what to write; a compressed
    /// image, an archive or a stream is written whole. Nothing is verified.
    #[arg(long)]
    pub nobmap: bool,

    /// Do not verify the checksums of the ranges.
    #[arg(long)]
    pub no_verify: bool,

    /// The detached GPG signature of the bmap file (default: BMAP.asc or BMAP.sig if present;
    /// a clearsigned bmap carries its own).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["nobmap", "no_sig_verify"])]
    pub bmap_sig: Option<PathBuf>,

    /// Do not verify the bmap file's GPG signature.
    #[arg(long = "no-sig-verify", alias = "no-sig")]
    pub no_sig_verify: bool,

    /// Do not fsync DEST at the end.
    #[arg(long)]
    pub no_sync: bool,

    /// Show the progress on stderr: a bar on a terminal (the default there); elsewhere (a log)
    /// a plain line at once, then one every 5 s.
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,

    /// Never draw a progress bar.
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,

    /// The image: a file, a block device, a pipe, - (standard input, which needs --bmap), or an
    /// http:// or https:// URL (an uncompressed one is fetched by Range requests for its mapped
    /// blocks only); plain, gzip, xz, zstd, bzip2 or lz4, or inside a tar (also compressed) or
    /// zip archive, recognised by its first bytes.
    pub image: PathBuf,

    /// The file or block device to write.
    pub dest: PathBuf,

    /// After writing and syncing, read every range back from DEST past the page cache and
    /// check its checksum; rewrite a range that differs up to N times, then fail naming it.
    #[arg(long, value_name = "N", conflicts_with = "nobmap")]
    pub checksum_retry: Option<u32>,

    /// Refuse a DEST that is not a removable block device (an SD card, a USB stick).
    #[arg(long)]
    pub removable_device: bool,

    /// Check the bmap's signature against the keys of this keyring only (not GNUPGHOME's).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["nobmap", "no_sig_verify"])]
    pub keyring: Option<PathBuf>,

    /// Accept the bmap's signature only if made by this key (its primary or subkey
    /// fingerprint); a bmap without a signature is refused.
    #[arg(long, value_name = "FPR", conflicts_with_all = ["nobmap", "no_sig_verify"])]
    pub fingerprint: Option<String>,

    /// Write progress as psplash does it (`PROGRESS <percent>`) to this FIFO, if it is one.
    #[arg(long, value_name = "PATH")]
    pub psplash_pipe: Option<PathBuf>,

    /// Print the report as one JSON object on stdout instead of the summary line.
    #[arg(long)]
    pub json: bool,
}

/// `blockmap map [--backend …] [--json] [--holes] [--sync] FILE`
#[derive(Debug, Args)]
pub(crate) struct MapArgs {
    /// How to find the data: auto picks the best that works (fiemap, then seek, then none).
    #[arg(long, value_name = "auto|fiemap|seek|none", default_value = "auto")]
    pub backend: BackendChoice,

    /// Print one JSON object: version, path, size, block_size, backend, data, holes, extents.
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

/// `blockmap copy [--skip N] [--seek N] [--length N] [--backend …] [--reflink …]
/// [--detect-zeros] [--zero-holes] [--progress|--no-progress] [--json] SRC DST`
#[derive(Debug, Args)]
#[command(
    after_help = format!("{SIZE_HELP}\n\
    DST is created if absent; an existing file is never truncated, only grown, and is left \
    untouched outside the window; a block device keeps its size.")
)]
pub(crate) struct CopyArgs {
    /// Start reading SRC at this offset.
    #[arg(long, value_name = "N", value_parser = parse_size, default_value = "0", allow_hyphen_values = true)]
    pub skip: u64,

    /// Start writing DST at this offset.
    #[arg(long, value_name = "N", value_parser = parse_size, default_value = "0", allow_hyphen_values = true)]
    pub seek: u64,

    /// Copy at most this many bytes (default: the rest of SRC).
    #[arg(long, value_name = "N", value_parser = parse_size, allow_hyphen_values = true)]
    pub length: Option<u64>,

    /// How to find SRC's data: auto picks the best that works.
    #[arg(long, value_name = "auto|fiemap|seek|none", default_value = "auto")]
    pub backend: BackendChoice,

    /// Share data with SRC (FICLONERANGE) where the filesystem can: auto tries it, always
    /// fails where it is impossible, never copies every byte.
    #[arg(long, value_enum, default_value_t = ReflinkArg::Auto)]
    pub reflink: ReflinkArg,

    /// Leave all-zero blocks inside data unwritten, as holes (cp --sparse=always).
    #[arg(long)]
    pub detect_zeros: bool,

    /// DST a block device: also zero the ranges where SRC has holes.
    #[arg(long)]
    pub zero_holes: bool,

    /// fsync DST before reporting success.
    #[arg(long)]
    pub sync: bool,

    /// Show the progress on stderr: a bar on a terminal (the default there); elsewhere (a log)
    /// a plain line at once, then one every 5 s.
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,

    /// Never draw a progress bar.
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,

    /// Print the report as one JSON object on stdout instead of the summary line.
    #[arg(long)]
    pub json: bool,

    /// Force one way of copying the data that is not reflinked (for benchmarks).
    #[arg(long, value_enum, default_value_t = MethodArg::Auto, hide = true)]
    pub method: MethodArg,

    /// The file (or block device) to copy from; never written.
    pub src: PathBuf,

    /// The file or block device to copy to.
    pub dst: PathBuf,
}

/// `--reflink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReflinkArg {
    Auto,
    Always,
    Never,
}

impl From<ReflinkArg> for sparsecopy::Reflink {
    fn from(r: ReflinkArg) -> Self {
        match r {
            ReflinkArg::Auto => sparsecopy::Reflink::Auto,
            ReflinkArg::Always => sparsecopy::Reflink::Always,
            ReflinkArg::Never => sparsecopy::Reflink::Never,
        }
    }
}

/// `--method` (hidden).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MethodArg {
    Auto,
    CopyFileRange,
    ReadWrite,
}

impl From<MethodArg> for sparsecopy::Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Auto => sparsecopy::Method::Auto,
            MethodArg::CopyFileRange => sparsecopy::Method::CopyFileRange,
            MethodArg::ReadWrite => sparsecopy::Method::ReadWrite,
        }
    }
}
