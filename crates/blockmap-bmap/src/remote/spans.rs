//! The spans of an uncompressed image to fetch: the mapped ranges, near ones coalesced.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;

use super::COALESCE;
use super::url::Url;
use crate::error::{Error, Result};

/// The ranges to fetch, in order, near ones coalesced, written to an unlinked temporary
/// file (16 bytes a span: memory stays small whatever the bmap).
pub(super) fn plan_spans(
    ranges: impl Iterator<Item = Result<Range<u64>>>,
    image: &Url,
) -> Result<(Spans, u64)> {
    let spool_error = |e| Error::io("keep the list of ranges to fetch", image.shown(), e);
    let file = tempfile::tempfile().map_err(spool_error)?;
    let mut out = BufWriter::new(file);
    let mut count = 0;
    let mut current: Option<Range<u64>> = None;
    let mut put = |span: Range<u64>, out: &mut BufWriter<File>| -> Result<()> {
        count += 1;
        out.write_all(&span.start.to_le_bytes())
            .and_then(|()| out.write_all(&span.end.to_le_bytes()))
            .map_err(spool_error)
    };
    for range in ranges {
        let range = range?;
        if range.is_empty() {
            continue;
        }
        current = match current {
            Some(span) if range.start.saturating_sub(span.end) < COALESCE => {
                Some(span.start..span.end.max(range.end))
            }
            Some(span) => {
                put(span, &mut out)?;
                Some(range)
            }
            None => Some(range),
        };
    }
    if let Some(span) = current {
        put(span, &mut out)?;
    }
    let mut file = out.into_inner().map_err(|e| spool_error(e.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(spool_error)?;
    Ok((Spans(BufReader::new(file)), count))
}

/// The spans [`plan_spans`] kept, read back in order.
pub(super) struct Spans(BufReader<File>);

impl Spans {
    /// The next span, `None` after the last.
    pub(super) fn next(&mut self) -> io::Result<Option<Range<u64>>> {
        let mut record = [0u8; 16];
        match self.0.read_exact(&mut record) {
            Ok(()) => {
                let start = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
                let end = u64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
                Ok(Some(start..end))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }
}
