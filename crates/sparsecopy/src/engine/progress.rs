//! What the progress callback is told ([`Progress`]): data done, holes skipped, and the data
//! total once every map walk of the window has ended.

use crate::options::Progress;

/// The callback is called at most once per this many bytes of the window (and when the total
/// becomes known, and at the end).
const EVERY: u64 = 1 << 20;

/// Counts a copy's progress and passes it on.
pub(super) struct Meter<'p> {
    callback: Option<&'p mut dyn FnMut(Progress)>,
    now: Progress,
    /// Data found by the walks that ended (and the whole-window clone's count).
    counted: u64,
    /// Walks of the window still going: `None` while not even their number is known.
    walks_left: Option<usize>,
    /// What the callback was last told.
    told: Option<Progress>,
}

impl<'p> Meter<'p> {
    pub(super) fn new(callback: Option<&'p mut dyn FnMut(Progress)>) -> Self {
        Meter {
            callback,
            now: Progress {
                data_done: 0,
                data_total: None,
                skipped: 0,
            },
            counted: 0,
            walks_left: None,
            told: None,
        }
    }

    /// Bytes of the window passed so far, data and holes.
    pub(super) fn passed(&self) -> u64 {
        self.now.data_done + self.now.skipped
    }

    /// `bytes` of data done.
    pub(super) fn data(&mut self, bytes: u64) {
        self.now.data_done += bytes;
        self.tell(false);
    }

    /// `bytes` of holes passed over.
    pub(super) fn hole(&mut self, bytes: u64) {
        self.now.skipped += bytes;
        self.tell(false);
    }

    /// `bytes` of data found outside the walks (what the whole-window clone counted).
    pub(super) fn found(&mut self, bytes: u64) {
        self.counted += bytes;
    }

    /// The rest of the window is walked in `walks` parts.
    pub(super) fn walks(&mut self, walks: usize) {
        self.walks_left = Some(walks);
        self.settle();
    }

    /// A walk ended, having found `bytes` of data.
    pub(super) fn walked(&mut self, bytes: u64) {
        self.counted += bytes;
        self.walks_left = self.walks_left.map(|n| n.saturating_sub(1));
        self.settle();
    }

    /// SRC turned out to be read to its end: the total is known once it is.
    pub(super) fn unknown(&mut self) {
        self.walks_left = None;
        self.now.data_total = None;
    }

    fn settle(&mut self) {
        if self.walks_left == Some(0) {
            self.now.data_total = Some(self.counted);
            self.tell(false);
        }
    }

    /// The copy is done: all its data too.
    pub(super) fn finish(&mut self) {
        debug_assert!(
            self.now.data_total.is_none_or(|t| t == self.now.data_done),
            "{:?}",
            self.now
        );
        self.now.data_total = Some(self.now.data_done);
        self.tell(true);
    }

    fn tell(&mut self, last: bool) {
        let Some(f) = self.callback.as_mut() else {
            return;
        };
        let now = self.now;
        let due = match self.told {
            None => true,
            Some(t) if t == now => false,
            Some(t) => {
                last || t.data_total != now.data_total
                    || now.data_done + now.skipped >= t.data_done + t.skipped + EVERY
            }
        };
        if due {
            self.told = Some(now);
            f(now);
        }
    }
}
