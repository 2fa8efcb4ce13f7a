//! The read side of a copy, run on its own thread while the engine writes: walks SRC's map
//! over the window and hands the engine its steps in order, with the small data ranges
//! already read.
//!
//! Small extents are where copies spend their time: each costs the writer one `pwrite`, and
//! finding and reading it costs as much again. Here the map walk (FIEMAP) and the reads
//! happen on a second core, ahead of the writer. Neighbouring small ranges are read with one
//! `pread` of the span that holds them (the holes between them come back as zeros and are
//! not written); ranges further apart are read each on its own, into the same buffer, until
//! it is full. Buffers go round between the two threads: memory stays at [`POOL`] buffers
//! whatever the file, and a thread handoff costs one buffer of data, not one extent.
//!
//! Large ranges are read here too, a buffer at a time, when they go through user space
//! anyway (no reflink, no kernel copy, no zero detection): the reads of one buffer then
//! overlap the writes of the one before. Otherwise the engine copies them in the kernel
//! (`FICLONERANGE`, `copy_file_range`) or streams them itself.

use std::collections::VecDeque;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use rustix::io::Errno;
use tracing::trace;

use crate::error::{Error, Result};
use crate::plan::Step;

/// Buffers in circulation: one being written, the others filled ahead.
pub(crate) const POOL: usize = 3;
/// Small data ranges closer than this to each other are read with one `pread`: the gap, a
/// hole of SRC, costs a read of zeros, which is cheaper than another call.
const MAX_GAP: u64 = 32 << 10;
/// At most this many steps in a batch.
const MAX_STEPS: usize = 4096;
/// SRC's map is walked this far ahead of what is read. The kernel reads ahead of what it is
/// asked (a few hundred KiB by default, more where a device asks for it); the zero pages of
/// an unwritten extent that land in the page cache that way make SEEK_DATA call the extent
/// data, so a map settled after the read would copy zeros as data (bytes right, holes
/// filled). Settled before, its answer stands.
const MAP_AHEAD: u64 = 32 << 20;
/// At least this many steps are walked ahead, however far they reach: a map of up to about
/// half as many data ranges (a disk image has hundreds) is then walked whole before anything
/// is copied, and the data total is known from the start ([`Item::Walked`]). Walked once all
/// the same; the steps held are at most this many (24 bytes each) or those of `MAP_AHEAD`.
const WALK_AHEAD: usize = 8192;
/// Items go to the engine in chunks of up to this many, so that a file of many extents
/// does not cost a thread handoff per extent.
const CHUNK: usize = 256;

/// What the engine gets, in window order (in chunks).
#[derive(Debug)]
pub(crate) enum Item {
    /// A hole of SRC.
    Hole(Range<u64>),
    /// A data range of SRC, not read: the engine copies it.
    Data(Range<u64>),
    /// A settled data range of SRC ([`Step::Settled`]), not read: the engine copies it
    /// through user space, leaving out all-zero blocks.
    Settled(Range<u64>),
    /// Small data ranges and the holes between them, with SRC's bytes of their spans.
    Batch(Batch),
    /// SRC's map walk has ended: the bytes of data it found (data and settled steps); sent
    /// as soon as it ends, ahead of the steps still queued.
    Walked(u64),
    /// The walk or a read failed; nothing follows.
    Failed(Error),
}

/// Steps read at once: SRC's bytes of each span, packed in order into `buf`.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The SRC ranges read, in order, each with where its bytes start in `buf`.
    pub spans: Vec<(Range<u64>, usize)>,
    pub steps: Vec<Step>,
    pub buf: Vec<u8>,
    /// `pread` calls it took.
    pub preads: u64,
    /// Its first step goes on with the data range of the batch before (a large range read a
    /// buffer at a time): not a range of its own.
    pub continues: bool,
}

impl Batch {
    fn new(span: Range<u64>, step: Step, buf: Vec<u8>, continues: bool) -> Self {
        Batch {
            spans: vec![(span, 0)],
            steps: vec![step],
            buf,
            preads: 0,
            continues,
        }
    }

    /// The bytes of a data range inside one of the spans.
    pub(crate) fn bytes(&self, r: &Range<u64>) -> &[u8] {
        let i = self.spans.partition_point(|(s, _)| s.start <= r.start) - 1;
        let (span, at) = &self.spans[i];
        debug_assert!(r.end <= span.end, "{r:?} outside {span:?}");
        let start = at + (r.start - span.start) as usize;
        &self.buf[start..start + (r.end - r.start) as usize]
    }

    /// Bytes of the buffer taken.
    fn used(&self) -> usize {
        self.spans
            .last()
            .map_or(0, |(s, at)| at + (s.end - s.start) as usize)
    }
}

/// Which data ranges are read here.
#[derive(Debug)]
pub(crate) struct Policy<'a> {
    /// Ranges up to this length are read ahead (0: none).
    pub read_max: u64,
    /// Set by the engine once the kernel's copy turned out unusable: from then on ranges go
    /// through user space, and those up to `user_space_max` are read ahead.
    pub user_space: &'a AtomicBool,
    /// What is read ahead once ranges go through user space: the buffer's length, or where
    /// reflinks work, `read_max` still (the engine reflinks the longer ones).
    pub user_space_max: u64,
    /// The buffers' length.
    pub buf_len: usize,
    /// Settled data goes through user space, its all-zero blocks left out; otherwise it is
    /// copied as any data (a method or reflinks were forced).
    pub settled_zeros: bool,
    /// Data ranges longer than a buffer are read here too, in pieces, once they go through
    /// user space ([`Policy::user_space`]): nothing is reflinked and no zeros are looked for.
    pub large_reads: bool,
    /// Raised to stop the copy: the feed stops reading and hangs up.
    pub stop: Option<&'a AtomicBool>,
}

impl Policy<'_> {
    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// Whether a data range too long for one buffer is read here, in pieces.
    fn reads_in_pieces(&self, len: u64) -> bool {
        len > self.buf_len as u64 && self.large_reads && self.user_space.load(Ordering::Relaxed)
    }

    fn reads_ahead(&self, len: u64) -> bool {
        // A range is read whole into one buffer.
        len <= self.buf_len as u64
            && (len <= self.read_max
                || (len <= self.user_space_max && self.user_space.load(Ordering::Relaxed)))
    }
}

/// The reading thread's state.
pub(crate) struct Feed<'a> {
    src: BorrowedFd<'a>,
    src_path: &'a Path,
    policy: Policy<'a>,
    out: SyncSender<Vec<Item>>,
    /// Items not sent yet.
    chunk: Vec<Item>,
    /// Buffers coming back from the engine.
    returned: Receiver<Vec<u8>>,
    made: usize,
    open: Option<Batch>,
}

/// The writer went away (it failed or finished): stop quietly.
struct Gone;

impl<'a> Feed<'a> {
    pub(crate) fn new(
        src: BorrowedFd<'a>,
        src_path: &'a Path,
        policy: Policy<'a>,
        out: SyncSender<Vec<Item>>,
        returned: Receiver<Vec<u8>>,
    ) -> Self {
        Feed {
            src,
            src_path,
            policy,
            out,
            chunk: Vec::with_capacity(CHUNK),
            returned,
            made: 0,
            open: None,
        }
    }

    /// Feeds the steps to the engine until they end, one fails, or the engine hangs up.
    pub(crate) fn run<E>(mut self, steps: impl Iterator<Item = std::result::Result<Step, E>>)
    where
        Error: From<E>,
    {
        if self.feed(steps).is_ok() {
            let _ = self.send_chunk();
        }
    }

    fn feed<E>(
        &mut self,
        steps: impl Iterator<Item = std::result::Result<Step, E>>,
    ) -> std::result::Result<(), Gone>
    where
        Error: From<E>,
    {
        let mut steps = MapAhead::new(steps);
        let mut told = false;
        while let Some(step) = steps.next() {
            if self.policy.stopped() {
                return Err(Gone);
            }
            if steps.ended && !told {
                told = true;
                self.chunk.push(Item::Walked(steps.data));
                self.send_chunk()?;
            }
            let step = match step {
                Ok(step) => step,
                Err(e) => return self.fail(e.into()),
            };
            match step {
                Step::Hole(r) => match &mut self.open {
                    // Holes inside a batch wait with it, so the engine meets them in order.
                    Some(batch) if batch.steps.len() < MAX_STEPS => {
                        batch.steps.push(Step::Hole(r));
                    }
                    _ => {
                        self.flush()?;
                        self.send(Item::Hole(r))?;
                    }
                },
                Step::Data(r) => self.data(r)?,
                Step::Settled(r) if !self.policy.settled_zeros => self.data(r)?,
                // Read through user space in any case, to find the zeros.
                Step::Settled(r) if r.end - r.start <= self.policy.buf_len as u64 => {
                    self.add(Step::Settled(r))?;
                }
                Step::Settled(r) => {
                    self.flush()?;
                    self.send(Item::Settled(r))?;
                }
            }
        }
        // The loop ends only once the walk has.
        if !told {
            self.send(Item::Walked(steps.data))?;
        }
        self.flush()
    }

    /// A data range: read with its neighbours, read in pieces, or left to the engine.
    fn data(&mut self, r: Range<u64>) -> std::result::Result<(), Gone> {
        let len = r.end - r.start;
        if self.policy.reads_ahead(len) {
            return self.add(Step::Data(r));
        }
        self.flush()?;
        if !self.policy.reads_in_pieces(len) {
            return self.send(Item::Data(r));
        }
        let mut at = r.start;
        while at < r.end {
            let piece = at..r.end.min(at + self.policy.buf_len as u64);
            let buf = self.buffer()?;
            self.open = Some(Batch::new(
                piece.clone(),
                Step::Data(piece.clone()),
                buf,
                at > r.start,
            ));
            self.flush()?;
            at = piece.end;
        }
        Ok(())
    }

    /// Adds a small data step to the open batch: to its last span when the gap is small,
    /// else as a span of its own; first sending the batch if the buffer or the batch is full.
    fn add(&mut self, step: Step) -> std::result::Result<(), Gone> {
        let r = step.range().clone();
        let buf_len = self.policy.buf_len;
        if let Some(batch) = &mut self.open {
            let used = batch.used();
            let (last, at) = batch.spans.last_mut().expect("a batch has a span");
            // A near range that does not fit starts the next batch, as one read of both
            // would have been cheaper than a read each.
            let near = r.start - last.end <= MAX_GAP;
            if batch.steps.len() < MAX_STEPS {
                if near && *at + (r.end - last.start) as usize <= buf_len {
                    last.end = r.end;
                    batch.steps.push(step);
                    return Ok(());
                }
                if !near && used + (r.end - r.start) as usize <= buf_len {
                    batch.spans.push((r, used));
                    batch.steps.push(step);
                    return Ok(());
                }
            }
            self.flush()?;
        }
        let buf = self.buffer()?;
        self.open = Some(Batch::new(r, step, buf, false));
        Ok(())
    }

    /// Reads the open batch's spans and sends it.
    fn flush(&mut self) -> std::result::Result<(), Gone> {
        let Some(mut batch) = self.open.take() else {
            return Ok(());
        };
        if self.policy.stopped() {
            return Err(Gone);
        }
        for (span, at) in &batch.spans {
            let buf = &mut batch.buf[*at..*at + (span.end - span.start) as usize];
            match read_exact(self.src, self.src_path, span.start, buf) {
                Ok(preads) => batch.preads += preads,
                Err(e) => return self.fail(e),
            }
        }
        trace!(
            spans = batch.spans.len(),
            steps = batch.steps.len(),
            "read ahead"
        );
        self.send(Item::Batch(batch))?;
        // Read bytes go at once: the engine may be waiting for them.
        self.send_chunk()
    }

    /// A buffer: one the engine gave back, a new one while fewer than [`POOL`] exist, or
    /// else the next one the engine gives back.
    fn buffer(&mut self) -> std::result::Result<Vec<u8>, Gone> {
        match self.returned.try_recv() {
            Ok(buf) => return Ok(buf),
            Err(TryRecvError::Disconnected) => return Err(Gone),
            Err(TryRecvError::Empty) => {}
        }
        if self.made < POOL {
            self.made += 1;
            return Ok(vec![0; self.policy.buf_len]);
        }
        self.returned.recv().map_err(|_| Gone)
    }

    fn send(&mut self, item: Item) -> std::result::Result<(), Gone> {
        self.chunk.push(item);
        if self.chunk.len() >= CHUNK {
            self.send_chunk()?;
        }
        Ok(())
    }

    fn send_chunk(&mut self) -> std::result::Result<(), Gone> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        self.out.send(chunk).map_err(|_| Gone)
    }

    fn fail(&mut self, e: Error) -> std::result::Result<(), Gone> {
        self.chunk.push(Item::Failed(e));
        let _ = self.send_chunk();
        Err(Gone)
    }
}

/// `pread` until `buf` is full; returns the calls it took.
pub(crate) fn read_exact(
    src: BorrowedFd<'_>,
    path: &Path,
    offset: u64,
    buf: &mut [u8],
) -> Result<u64> {
    let mut got = 0;
    let mut calls = 0;
    while got < buf.len() {
        let at = offset + got as u64;
        calls += 1;
        match rustix::io::pread(src, &mut buf[got..], at) {
            Ok(0) => {
                return Err(Error::SourceShrank {
                    path: path.to_owned(),
                    offset: at,
                });
            }
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => {
                return Err(Error::Read {
                    path: path.to_owned(),
                    offset: at,
                    source: e.into(),
                });
            }
        }
    }
    Ok(calls)
}

/// The steps, handed out only once the map has been walked [`MAP_AHEAD`] bytes past the end
/// of the one handed out, and [`WALK_AHEAD`] steps at least. A walk error comes as soon as it
/// is met.
struct MapAhead<I> {
    steps: I,
    queue: VecDeque<Step>,
    /// The end of the last step walked.
    walked: u64,
    ended: bool,
    /// Bytes of data walked.
    data: u64,
}

impl<I, E> MapAhead<I>
where
    I: Iterator<Item = std::result::Result<Step, E>>,
{
    fn new(steps: I) -> Self {
        MapAhead {
            steps,
            queue: VecDeque::new(),
            walked: 0,
            ended: false,
            data: 0,
        }
    }

    /// Walks one more step; `Err` when the walk failed.
    fn pull(&mut self) -> std::result::Result<(), E> {
        match self.steps.next() {
            Some(Ok(step)) => {
                self.walked = step.range().end;
                if !matches!(step, Step::Hole(_)) {
                    self.data += step.range().end - step.range().start;
                }
                self.queue.push_back(step);
            }
            Some(Err(e)) => return Err(e),
            None => self.ended = true,
        }
        Ok(())
    }

    fn next(&mut self) -> Option<std::result::Result<Step, E>> {
        if self.queue.is_empty()
            && !self.ended
            && let Err(e) = self.pull()
        {
            return Some(Err(e));
        }
        let target = self.queue.front()?.range().end.saturating_add(MAP_AHEAD);
        while !self.ended && (self.walked < target || self.queue.len() < WALK_AHEAD) {
            if let Err(e) = self.pull() {
                return Some(Err(e));
            }
        }
        self.queue.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    use std::sync::mpsc;

    use super::*;
    use crate::plan::Steps;

    /// In user space, ranges that reflinks take are still not read here: the engine reflinks
    /// them (a `--method read-write --reflink always` copy once read and rewrote them after
    /// the probe had shown that reflinks work, and shared nothing).
    #[test]
    fn reflinked_ranges_are_not_read_ahead_in_user_space() {
        let user_space = AtomicBool::new(true);
        let policy = |read_max, reflink: bool| Policy {
            read_max,
            user_space: &user_space,
            user_space_max: if reflink { read_max } else { 1 << 20 },
            buf_len: 1 << 20,
            settled_zeros: true,
            large_reads: false,
            stop: None,
        };
        // Reflink::Always: nothing is read ahead; Auto: only what is under reflink_min.
        assert!(!policy(0, true).reads_ahead(4096));
        assert!(policy(65535, true).reads_ahead(4096));
        assert!(!policy(65535, true).reads_ahead(65536));
        // Without reflinks, user space reads every range that fits a buffer.
        assert!(policy(0, false).reads_ahead(4096));
        assert!(policy(0, false).reads_ahead(1 << 20));
        assert!(!policy(0, false).reads_ahead((1 << 20) + 1));
    }

    /// Small extents too far apart to share a read are read each on its own, and still reach
    /// the engine a buffer at a time: a handoff between the threads per extent cost a context
    /// switch per extent.
    #[test]
    fn far_apart_small_extents_share_handoffs() {
        const N: u64 = 1024;
        const BLOCK: u64 = 4096;
        let stride = 2 * MAX_GAP;
        let file = tempfile::tempfile().unwrap();
        let data: Vec<Range<u64>> = (0..N).map(|i| i * stride..i * stride + BLOCK).collect();
        let content = |i: usize| vec![(i % 251) as u8 + 1; BLOCK as usize];
        for (i, r) in data.iter().enumerate() {
            file.write_all_at(&content(i), r.start).unwrap();
        }
        file.set_len(N * stride).unwrap();

        let user_space = AtomicBool::new(true);
        let policy = Policy {
            read_max: 1 << 20,
            user_space: &user_space,
            user_space_max: 1 << 20,
            buf_len: 1 << 20,
            settled_zeros: true,
            large_reads: true,
            stop: None,
        };
        let (tx, items) = mpsc::sync_channel(POOL);
        let (give_back, returned) = mpsc::channel();
        let fd = file.as_fd();
        let ranges = data.clone();
        let (mut handoffs, mut preads, mut seen) = (0, 0, Vec::new());
        std::thread::scope(|s| {
            s.spawn(move || {
                let steps = Steps::new(ranges.into_iter().map(Ok::<_, Error>), 0..N * stride);
                Feed::new(fd, Path::new("src"), policy, tx, returned).run(steps);
            });
            for chunk in items {
                handoffs += 1;
                for item in chunk {
                    match item {
                        Item::Batch(b) => {
                            preads += b.preads;
                            for step in &b.steps {
                                if let Step::Data(r) = step {
                                    seen.push((r.clone(), b.bytes(r).to_vec()));
                                }
                            }
                            let _ = give_back.send(b.buf);
                        }
                        Item::Hole(_) | Item::Walked(_) => {}
                        other => panic!("unexpected item {other:?}"),
                    }
                }
            }
        });
        assert_eq!(seen.len(), data.len());
        for (i, ((r, bytes), want)) in seen.iter().zip(&data).enumerate() {
            assert_eq!(r, want);
            assert!(*bytes == content(i), "bytes of {r:?}");
        }
        assert_eq!(preads, N, "one read per extent: the gaps are not read");
        assert!(handoffs <= N / 100, "{handoffs} handoffs for {N} extents");
    }
}
