//! `--psplash-pipe`: progress for psplash, the boot splash screen of embedded Linux, in the
//! words bmaptool 3.9 writes it: `PROGRESS <percent>\n`, one message each time the whole
//! percentage of mapped bytes written changes.
//!
//! Best effort, as bmaptool's: the FIFO is opened for each message without blocking
//! (`O_NONBLOCK`: no reader means `ENXIO` at once) and every error is ignored (logged at debug
//! level): a splash screen that is gone, late or full must never stop a flash.

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use tracing::debug;

/// Progress messages for a psplash FIFO.
///
/// ```no_run
/// let mut splash = blockmap_bmap::Psplash::new("/run/psplash_fifo").expect("a FIFO");
/// splash.progress(512, 1024); // writes "PROGRESS 50\n"
/// splash.progress(513, 1024); // still 50: nothing written
/// ```
#[derive(Debug)]
pub struct Psplash {
    path: PathBuf,
    last: Option<u64>,
}

impl Psplash {
    /// Progress to the FIFO at `path`, or why not: it does not exist or is not a FIFO (which
    /// bmaptool answers with a warning, and the copy goes on).
    pub fn new(path: impl Into<PathBuf>) -> Result<Psplash, String> {
        let path = path.into();
        match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_fifo() => Ok(Psplash { path, last: None }),
            Ok(_) => Err(format!("{}: not a FIFO", path.display())),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The FIFO.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `done` of `total` bytes are written: a message if the whole percentage changed (none
    /// while `total` is 0, as bmaptool sends none for an image without mapped data).
    pub fn progress(&mut self, done: u64, total: u64) {
        if total == 0 {
            return;
        }
        let percent =
            u64::try_from(u128::from(done.min(total)) * 100 / u128::from(total)).unwrap_or(100);
        if self.last == Some(percent) {
            return;
        }
        self.last = Some(percent);
        if let Err(e) = self.send(percent) {
            debug!(fifo = %self.path.display(), error = %e, percent, "no psplash progress");
        }
    }

    fn send(&self, percent: u64) -> std::io::Result<()> {
        let fd = rustix::fs::open(
            &self.path,
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )?;
        std::fs::File::from(fd).write_all(format!("PROGRESS {percent}\n").as_bytes())
    }
}
