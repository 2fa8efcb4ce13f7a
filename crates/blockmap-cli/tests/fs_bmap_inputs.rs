//! `blockmap bmap copy --nobmap` of compressed images and streams onto the spare block device
//! of `cargo xtask fs-test` (see `common` for the environment contract and the report):
//! the device afterwards is the one `bmaptool copy --nobmap` leaves (every byte of the
//! image written, the rest as it was), from a file and from a pipe; an image longer than the
//! device fails with one line.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::*;

const MIB: u64 = 1 << 20;

fn blockmap() -> Command {
    Command::new(BLOCKMAP)
}

/// Runs `cmd`, which must succeed.
fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

fn device_size(dev: &Path) -> Result<u64, String> {
    File::open(dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| format!("{dev:?}: {e}"))
}

/// Fills the device with bytes that are not the image's.
fn fill_device(dev: &Path, size: u64) -> Result<(), String> {
    let f = File::options()
        .write(true)
        .open(dev)
        .map_err(|e| format!("{dev:?}: {e}"))?;
    let pattern: Vec<u8> = (0..MIB as usize).map(|i| (i % 251) as u8 | 1).collect();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(MIB) as usize;
        f.write_all_at(&pattern[..n], at)
            .map_err(|e| format!("{dev:?}: {e}"))?;
        at += n as u64;
    }
    f.sync_all().map_err(|e| format!("{dev:?}: {e}"))
}

/// A sparse image of `size` bytes with data in three places, gzipped beside it: the gzip.
fn gz_image(dir: &Path, name: &str, size: u64) -> Result<std::path::PathBuf, String> {
    let path = dir.join(name);
    let f = File::create(&path).map_err(|e| e.to_string())?;
    let w = |data: &[u8], at: u64| f.write_all_at(data, at).map_err(|e| e.to_string());
    w(&[0x31; 70_000], 0)?;
    w(&[0x32; 300_000], 2 * MIB + 17)?;
    w(b"the end", size - 7)?;
    drop(f);
    let gz = dir.join(format!("{name}.gz"));
    let out = File::create(&gz).map_err(|e| e.to_string())?;
    run(Command::new("gzip").arg("-c").arg(&path).stdout(out))?;
    Ok(gz)
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn nobmap_streams_onto_a_block_device() {
    const TEST: &str = "nobmap_streams_onto_a_block_device";
    let env = fs_env(TEST);
    let dev = env
        .blockdev
        .clone()
        .expect("BLOCKMAP_FS_TEST_MOUNTS is set but BLOCKMAP_FS_TEST_BLOCKDEV is not");
    let _spare = hold_blockdev(); // the one spare device, shared by the tests
    let bmaptool = Command::new("bmaptool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        bmaptool,
        "{TEST}: bmaptool is not installed (apt-get install bmap-tools)"
    );
    let mounts: Vec<Mount> = env.mounts.iter().take(1).cloned().collect();
    env.run_each(
        &mounts,
        |m| format!("{}->blockdev", m.name),
        |m, cases| {
            let size = device_size(&dev)?;
            if size < 16 * MIB {
                return Err(format!("{dev:?}: {size} bytes, too small to test"));
            }
            let dir = m.scratch(TEST);
            let gz = gz_image(dir.path(), "disk.img", size - 3 * MIB + 512)?;

            // bmaptool's device is the oracle.
            fill_device(&dev, size)?;
            run(Command::new("bmaptool")
                .args(["copy", "--nobmap"])
                .arg(&gz)
                .arg(&dev))?;
            let theirs = std::fs::read(&dev).map_err(|e| e.to_string())?;
            let image = std::fs::read(dir.path().join("disk.img")).map_err(|e| e.to_string())?;
            if theirs[..image.len()] != image[..] {
                return Err("bmaptool's device does not hold the image".to_owned());
            }

            fill_device(&dev, size)?;
            run(blockmap()
                .args(["bmap", "copy", "--nobmap"])
                .arg(&gz)
                .arg(&dev))?;
            if std::fs::read(&dev).map_err(|e| e.to_string())? != theirs {
                return Err("the device differs from bmaptool's (from the file)".to_owned());
            }
            *cases += 1;

            // From a pipe.
            fill_device(&dev, size)?;
            let mut child = blockmap()
                .args(["bmap", "copy", "--nobmap", "-"])
                .arg(&dev)
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            let bytes = std::fs::read(&gz).map_err(|e| e.to_string())?;
            let mut stdin = child.stdin.take().ok_or("no stdin")?;
            let feeder = std::thread::spawn(move || stdin.write_all(&bytes));
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let _ = feeder.join();
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            if std::fs::read(&dev).map_err(|e| e.to_string())? != theirs {
                return Err("the device differs from bmaptool's (from a pipe)".to_owned());
            }
            *cases += 1;

            // Longer than the device: one line, exit 1.
            let big = gz_image(dir.path(), "big.img", size + 4096)?;
            let out = blockmap()
                .args(["bmap", "copy", "--nobmap"])
                .arg(&big)
                .arg(&dev)
                .output()
                .map_err(|e| e.to_string())?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.code() != Some(1)
                || stderr.lines().count() != 1
                || !stderr.contains("past the end of the device")
            {
                return Err(format!("an image longer than the device: {stderr:?}"));
            }
            *cases += 1;
            Ok(())
        },
    );
}
