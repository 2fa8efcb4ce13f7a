//! `cargo xtask demo`: the main job on a sample made on the spot, for a new user.
//!
//! Builds the `blockmap` binary (release), makes `target/demo/disk.img` — a 1 GiB disk image
//! that is mostly holes: a "boot sector" region, a few MiB of "filesystem" data, a
//! preallocated region written without fsync (the trap of SPEC section 2) and a partial last
//! block — and runs `blockmap map` on it, as table and as JSON.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, target_dir};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let status = Command::new(cargo())
        .args(["build", "--release", "--quiet", "-p", "blockmap-cli"])
        .current_dir(crate::project_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p blockmap-cli failed");
    }
    let blockmap = target_dir().join("release/blockmap");
    let dir = target_dir().join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let image = make_image(&dir)?;

    for args in [&["map"][..], &["map", "--json"][..]] {
        println!("$ blockmap {} {}", args.join(" "), image.display());
        let status = Command::new(&blockmap)
            .args(args)
            .arg(&image)
            .status()
            .with_context(|| format!("running {}", blockmap.display()))?;
        if !status.success() {
            bail!("blockmap {} failed ({status})", args.join(" "));
        }
        println!();
    }
    Ok(())
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
