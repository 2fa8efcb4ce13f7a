//! The model of a file's bytes and the operations that build files of random layout, applied
//! to the file and to its model alike.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use proptest::prelude::*;
use rustix::fs::FallocateFlags;
use rustix::io::Errno;

use crate::{KIB, MIB, PAGE, ensure};

const CHUNK: u64 = 64 * KIB;
static ZEROS: [u8; CHUNK as usize] = [0; CHUNK as usize];

/// What a file holds, byte for byte: a length and chunks of 64 KiB, absent chunks being zeros,
/// so a model of a sparse file of any size costs only its data.
#[derive(Debug, Clone, Default)]
pub struct Model {
    len: u64,
    /// Chunk index → its bytes; bytes at or past `len` are always zero.
    chunks: BTreeMap<u64, Box<[u8]>>,
}

impl Model {
    pub fn new() -> Self {
        Model::default()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `pwrite(data, at)`: the file grows to cover it.
    pub fn write(&mut self, at: u64, data: &[u8]) {
        let end = at + data.len() as u64;
        let mut pos = at;
        while pos < end {
            let (idx, off) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = ((CHUNK - off as u64).min(end - pos)) as usize;
            let src = &data[(pos - at) as usize..][..n];
            if let Some(c) = self.chunks.get_mut(&idx) {
                c[off..off + n].copy_from_slice(src);
            } else if src != &ZEROS[..n] {
                let mut c = vec![0u8; CHUNK as usize].into_boxed_slice();
                c[off..off + n].copy_from_slice(src);
                self.chunks.insert(idx, c);
            }
            pos += n as u64;
        }
        self.len = self.len.max(end);
    }

    /// Zeros `range` (clipped to the length), as a punched hole does; the length is unchanged.
    pub fn zero(&mut self, range: Range<u64>) {
        let end = range.end.min(self.len);
        let mut pos = range.start;
        while pos < end {
            let (idx, off) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = ((CHUNK - off as u64).min(end - pos)) as usize;
            if n as u64 == CHUNK {
                self.chunks.remove(&idx);
            } else if let Some(c) = self.chunks.get_mut(&idx) {
                c[off..off + n].fill(0);
            }
            pos += n as u64;
        }
    }

    /// `ftruncate(len)`.
    pub fn set_len(&mut self, len: u64) {
        if len < self.len {
            let old = self.len;
            self.zero(len..old);
            self.chunks.retain(|&idx, _| idx * CHUNK < len);
        }
        self.len = len;
    }

    /// The bytes at `[at, at + buf.len())`; zeros past the end.
    pub fn read(&self, at: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = at + buf.len() as u64;
        for (&idx, c) in self.chunks.range(at / CHUNK..end.div_ceil(CHUNK)) {
            let cstart = idx * CHUNK;
            let from = at.max(cstart);
            let to = end.min(cstart + CHUNK);
            buf[(from - at) as usize..(to - at) as usize]
                .copy_from_slice(&c[(from - cstart) as usize..(to - cstart) as usize]);
        }
    }

    /// The maximal runs of non-zero bytes (the bytes a hole must never cover), merged where
    /// they touch.
    pub fn nonzero_runs(&self) -> Vec<Range<u64>> {
        const PIECE: usize = 512;
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut push = |r: Range<u64>| match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        };
        for (&idx, c) in &self.chunks {
            let base = idx * CHUNK;
            for (p, piece) in c.chunks(PIECE).enumerate() {
                // Whole zero pieces are skipped with one memcmp; only the others are scanned.
                if piece == &ZEROS[..piece.len()] {
                    continue;
                }
                let pbase = base + (p * PIECE) as u64;
                let mut i = 0;
                while i < piece.len() {
                    if piece[i] == 0 {
                        i += 1;
                        continue;
                    }
                    let start = i;
                    while i < piece.len() && piece[i] != 0 {
                        i += 1;
                    }
                    push(pbase + start as u64..pbase + i as u64);
                }
            }
        }
        out
    }

    /// Compares the file's bytes with the model's; the first difference is the error.
    pub fn compare_with(&self, file: &File) -> Result<(), String> {
        let size = file.metadata().map_err(|e| format!("fstat: {e}"))?.len();
        ensure!(
            size == self.len,
            "the file has {size} bytes, the model {}",
            self.len
        );
        let mut got = vec![0u8; MIB as usize];
        let mut want = vec![0u8; MIB as usize];
        let mut at = 0;
        while at < size {
            let n = (size - at).min(MIB) as usize;
            file.read_exact_at(&mut got[..n], at)
                .map_err(|e| format!("reading the file at {at}: {e}"))?;
            self.read(at, &mut want[..n]);
            if got[..n] != want[..n] {
                let i = (0..n).find(|&i| got[i] != want[i]).unwrap();
                return Err(format!(
                    "the file differs from the model at offset {}: {:#04x}, expected {:#04x}",
                    at + i as u64,
                    got[i],
                    want[i]
                ));
            }
            at += n as u64;
        }
        Ok(())
    }
}

/// The bytes a write puts down.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Pseudo-random bytes, none of them zero, from a seed ([`crate::nonzero_noise`]).
    Random(u64),
    /// One non-zero byte repeated (compresses well).
    Byte(u8),
    /// Zeros: a write of zeros is data or a hole, as the filesystem likes.
    Zeros,
}

impl Fill {
    pub fn bytes(self, len: usize) -> Vec<u8> {
        match self {
            Fill::Zeros => vec![0; len],
            Fill::Byte(b) => {
                assert_ne!(b, 0);
                vec![b; len]
            }
            Fill::Random(seed) => crate::nonzero_noise(seed, len),
        }
    }
}

impl fmt::Debug for Fill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fill::Random(seed) => write!(f, "random#{seed}"),
            Fill::Byte(b) => write!(f, "byte {b:#04x}"),
            Fill::Zeros => f.write_str("zeros"),
        }
    }
}

/// One operation on a file under test, applied to the file and to its model alike.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `pwrite` of `len` bytes at `at`.
    Write { at: u64, len: u64, fill: Fill },
    /// `fallocate(mode 0)`: may grow the file.
    Fallocate { at: u64, len: u64 },
    /// `fallocate(KEEP_SIZE)`: may allocate past the end of the file.
    FallocateKeepSize { at: u64, len: u64 },
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
    PunchHole { at: u64, len: u64 },
    /// `ftruncate`, up or down.
    Truncate { len: u64 },
    /// `fsync`.
    Fsync,
    /// The trap: `fallocate(mode 0)` of `[at, at + len)`, then a write inside it, no fsync.
    PreallocThenWrite {
        at: u64,
        len: u64,
        write_at: u64,
        write_len: u64,
        fill: Fill,
    },
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Write { at, len, fill } => write!(f, "write {at}+{len} {fill:?}"),
            Op::Fallocate { at, len } => write!(f, "fallocate {at}+{len}"),
            Op::FallocateKeepSize { at, len } => write!(f, "fallocate --keep-size {at}+{len}"),
            Op::PunchHole { at, len } => write!(f, "punch-hole {at}+{len}"),
            Op::Truncate { len } => write!(f, "truncate {len}"),
            Op::Fsync => f.write_str("fsync"),
            Op::PreallocThenWrite {
                at,
                len,
                write_at,
                write_len,
                fill,
            } => write!(
                f,
                "fallocate {at}+{len} then write {write_at}+{write_len} {fill:?} (no fsync)"
            ),
        }
    }
}

/// A list of ops, printed one per line (for failure messages).
#[derive(Debug)]
pub struct OpList<'a>(pub &'a [Op]);

impl fmt::Display for OpList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.0.iter().enumerate() {
            writeln!(f, "  {i:>2}. {op:?}")?;
        }
        Ok(())
    }
}

/// Offsets below 4 MiB: page-aligned, 1 KiB-aligned (the blocks of ext4-1k) or anywhere; half
/// of them in the first 256 KiB, so that ops overlap (a write into a preallocation, a punch
/// through data) as often as they do not.
pub fn offset() -> impl Strategy<Value = u64> + Clone {
    const HOT: u64 = 256 * KIB;
    prop_oneof![
        (0..4 * MIB / PAGE).prop_map(|p| p * PAGE),
        (0..4 * MIB / KIB).prop_map(|b| b * KIB),
        0..4 * MIB,
        (0..HOT / PAGE).prop_map(|p| p * PAGE),
        (0..HOT / KIB).prop_map(|b| b * KIB),
        0..HOT,
    ]
}

/// Lengths: whole pages, whole KiB, anything, or big (up to 1 MiB).
pub fn length() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        3 => (1..=64u64).prop_map(|p| p * PAGE),
        2 => (1..=16u64).prop_map(|b| b * KIB),
        3 => 1..20_000u64,
        1 => (1..=8u64).prop_map(|n| n * 128 * KIB),
    ]
}

/// Non-zero fills, random or compressible.
pub fn fill() -> impl Strategy<Value = Fill> + Clone {
    prop_oneof![
        any::<u64>().prop_map(Fill::Random),
        (1..=255u8).prop_map(Fill::Byte)
    ]
}

/// One random op, weighted towards writes and holes.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (offset(), length(), fill()).prop_map(|(at, len, fill)| Op::Write { at, len, fill }),
        2 => (offset(), length()).prop_map(|(at, len)| Op::Write { at, len, fill: Fill::Zeros }),
        2 => (offset(), length()).prop_map(|(at, len)| Op::Fallocate { at, len }),
        2 => (offset(), length()).prop_map(|(at, len)| Op::FallocateKeepSize { at, len }),
        3 => (offset(), length()).prop_map(|(at, len)| Op::PunchHole { at, len }),
        2 => prop_oneof![offset(), 4 * MIB..6 * MIB].prop_map(|len| Op::Truncate { len }),
        2 => Just(Op::Fsync),
        2 => (offset(), length(), any::<u64>(), length(), fill()).prop_map(
            |(at, len, w, write_len, fill)| {
                let write_at = at + w % len;
                let write_len = write_len.min(at + len - write_at);
                Op::PreallocThenWrite { at, len, write_at, write_len, fill }
            }
        ),
    ]
}

/// What became of an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// The filesystem does not do that (`EOPNOTSUPP`): skipped in file and model alike.
    Unsupported(Errno),
}

/// `fallocate`, with "not supported here" told apart from real failures. Only EOPNOTSUPP
/// (and ENOSYS) mean unsupported: an EINVAL would be a bug in the op, not a missing feature.
pub fn fallocate(file: &File, flags: FallocateFlags, at: u64, len: u64) -> Result<Applied, String> {
    match rustix::fs::fallocate(file, flags, at, len) {
        Ok(()) => Ok(Applied::Done),
        Err(e @ (Errno::OPNOTSUPP | Errno::NOSYS)) => Ok(Applied::Unsupported(e)),
        Err(e) => Err(format!("fallocate({flags:?}, {at}, {len}): {e}")),
    }
}

/// Applies `op` to the file and to its model.
pub fn apply(file: &File, model: &mut Model, op: Op) -> Result<Applied, String> {
    let write = |model: &mut Model, at: u64, len: u64, fill: Fill| -> Result<(), String> {
        let bytes = fill.bytes(len as usize);
        file.write_all_at(&bytes, at)
            .map_err(|e| format!("pwrite {at}+{len}: {e}"))?;
        model.write(at, &bytes);
        Ok(())
    };
    Ok(match op {
        Op::Write { at, len, fill } => {
            write(model, at, len, fill)?;
            Applied::Done
        }
        Op::Fallocate { at, len } => {
            let r = fallocate(file, FallocateFlags::empty(), at, len)?;
            if r == Applied::Done && at + len > model.len() {
                model.set_len(at + len);
            }
            r
        }
        Op::FallocateKeepSize { at, len } => fallocate(file, FallocateFlags::KEEP_SIZE, at, len)?,
        Op::PunchHole { at, len } => {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            let r = fallocate(file, flags, at, len)?;
            if r == Applied::Done {
                model.zero(at..at + len);
            }
            r
        }
        Op::Truncate { len } => {
            file.set_len(len)
                .map_err(|e| format!("ftruncate {len}: {e}"))?;
            model.set_len(len);
            Applied::Done
        }
        Op::Fsync => {
            file.sync_all().map_err(|e| format!("fsync: {e}"))?;
            Applied::Done
        }
        Op::PreallocThenWrite {
            at,
            len,
            write_at,
            write_len,
            fill,
        } => {
            // Without fallocate the write still happens: only the preallocation is skipped.
            let r = apply(file, model, Op::Fallocate { at, len })?;
            write(model, write_at, write_len, fill)?;
            r
        }
    })
}

/// A small layout for the copy model of sparsecopy: up to 11 ops below 1 MiB, lengths up to
/// 256 KiB, mostly without fsync.
pub fn small_layout() -> impl Strategy<Value = Vec<Op>> {
    const MAX: u64 = MIB;
    let offset = prop_oneof![
        (0..MAX / PAGE).prop_map(|b| b * PAGE),
        0..MAX,
        (0..MAX / KIB).prop_map(|b| b * KIB),
    ];
    let length = prop_oneof![1..64u64, (1..64u64).prop_map(|b| b * PAGE), 1..(256 * KIB),];
    let at_len = (offset.clone(), length);
    let op = prop_oneof![
        4 => (at_len.clone(), any::<u64>())
            .prop_map(|((at, len), seed)| Op::Write { at, len, fill: Fill::Random(seed) }),
        1 => at_len.clone().prop_map(|(at, len)| Op::Write { at, len, fill: Fill::Zeros }),
        1 => (at_len.clone(), any::<bool>()).prop_map(|((at, len), keep_size)| if keep_size {
            Op::FallocateKeepSize { at, len }
        } else {
            Op::Fallocate { at, len }
        }),
        2 => at_len.prop_map(|(at, len)| Op::PunchHole { at, len }),
        1 => offset.prop_map(|len| Op::Truncate { len }),
        1 => Just(Op::Fsync),
    ];
    prop::collection::vec(op, 0..12)
}
