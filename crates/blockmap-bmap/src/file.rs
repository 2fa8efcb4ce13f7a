//! A bmap file read as a stream ([`BmapFile`]): checked whole (its XML, its ranges, its own
//! checksum) in streaming passes over the file, then its ranges read again, one at a time, as
//! a copy consumes them. Memory is a few buffers whatever the number of ranges. A bmap that is
//! not a regular file (a FIFO, `/dev/stdin`) is spooled once to an unlinked temporary file as
//! the first pass reads it.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::checksum::{ChecksumType, Hasher};
use crate::error::{Error, Result};
use crate::format::{BlockRange, Bmap, Version};
use crate::parse::{Fault, Header, Parser, RangeCheck, line_at};
use crate::source::read_full;

/// Read buffer of each pass.
const BUFFER: usize = 128 << 10;

/// What a bmap says about its image, without its ranges: the header fields, the number of
/// ranges and the bytes they cover.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BmapInfo {
    /// The format version.
    pub version: Version,
    /// `ImageSize`.
    pub image_size: u64,
    /// `BlockSize`.
    pub block_size: u64,
    /// `BlocksCount`.
    pub blocks_count: u64,
    /// `MappedBlocksCount`.
    pub mapped_blocks_count: u64,
    /// `ChecksumType` (`sha1` for 1.3, none before).
    pub checksum_type: Option<ChecksumType>,
    /// The number of `<Range>`s.
    pub ranges: u64,
    /// The bytes of the image the ranges cover (the last block may be partial).
    pub mapped_bytes: u64,
}

impl Bmap {
    /// What this bmap says about its image.
    pub fn info(&self) -> BmapInfo {
        BmapInfo::of(self, self.ranges.len() as u64, self.mapped_bytes())
    }
}

impl BmapInfo {
    /// The header fields of `bmap`, with the count and bytes of its ranges (given: they may
    /// have been counted as they were read rather than held in `bmap.ranges`).
    pub(crate) fn of(bmap: &Bmap, ranges: u64, mapped_bytes: u64) -> BmapInfo {
        BmapInfo {
            version: bmap.version,
            image_size: bmap.image_size,
            block_size: bmap.block_size,
            blocks_count: bmap.blocks_count,
            mapped_blocks_count: bmap.mapped_blocks_count,
            checksum_type: bmap.checksum_type,
            ranges,
            mapped_bytes,
        }
    }
}

/// A bmap file, checked and open, its ranges read from it as they are needed.
///
/// [`BmapFile::open`] reads the file through twice, streaming: once for its XML and header,
/// once checking every range against the header while hashing the bytes for the file's own
/// checksum, as [`Bmap::read`] checks it. [`BmapFile::ranges`] reads the ranges a third time,
/// one by one. A bmap of four million ranges costs a few buffers, not gigabytes.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let mut bmap = blockmap_bmap::Bmap::new(1 << 20, 4096);
/// bmap.push(blockmap_bmap::BlockRange { first: 3, last: 9, checksum: None });
/// std::fs::write(dir.path().join("x.bmap"), bmap.to_xml())?;
/// let file = blockmap_bmap::BmapFile::open(dir.path().join("x.bmap"))?;
/// assert_eq!(file.info().mapped_blocks_count, 7);
/// let ranges: Vec<_> = file.ranges().collect::<Result<_, _>>()?;
/// assert_eq!(ranges, bmap.ranges);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct BmapFile {
    /// The bytes: the file itself, or the spool of a stream.
    file: File,
    /// Whether `file` is a spool (unlinked) of a stream.
    spooled: bool,
    path: PathBuf,
    header: Header,
    info: BmapInfo,
}

impl BmapFile {
    /// Opens and checks the bmap file at `path` (a regular file, or a stream such as a FIFO,
    /// which is read once into an unlinked temporary file).
    pub fn open(path: impl AsRef<Path>) -> Result<BmapFile> {
        let path = path.as_ref();
        let input = Input::open(path)?;
        if input.clearsigned {
            return Err(Error::Format {
                path: path.to_owned(),
                line: 1,
                message: "a clearsigned bmap: read it with read_signed".into(),
            });
        }
        input.into_bmap_file(path)
    }

    /// The bmap file's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a program can read its bytes again: its path, or (a spooled stream) a
    /// descriptor of the spool, from its start, for the program's stdin.
    pub(crate) fn data(&self) -> Result<Data> {
        data(&self.file, self.spooled, &self.path)
    }

    /// What the bmap says about its image.
    pub fn info(&self) -> &BmapInfo {
        &self.info
    }

    /// The ranges, in order, read from the file as the iterator goes (each checked again, and
    /// the file's checksum at the end: an error only if the file changed since it was opened).
    pub fn ranges(&self) -> Ranges<'_> {
        Ranges {
            parser: Parser::new(Hashing {
                inner: BufReader::with_capacity(BUFFER, At::new(&self.file)),
                hasher: ZeroingHasher::of(&self.header),
            }),
            check: RangeCheck::default(),
            file: self,
            done: false,
        }
    }

    /// All of it in memory.
    pub fn to_bmap(&self) -> Result<Bmap> {
        let ranges = self.ranges().collect::<Result<Vec<_>>>()?;
        Ok(Bmap {
            ranges,
            ..self.header.fields.clone()
        })
    }

    /// Turns a parse fault into this crate's error, the line counted in the file's bytes.
    fn fault(&self, f: Fault) -> Error {
        fault(f, At::new(&self.file), &self.path)
    }
}

/// A parse fault of the bmap file at `path` as this crate's error, the line counted in the
/// file's bytes as `bytes` reads them from the start.
fn fault(f: Fault, bytes: impl Read, path: &Path) -> Error {
    match f {
        Fault::At {
            at,
            skip_blanks,
            message,
        } => Error::Format {
            path: path.to_owned(),
            line: line_at(bytes, at, skip_blanks),
            message,
        },
        Fault::Io(e) => Error::io("read the bmap file", path, e),
    }
}

/// The ranges of a [`BmapFile`], read one at a time.
pub struct Ranges<'a> {
    parser: Parser<Hashing<BufReader<At<'a>>>>,
    check: RangeCheck,
    file: &'a BmapFile,
    done: bool,
}

impl std::fmt::Debug for Ranges<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranges")
            .field("path", &self.file.path)
            .field("ranges", &self.check.ranges)
            .finish_non_exhaustive()
    }
}

impl Iterator for Ranges<'_> {
    type Item = Result<BlockRange>;

    fn next(&mut self) -> Option<Result<BlockRange>> {
        if self.done {
            return None;
        }
        let header = &self.file.header;
        let next = match self.parser.next_range() {
            Ok(Some(raw)) => {
                return Some(self.check.check(raw, header).map_err(|f| {
                    self.done = true;
                    self.file.fault(f)
                }));
            }
            Ok(None) => match self.check.finish(header) {
                Err(f) => Some(f),
                Ok(()) => {
                    self.done = true;
                    // Read to its end again: still the file that was checked.
                    let calculated = self.parser.take_hasher().map(ZeroingHasher::finish_hex);
                    return match (calculated, &header.fields.file_checksum) {
                        (Some(calculated), Some(expected)) if calculated != *expected => {
                            Some(Err(Error::BmapChecksum {
                                path: self.file.path.clone(),
                                expected: expected.clone(),
                                calculated: format!("{calculated} (it changed during the copy)"),
                            }))
                        }
                        _ => None,
                    };
                }
            },
            Err(f) => Some(f),
        };
        self.done = true;
        next.map(|f| Err(self.file.fault(f)))
    }
}

/// The bmap file's bytes on a file that can be read again: the file, or a spool of it.
pub(crate) struct Input {
    file: File,
    /// Whether `file` is a spool (unlinked) of a stream.
    spooled: bool,
    /// Starts with the clearsign marker.
    pub clearsigned: bool,
    /// Bytes read from a stream and not yet spooled (a stream's first bytes, read to tell
    /// what it is), and the stream to spool.
    pending: Option<(Vec<u8>, File)>,
}

/// Where another program (gpg) reads a bmap file's bytes.
pub(crate) enum Data {
    /// By name.
    Path(PathBuf),
    /// From its stdin: a descriptor of the spool, at its start.
    Stdin(File),
}

fn data(file: &File, spooled: bool, path: &Path) -> Result<Data> {
    if !spooled {
        return Ok(Data::Path(path.to_owned()));
    }
    let mut spool = file
        .try_clone()
        .map_err(|e| Error::io("reopen the spooled bmap file", path, e))?;
    spool
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("rewind the spooled bmap file", path, e))?;
    Ok(Data::Stdin(spool))
}

/// What starts a clearsigned bmap file.
pub(crate) const CLEARSIGN_MARKER: &[u8] = b"-----BEGIN PGP SIGNED MESSAGE-----";

impl Input {
    pub(crate) fn open(path: &Path) -> Result<Input> {
        if let Some(url) = crate::remote::Url::of(path) {
            return Input::spooled(crate::remote::download(&url, "bmap file")?, &url.shown());
        }
        let file = File::open(path).map_err(|e| Error::io("open the bmap file", path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat the bmap file", path, e))?;
        if meta.is_dir() {
            return Err(Error::io(
                "read the bmap file",
                path,
                io::Error::from(io::ErrorKind::IsADirectory),
            ));
        }
        if meta.is_file() {
            let mut head = [0u8; CLEARSIGN_MARKER.len()];
            let n = crate::source::read_full_at(&file, 0, &mut head)
                .map_err(|e| Error::io("read the bmap file", path, e))?;
            return Ok(Input {
                file,
                spooled: false,
                clearsigned: head[..n] == *CLEARSIGN_MARKER,
                pending: None,
            });
        }
        // A stream: its first bytes tell what it is; the rest is spooled as it is read.
        let mut head = vec![0u8; CLEARSIGN_MARKER.len()];
        let n = read_full(&mut &file, &mut head)
            .map_err(|e| Error::io("read the bmap file", path, e))?;
        head.truncate(n);
        let spool = tempfile::tempfile()
            .map_err(|e| Error::io("make a temporary file for the bmap", path, e))?;
        Ok(Input {
            file: spool,
            spooled: true,
            clearsigned: head == CLEARSIGN_MARKER,
            pending: Some((head, file)),
        })
    }

    /// A whole bmap file already spooled (downloaded), at its start.
    fn spooled(file: File, path: &Path) -> Result<Input> {
        let mut head = [0u8; CLEARSIGN_MARKER.len()];
        let n = crate::source::read_full_at(&file, 0, &mut head)
            .map_err(|e| Error::io("read the bmap file", path, e))?;
        Ok(Input {
            file,
            spooled: true,
            clearsigned: head[..n] == *CLEARSIGN_MARKER,
            pending: None,
        })
    }

    /// Where a program can read the bytes (the spool must be complete): see
    /// [`BmapFile::data`].
    pub(crate) fn data(&self, path: &Path) -> Result<Data> {
        data(&self.file, self.spooled, path)
    }

    /// Copies what is left of a stream into the spool (a clearsigned stream, which goes to
    /// gpg whole).
    pub(crate) fn spool_all(&mut self, path: &Path) -> Result<()> {
        if let Some((head, stream)) = self.pending.take() {
            let mut out = &self.file;
            out.write_all(&head)
                .and_then(|()| io::copy(&mut &stream, &mut out).map(drop))
                .map_err(|e| Error::io("spool the bmap file", path, e))?;
        }
        Ok(())
    }

    /// The bmap in these bytes, checked.
    pub(crate) fn into_bmap_file(mut self, path: &Path) -> Result<BmapFile> {
        // Pass 1: the XML and the header (a stream is spooled on the way).
        let header = match self.pending.take() {
            None => {
                let reader = BufReader::with_capacity(BUFFER, At::new(&self.file));
                scan_header(&mut Parser::header_only(reader))
            }
            Some((head, stream)) => {
                let reader = Tee {
                    inner: BufReader::with_capacity(BUFFER, io::Cursor::new(head).chain(stream)),
                    out: &self.file,
                    failed: None,
                };
                let mut parser = Parser::new(reader);
                let header = scan_header(&mut parser);
                if let Some(e) = parser.into_inner().failed {
                    return Err(Error::io("spool the bmap file", path, e));
                }
                header
            }
        }
        .map_err(|f| fault(f, At::new(&self.file), path))?;

        // Pass 2: every range against the header, and the file's own checksum.
        let reader = Hashing {
            inner: BufReader::with_capacity(BUFFER, At::new(&self.file)),
            hasher: ZeroingHasher::of(&header),
        };
        let mut parser = Parser::new(reader);
        let mut check = RangeCheck::default();
        let checked = (|| {
            while let Some(raw) = parser.next_range()? {
                check.check(raw, &header)?;
            }
            // The whole file read: its header (the same fields, any duplicate having failed
            // the parse), its end known for the error below.
            let header = parser.header()?;
            check.finish(&header)?;
            Ok(header)
        })();
        let header = checked.map_err(|f| fault(f, At::new(&self.file), path))?;
        if let Some(z) = parser.into_inner().hasher {
            let expected = header.fields.file_checksum.clone().unwrap_or_default();
            let calculated = z.finish_hex();
            if calculated != expected {
                return Err(Error::BmapChecksum {
                    path: path.to_owned(),
                    expected,
                    calculated,
                });
            }
        }
        let info = BmapInfo::of(&header.fields, check.ranges, check.bytes);
        tracing::debug!(bmap = %path.display(), ranges = info.ranges, "bmap file checked");
        Ok(BmapFile {
            file: self.file,
            spooled: self.spooled,
            path: path.to_owned(),
            header,
            info,
        })
    }
}

/// The checked header of the file `parser` reads, once it has read all it reads.
fn scan_header<R: BufRead>(parser: &mut Parser<R>) -> Result<Header, Fault> {
    while parser.next_range()?.is_some() {}
    parser.header()
}

/// Parses and checks a whole bmap held in memory.
pub(crate) fn parse_bytes(raw: &[u8], path: &Path) -> Result<Bmap> {
    let error = |f: Fault| fault(f, raw, path);
    let header = scan_header(&mut Parser::new(raw)).map_err(error)?;
    let mut parser = Parser::new(raw);
    let mut check = RangeCheck::default();
    let mut ranges = Vec::new();
    while let Some(r) = parser.next_range().map_err(error)? {
        ranges.push(check.check(r, &header).map_err(error)?);
    }
    check.finish(&header).map_err(error)?;
    Ok(Bmap {
        ranges,
        ..header.fields
    })
}

/// Positioned reads of a file from a start, as a `Read` (several readers of one file, none
/// moving another's offset).
#[derive(Debug)]
pub(crate) struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> At<'a> {
    pub(crate) fn new(file: &'a File) -> Self {
        At { file, pos: 0 }
    }
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A `BufRead` that writes what is consumed of it to a file (the spool of a stream).
struct Tee<'a, R> {
    inner: R,
    out: &'a File,
    failed: Option<io::Error>,
}

impl<R: BufRead> Read for Tee<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        crate::source::read_through_buf(self, out)
    }
}

impl<R: BufRead> BufRead for Tee<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if n > 0 && self.failed.is_none() {
            // The bytes being consumed are still in the buffer: no read happens here.
            let written = match self.inner.fill_buf() {
                Ok(buf) => {
                    let mut out = self.out;
                    out.write_all(&buf[..n])
                }
                Err(e) => Err(e),
            };
            self.failed = written.err();
        }
        self.inner.consume(n);
    }
}

/// A `BufRead` that hashes what is consumed of it.
struct Hashing<R> {
    inner: R,
    hasher: Option<ZeroingHasher>,
}

impl<R: BufRead> Parser<Hashing<R>> {
    /// The hasher of what was read.
    fn take_hasher(&mut self) -> Option<ZeroingHasher> {
        self.reader_mut().hasher.take()
    }
}

impl<R: BufRead> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        crate::source::read_through_buf(self, out)
    }
}

impl<R: BufRead> BufRead for Hashing<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if n > 0
            && let Some(h) = self.hasher.as_mut()
            && let Ok(buf) = self.inner.fill_buf()
        {
            h.update(&buf[..n]);
        }
        self.inner.consume(n);
    }
}

/// The file checksum as bmaptool computes it, over a stream: the whole file hashed with the
/// first occurrence of the checksum's own text replaced by as many `0`s.
struct ZeroingHasher {
    hasher: Hasher,
    needle: Vec<u8>,
    /// Bytes not yet hashed: the tail that may be the start of the needle.
    pending: Vec<u8>,
    found: bool,
}

impl ZeroingHasher {
    /// The hasher of a file with this header, if it has a checksum.
    fn of(header: &Header) -> Option<Self> {
        let h = &header.fields;
        let (kind, sum) = h.checksum_type.zip(h.file_checksum.as_ref())?;
        Some(ZeroingHasher::new(kind, sum.as_bytes().to_vec()))
    }

    fn new(kind: ChecksumType, needle: Vec<u8>) -> Self {
        ZeroingHasher {
            hasher: kind.hasher(),
            needle,
            pending: Vec::new(),
            found: false,
        }
    }

    fn update(&mut self, data: &[u8]) {
        if self.found {
            self.hasher.update(data);
            return;
        }
        self.pending.extend_from_slice(data);
        let len = self.needle.len();
        if let Some(i) = memchr::memmem::find(&self.pending, &self.needle) {
            self.hasher.update(&self.pending[..i]);
            self.hasher.update(&vec![b'0'; len]);
            self.hasher.update(&self.pending[i + len..]);
            self.pending = Vec::new();
            self.found = true;
            return;
        }
        let keep = len.saturating_sub(1);
        let cut = self.pending.len().saturating_sub(keep);
        self.hasher.update(&self.pending[..cut]);
        self.pending.drain(..cut);
    }

    fn finish_hex(mut self) -> String {
        let pending = std::mem::take(&mut self.pending);
        self.hasher.update(&pending);
        self.hasher.finish_hex()
    }
}
