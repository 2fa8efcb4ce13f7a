//! What a copy did: [`CopyReport`], and its one-line summary.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::checksum::ChecksumType;
use crate::readback::ReadBackReport;
use crate::source::Compression;

/// What [`Copier::copy`](crate::Copier::copy) did. Serialized (`blockmap bmap copy --json`) as one object: the
/// checksum type and compression by their names, `elapsed` in seconds, absent values as
/// `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CopyReport {
    /// `ImageSize`.
    pub image_size: u64,
    /// Bytes read from the image and written (the mapped ranges).
    pub mapped_bytes: u64,
    /// Bytes of a stream passed over (unmapped ranges, to the stream's end: read and dropped,
    /// or for an uncompressed URL, never fetched; for parallel decoding, those of the units
    /// decoded); 0 for a plain image read where the ranges are.
    pub skipped_bytes: u64,
    /// Ranges written.
    pub ranges: u64,
    /// Ranges whose checksum was verified.
    pub verified_ranges: u64,
    /// The checksum type the ranges are verified by (`None`: not verified).
    #[serde(serialize_with = "serialize_checksum_type")]
    pub checksum_type: Option<ChecksumType>,
    /// How the image was compressed.
    #[serde(serialize_with = "serialize_compression")]
    pub compression: Compression,
    /// Whether the destination is a block device.
    pub block_device: bool,
    /// Wall time of the copy.
    #[serde(serialize_with = "serialize_seconds")]
    pub elapsed: Duration,
    /// What the read-back verification did, if it was asked for.
    pub readback: Option<ReadBackReport>,
    /// Bytes of response bodies that came over the network, for an image given as a URL.
    pub network_bytes: Option<u64>,
}

fn serialize_checksum_type<S: serde::Serializer>(
    kind: &Option<ChecksumType>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match kind {
        Some(kind) => s.serialize_str(kind.name()),
        None => s.serialize_none(),
    }
}

fn serialize_compression<S: serde::Serializer>(c: &Compression, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.name())
}

fn serialize_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl CopyReport {
    /// A report of nothing done yet, for an image of `image_size` bytes verified by `kind`.
    pub(super) fn new(image_size: u64, kind: Option<ChecksumType>) -> Self {
        CopyReport {
            image_size,
            mapped_bytes: 0,
            skipped_bytes: 0,
            ranges: 0,
            verified_ranges: 0,
            checksum_type: kind,
            compression: Compression::None,
            block_device: false,
            elapsed: Duration::ZERO,
            readback: None,
            network_bytes: None,
        }
    }
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copied {} of mapped data in {} ranges of a {} image",
            sparsecopy::human_size(self.mapped_bytes),
            self.ranges,
            sparsecopy::human_size(self.image_size),
        )?;
        if self.compression != Compression::None {
            write!(f, " ({} compressed)", self.compression.name())?;
        }
        match self.checksum_type {
            Some(kind) if self.verified_ranges > 0 => {
                write!(f, ", {} ranges verified ({kind})", self.verified_ranges)?
            }
            _ => write!(f, ", not verified")?,
        }
        if let Some(r) = &self.readback {
            write!(f, ", {r}")?;
        }
        if let Some(bytes) = self.network_bytes {
            write!(f, ", {} over the network", sparsecopy::human_size(bytes))?;
        }
        write!(f, " in {:.2} s", self.elapsed.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes in the summary are the workspace's one formatter, right past TiB (bmaptool's,
    /// kept for the bmap file's comments, calls 2 PiB "2048.0 EiB").
    #[test]
    fn summary_sizes_are_right_at_every_unit() {
        let report = CopyReport {
            mapped_bytes: 3 << 40,
            ranges: 2,
            ..CopyReport::new(2 << 50, None)
        };
        let line = report.to_string();
        assert!(
            line.starts_with("copied 3.0 TiB of mapped data in 2 ranges of a 2.0 PiB image"),
            "{line}"
        );
    }
}
