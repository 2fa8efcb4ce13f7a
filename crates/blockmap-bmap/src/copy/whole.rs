//! `--nobmap` on a compressed image or a stream: every byte of the image written in order,
//! its size learned at its end (as `bmaptool copy --nobmap` does; holes become zeros).

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use sparsecopy::Destination;
use tracing::debug;

use super::{Copier, CopyReport, Progress, Writeback, Written, interrupted, stream_error};
use crate::error::{Error, Result};
use crate::input::{Input, Opened};
use crate::source::Source;

/// Bytes read and written at once.
const BUFFER: usize = 1 << 20;

impl Copier<'_> {
    /// Copies all of `input` to `dest`.
    pub(super) fn copy_whole(
        mut self,
        input: Input,
        dest: &Path,
        started: Instant,
    ) -> Result<CopyReport> {
        let image = input.path().to_owned();
        let compression = input.compression();
        let (mut source, plain) = match input.open_image()? {
            Opened::Plain(file) => {
                let same = file.try_clone().ok();
                (Source::stream(Box::new(file), compression), same)
            }
            Opened::Stream(reader) => (Source::stream(reader, compression), None),
        };
        // Its first bytes arrive and decompress, before anything is written.
        source
            .peek()
            .map_err(|e| stream_error(e, &image, compression, 0))?;
        if self.interrupted() {
            return Err(interrupted(dest));
        }
        // The size is known up front only from a plain file's own.
        let size = plain
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let out = Destination::open(dest)?;
        let written = Written::new();
        let outcome = match &plain {
            Some(file) if out.is_same_file(file, &image).unwrap_or(false) => Err(Error::SameFile {
                image: image.clone(),
                dest: dest.to_owned(),
            }),
            _ => self.write_whole(&mut source, size, &out, &image, dest, &written),
        };
        super::finish(outcome, out, &written, started)
    }

    /// Writes all of `source`, `size` bytes if known.
    fn write_whole(
        &mut self,
        source: &mut Source,
        size: Option<u64>,
        out: &Destination,
        image: &Path,
        dest: &Path,
        written: &Written,
    ) -> Result<CopyReport> {
        let compression = source.compression();
        if !out.is_block_device() && !out.created() && out.size() > 0 {
            // The destination becomes the image: nothing of its old contents survives.
            written.add(0..out.size());
            out.file()
                .set_len(0)
                .map_err(|e| Error::io("truncate", dest, e))?;
        }
        debug!(
            block_device = out.is_block_device(),
            "copying all of a stream"
        );
        let mut writeback = self.options.sync.then(|| Writeback::new(out.file(), dest));
        let mut buf = vec![0u8; BUFFER];
        let mut pos = 0u64;
        loop {
            if self.interrupted() {
                return Err(interrupted(dest));
            }
            let n = source
                .read_more(&mut buf)
                .map_err(|e| stream_error(e, image, compression, pos))?;
            if n == 0 {
                break;
            }
            let end = pos + n as u64;
            if out.is_block_device() && end > out.size() {
                let beyond = io::Error::other(format!(
                    "the image goes on past the end of the device ({} bytes)",
                    out.size()
                ));
                return Err(Error::io(format!("write bytes {pos}-{end}"), dest, beyond));
            }
            written.add(pos..end);
            out.file()
                .write_all_at(&buf[..n], pos)
                .map_err(|e| Error::io(format!("write bytes {pos}-{end}"), dest, e))?;
            if let Some(w) = writeback.as_mut() {
                w.written(pos..end);
            }
            pos = end;
            if let Some(p) = self.progress.as_mut() {
                p(Progress {
                    data_done: pos,
                    data_total: size.filter(|&t| t >= pos),
                    skipped: 0,
                });
            }
        }
        if let Some(p) = self.progress.as_mut() {
            p(Progress {
                data_done: pos,
                data_total: Some(pos),
                skipped: 0,
            });
        }
        self.stop_or_sync(out.file(), dest)?;
        Ok(CopyReport {
            mapped_bytes: pos,
            ranges: u64::from(pos > 0),
            compression,
            block_device: out.is_block_device(),
            ..CopyReport::new(pos, None)
        })
    }
}
