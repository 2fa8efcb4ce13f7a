//! The image as a stream of bytes: a plain file read where the ranges are, or a compressed
//! file decompressed in order; and the bmap file beside it.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How an image is compressed, by its name's suffix (as bmaptool tells).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Not compressed: read where the ranges are.
    None,
    /// `.gz`, `.gzip` (several members allowed, as `pigz` writes).
    Gzip,
    /// `.xz` (several streams allowed).
    Xz,
    /// `.zst`.
    Zstd,
    /// `.bz2` (several streams allowed, as `pbzip2` writes).
    Bzip2,
    /// `.lz4` (the LZ4 frame format the `lz4` tool writes; several frames allowed).
    Lz4,
}

impl Compression {
    /// The compression of the image at `path` by its name's suffix, as bmaptool tells it (an
    /// archive's outer compression: `.tar.gz` and `.tgz` are gzip, `.tar` and `.zip` none); an
    /// error for lzop (`.lzo`, `.tzo`), which bmaptool reads with `lzop` and this crate does
    /// not. [`Copier::copy`](crate::Copier::copy) goes by the content's first bytes instead
    /// (see [`Input`](crate::Input)).
    pub fn of(path: &Path) -> Result<Compression> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let has = |suffixes: &[&str]| suffixes.iter().any(|s| name.ends_with(&format!(".{s}")));
        if let Some(kind) = ["lzo", "tzo"].iter().find(|s| has(&[s])) {
            return Err(Error::UnsupportedCompression {
                path: path.to_owned(),
                kind: (*kind).to_owned(),
            });
        }
        Ok(if has(&["gz", "gzip", "tgz"]) {
            Compression::Gzip
        } else if has(&["xz", "txz"]) {
            Compression::Xz
        } else if has(&["zst", "tzst"]) {
            Compression::Zstd
        } else if has(&["bz2", "tbz2", "tbz", "tb2"]) {
            Compression::Bzip2
        } else if has(&["lz4", "tlz4"]) {
            Compression::Lz4
        } else {
            Compression::None
        })
    }

    /// The name in reports (`"gzip"`, `"none"`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Lz4 => "lz4",
        }
    }
}

/// The bmap file of `image` as bmaptool finds it: `IMAGE.bmap`, then, while the name has an
/// extension, that extension dropped and `.bmap` added (`disk.img.xz` → `disk.img.xz.bmap`,
/// `disk.img.bmap`, `disk.bmap`). Beside an `http(s)://` URL the same candidates are asked
/// for (by HEAD), and the URL found is returned.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("disk.img.bmap"), "")?;
/// let found = blockmap_bmap::find_bmap(dir.path().join("disk.img.gz"))?;
/// assert_eq!(found, dir.path().join("disk.img.bmap"));
/// # Ok(())
/// # }
/// ```
pub fn find_bmap(image: impl AsRef<Path>) -> Result<PathBuf> {
    let image = image.as_ref();
    if let Some(url) = crate::remote::Url::of(image) {
        return crate::remote::find_bmap(&url);
    }
    let mut tried = Vec::new();
    let mut stem = image.to_owned();
    loop {
        let mut candidate = stem.clone().into_os_string();
        candidate.push(".bmap");
        let candidate = PathBuf::from(candidate);
        if candidate.is_file() {
            tracing::debug!(bmap = %candidate.display(), "discovered the bmap file");
            return Ok(candidate);
        }
        tried.push(candidate);
        if stem.extension().is_none() {
            return Err(Error::NoBmap {
                image: image.to_owned(),
                tried,
            });
        }
        stem.set_extension("");
    }
}

/// Where the image's bytes come from.
pub(crate) enum Source {
    /// A plain file or device: positioned reads, the holes never read.
    File(File),
    /// A decompressor, or a plain image that cannot seek (a pipe): read in order, the
    /// unmapped parts read and dropped.
    Stream {
        reader: BufReader<Box<dyn Read + Send>>,
        pos: u64,
        compression: Compression,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(file) => f.debug_tuple("File").field(file).finish(),
            Source::Stream { pos, .. } => f.debug_struct("Stream").field("pos", pos).finish(),
        }
    }
}

const COMPRESSED_BUFFER: usize = 256 << 10;

/// `raw` decompressed as `compression` says (`raw` itself when not compressed); `path` names
/// the image in errors.
pub(crate) fn decoder(
    raw: Box<dyn Read + Send>,
    path: &Path,
    compression: Compression,
) -> Result<Box<dyn Read + Send>> {
    let buffered = |raw| BufReader::with_capacity(COMPRESSED_BUFFER, raw);
    Ok(match compression {
        Compression::None => raw,
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered(raw))),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(buffered(
            raw,
        ))),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered(raw))
                .map_err(|e| Error::io("start the zstd decoder", path, e))?,
        ),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(buffered(raw))),
        Compression::Lz4 => Box::new(Lz4Frames(lz4_flex::frame::FrameDecoder::new(buffered(raw)))),
    })
}

impl Source {
    /// The image's bytes in order (already decompressed; `compression` is for reports).
    pub(crate) fn stream(reader: Box<dyn Read + Send>, compression: Compression) -> Source {
        Source::Stream {
            reader: BufReader::with_capacity(COMPRESSED_BUFFER, reader),
            pos: 0,
            compression,
        }
    }

    /// How the image is compressed.
    pub(crate) fn compression(&self) -> Compression {
        match self {
            Source::File(_) => Compression::None,
            Source::Stream { compression, .. } => *compression,
        }
    }

    /// Where a stream is (the bytes read from it so far).
    pub(crate) fn position(&self) -> u64 {
        match self {
            Source::File(_) => 0,
            Source::Stream { pos, .. } => *pos,
        }
    }

    /// Reads (and decompresses) a stream's first bytes without consuming them: the count
    /// available, 0 for an empty stream.
    pub(crate) fn peek(&mut self) -> io::Result<usize> {
        match self {
            Source::File(_) => Ok(1),
            Source::Stream { reader, .. } => loop {
                match reader.fill_buf() {
                    Ok(buf) => return Ok(buf.len()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
        }
    }

    /// The next bytes of a stream, up to `buf.len()`: 0 at its end.
    pub(crate) fn read_more(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::File(_) => Ok(0),
            Source::Stream { reader, pos, .. } => {
                let got = read_full(reader, buf)?;
                *pos += got as u64;
                Ok(got)
            }
        }
    }

    /// Reads the image's bytes at `pos` into `buf`, as many as there are up to `buf.len()`:
    /// fewer only at the image's end. A stream is read and dropped up to `pos`, which must not
    /// be behind what was read already.
    pub(crate) fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::File(file) => read_full_at(file, pos, buf),
            Source::Stream {
                reader, pos: at, ..
            } => {
                if pos < *at {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "ranges out of order in a stream",
                    ));
                }
                // Skip: read and drop, through the caller's buffer.
                while *at < pos {
                    let n = (pos - *at).min(buf.len() as u64) as usize;
                    let got = read_full(reader, &mut buf[..n])?;
                    *at += got as u64;
                    if got < n {
                        return Ok(0);
                    }
                }
                let got = read_full(reader, buf)?;
                *at += got as u64;
                Ok(got)
            }
        }
    }
}

/// LZ4 frames one after another, as `cat a.lz4 b.lz4` makes them: lz4_flex's decoder goes on
/// with the next frame, but answers 0 (end of file) once at each frame's end; here 0 means
/// the file has ended.
struct Lz4Frames(lz4_flex::frame::FrameDecoder<BufReader<Box<dyn Read + Send>>>);

impl Read for Lz4Frames {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.0.read(buf)?;
            if n > 0 || buf.is_empty() || self.0.get_mut().fill_buf()?.is_empty() {
                return Ok(n);
            }
        }
    }
}

/// Reads `buf.len()` bytes of `file` at `pos`, fewer only at its end: the count read.
pub(crate) fn read_full_at(file: &File, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `read` into `buf` until it is full or the reader ends (EINTR retried): the bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `Read::read` for a reader whose `BufRead` side does the work (a filter that sees every
/// byte in `fill_buf`/`consume`): copies what `fill_buf` offers and consumes it.
pub(crate) fn read_through_buf(r: &mut impl BufRead, out: &mut [u8]) -> io::Result<usize> {
    let n = {
        let buf = r.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        n
    };
    r.consume(n);
    Ok(n)
}
