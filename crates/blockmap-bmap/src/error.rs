//! The one error type of the crate: what failed, on which path, at which line or range.

use std::io;
use std::path::PathBuf;

/// What went wrong reading, writing, creating or copying with a bmap file. Every variant names
/// the file; format errors name the line, copy errors the range of blocks and bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: cannot {what}: {source}", path.display())]
    Io {
        /// What was being done (`"read the bmap file"`, `"write blocks 8-15"`…).
        what: String,
        /// The file.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The bmap file is not well-formed XML, or not a bmap as bmaptool writes it.
    #[error("{}:{line}: {message}", path.display())]
    Format {
        /// The bmap file.
        path: PathBuf,
        /// The 1-based line where the problem is.
        line: u64,
        /// What is wrong there.
        message: String,
    },
    /// The bmap file's own checksum (`BmapFileChecksum`, `BmapFileSHA1`) does not match.
    #[error(
        "{}: checksum mismatch of the bmap file: calculated {calculated}, the file says {expected}",
        path.display()
    )]
    BmapChecksum {
        /// The bmap file.
        path: PathBuf,
        /// What the file says.
        expected: String,
        /// What its bytes hash to.
        calculated: String,
    },
    /// The bmap file's GPG signature is bad, by an unknown, expired or revoked key, absent
    /// from its signature file, or cannot be checked.
    #[error("{}: signature not verified: {reason}", path.display())]
    Signature {
        /// The signature: a detached signature file, or the clearsigned bmap file.
        path: PathBuf,
        /// What GnuPG found.
        reason: String,
    },
    /// A range of the image does not hash to the checksum the bmap file gives for it.
    #[error(
        "{}: checksum mismatch for blocks {first}-{last} (bytes {start}-{}): calculated {calculated}, the bmap says {expected}",
        path.display(), end - 1
    )]
    RangeChecksum {
        /// The image.
        path: PathBuf,
        /// First block of the range.
        first: u64,
        /// Last block of the range (inclusive).
        last: u64,
        /// First byte of the range.
        start: u64,
        /// End of the range in bytes (exclusive).
        end: u64,
        /// The checksum in the bmap file.
        expected: String,
        /// The checksum of the image's bytes.
        calculated: String,
    },
    /// The image ends before a mapped range does: the bmap does not belong to it.
    #[error(
        "{}: the image ends at byte {at}, inside blocks {first}-{last} of the bmap: the bmap does not belong to this image",
        path.display()
    )]
    ImageTooShort {
        /// The image.
        path: PathBuf,
        /// First block of the range.
        first: u64,
        /// Last block of the range.
        last: u64,
        /// Where the image ended.
        at: u64,
    },
    /// The (uncompressed) image's size is not the bmap's `ImageSize`.
    #[error(
        "{}: the image holds {actual} bytes but the bmap file {} says {expected}: they do not belong together",
        path.display(), bmap.display()
    )]
    ImageSize {
        /// The image.
        path: PathBuf,
        /// The bmap file.
        bmap: PathBuf,
        /// `ImageSize`.
        expected: u64,
        /// The image's size.
        actual: u64,
    },
    /// A block device destination is smaller than the image.
    #[error(
        "{}: the block device holds {device} bytes, the image needs {image}: nothing written",
        path.display()
    )]
    DeviceTooSmall {
        /// The device.
        path: PathBuf,
        /// Its capacity.
        device: u64,
        /// `ImageSize`.
        image: u64,
    },
    /// The image and the destination are one file.
    #[error("{} and {} are the same file: nothing written", image.display(), dest.display())]
    SameFile {
        /// The image.
        image: PathBuf,
        /// The destination.
        dest: PathBuf,
    },
    /// No bmap file was given and none was found beside the image.
    #[error(
        "{}: no bmap file found (looked for {}); give one with --bmap",
        image.display(), tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoBmap {
        /// The image.
        image: PathBuf,
        /// The paths tried, in order.
        tried: Vec<PathBuf>,
    },
    /// The image's name says a compression this crate does not read.
    #[error("{}: {kind} images are not supported (uncompressed, gz, xz, zst, bz2, lz4, tar and zip are): decompress it and give the stream as IMAGE -", path.display())]
    UnsupportedCompression {
        /// The image.
        path: PathBuf,
        /// The suffix found (`"tar.gz"`, `"lzo"`…).
        kind: String,
    },
    /// The image is empty: it has no blocks to map.
    #[error("{}: cannot create a bmap for an empty image", path.display())]
    EmptyImage {
        /// The image.
        path: PathBuf,
    },
    /// A compressed image's decoder found it corrupt (a bad block, a checksum of the format
    /// that does not match, a stream cut short).
    #[error("{}: the {compression} image is corrupt (at byte {at} of its data): {source}", path.display())]
    Corrupt {
        /// The image.
        path: PathBuf,
        /// The format's name (`"gzip"`…).
        compression: &'static str,
        /// Where in the decompressed data the decoder stopped.
        at: u64,
        /// The decoder's complaint.
        source: io::Error,
    },
    /// A compressed image's container is corrupt where it says how it is laid out (an xz
    /// stream footer or index, whose CRC32 does not match or whose records do not add up).
    #[error("{}: the {compression} image is corrupt (at byte {at} of the file): {reason}", path.display())]
    CorruptIndex {
        /// The image.
        path: PathBuf,
        /// The format's name (`"xz"`…).
        compression: &'static str,
        /// Where in the (compressed) file.
        at: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The copy was stopped by [`Copier::interrupt`](crate::Copier::interrupt)'s flag.
    #[error("{}: interrupted: {}", dest.display(), interrupted_detail(*removed, written.as_ref()))]
    Interrupted {
        /// The destination.
        dest: PathBuf,
        /// Whether the destination, created by this copy, was removed.
        removed: bool,
        /// The bytes of the destination that may be partly written, if any were.
        written: Option<std::ops::Range<u64>>,
    },
    /// Ranges of the destination read back different from the bmap's checksums after the
    /// copy, and still did after `retries` rewrites (`--checksum-retry`).
    #[error(
        "{}: read back wrong after {}: {}: do not trust it",
        dest.display(),
        match retries { 0 => "writing (no rewrite asked)".to_owned(), 1 => "1 rewrite".to_owned(), n => format!("{n} rewrites") },
        crate::readback::describe(ranges, *count)
    )]
    ReadBack {
        /// The destination.
        dest: PathBuf,
        /// Rewrites tried per range.
        retries: u32,
        /// The first ranges that never matched.
        ranges: Vec<crate::readback::BadRange>,
        /// How many never matched.
        count: u64,
    },
    /// Read-back verification was asked for and cannot be done (no checksums, a stream).
    #[error("{}: cannot verify by reading back: {reason}", path.display())]
    ReadBackUnavailable {
        /// The bmap file or the image.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// `--removable-device` and the destination is not a removable block device.
    #[error("{}: {reason}", path.display())]
    NotRemovable {
        /// The destination.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// Mapping the image failed (opening it, its kind, FIEMAP/SEEK errors).
    #[error(transparent)]
    Map(#[from] blockmap_core::Error),
    /// Opening or checking the destination failed.
    #[error(transparent)]
    Dest(#[from] sparsecopy::Error),
    /// An archive (tar, zip) that holds no image, or whose reading failed.
    #[error("{}: {reason}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What is wrong, naming the archive's kind (and the byte of the image reached).
        reason: String,
    },
    /// Fetching an image, a bmap or a signature over HTTP(S) failed: no connection, an
    /// answer other than the one wanted (404…), a body cut short.
    #[error("{url}: cannot {what}: {reason}")]
    Http {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What was being done (`"fetch"`, `"download the bmap file"`).
        what: String,
        /// What went wrong.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an interrupted copy left behind.
pub(crate) fn interrupted_detail(removed: bool, written: Option<&std::ops::Range<u64>>) -> String {
    match (removed, written) {
        (true, _) => "removed the partial copy (this run created it)".to_owned(),
        (false, Some(w)) => format!(
            "bytes {}-{} may be partly written: do not trust it",
            w.start,
            w.end.saturating_sub(1)
        ),
        (false, None) => "nothing was written".to_owned(),
    }
}

/// The copy to `dest` stopped by the interrupt flag; [`Error::Interrupted`]'s `removed` and
/// `written` are filled in where the copy ends.
pub(crate) fn interrupted(dest: &std::path::Path) -> Error {
    Error::Interrupted {
        dest: dest.to_owned(),
        removed: false,
        written: None,
    }
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            path: path.into(),
            source,
        }
    }
}
