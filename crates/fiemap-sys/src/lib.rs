//! The Linux `FIEMAP` and `FIGETBSZ` ioctl ABI, and four safe calls: [`fiemap_ioctl`],
//! [`figetbsz`], [`cachestat_range`] and [`btrfs_file_extents`].
//!
//! `FS_IOC_FIEMAP` asks a filesystem for the extent map of a file: which logical byte ranges
//! are backed by storage, where, and with which properties (unwritten, delayed allocation,
//! inline, shared…). This crate is the thin, exact layer over that kernel interface:
//!
//! - [`fiemap`] and [`fiemap_extent`]: the `#[repr(C)]` structures of `<linux/fiemap.h>`,
//!   pinned to the kernel's layout by tests;
//! - every `FIEMAP_FLAG_*` request flag and `FIEMAP_EXTENT_*` extent flag;
//! - the opcodes [`FS_IOC_FIEMAP`] and [`FIGETBSZ`];
//! - [`FiemapBuffer`], an owned, correctly aligned request buffer for a chosen number of
//!   extents, and [`fiemap_ioctl`], the safe function that runs the ioctl on it;
//! - [`figetbsz`], the filesystem block size of an open file;
//! - [`cachestat_range`], the page-cache state of a byte range (`cachestat(2)`): with no
//!   dirty or under-writeback pages there, the `UNWRITTEN` flags FIEMAP gives in it are exact;
//! - [`btrfs_file_extents`], a btrfs file's extent items by kind (root only), which answer
//!   "is any of it preallocated?" far more cheaply than FIEMAP there (benches/RESULTS.md).
//!
//! It does no iteration and no interpretation: walking a whole file, clipping extents to a
//! window and deciding what counts as data belongs to `blockmap-core`.
//!
//! # Example
//!
//! ```no_run
//! use fiemap_sys::{FiemapBuffer, fiemap_ioctl, FIEMAP_EXTENT_LAST};
//!
//! # fn main() -> std::io::Result<()> {
//! let file = std::fs::File::open("/var/log/syslog")?;
//! // Room for 512 extents per call; ask for the whole file.
//! let mut buf = FiemapBuffer::new(512);
//! buf.set_request(0, u64::MAX, 0);
//! fiemap_ioctl(&file, &mut buf)?;
//! for extent in buf.extents() {
//!     println!(
//!         "logical {} length {} physical {} last {}",
//!         extent.fe_logical,
//!         extent.fe_length,
//!         extent.fe_physical,
//!         extent.fe_flags & FIEMAP_EXTENT_LAST != 0
//!     );
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # References
//! - [Documentation/filesystems/fiemap.rst](https://docs.kernel.org/filesystems/fiemap.html)
//! - `include/uapi/linux/fiemap.h`, `include/uapi/linux/fs.h`
#![deny(missing_docs)]
#![allow(
    non_camel_case_types,
    reason = "the structures keep the kernel's names"
)]

// README.md, the crate's page on crates.io: its example runs as a doc test, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;

mod abi;
mod btrfs;
mod cachestat;
mod ioctl;

pub use abi::*;
pub use btrfs::{BtrfsExtent, BtrfsExtentKind, btrfs_file_extents};
pub use cachestat::{CacheStat, cachestat_range};
pub use ioctl::{FiemapBuffer, fiemap_ioctl, figetbsz};
