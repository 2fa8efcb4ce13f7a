//! `cargo xtask demo`: the main job on a sample made on the spot, for a new user.
//!
//! Builds the `blockmap` binary (release, with cargo's progress: the first build takes
//! minutes), makes `target/demo/disk.img` — a 1 GiB disk image that is mostly holes: a "boot
//! sector" region, a few MiB of "filesystem" data, a preallocated region written without fsync
//! (the trap of ARCHITECTURE.md's "The one rule") and a partial last block — runs `blockmap
//! map` on it, as table and as JSON, then the main job: `blockmap copy` of the image to
//! `target/demo/copy.img`, checked byte for byte and by allocation.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::target_dir;

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    // Cargo's own progress, not --quiet: the first release build takes minutes.
    println!("demo: building blockmap (cargo build --release -p blockmap-cli)");
    let status = crate::cargo_command()
        .args(["build", "--release", "-p", "blockmap-cli"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p blockmap-cli failed");
    }
    let blockmap = target_dir().join("release/blockmap");
    let dir = target_dir().join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let image = make_image(&dir)?;

    let copy = dir.join("copy.img");
    let _ = std::fs::remove_file(&copy);
    let image_arg = image.display().to_string();
    let copy_arg = copy.display().to_string();
    for args in [
        vec!["map", &image_arg],
        vec!["map", "--json", &image_arg],
        vec!["copy", &image_arg, &copy_arg],
    ] {
        println!("$ blockmap {}", args.join(" "));
        let status = Command::new(&blockmap)
            .args(&args)
            .status()
            .with_context(|| format!("running {}", blockmap.display()))?;
        if !status.success() {
            bail!("blockmap {} failed ({status})", args.join(" "));
        }
        println!();
    }
    if !same_bytes(&image, &copy)? {
        bail!("{} differs from {}", copy.display(), image.display());
    }
    let allocated = |p: &Path| -> Result<u64> {
        Ok(std::fs::metadata(p)
            .with_context(|| format!("stat {}", p.display()))?
            .blocks()
            * 512)
    };
    println!(
        "{} is byte for byte the image; allocated: {} KiB (image: {} KiB) of 1 GiB",
        copy.display(),
        allocated(&copy)? >> 10,
        allocated(&image)? >> 10
    );
    Ok(())
}

/// Whether two files hold the same bytes (as `cmp` would say).
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| -> Result<BufReader<File>> {
        let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        Ok(BufReader::with_capacity(1 << 20, f))
    };
    let (mut a, mut b) = (open(a)?, open(b)?);
    let (mut x, mut y) = (vec![0; 1 << 20], vec![0; 1 << 20]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r
            .read(&mut buf[got..])
            .context("reading for the comparison")?
        {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// A 1 GiB sparse image with data at known places; remade on every run.
fn make_image(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("disk.img");
    let _ = std::fs::remove_file(&path);
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let pattern = |len: u64, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    };
    let write = |at: u64, bytes: &[u8]| {
        file.write_all_at(bytes, at)
            .with_context(|| format!("writing {}", path.display()))
    };
    write(0, &pattern(MIB, 1))?; // boot region
    for i in 0..4 {
        write(300 * MIB + i * 2 * MIB, &pattern(MIB, 2 + i as u8))?; // scattered data
    }
    // Preallocate 8 MiB and write 64 KiB inside it without fsync: data, not a hole.
    if rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::empty(),
        600 * MIB,
        8 * MIB,
    )
    .is_ok()
    {
        write(604 * MIB, &pattern(64 * 1024, 9))?;
    }
    write(1024 * MIB - 1000, &pattern(1000, 7))?; // an unaligned tail
    file.set_len(1024 * MIB)
        .with_context(|| format!("sizing {}", path.display()))?;
    println!(
        "made {} (1 GiB, about 5 MiB of data, not synced)\n",
        path.display()
    );
    Ok(path)
}
