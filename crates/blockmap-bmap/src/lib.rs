//! bmaptool-compatible block map (bmap) files.
//!
//! A bmap file lists the mapped blocks of a disk image — the blocks that hold data — with a
//! checksum per range, so that the image can be flashed or copied writing only those blocks,
//! and verified on the way. This crate reads and writes the format exactly as `bmaptool` 3.x
//! does (versions 1.0 to 1.4 and 2.0), creates bmaps from a file's block map, and copies
//! images by them, compressed or not.
//!
//! - [`BmapFile`]: a bmap file checked as a stream (its XML, every range, its own checksum
//!   `BmapFileChecksum`), its ranges read again one at a time as a copy takes them: memory
//!   stays a few MiB whatever the number of ranges; a FIFO is spooled once; what is not a bmap
//!   is refused within its first 64 KiB.
//! - [`Bmap`]: a bmap in memory; [`Bmap::read`] / [`Bmap::from_bytes`] parse and check one;
//!   [`Bmap::to_xml`] writes one byte for byte as bmaptool lays it out.
//! - [`create()`]: the bmap of an image, from `blockmap-core`'s [`BlockMap`](blockmap_core::BlockMap)
//!   (a block is mapped when any of its bytes may be data: data is never called a hole), the
//!   ranges hashed in parallel; [`create_to`] writes it to a file as the ranges are hashed.
//! - [`Copier`]: writes an image's mapped ranges to a file or block device, verifying every
//!   range's checksum as the data passes; `.gz`, `.xz`, `.zst`, `.bz2` and `.lz4` images (and
//!   plain ones that cannot seek, such as pipes) are streamed through their decompressors and
//!   read to their end, where the format's own checksums are checked ([`find_bmap`] finds the
//!   bmap beside an image as bmaptool does). A local `.xz` of several blocks,
//!   `.bz2` of several streams or `.zst` of several frames is decoded on every core instead,
//!   xz blocks and sized zstd frames only where a range is mapped. An interrupt flag stops it
//!   between two chunks. As `sparsecopy`'s copier: what to copy goes to the constructor with
//!   [`CopyOptions`], and the progress callback hears a [`Progress`] (sparsecopy's type; here
//!   `skipped` counts the unmapped bytes passed, which a stream reads and drops).
//! - [`Input`]: what an image is, by its first bytes whatever its name: a plain file or
//!   device, or a stream (`-` for standard input, a pipe, any reader through
//!   [`Input::from_reader`]) compressed or not, or a tar (also compressed) or zip archive
//!   whose first regular member is the image ([`Container`]); [`Copier::copy_input`] copies
//!   it, and [`Copier::whole_image`] writes every byte of it without a bmap.
//! - [`read_signed`]: reads a bmap file verifying its GPG signature (detached or clearsigned)
//!   with GnuPG, as bmaptool does.
//! - URLs: an `http://` or `https://` URL stands wherever a path does (the image, the bmap,
//!   its signature); an uncompressed remote image is fetched by HTTP Range requests for its
//!   mapped ranges only ([`COALESCE`]), and [`redact`] hides a URL's password in messages.
//!
//! # Example
//! ```
//! use std::os::unix::fs::FileExt;
//!
//! # fn main() -> Result<(), blockmap_bmap::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! let (image, copy) = (dir.path().join("disk.img"), dir.path().join("copy.img"));
//! let file = std::fs::File::create(&image).unwrap();
//! file.write_all_at(b"boot sector", 0).unwrap();
//! file.write_all_at(b"root", 5 << 20).unwrap();
//! file.set_len(16 << 20).unwrap(); // 16 MiB, nearly all holes
//!
//! let bmap = blockmap_bmap::create(&image, &blockmap_bmap::CreateOptions::default())?;
//! assert!(bmap.mapped_blocks_count < bmap.blocks_count);
//! std::fs::write(dir.path().join("disk.img.bmap"), bmap.to_xml()).unwrap();
//!
//! // Finds disk.img.bmap, writes the mapped blocks, verifies their checksums.
//! let bmap_path = blockmap_bmap::find_bmap(&image)?;
//! let file = blockmap_bmap::BmapFile::open(&bmap_path)?;
//! let report = blockmap_bmap::Copier::from_file(file, blockmap_bmap::CopyOptions::new()).copy(&image, &copy)?;
//! assert_eq!(report.image_size, 16 << 20);
//! assert_eq!(std::fs::read(&image).unwrap(), std::fs::read(&copy).unwrap());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

// README.md, the crate's page on crates.io: its example runs as a doc test, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;

mod archive;
mod checksum;
mod copy;
mod create;
mod error;
mod file;
mod format;
mod input;
mod parallel;
mod parse;
mod psplash;
mod readback;
mod remote;
mod removable;
mod signature;
mod source;

pub use checksum::{ChecksumType, Hasher, UnknownChecksumType};
pub use copy::{Copier, CopyOptions, CopyReport};
pub use create::{CreateOptions, create, create_to};
pub use error::{Error, Result};
pub use file::{BmapFile, BmapInfo, Ranges};
pub use format::{BlockRange, Bmap, Version, bmaptool_human_size};
pub use input::{Container, Input};
pub use psplash::Psplash;
pub use readback::{BadRange, ReadBackReport};
pub use remote::{COALESCE, redact};
pub use removable::check_removable;
pub use signature::{SignatureCheck, SignatureOptions, Signer, read_signed, read_signed_with};
pub use source::{Compression, find_bmap};
/// How far a copy has got, as the progress callback of [`Copier::progress`] hears it: the
/// same type as `sparsecopy`'s.
pub use sparsecopy::Progress;
