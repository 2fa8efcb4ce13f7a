//! What IMAGE is, told by its first bytes: a plain file or device read where the ranges are,
//! or a stream (standard input, a pipe, a FIFO, a compressed file, an archive) read in order.
//!
//! The seam for other sources: anything that yields bytes (an HTTP body, say) becomes an
//! [`Input`] through [`Input::from_reader`], which peeks at its first bytes, recognises the
//! compression and the archive, and hands the copy the image's own bytes.

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::archive;
use crate::error::{Error, Result};
use crate::source::{Compression, decoder, read_full, read_full_at};

/// Bytes looked at to recognise a format: enough for tar's magic at byte 257.
const HEAD: usize = 512;

/// The archive an image is packed in (the image is its first regular member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Container {
    /// Not in an archive.
    None,
    /// A tar archive (`ustar` at byte 257), possibly compressed (`.tar.gz`, `.tgz`, …).
    Tar,
    /// A zip archive (`PK\x03\x04`), its members stored or deflated.
    Zip,
}

impl Container {
    /// The name in reports (`"tar"`, `"none"`).
    pub fn name(self) -> &'static str {
        match self {
            Container::None => "none",
            Container::Tar => "tar",
            Container::Zip => "zip",
        }
    }
}

/// What a stream's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Magic {
    Unknown,
    Compressed(Compression),
    Tar,
    Zip,
    Lzop,
}

/// The format of a stream by its first bytes (`head`, up to [`HEAD`] of them).
fn sniff(head: &[u8]) -> Magic {
    const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
    const LZOP: &[u8] = &[0x89, b'L', b'Z', b'O', 0, b'\r', b'\n', 0x1a, b'\n'];
    // bzip2: "BZh", the block size 1-9, then a block's or the stream end's magic.
    let bzip2 = head.len() >= 10
        && head.starts_with(b"BZh")
        && (b'1'..=b'9').contains(&head[3])
        && (head[4..10] == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59]
            || head[4..10] == [0x17, 0x72, 0x45, 0x38, 0x50, 0x90]);
    // zstd: a frame, or a skippable frame (pzstd starts with one).
    let zstd = head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18]);
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Magic::Compressed(Compression::Gzip)
    } else if head.starts_with(XZ) {
        Magic::Compressed(Compression::Xz)
    } else if zstd {
        Magic::Compressed(Compression::Zstd)
    } else if bzip2 {
        Magic::Compressed(Compression::Bzip2)
    } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        Magic::Compressed(Compression::Lz4)
    } else if head.starts_with(LZOP) {
        Magic::Lzop
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Magic::Zip
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Magic::Tar
    } else {
        Magic::Unknown
    }
}

/// What an image's name says it is, as bmaptool tells (for the debug log: the bytes decide).
fn by_name(path: &Path) -> (Container, Option<Compression>) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tar = [
        ".tar", ".tgz", ".txz", ".tzst", ".tbz2", ".tbz", ".tb2", ".tlz4", ".tzo",
    ]
    .iter()
    .any(|s| name.ends_with(s))
        || name.contains(".tar.");
    let container = if tar {
        Container::Tar
    } else if name.ends_with(".zip") {
        Container::Zip
    } else {
        Container::None
    };
    (container, Compression::of(path).ok())
}

/// The bytes of an [`Input`] before the image is taken out of them.
enum Body {
    /// A regular file or block device, nothing consumed: read where the ranges are.
    File(File),
    /// Read in order, the peeked bytes put back in front; already decompressed when
    /// `decoded` says so.
    Stream {
        reader: Box<dyn Read + Send>,
        decoded: bool,
    },
}

/// An image opened and recognised by its first bytes: its compression ([`Compression`]) and
/// its archive ([`Container`]), whatever its name says (a name that disagrees is noted at
/// debug level). [`Copier::copy_input`](crate::Copier::copy_input) copies it.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::io::Write;
/// let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
/// gz.write_all(b"an image")?;
/// let input = blockmap_bmap::Input::from_reader(std::io::Cursor::new(gz.finish()?), "download")?;
/// assert_eq!(input.compression(), blockmap_bmap::Compression::Gzip);
/// assert_eq!(input.container(), blockmap_bmap::Container::None);
/// assert!(!input.is_seekable());
/// # Ok(())
/// # }
/// ```
pub struct Input {
    path: PathBuf,
    compression: Compression,
    container: Container,
    body: Body,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("path", &self.path)
            .field("compression", &self.compression)
            .field("container", &self.container)
            .field("seekable", &self.is_seekable())
            .finish()
    }
}

/// What the copy reads: a plain image by position, or the image's bytes in order.
pub(crate) enum Opened {
    Plain(File),
    Stream(Box<dyn Read + Send>),
}

impl Input {
    /// Opens the image at `path`; `-` is standard input. A regular file or block device is
    /// looked at with a positioned read (nothing consumed); a pipe, FIFO, socket or character
    /// device is read and its first bytes kept in front of the rest. A compressed stream's
    /// first bytes are decompressed here, so a corrupt start fails before anything is written.
    /// An `http://` or `https://` URL is fetched in one GET and read as a stream.
    pub fn open(path: impl AsRef<Path>) -> Result<Input> {
        let path = path.as_ref();
        if let Some(url) = crate::remote::Url::of(path) {
            return crate::remote::input(&url);
        }
        let file = if path == Path::new("-") {
            io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .map_err(|e| Error::io("duplicate standard input", path, e))?
        } else {
            File::open(path).map_err(|e| Error::io("open the image", path, e))?
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat the image", path, e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            return Err(Error::io(
                "read the image",
                path,
                io::Error::from(io::ErrorKind::IsADirectory),
            ));
        }
        if !(kind.is_file() || kind.is_block_device()) {
            debug!(image = %path.display(), "not seekable: streamed");
            return Input::from_reader(file, path);
        }
        let mut head = vec![0u8; HEAD];
        let n =
            read_full_at(&file, 0, &mut head).map_err(|e| Error::io("read the image", path, e))?;
        head.truncate(n);
        let (compression, container) = recognise(path, &head, None)?;
        let mut input = Input {
            path: path.to_owned(),
            compression,
            container,
            body: Body::File(file),
        };
        if compression != Compression::None {
            // A tar inside? Its magic is in the decompressed bytes: a throw-away decoder over
            // positioned reads (the file's offset untouched) tells.
            let Body::File(file) = &input.body else {
                unreachable!("just made")
            };
            let at = Box::new(ReadAt {
                file: file
                    .try_clone()
                    .map_err(|e| Error::io("open the image", path, e))?,
                pos: 0,
            });
            let mut decoded = decoder(at, path, compression)?;
            let head = read_head(&mut decoded).map_err(|e| corrupt(path, compression, e))?;
            input.container = recognise(path, &head, Some(compression))?.1;
        }
        Ok(input)
    }

    /// An image whose bytes come from `reader` (a download, a pipe), named `name` in errors
    /// and logs: its first bytes are read and kept in front of the rest.
    pub fn from_reader(
        reader: impl Read + Send + 'static,
        name: impl AsRef<Path>,
    ) -> Result<Input> {
        let path = name.as_ref();
        let (head, reader) =
            peek(Box::new(reader)).map_err(|e| Error::io("read the image", path, e))?;
        let (compression, mut container) = recognise(path, &head, None)?;
        let mut reader = reader;
        if compression != Compression::None {
            let (head, decoded) = peek(decoder(reader, path, compression)?)
                .map_err(|e| corrupt(path, compression, e))?;
            container = recognise(path, &head, Some(compression))?.1;
            reader = decoded;
        }
        Ok(Input {
            path: path.to_owned(),
            compression,
            container,
            body: Body::Stream {
                reader,
                decoded: compression != Compression::None,
            },
        })
    }

    /// The image's path (or name).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the image (or the archive holding it) is compressed.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The archive holding the image.
    pub fn container(&self) -> Container {
        self.container
    }

    /// Whether the bytes can be read by position (a regular file or block device).
    pub fn is_seekable(&self) -> bool {
        matches!(self.body, Body::File(_))
    }

    /// The file of a compressed image that is not in an archive and can be read by
    /// position (what a parallel decoder reads its index and blocks from).
    pub(crate) fn compressed_file(&self) -> Option<&File> {
        match &self.body {
            Body::File(file)
                if self.compression != Compression::None && self.container == Container::None =>
            {
                Some(file)
            }
            _ => None,
        }
    }

    /// A plain image read where the ranges are: a seekable file neither compressed nor in an
    /// archive.
    pub fn is_plain_file(&self) -> bool {
        self.is_seekable()
            && self.compression == Compression::None
            && self.container == Container::None
    }

    /// The image's own bytes: the plain file, or a stream decompressed and taken out of its
    /// archive.
    pub(crate) fn open_image(self) -> Result<Opened> {
        let Input {
            path,
            compression,
            container,
            body,
        } = self;
        let label = archive::Label {
            path: path.clone(),
            container,
            compression,
        };
        let (raw, decoded) = match body {
            Body::File(file)
                if compression == Compression::None && container == Container::None =>
            {
                return Ok(Opened::Plain(file));
            }
            // Zip's central directory is at its end: read by position where it can be.
            Body::File(file) if container == Container::Zip && compression == Compression::None => {
                return archive::zip_seekable(file, label).map(Opened::Stream);
            }
            Body::File(file) => (Box::new(file) as Box<dyn Read + Send>, false),
            Body::Stream { reader, decoded } => (reader, decoded),
        };
        let bytes = if decoded {
            raw
        } else {
            decoder(raw, &path, compression)?
        };
        Ok(Opened::Stream(match container {
            Container::None => bytes,
            Container::Tar => archive::tar(bytes, label)?,
            Container::Zip => archive::zip_stream(bytes, label)?,
        }))
    }
}

/// The compression and container of a stream whose first bytes are `head`; `outer` is the
/// compression already found (then `head` is decompressed and only a tar can be inside).
fn recognise(
    path: &Path,
    head: &[u8],
    outer: Option<Compression>,
) -> Result<(Compression, Container)> {
    let magic = sniff(head);
    let found = match (outer, magic) {
        (_, Magic::Lzop) => {
            return Err(Error::UnsupportedCompression {
                path: path.to_owned(),
                kind: "lzop".to_owned(),
            });
        }
        (Some(c), Magic::Tar) => (c, Container::Tar),
        (Some(c), _) => (c, Container::None),
        (None, Magic::Compressed(c)) => (c, Container::None),
        (None, Magic::Tar) => (Compression::None, Container::Tar),
        (None, Magic::Zip) => (Compression::None, Container::Zip),
        (None, Magic::Unknown) => (Compression::None, Container::None),
    };
    // The name is only a hint: say where it disagrees.
    let (name_container, name_compression) = by_name(path);
    let disagrees = match outer {
        None => {
            name_compression.is_some_and(|c| c != found.0)
                || (found.1 == Container::Zip) != (name_container == Container::Zip)
        }
        Some(_) => (found.1 == Container::Tar) != (name_container == Container::Tar),
    };
    if disagrees && path != Path::new("-") {
        debug!(
            image = %path.display(),
            name_says = ?(name_container, name_compression),
            content_says = ?found,
            "the name and the content disagree: the content wins"
        );
    }
    debug!(image = %path.display(), compression = found.0.name(), container = found.1.name(), "recognised");
    Ok(found)
}

/// A decoder's complaint about an image's first bytes.
fn corrupt(path: &Path, compression: Compression, e: io::Error) -> Error {
    if e.raw_os_error().is_some() {
        return Error::io("read the image", path, e);
    }
    Error::Corrupt {
        path: path.to_owned(),
        compression: compression.name(),
        at: 0,
        source: e,
    }
}

/// Reads up to [`HEAD`] bytes (fewer only at the end).
fn read_head(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; HEAD];
    let n = read_full(&mut &mut *r, &mut head)?;
    head.truncate(n);
    Ok(head)
}

/// A stream's first bytes, and the stream with them put back in front: nothing lost.
fn peek(mut r: Box<dyn Read + Send>) -> io::Result<(Vec<u8>, Box<dyn Read + Send>)> {
    let head = read_head(&mut r)?;
    Ok((head.clone(), Box::new(Cursor::new(head).chain(r))))
}

/// A file read in order by positioned reads: its offset (shared with its clones) untouched.
struct ReadAt {
    file: File,
    pos: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_name_the_format() {
        let mut tar = vec![0u8; 512];
        tar[257..263].copy_from_slice(b"ustar\0");
        let cases: [(&[u8], Magic); 10] = [
            (&[0x1f, 0x8b, 8, 0], Magic::Compressed(Compression::Gzip)),
            (b"\xfd7zXZ\0\0", Magic::Compressed(Compression::Xz)),
            (
                &[0x28, 0xb5, 0x2f, 0xfd, 0],
                Magic::Compressed(Compression::Zstd),
            ),
            (
                &[0x50, 0x2a, 0x4d, 0x18, 0],
                Magic::Compressed(Compression::Zstd),
            ),
            (b"BZh91AY&SY", Magic::Compressed(Compression::Bzip2)),
            (&[4, 0x22, 0x4d, 0x18], Magic::Compressed(Compression::Lz4)),
            (b"PK\x03\x04", Magic::Zip),
            (&tar, Magic::Tar),
            (b"\x89LZO\0\r\n\x1a\n", Magic::Lzop),
            (b"BZh9 not bzip2", Magic::Unknown),
        ];
        for (head, magic) in cases {
            assert_eq!(sniff(head), magic, "{head:?}");
        }
        assert_eq!(sniff(&[0u8; 512]), Magic::Unknown);
        assert_eq!(sniff(&[]), Magic::Unknown);
    }
}
