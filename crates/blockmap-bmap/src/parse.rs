//! Reading a bmap file as a stream: the XML event by event from any `BufRead`, the header
//! fields gathered wherever they appear, the ranges handed out one at a time and checked
//! against the header. Nothing here holds more than one range, so a bmap of millions of
//! ranges costs what one does; input that is not a bmap (`/dev/zero`, a binary file) is
//! refused within its first kilobytes instead of being read to its end.

use std::borrow::Cow;
use std::io::{self, BufRead, Read};

use quick_xml::events::{BytesStart, Event};

mod check;

use self::check::parse_version;
pub(crate) use self::check::{Checksums, Header, RangeCheck};

/// The longest XML token (tag, comment, text run) accepted: bmaptool's are a few hundred
/// bytes; without a bound, a file of one endless token would be read into memory whole.
const MAX_TOKEN: u64 = 64 << 10;
/// The root element `<bmap>` must start within this many bytes.
const MAX_PROLOG: u64 = 64 << 10;
/// Elements nest no deeper than this (bmaptool's nest 3 deep).
const MAX_DEPTH: usize = 16;

/// A problem at a byte offset of the file; the caller turns the offset into a line, reading
/// the file again (counting lines as the parse goes would cost every parse, not just a bad one).
#[derive(Debug)]
pub(crate) enum Fault {
    /// Not a bmap, or not a consistent one.
    At {
        /// The byte offset.
        at: u64,
        /// Whether the place is the first non-blank byte from `at` (an event's start, which
        /// quick-xml gives before the blanks leading into it).
        skip_blanks: bool,
        message: String,
    },
    /// Reading the file failed.
    Io(io::Error),
}

impl Fault {
    fn at(at: u64, message: String) -> Fault {
        Fault::At {
            at,
            skip_blanks: true,
            message,
        }
    }

    fn exactly_at(at: u64, message: String) -> Fault {
        Fault::At {
            at,
            skip_blanks: false,
            message,
        }
    }
}

/// The 1-based line of the place `at` (see [`Fault::At`]) of the bytes `read` gives.
pub(crate) fn line_at(mut read: impl Read, at: u64, skip_blanks: bool) -> u64 {
    let mut line = 1;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match read.read(&mut buf) {
            Ok(0) | Err(_) => return line,
            Ok(n) => n,
        };
        for &c in &buf[..n] {
            if pos >= at && !(skip_blanks && c.is_ascii_whitespace()) {
                return line;
            }
            if c == b'\n' {
                line += 1;
            }
            pos += 1;
        }
    }
}

/// A `BufRead` that refuses to hand out more than [`MAX_TOKEN`] bytes between two resets
/// (one XML event).
struct Guard<R> {
    inner: R,
    used: u64,
    tripped: bool,
}

impl<R: BufRead> Read for Guard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        crate::source::read_through_buf(self, out)
    }
}

impl<R: BufRead> BufRead for Guard<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.used > MAX_TOKEN {
            self.tripped = true;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "token too long"));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.used += n as u64;
        self.inner.consume(n);
    }
}

/// A `<Range>` as read: its text, its checksum attributes, where it starts.
#[derive(Debug)]
pub(crate) struct RawRange {
    text: String,
    chksum: Option<String>,
    sha1: Option<String>,
    at: u64,
}

/// The header fields, in the order of [`Parser::fields`].
const FIELDS: [&str; 7] = [
    "ImageSize",
    "BlockSize",
    "BlocksCount",
    "MappedBlocksCount",
    "ChecksumType",
    "BmapFileChecksum",
    "BmapFileSHA1",
];

/// A pull parser of a bmap file.
pub(crate) struct Parser<R> {
    reader: quick_xml::Reader<Guard<R>>,
    buf: Vec<u8>,
    /// The open elements (the names of a bmap's own elements not allocated).
    stack: Vec<Cow<'static, str>>,
    text: String,
    start_at: u64,
    seen_root: bool,
    version: Option<(String, u64)>,
    fields: [Option<(String, u64)>; 7],
    eof: bool,
    /// The `<Range>` being read.
    range: Option<RawRange>,
    /// Stop at `<BlockMap>` when the header is complete (a first look at a file).
    header_only: bool,
}

impl<R: BufRead> Parser<R> {
    pub(crate) fn new(inner: R) -> Self {
        let mut reader = quick_xml::Reader::from_reader(Guard {
            inner,
            used: 0,
            tripped: false,
        });
        reader.config_mut().check_end_names = true;
        Parser {
            reader,
            buf: Vec::new(),
            stack: Vec::new(),
            text: String::new(),
            start_at: 0,
            seen_root: false,
            version: None,
            fields: Default::default(),
            eof: false,
            range: None,
            header_only: false,
        }
    }

    /// A parser that stops at `<BlockMap>` once the header fields are all there (they come
    /// before it in every bmap bmaptool writes): [`Parser::next_range`] then answers `None`,
    /// without reading the ranges or checking the rest of the file.
    pub(crate) fn header_only(inner: R) -> Self {
        Parser {
            header_only: true,
            ..Parser::new(inner)
        }
    }
}

/// An element name: a bmap's own (the header fields, [`FIELDS`], and these) without an
/// allocation.
fn intern(name: &str) -> Cow<'static, str> {
    const ELEMENTS: [&str; 3] = ["Range", "BlockMap", "bmap"];
    match ELEMENTS.iter().chain(&FIELDS).find(|n| **n == name) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(name.to_owned()),
    }
}

/// Whether the fields a header needs have been read.
fn header_complete(version: &Option<(String, u64)>, fields: &[Option<(String, u64)>; 7]) -> bool {
    let have = |name: &str| {
        FIELDS
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| fields[i].is_some())
    };
    let Some(version) = version.as_ref().and_then(|(v, _)| parse_version(v)) else {
        return false;
    };
    let checksums_there = match Checksums::of(version) {
        Checksums::None => true,
        Checksums::Sha1 => have("BmapFileSHA1"),
        Checksums::Typed => have("ChecksumType") && have("BmapFileChecksum"),
    };
    checksums_there
        && ["ImageSize", "BlockSize", "BlocksCount", "MappedBlocksCount"]
            .into_iter()
            .all(have)
}

/// What an event means to [`Parser::next_range`].
enum Step {
    /// Read on.
    Go,
    /// A `<Range>` is complete.
    Range(RawRange),
    /// The header-only parse is done.
    Stop,
}

/// A `<Range>` of the `<BlockMap>` begins at `at`: its checksum attributes.
fn range_start(e: &BytesStart<'_>, at: u64) -> Result<RawRange, Fault> {
    let mut chksum = None;
    let mut sha1 = None;
    for a in e.attributes() {
        let a = a.map_err(|e| Fault::at(at, format!("bad attribute of <Range>: {e}")))?;
        let v = a.value.trim().to_owned();
        match a.key.as_ref() {
            "chksum" => chksum = Some(v),
            "sha1" => sha1 = Some(v),
            _ => {}
        }
    }
    Ok(RawRange {
        text: String::new(),
        chksum,
        sha1,
        at,
    })
}

impl<R: BufRead> Parser<R> {
    /// The reader it reads from.
    pub(crate) fn into_inner(self) -> R {
        self.reader.into_inner().inner
    }

    /// The reader it reads from, to change.
    pub(crate) fn reader_mut(&mut self) -> &mut R {
        &mut self.reader.get_mut().inner
    }

    /// The next `<Range>` of the `<BlockMap>`, or `None` at the end of the document.
    pub(crate) fn next_range(&mut self) -> Result<Option<RawRange>, Fault> {
        // The buffer is lent to the events, so that they can be handled with `self`.
        let mut buf = std::mem::take(&mut self.buf);
        let next = self.pull(&mut buf);
        self.buf = buf;
        next
    }

    /// Reads events into `buf` until a `<Range>` ends, a header-only parse reaches
    /// `<BlockMap>`, or the document ends.
    fn pull(&mut self, buf: &mut Vec<u8>) -> Result<Option<RawRange>, Fault> {
        while !self.eof {
            let (event, at) = self.read_event(buf)?;
            match self.handle(event, at)? {
                Step::Go => {}
                Step::Range(r) => return Ok(Some(r)),
                Step::Stop => return Ok(None),
            }
            if self.text.len() as u64 > MAX_TOKEN {
                return Err(Fault::at(
                    at,
                    "not a bmap file: an element's text is too long".into(),
                ));
            }
        }
        let end_at = self.reader.buffer_position();
        if !self.seen_root {
            return Err(Fault::exactly_at(end_at, "no <bmap> element".into()));
        }
        if let Some(open) = self.stack.last() {
            return Err(Fault::exactly_at(end_at, format!("<{open}> is not closed")));
        }
        Ok(None)
    }

    /// The next event, and where it starts; no token longer than [`MAX_TOKEN`], the root
    /// within [`MAX_PROLOG`] bytes.
    fn read_event<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<(Event<'b>, u64), Fault> {
        self.reader.get_mut().used = 0;
        let at = self.reader.buffer_position();
        buf.clear();
        let event = match self.reader.read_event_into(buf) {
            Ok(event) => event,
            Err(e) => return Err(self.read_error(e)),
        };
        if !self.seen_root && self.reader.buffer_position() > MAX_PROLOG {
            return Err(Fault::at(
                at,
                format!(
                    "not a bmap file: no <bmap> element in its first {} KiB",
                    MAX_PROLOG >> 10
                ),
            ));
        }
        Ok((event, at))
    }

    /// What a failure to read the next event is: a token too long, the file unreadable, or
    /// not XML.
    fn read_error(&self, e: quick_xml::Error) -> Fault {
        let at = self.reader.error_position();
        if self.reader.get_ref().tripped {
            return Fault::exactly_at(
                at,
                format!(
                    "not a bmap file: an XML token longer than {} KiB",
                    MAX_TOKEN >> 10
                ),
            );
        }
        if let quick_xml::Error::Io(io) = &e {
            let io = match io.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(io.kind(), io.to_string()),
            };
            return Fault::Io(io);
        }
        let what = if self.seen_root {
            ""
        } else {
            "not a bmap file: "
        };
        Fault::exactly_at(at, format!("{what}not well-formed XML: {e}"))
    }

    /// Takes in the event at `at`.
    fn handle(&mut self, event: Event<'_>, at: u64) -> Result<Step, Fault> {
        match event {
            Event::Start(e) | Event::Empty(e) if self.stack.is_empty() => self.root(&e, at)?,
            Event::Start(e) => return self.start(&e, at),
            Event::Empty(e) => {
                let name = e.name().as_ref().to_owned();
                if name == "Range" || FIELDS.contains(&name.as_str()) {
                    return Err(Fault::at(at, format!("<{name}/> is empty")));
                }
            }
            Event::Text(t) => {
                if self.stack.is_empty() {
                    if !t.bytes().all(|c| c.is_ascii_whitespace()) {
                        return Err(Fault::at(
                            at,
                            "not a bmap file: text outside the <bmap> element".into(),
                        ));
                    }
                } else {
                    self.text.push_str(&t);
                }
            }
            Event::CData(t) => self.text.push_str(&t),
            Event::GeneralRef(r) => {
                return Err(Fault::at(at, format!("unexpected entity &{};", &*r)));
            }
            Event::End(_) => return self.end(),
            Event::Eof => self.eof = true,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
        Ok(Step::Go)
    }

    /// The root element: `<bmap>`, once, and its version.
    fn root(&mut self, e: &BytesStart<'_>, at: u64) -> Result<(), Fault> {
        let name = e.name().as_ref().to_owned();
        if name != "bmap" || self.seen_root {
            return Err(Fault::at(
                at,
                format!("expected the root element <bmap>, found <{name}>"),
            ));
        }
        self.seen_root = true;
        for a in e.attributes() {
            let a = a.map_err(|e| Fault::at(at, format!("bad attribute of <bmap>: {e}")))?;
            if a.key.as_ref() == "version" {
                self.version = Some((a.value.into_owned(), at));
            }
        }
        self.stack.push(Cow::Borrowed("bmap"));
        self.text.clear();
        Ok(())
    }

    /// An element opens inside the root: a `<Range>` of the `<BlockMap>` begins, or the
    /// header-only parse ends at `<BlockMap>`.
    fn start(&mut self, e: &BytesStart<'_>, at: u64) -> Result<Step, Fault> {
        let name = intern(e.name().as_ref());
        if self.header_only
            && self.stack.len() == 1
            && name == "BlockMap"
            && header_complete(&self.version, &self.fields)
        {
            self.eof = true;
            return Ok(Step::Stop);
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(Fault::at(at, "elements nested too deep for a bmap".into()));
        }
        if name == "Range" && self.stack.len() == 2 && self.stack[1] == "BlockMap" {
            self.range = Some(range_start(e, at)?);
        }
        self.stack.push(name);
        self.text.clear();
        self.start_at = at;
        Ok(Step::Go)
    }

    /// An element closes: a header field is read, or a `<Range>` is complete.
    fn end(&mut self) -> Result<Step, Fault> {
        let name = self.stack.pop().unwrap_or_default();
        let depth = self.stack.len();
        let text = &self.text;
        if depth == 1 {
            if let Some(i) = FIELDS.iter().position(|n| *n == name) {
                if self.fields[i].is_some() {
                    return Err(Fault::at(
                        self.start_at,
                        format!("<{}> appears twice", FIELDS[i]),
                    ));
                }
                self.fields[i] = Some((text.trim().to_owned(), self.start_at));
            }
        } else if depth == 2
            && name == "Range"
            && self.stack[1] == "BlockMap"
            && let Some(mut r) = self.range.take()
        {
            r.text.push_str(text.trim());
            self.text.clear();
            return Ok(Step::Range(r));
        }
        self.text.clear();
        Ok(Step::Go)
    }
}
