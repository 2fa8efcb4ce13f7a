//! The copy's decisions as tables: facts → plan, worked out by hand from the rules in the
//! crate docs and ARCHITECTURE.md, not from the code.

use super::decide::{
    Facts, FeedPlan, Plan, Refusal, WholeClone, decide, feed_plan, wants_copy_file_range,
};
use crate::options::{Method, Options, Reflink, Resolved};

const MIB: u64 = 1 << 20;
const LEN: u64 = 10 * MIB;

/// A regular SRC of 10 MiB mapped by FIEMAP, copied whole into a new file on ext4.
fn facts() -> Facts {
    Facts {
        options: Options::default(),
        window: Resolved {
            skip: 0,
            seek: 0,
            length: LEN,
        },
        stream: false,
        same_file: false,
        src_regular: true,
        src_fiemap: true,
        src_mapped_size: LEN,
        src_stat_size: LEN,
        dst_device: false,
        dst_size: 0,
        dst_created: true,
        block_size: 4096,
        dst_copy_shares: false,
        same_btrfs_subvolume: false,
        dst_xfs: false,
    }
}

/// The plan of [`facts`]: reflinks tried by the probe (ext4 will refuse), read/write.
fn plan() -> Plan {
    Plan {
        stream: false,
        reflink: true,
        copy_file_range: false,
        copy_shares: false,
        clone: WholeClone::No,
        probe: true,
        unprobe: true,
        grow_to: Some(LEN),
        dst_old_data: None,
        buf_len: MIB as usize,
    }
}

type Case = (&'static str, fn(&mut Facts), Result<fn(&mut Plan), Refusal>);

fn xfs(f: &mut Facts) {
    f.dst_copy_shares = true;
    f.dst_xfs = true;
}

fn btrfs(f: &mut Facts) {
    f.dst_copy_shares = true;
    f.same_btrfs_subvolume = true;
}

fn shares(p: &mut Plan) {
    p.copy_file_range = true;
    p.copy_shares = true;
}

fn no_reflink(p: &mut Plan) {
    p.reflink = false;
    p.probe = false;
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    ("new file on ext4", |_| {}, Ok(|_| {})),
    ("xfs: the window's extents walked, then cloned whole", xfs, Ok(|p| {
        shares(p);
        p.clone = WholeClone::WalkFirst { span: 0..LEN, xfs: true };
    })),
    ("btrfs, one subvolume: cloned whole first", btrfs, Ok(|p| {
        shares(p);
        p.clone = WholeClone::CloneFirst { span: 0..LEN };
    })),
    ("another sharing filesystem (NFS): walked first, not xfs", |f| f.dst_copy_shares = true,
     Ok(|p| {
        shares(p);
        p.clone = WholeClone::WalkFirst { span: 0..LEN, xfs: false };
    })),
    ("SRC mapped by SEEK: no whole clone, the probe", |f| { btrfs(f); f.src_fiemap = false; },
     Ok(shares)),
    ("no whole block in the window: no whole clone", |f| {
        xfs(f);
        f.window.skip = 100;
        f.window.seek = 100;
        f.window.length = 4000;
    }, Ok(|p| {
        shares(p);
        p.grow_to = Some(4100);
    })),
    ("--reflink never on xfs: copy_file_range that shares, no probe", |f| {
        xfs(f);
        f.options.reflink = Reflink::Never;
    }, Ok(|p| {
        shares(p);
        no_reflink(p);
        p.unprobe = false;
    })),
    ("blocks that do not line up: no reflink", |f| { xfs(f); f.window.skip = 512; },
     Ok(|p| { shares(p); no_reflink(p); })),
    ("blocks that do not line up, --reflink always", |f| {
        f.window.skip = 512;
        f.options.reflink = Reflink::Always;
    }, Err(Refusal::ReflinkMisaligned)),
    ("--reflink always: nothing is undone", |f| f.options.reflink = Reflink::Always,
     Ok(|p| p.unprobe = false)),
    ("--reflink always onto a device", |f| {
        f.options.reflink = Reflink::Always;
        f.dst_device = true;
        f.dst_size = 1 << 30;
    }, Err(Refusal::ReflinkToDevice)),
    ("--reflink always of an empty window: nothing to share, nothing refused", |f| {
        f.options.reflink = Reflink::Always;
        f.window.skip = 512;
        f.window.length = 0;
    }, Ok(|p| {
        no_reflink(p);
        p.unprobe = false;
        p.grow_to = None;
    })),
    ("a device too small", |f| { f.dst_device = true; f.dst_size = 5 * MIB; },
     Err(Refusal::DeviceTooSmall { end: LEN })),
    ("the same file, before the device's size", |f| {
        f.same_file = true;
        f.dst_device = true;
        f.dst_size = 0;
    }, Err(Refusal::SameFile)),
    ("a device: never grown, its old data not walked, no reflink", |f| {
        f.dst_device = true;
        f.dst_size = 1 << 30;
        f.dst_created = false;
    }, Ok(|p| { no_reflink(p); p.grow_to = None; })),
    ("SRC mapped at another size than stat-ed", |f| f.src_mapped_size = LEN + 1,
     Err(Refusal::SourceSize)),
    ("an existing larger file: not grown, its old data in the window walked", |f| {
        f.dst_created = false;
        f.dst_size = 20 * MIB;
    }, Ok(|p| { p.grow_to = None; p.dst_old_data = Some(0..LEN); })),
    ("an existing shorter file: grown, its old data walked", |f| {
        f.dst_created = false;
        f.dst_size = MIB;
        f.window.seek = 4096;
    }, Ok(|p| { p.grow_to = Some(4096 + LEN); p.dst_old_data = Some(4096..MIB); })),
    ("--method copy-file-range on ext4", |f| f.options.method = Method::CopyFileRange,
     Ok(|p| p.copy_file_range = true)),
    ("--method read-write on xfs", |f| { xfs(f); f.options.method = Method::ReadWrite; },
     Ok(|p| p.clone = WholeClone::WalkFirst { span: 0..LEN, xfs: true })),
    ("a buffer not of whole blocks", |f| f.options.buffer_size = 1000,
     Ok(|p| p.buf_len = 4096)),
    ("a size that lies (sysfs's 4096) into an existing file", |f| {
        f.stream = true;
        f.src_stat_size = 4096;
        f.src_mapped_size = 0;
        f.dst_created = false;
        f.dst_size = 20 * MIB;
    }, Ok(|p| {
        no_reflink(p);
        p.stream = true;
        p.unprobe = false;
        p.grow_to = None;
        p.dst_old_data = Some(0..LEN);
    })),
    ("a size that lies onto xfs, --method copy-file-range: read all the same", |f| {
        xfs(f);
        f.stream = true;
        f.options.method = Method::CopyFileRange;
    }, Ok(|p| {
        no_reflink(p);
        p.stream = true;
        p.unprobe = false;
        p.grow_to = None;
    })),
    ("a size that lies, --reflink always", |f| {
        f.stream = true;
        f.options.reflink = Reflink::Always;
    }, Err(Refusal::ReflinkStreamed)),
    ("a size that lies onto a device holding the window's start", |f| {
        f.stream = true;
        f.dst_device = true;
        f.dst_size = MIB;
        f.window.seek = MIB;
    }, Ok(|p| {
        no_reflink(p);
        p.stream = true;
        p.unprobe = false;
        p.grow_to = None;
    })),
    ("a size that lies onto a device ending before the window's start", |f| {
        f.stream = true;
        f.dst_device = true;
        f.dst_size = MIB;
        f.window.seek = 2 * MIB;
    }, Err(Refusal::DeviceTooSmall { end: 2 * MIB })),
];

#[test]
fn facts_make_plans() {
    let mut failed = Vec::new();
    for (what, facts_of, expected) in CASES {
        let mut f = facts();
        facts_of(&mut f);
        let expected = expected.map(|plan_of| {
            let mut p = plan();
            plan_of(&mut p);
            p
        });
        let got = decide(&f);
        if got != expected {
            failed.push(format!(
                "{what}:\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn what_the_feed_reads_ahead() {
    let (auto, buf) = (Options::default(), MIB as usize);
    let zeros = Options::default().detect_zeros(true);
    let forced_cfr = Options::default().method(Method::CopyFileRange);
    let always = Options::default().reflink(Reflink::Always);
    let plan = |read_max, settled_zeros, large_reads| FeedPlan {
        read_max,
        user_space_max: 0,
        settled_zeros,
        large_reads,
    };
    #[rustfmt::skip]
    let cases = [
        // options, copy_file_range, reflink works → plan
        (&auto, false, false, plan(MIB, true, true)),
        (&auto, true, false, plan(64 << 10, true, true)),
        (&auto, true, true, plan((64 << 10) - 1, true, false)),
        (&auto, false, true, plan((64 << 10) - 1, true, false)),
        (&zeros, true, false, plan(MIB, true, false)),
        (&forced_cfr, true, false, plan(0, false, false)),
        (&always, false, true, plan(0, false, false)),
    ];
    for (i, (options, cfr, reflink, expected)) in cases.into_iter().enumerate() {
        // In user space every range that fits a buffer is read, but what reflinks take.
        let user_space_max = if reflink { expected.read_max } else { MIB };
        let expected = FeedPlan {
            user_space_max,
            ..expected
        };
        assert_eq!(feed_plan(options, cfr, reflink, buf), expected, "case {i}");
    }
}

#[test]
fn kernel_copy_or_user_space_per_range() {
    let auto = Options::default();
    let never = Options::default().reflink(Reflink::Never);
    let zeros = Options::default().detect_zeros(true);
    let forced = Options::default().method(Method::CopyFileRange);
    let read_write = Options::default().method(Method::ReadWrite);
    #[rustfmt::skip]
    let cases = [
        // options, DST shares inside copy_file_range, range length → copy_file_range?
        (&auto, false, 4096, true),
        (&auto, true, MIB, true),
        (&auto, true, (64 << 10) - 1, false),
        (&never, true, MIB, false),
        (&never, false, MIB, true),
        (&zeros, false, MIB, false),
        (&forced, true, 1, true),
        (&read_write, false, MIB, false),
    ];
    for (i, (options, shares, len, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            wants_copy_file_range(options, shares, len),
            expected,
            "case {i}"
        );
    }
}
