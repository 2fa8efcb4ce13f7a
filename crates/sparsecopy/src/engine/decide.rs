//! Deciding the copy: the facts gathered before anything is written ([`Facts`]) make a plan
//! ([`decide`]), a plain value that the engine then carries out; and the two decisions taken
//! again as the copy goes ([`feed_plan`] once the reflinks are known to work or not,
//! [`wants_copy_file_range`] per data range). All pure: the table in `tests.rs` pins them.

use std::ops::Range;

use blockmap_core::ranges::round_in;

use crate::options::{Method, Options, Reflink, Resolved};
use crate::plan::blocks_line_up;

/// Data ranges up to this length are read ahead and written from user space even where
/// the kernel could copy them: one `pwrite` each from a shared read beats a
/// `copy_file_range` each.
const READ_AHEAD_MAX: u64 = 64 << 10;

/// What a copy is decided from, gathered before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Facts {
    pub options: Options,
    pub window: Resolved,
    /// SRC's size lies ([`crate::source`]): it is read to its end, the window's length a cap.
    pub stream: bool,
    /// SRC and DST are one file.
    pub same_file: bool,
    pub src_regular: bool,
    /// SRC is mapped by FIEMAP (what the whole-window clone walks).
    pub src_fiemap: bool,
    /// SRC's size as mapped and as stat-ed before: they differ while SRC is being written.
    pub src_mapped_size: u64,
    pub src_stat_size: u64,
    pub dst_device: bool,
    /// `st_size`, or the device's capacity.
    pub dst_size: u64,
    pub dst_created: bool,
    /// DST's block size.
    pub block_size: u64,
    /// DST's filesystem shares extents inside `copy_file_range` ([`crate::filesystem`]).
    pub dst_copy_shares: bool,
    /// SRC and DST in one btrfs subvolume.
    pub same_btrfs_subvolume: bool,
    pub dst_xfs: bool,
}

/// Why a copy is refused before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    SameFile,
    /// The device ends before `end`.
    DeviceTooSmall {
        end: u64,
    },
    /// [`Reflink::Always`] onto a block device.
    ReflinkToDevice,
    /// [`Reflink::Always`] with `skip - seek` not a multiple of the block size.
    ReflinkMisaligned,
    /// [`Reflink::Always`] of a SRC whose size lies: it is read, not shared.
    ReflinkStreamed,
    /// SRC mapped at another size than it was stat-ed.
    SourceSize,
}

/// How the whole window is cloned before anything else, if it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WholeClone {
    /// Not: range by range, after the probe.
    No,
    /// SRC's extents walked first (unwritten ones keep it from the clone but on xfs, small
    /// ones on xfs too), then `span` cloned.
    WalkFirst { span: Range<u64>, xfs: bool },
    /// One btrfs subvolume: `span` cloned first, the extents settled after.
    CloneFirst { span: Range<u64> },
}

/// What the copy will do, decided from the [`Facts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    /// Read SRC to its end, ignoring its map.
    pub stream: bool,
    /// Methods to try; each turns off for good at its first "not supported".
    pub reflink: bool,
    pub copy_file_range: bool,
    /// DST's filesystem shares extents inside `copy_file_range`.
    pub copy_shares: bool,
    /// The whole-window clone.
    pub clone: WholeClone,
    /// Without a whole-window clone: reflink the first whole blocks of data, the probe.
    pub probe: bool,
    /// Undo the probe's reflink before the range-by-range copy.
    pub unprobe: bool,
    /// Grow DST to this size before copying.
    pub grow_to: Option<u64>,
    /// DST's old data that holes must clear, walked as the copy goes.
    pub dst_old_data: Option<Range<u64>>,
    /// The read/write buffer's length, whole blocks.
    pub buf_len: usize,
}

/// The plan of a copy, or why it is refused; the checks come in this order: same file, device
/// size, [`Reflink::Always`]'s needs, SRC's size.
pub(super) fn decide(f: &Facts) -> Result<Plan, Refusal> {
    refusal(f).map_or(Ok(()), Err)?;
    let (options, window, bs) = (&f.options, f.window, f.block_size);
    let end = window.seek + window.length;
    let lines_up = blocks_line_up(window.skip, window.seek, bs);
    let both_regular = f.src_regular && !f.dst_device && !f.stream;
    let reflink = options.reflink != Reflink::Never && both_regular && lines_up;
    // Where copy_file_range can neither share nor offload (ext4, tmpfs…), it is a splice
    // through a pipe in the kernel, slower than read/write through a 1 MiB buffer
    // (benches/RESULTS.md, "Measurements behind design choices"). Auto keeps it where it does more.
    let may_share = both_regular && f.dst_copy_shares;
    let copy_file_range = match options.method {
        _ if f.stream => false,
        Method::ReadWrite => false,
        Method::CopyFileRange => true,
        Method::Auto => may_share,
    };
    let span = round_in(window.src(), bs);
    let clone = match () {
        _ if f.stream || !reflink || window.length == 0 || !may_share => WholeClone::No,
        _ if span.is_empty() || !f.src_fiemap => WholeClone::No,
        _ if f.same_btrfs_subvolume => WholeClone::CloneFirst { span },
        _ => WholeClone::WalkFirst {
            span,
            xfs: f.dst_xfs,
        },
    };
    let old_data = window.seek..end.min(f.dst_size);
    Ok(Plan {
        stream: f.stream,
        reflink,
        copy_file_range,
        copy_shares: copy_file_range && may_share,
        probe: !f.stream && reflink && window.length > 0,
        unprobe: !f.stream && options.reflink == Reflink::Auto,
        clone,
        grow_to: (!f.stream && !f.dst_device && window.length > 0 && f.dst_size < end)
            .then_some(end),
        dst_old_data: (!f.dst_device && !f.dst_created && !old_data.is_empty()).then_some(old_data),
        buf_len: ((options.buffer_size.max(1) as u64).div_ceil(bs) * bs) as usize,
    })
}

/// The first check a copy fails, if any.
fn refusal(f: &Facts) -> Option<Refusal> {
    let window = f.window;
    let end = window.seek + window.length;
    // A streamed SRC's length is known once read: the device must hold its start at least.
    let must_fit = if f.stream { window.seek } else { end };
    let always = f.options.reflink == Reflink::Always && window.length > 0;
    match () {
        _ if f.same_file => Some(Refusal::SameFile),
        _ if f.dst_device && must_fit > f.dst_size => {
            Some(Refusal::DeviceTooSmall { end: must_fit })
        }
        _ if always && f.dst_device => Some(Refusal::ReflinkToDevice),
        _ if always && !blocks_line_up(window.skip, window.seek, f.block_size) => {
            Some(Refusal::ReflinkMisaligned)
        }
        _ if always && f.stream => Some(Refusal::ReflinkStreamed),
        _ if !f.stream && f.src_regular && f.src_mapped_size != f.src_stat_size => {
            Some(Refusal::SourceSize)
        }
        _ => None,
    }
}

/// What the feed reads ahead ([`crate::feed::Policy`]), once the probe or the clone has
/// said whether reflinks work (`reflink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FeedPlan {
    pub read_max: u64,
    /// Once ranges go through user space, those up to this length are read ahead: every one
    /// that fits a buffer, but where reflinks work, what they take is still left to them.
    pub user_space_max: u64,
    pub settled_zeros: bool,
    pub large_reads: bool,
}

/// The [`FeedPlan`] of a copy whose kernel copy is `copy_file_range` and reflinks `reflink`.
pub(super) fn feed_plan(
    options: &Options,
    copy_file_range: bool,
    reflink: bool,
    buf_len: usize,
) -> FeedPlan {
    let read_max = if options.method == Method::CopyFileRange {
        0
    } else if !copy_file_range || options.detect_zeros || options.method == Method::ReadWrite {
        buf_len as u64
    } else {
        READ_AHEAD_MAX
    };
    // What may be reflinked is not read.
    let read_max = match options.reflink {
        _ if !reflink => read_max,
        Reflink::Always => 0,
        _ => read_max.min(options.reflink_min.saturating_sub(1)),
    };
    FeedPlan {
        read_max,
        user_space_max: if reflink { read_max } else { buf_len as u64 },
        settled_zeros: options.method != Method::CopyFileRange
            && options.reflink != Reflink::Always,
        large_reads: !reflink && !options.detect_zeros && options.method != Method::CopyFileRange,
    }
}

/// The choice between the kernel's copy and user space, for a range of `len` bytes.
pub(super) fn wants_copy_file_range(options: &Options, copy_shares: bool, len: u64) -> bool {
    match options.method {
        Method::CopyFileRange => true,
        Method::ReadWrite => false,
        // Zero detection needs the bytes. Where copy_file_range shares extents, it is a
        // reflink: refused with Reflink::Never, and not worth it for small ranges.
        Method::Auto => {
            !options.detect_zeros
                && !(copy_shares
                    && (options.reflink == Reflink::Never || len < options.reflink_min))
        }
    }
}
