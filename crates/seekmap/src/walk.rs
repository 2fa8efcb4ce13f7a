//! The segment walk: a pure loop over an abstract "seek" so that the kernel's odd answers can
//! be driven by tests, and the real `lseek` behind it.

use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::SeekFrom;
use rustix::io::Errno;
use tracing::trace;

use crate::Error;

/// How far an empty segment is stepped over, when no granule is given: one 4 KiB page, the
/// unit in which the page cache (and so SEEK_DATA) sees data.
pub const DEFAULT_GRANULE: u64 = 4096;

/// The largest offset `lseek` accepts (`loff_t` is signed).
const MAX_OFFSET: u64 = i64::MAX as u64;

/// `lseek(fd, offset, SEEK_DATA)`: the first offset at or after `offset` that holds data, or
/// `None` when there is none before the end of the file (`ENXIO`).
///
/// # Errors
/// [`Error::Unsupported`] on `EINVAL` (no SEEK_DATA here), [`Error::Seek`] otherwise.
#[doc(alias = "SEEK_DATA")]
pub fn seek_data<Fd: AsFd>(fd: Fd, offset: u64) -> Result<Option<u64>, Error> {
    lseek(fd.as_fd(), Whence::Data, offset)
}

/// `lseek(fd, offset, SEEK_HOLE)`: the first offset at or after `offset` inside a hole (the end
/// of the file counts as one), or `None` when `offset` is at or past the end (`ENXIO`).
///
/// # Errors
/// [`Error::Unsupported`] on `EINVAL` (no SEEK_HOLE here), [`Error::Seek`] otherwise.
#[doc(alias = "SEEK_HOLE")]
pub fn seek_hole<Fd: AsFd>(fd: Fd, offset: u64) -> Result<Option<u64>, Error> {
    lseek(fd.as_fd(), Whence::Hole, offset)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whence {
    Data,
    Hole,
}

impl Whence {
    fn name(self) -> &'static str {
        match self {
            Whence::Data => "SEEK_DATA",
            Whence::Hole => "SEEK_HOLE",
        }
    }
}

fn lseek(fd: BorrowedFd<'_>, whence: Whence, offset: u64) -> Result<Option<u64>, Error> {
    let how = match whence {
        Whence::Data => SeekFrom::Data(offset),
        Whence::Hole => SeekFrom::Hole(offset),
    };
    loop {
        return match rustix::fs::seek(fd, how) {
            Ok(pos) => Ok(Some(pos)),
            Err(Errno::NXIO) => Ok(None),
            Err(Errno::INTR) => continue,
            Err(source @ Errno::INVAL) => Err(Error::Unsupported { offset, source }),
            Err(source) => Err(Error::Seek {
                whence: whence.name(),
                offset,
                source,
            }),
        };
    }
}

/// One step of the kernel walk, abstracted so the walk logic can be tested against scripted
/// kernels that give the anomalous answers real filesystems give only sometimes.
pub(crate) trait Seek {
    fn seek(&mut self, whence: Whence, offset: u64) -> Result<Option<u64>, Error>;
}

impl Seek for BorrowedFd<'_> {
    fn seek(&mut self, whence: Whence, offset: u64) -> Result<Option<u64>, Error> {
        lseek(*self, whence, offset)
    }
}

/// The state of a walk over `[pos, end)`, independent of where the answers come from.
#[derive(Debug, Clone)]
pub(crate) struct Walk {
    pos: u64,
    end: u64,
    granule: u64,
}

impl Walk {
    pub(crate) fn new(window: Range<u64>, granule: u64) -> Self {
        let end = window.end.min(MAX_OFFSET);
        Walk {
            pos: window.start.min(end),
            end,
            granule: granule.max(1),
        }
    }

    /// The next data segment, or `None` when the window holds no more data.
    pub(crate) fn next_segment(&mut self, k: &mut impl Seek) -> Option<Result<Range<u64>, Error>> {
        if self.pos >= self.end {
            return None;
        }
        let data = match k.seek(Whence::Data, self.pos) {
            Ok(Some(d)) => d.max(self.pos),
            Ok(None) => return self.finish(),
            Err(e) => return self.fail(e),
        };
        if data >= self.end {
            return self.finish();
        }
        let hole = match k.seek(Whence::Hole, data) {
            Ok(Some(h)) => h,
            // Data at `data` but no hole after it: the file shrank under us. Whatever the
            // truth, the rest of the window may hold data.
            Ok(None) => self.end,
            Err(e) => return self.fail(e),
        };
        let hole = if hole > data {
            hole
        } else {
            // An empty segment: the two calls disagree about `data`. Count one granule as
            // data (a data range may hold zeros; a hole may not hold data) and move on.
            trace!(data, hole, "empty SEEK segment, stepping one granule");
            data.saturating_add(self.granule - data % self.granule)
        };
        let segment = data..hole.min(self.end);
        self.pos = segment.end;
        trace!(?segment, "data segment");
        Some(Ok(segment))
    }

    fn finish(&mut self) -> Option<Result<Range<u64>, Error>> {
        self.pos = self.end;
        None
    }

    fn fail(&mut self, e: Error) -> Option<Result<Range<u64>, Error>> {
        self.pos = self.end; // an iterator that failed stays finished
        Some(Err(e))
    }
}

/// An iterator over the data segments of `window` in a file, in order, never empty, never
/// touching each other's neighbours out of order; each item is a half-open byte range.
///
/// Segments are clipped to the window. The end of the file counts as the start of a hole, so
/// a window past the end yields nothing.
#[derive(Debug)]
pub struct DataSegments<Fd> {
    fd: Fd,
    walk: Walk,
}

impl<Fd: AsFd> DataSegments<Fd> {
    /// Walks the data of `window` in the file behind `fd`.
    pub fn new(fd: Fd, window: Range<u64>) -> Self {
        Self::with_granule(fd, window, DEFAULT_GRANULE)
    }

    /// As [`DataSegments::new`], stepping over empty segments by `granule` bytes (e.g. the
    /// filesystem block size when it exceeds a page).
    pub fn with_granule(fd: Fd, window: Range<u64>, granule: u64) -> Self {
        DataSegments {
            fd,
            walk: Walk::new(window, granule),
        }
    }
}

impl<Fd: AsFd> Iterator for DataSegments<Fd> {
    type Item = Result<Range<u64>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.walk.next_segment(&mut self.fd.as_fd())
    }
}

impl<Fd: AsFd> std::iter::FusedIterator for DataSegments<Fd> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that answers from a list of data segments, like a well-behaved filesystem.
    struct Model {
        data: Vec<Range<u64>>,
        size: u64,
    }

    impl Seek for Model {
        fn seek(&mut self, whence: Whence, off: u64) -> Result<Option<u64>, Error> {
            if off >= self.size {
                return Ok(None);
            }
            Ok(Some(match whence {
                Whence::Data => match self.data.iter().find(|r| r.end > off) {
                    Some(r) => r.start.max(off),
                    None => return Ok(None),
                },
                Whence::Hole => match self.data.iter().find(|r| r.contains(&off)) {
                    Some(r) => r.end,
                    None => off,
                },
            }))
        }
    }

    /// A kernel that replays fixed answers in order and records what it was asked.
    struct Script(Vec<(Whence, u64, Option<u64>)>);

    impl Seek for Script {
        fn seek(&mut self, whence: Whence, off: u64) -> Result<Option<u64>, Error> {
            let (w, asked, answer) = self.0.remove(0);
            assert_eq!((w, asked), (whence, off), "walk asked something unexpected");
            Ok(answer)
        }
    }

    fn collect(k: &mut impl Seek, window: Range<u64>, granule: u64) -> Vec<Range<u64>> {
        let mut walk = Walk::new(window, granule);
        std::iter::from_fn(|| walk.next_segment(k))
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn empty_segment_is_stepped_over_as_data() {
        // SEEK_DATA(0) = 1024 but SEEK_HOLE(1024) = 1024: the 1 KiB-block ext4 anomaly.
        let mut k = Script(vec![
            (Whence::Data, 0, Some(1024)),
            (Whence::Hole, 1024, Some(1024)),
            (Whence::Data, 4096, Some(8192)),
            (Whence::Hole, 8192, Some(12288)),
            (Whence::Data, 12288, None),
        ]);
        assert_eq!(collect(&mut k, 0..65536, 4096), [1024..4096, 8192..12288]);
        assert!(k.0.is_empty());
    }

    #[test]
    fn answers_behind_the_position_do_not_go_backwards() {
        let mut k = Script(vec![
            (Whence::Data, 100, Some(50)),
            (Whence::Hole, 100, Some(200)),
            (Whence::Data, 200, None),
        ]);
        assert_eq!(collect(&mut k, 100..1000, 4096), [100..200]);
    }

    #[test]
    fn segments_are_clipped_to_the_window() {
        let mut k = Model {
            data: vec![0..8192, 16384..32768],
            size: 65536,
        };
        assert_eq!(
            collect(&mut k, 4096..20000, 4096),
            [4096..8192, 16384..20000]
        );
        assert_eq!(collect(&mut k, 8192..16384, 4096), Vec::<Range<u64>>::new());
        assert_eq!(
            collect(&mut k, 70000..80000, 4096),
            Vec::<Range<u64>>::new()
        );
    }

    proptest::proptest! {
        #[test]
        fn model_walk_matches_the_model(
            cuts in proptest::collection::btree_set(0u64..200, 0..20),
            start in 0u64..220, len in 0u64..220,
        ) {
            // Data segments at alternate pairs of cut points, in units of 512 bytes.
            let cuts: Vec<u64> = cuts.into_iter().map(|c| c * 512).collect();
            let data: Vec<Range<u64>> = cuts.chunks_exact(2).map(|p| p[0]..p[1]).collect();
            let size = 200 * 512;
            let window = start * 512..(start + len) * 512;
            let mut k = Model { data: data.clone(), size };
            let got = collect(&mut k, window.clone(), 4096);
            let want: Vec<Range<u64>> = data
                .iter()
                .map(|r| r.start.max(window.start)..r.end.min(window.end).min(size))
                .filter(|r| r.start < r.end)
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
