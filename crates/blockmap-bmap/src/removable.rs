//! `--removable-device`: whether a destination is a removable block device (an SD card, a USB
//! stick), asked of sysfs as bmaptool 3.9 asks it, but by device number
//! (`/sys/dev/block/MAJ:MIN`, so any name or symbolic link of the device works) and, for a
//! partition, of the whole disk that holds it (bmaptool looks only for `/sys/block/NAME`,
//! which a partition does not have).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Checks that `dest` is an existing block device that the kernel calls removable; else
/// [`Error::NotRemovable`] saying why (it does not exist, is not a block device, is not
/// removable, or sysfs cannot tell).
pub fn check_removable(dest: impl AsRef<Path>) -> Result<()> {
    let dest = dest.as_ref();
    let refuse = |reason: String| Error::NotRemovable {
        path: dest.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(dest).map_err(|e| {
        refuse(format!(
            "cannot use it ({e}); --removable-device needs an existing removable block device"
        ))
    })?;
    if !meta.file_type().is_block_device() {
        return Err(refuse(
            "not a block device; --removable-device needs a removable block device".to_owned(),
        ));
    }
    let rdev = meta.rdev();
    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    match removable_in(Path::new("/sys"), major, minor) {
        Ok((true, _)) => Ok(()),
        Ok((false, disk)) => Err(refuse(format!(
            "not a removable device ({} says 0); --removable-device refuses it",
            disk.join("removable").display()
        ))),
        Err(e) => Err(refuse(format!("cannot tell whether it is removable: {e}"))),
    }
}

/// Whether the block device `major:minor` is removable, as sysfs under `sys` says: its own
/// `removable` attribute, or for a partition its disk's. Returns the disk's sysfs directory
/// too (to name it).
pub(crate) fn removable_in(sys: &Path, major: u32, minor: u32) -> std::io::Result<(bool, PathBuf)> {
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    let mut dir = std::fs::canonicalize(&link)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", link.display())))?;
    // A partition's directory sits inside its disk's and has a `partition` attribute.
    if dir.join("partition").exists() {
        dir = dir
            .parent()
            .map(Path::to_owned)
            .ok_or_else(|| std::io::Error::other(format!("{}: no parent disk", dir.display())))?;
    }
    let attr = dir.join("removable");
    let text = std::fs::read_to_string(&attr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", attr.display())))?;
    Ok((text.trim() == "1", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block device of this machine, against `/sys/block/NAME/removable` read
    /// independently (for a partition, the disk found by its name in `/sys/block`).
    #[test]
    fn every_block_device_of_this_machine_is_answered_as_sysfs_says() {
        let Ok(disks) = std::fs::read_dir("/sys/block") else {
            eprintln!("no /sys/block here: nothing to compare with");
            return;
        };
        let mut checked = 0;
        for disk in disks.flatten() {
            let name = disk.file_name().into_string().unwrap();
            let expected = std::fs::read_to_string(disk.path().join("removable")).unwrap();
            let expected = expected.trim() == "1";
            let mut devices = vec![disk.path()];
            // Its partitions: subdirectories named after it with a `dev` attribute.
            for entry in std::fs::read_dir(disk.path()).unwrap().flatten() {
                let part = entry.file_name().into_string().unwrap();
                if part.starts_with(&name) && entry.path().join("partition").exists() {
                    devices.push(entry.path());
                }
            }
            for dev in devices {
                let numbers = std::fs::read_to_string(dev.join("dev")).unwrap();
                let (major, minor) = numbers.trim().split_once(':').unwrap();
                let (removable, whole) = removable_in(
                    Path::new("/sys"),
                    major.parse().unwrap(),
                    minor.parse().unwrap(),
                )
                .unwrap();
                assert_eq!(removable, expected, "{}", dev.display());
                assert_eq!(whole, std::fs::canonicalize(disk.path()).unwrap());
                checked += 1;
            }
        }
        assert!(checked > 0, "/sys/block lists no device");
    }

    #[test]
    fn what_is_not_a_block_device_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::write(&file, b"x").unwrap();
        for (path, says) in [
            (file.as_path(), "not a block device"),
            (dir.path(), "not a block device"),
            (Path::new("/nonexistent/sdz"), "cannot use it"),
        ] {
            let e = check_removable(path).unwrap_err().to_string();
            assert!(
                e.starts_with(&path.display().to_string()) && e.contains(says),
                "{e}"
            );
        }
    }
}
