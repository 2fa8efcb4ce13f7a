//! bmaptool 3.9's `copy` options through the CLI: `--keyring` and `--fingerprint` with real
//! GnuPG keys made here (a primary key, a signing subkey, a stranger's key), `--psplash-pipe`
//! with a real FIFO and a reader thread, and `--removable-device` refusing what is not a block
//! device (a loop device is refused under `cargo xtask fs-test`, in `fs_verify.rs`).

use crate::common::{BLOCKMAP, s};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A GnuPG home with one key, its agent killed when dropped.
struct Home {
    dir: tempfile::TempDir,
    /// The primary key's fingerprint.
    primary: String,
}

impl Home {
    /// `None` (skipped) when gpg is missing outside CI; in CI it must be there.
    fn new(user: &str) -> Option<Home> {
        if Command::new("gpg").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "gpg is missing in CI: .ci/run installs gnupg"
            );
            eprintln!("SKIPPED: gpg is not installed (apt-get install gnupg)");
            return None;
        }
        let mut home = Home {
            dir: tempfile::tempdir().unwrap(),
            primary: String::new(),
        };
        home.ok(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            user,
            "ed25519",
            "sign",
            "never",
        ]);
        home.primary = home.fingerprints()[0].clone();
        Some(home)
    }

    fn gpg(&self, args: &[&str]) -> Output {
        Command::new("gpg")
            .env("GNUPGHOME", self.dir.path())
            .args(["--batch", "--yes", "--no-tty"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.gpg(args);
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The fingerprints GnuPG lists (`fpr` records, tenth field): the primary key's first,
    /// then the subkeys'.
    fn fingerprints(&self) -> Vec<String> {
        let out = self.ok(&["--with-colons", "--list-keys"]);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.split(':').nth(8).unwrap().to_owned())
            .collect()
    }

    /// The public keys, exported in binary: a keyring file.
    fn export(&self, to: &Path) {
        self.ok(&["--export", "-o", s(to)]);
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.dir.path())
            .args(["--kill", "all"])
            .output();
    }
}

/// An 8 MiB image of noise with a hole in the middle, its bmap beside it, and its gzip.
fn image(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = dir.join("disk.img");
    let f = File::create(&path).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..(3 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    f.write_all_at(&noise, 0).unwrap();
    f.write_all_at(&noise, 5 << 20).unwrap();
    f.sync_all().unwrap();
    let bmap = blockmap_bmap::create(&path, &blockmap_bmap::CreateOptions::default()).unwrap();
    let bmap_path = dir.join("disk.img.bmap");
    std::fs::write(&bmap_path, bmap.to_xml()).unwrap();
    let gz = dir.join("disk.img.gz");
    let mut e =
        flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
    e.write_all(&std::fs::read(&path).unwrap()).unwrap();
    e.finish().unwrap();
    (path, bmap_path, gz)
}

/// `blockmap bmap copy --no-progress ARGS…` with GnuPG's home at `home`.
fn copy(home: &Path, args: &[&str]) -> Output {
    Command::new(BLOCKMAP)
        .env("GNUPGHOME", home)
        .env_remove("RUST_LOG")
        .args(["bmap", "copy", "--no-progress"])
        .args(args)
        .output()
        .unwrap()
}

fn copied(out: &Output, image: &Path, dest: &Path) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read(image).unwrap(), std::fs::read(dest).unwrap());
    std::fs::remove_file(dest).unwrap();
    stderr
}

/// One line, status 1, starting with `path` and saying `why`; DEST not created.
fn refused(out: &Output, path: &Path, why: &str, dest: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.starts_with(&format!("blockmap: {}: ", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains(why), "{why:?} missing from {stderr}");
    assert!(!dest.exists(), "DEST was created");
}

#[test]
fn keyring_and_fingerprint() {
    let Some(signer) = Home::new("Test Signer <signer@example.com>") else {
        return;
    };
    let Some(stranger) = Home::new("Stranger <stranger@example.com>") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (img, bmap, _) = image(dir.path());
    let dest = dir.path().join("dest.img");
    let empty = tempfile::tempdir().unwrap();
    let (signer_ring, stranger_ring) = (
        dir.path().join("signer.gpg"),
        dir.path().join("stranger.gpg"),
    );
    signer.export(&signer_ring);
    stranger.export(&stranger_ring);
    let asc = dir.path().join("disk.img.bmap.asc");

    // Unsigned: --fingerprint and --keyring ask for a signature.
    let out = copy(
        empty.path(),
        &["--fingerprint", &signer.primary, s(&img), s(&dest)],
    );
    refused(&out, &bmap, "not signed", &dest);
    let out = copy(
        empty.path(),
        &["--keyring", s(&signer_ring), s(&img), s(&dest)],
    );
    refused(&out, &bmap, "--keyring asks for a signature", &dest);

    signer.ok(&["--armor", "--detach-sign", "-o", s(&asc), s(&bmap)]);
    let by = format!(
        "signed by Test Signer <signer@example.com> ({})",
        signer.primary
    );
    // The keyring alone: an empty GNUPGHOME knows no key, the keyring does.
    let out = copy(empty.path(), &[s(&img), s(&dest)]);
    refused(&out, &asc, "NO_PUBKEY", &dest);
    let out = copy(
        empty.path(),
        &["--keyring", s(&signer_ring), s(&img), s(&dest)],
    );
    assert!(copied(&out, &img, &dest).contains(&by));
    // Only the keyring: the signer's own home holds the key, the stranger's keyring does not.
    let out = copy(
        signer.dir.path(),
        &["--keyring", s(&stranger_ring), s(&img), s(&dest)],
    );
    refused(&out, &asc, "NO_PUBKEY", &dest);
    let missing = dir.path().join("missing.gpg");
    let out = copy(
        signer.dir.path(),
        &["--keyring", s(&missing), s(&img), s(&dest)],
    );
    refused(&out, &missing, "No such file", &dest);
    // A relative keyring path is the caller's, not gpg's home's.
    let out = Command::new(BLOCKMAP)
        .current_dir(dir.path())
        .env("GNUPGHOME", empty.path())
        .args([
            "bmap",
            "copy",
            "--no-progress",
            "--keyring",
            "signer.gpg",
            s(&img),
            s(&dest),
        ])
        .output()
        .unwrap();
    assert!(copied(&out, &img, &dest).contains(&by));

    // The fingerprint: the signer's (any case, spaced as GnuPG prints it) is accepted, the
    // stranger's refused.
    let out = copy(
        signer.dir.path(),
        &["--fingerprint", &signer.primary, s(&img), s(&dest)],
    );
    assert!(copied(&out, &img, &dest).contains(&by));
    let spaced: String = signer
        .primary
        .to_lowercase()
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    let out = copy(
        signer.dir.path(),
        &["--fingerprint", &spaced, s(&img), s(&dest)],
    );
    copied(&out, &img, &dest);
    let out = copy(
        signer.dir.path(),
        &["--fingerprint", &stranger.primary, s(&img), s(&dest)],
    );
    refused(
        &out,
        &asc,
        &format!("not by the key {}", stranger.primary),
        &dest,
    );
    // Both options together.
    let args = [
        "--keyring",
        s(&signer_ring),
        "--fingerprint",
        &signer.primary,
        s(&img),
        s(&dest),
    ];
    copied(&copy(empty.path(), &args), &img, &dest);

    // A signing subkey: VALIDSIG names it, and its primary key; either is accepted.
    signer.ok(&[
        "--passphrase",
        "",
        "--quick-add-key",
        &signer.primary,
        "ed25519",
        "sign",
        "never",
    ]);
    let fprs = signer.fingerprints();
    assert_eq!(fprs.len(), 2, "{fprs:?}");
    let subkey = &fprs[1];
    signer.ok(&["--armor", "--detach-sign", "-o", s(&asc), s(&bmap)]);
    let out = copy(
        signer.dir.path(),
        &["--fingerprint", subkey, s(&img), s(&dest)],
    );
    let summary = copied(&out, &img, &dest);
    assert!(
        summary.contains(subkey.as_str()),
        "signed by the subkey: {summary}"
    );
    let out = copy(
        signer.dir.path(),
        &["--fingerprint", &signer.primary, s(&img), s(&dest)],
    );
    copied(&out, &img, &dest);
    let out = copy(
        signer.dir.path(),
        &["--fingerprint", &stranger.primary, s(&img), s(&dest)],
    );
    refused(&out, &asc, "not by the key", &dest);

    // With --no-sig-verify they make no sense: a usage error.
    let out = copy(
        empty.path(),
        &[
            "--no-sig-verify",
            "--fingerprint",
            subkey,
            s(&img),
            s(&dest),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}

/// The messages a reader of the FIFO at `fifo` got while `run` ran.
fn psplash_messages(fifo: &Path, run: impl FnOnce() -> Output) -> (Output, Vec<String>) {
    let status = Command::new("mkfifo").arg(fifo).status().unwrap();
    assert!(status.success(), "mkfifo");
    // Read and write: the open does not wait for a writer, and reading never sees an end
    // between two of the copy's opens; "END" stops it.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo)
        .unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(reader)
            .lines()
            .map(Result::unwrap)
            .take_while(|l| l != "END")
            .collect::<Vec<_>>()
    });
    let out = run();
    std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .unwrap()
        .write_all(b"END\n")
        .unwrap();
    let lines = lines.join().unwrap();
    std::fs::remove_file(fifo).unwrap();
    (out, lines)
}

/// `PROGRESS n` lines, n strictly increasing, ending at 100; returns how many.
fn check_progress(lines: &[String]) -> usize {
    let mut last = None;
    for line in lines {
        let n: u32 = line
            .strip_prefix("PROGRESS ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a psplash progress message: {line:?}"));
        assert!(n <= 100 && last.is_none_or(|l| n > l), "{lines:?}");
        last = Some(n);
    }
    assert_eq!(last, Some(100), "{lines:?}");
    lines.len()
}

#[test]
fn psplash_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bmap, gz) = image(dir.path());
    let dest = dir.path().join("dest.img");
    let fifo = dir.path().join("psplash_fifo");
    let home = dir.path();

    // A gzip image is written chunk by chunk (6 MiB in 256 KiB): many percentages.
    let (out, lines) = psplash_messages(&fifo, || {
        copy(
            home,
            &[
                "--psplash-pipe",
                s(&fifo),
                "--bmap",
                s(&bmap),
                s(&gz),
                s(&dest),
            ],
        )
    });
    copied(&out, &img, &dest);
    assert!(check_progress(&lines) >= 10, "{lines:?}");
    // A plain image: at least the end.
    let (out, lines) = psplash_messages(&fifo, || {
        copy(home, &["--psplash-pipe", s(&fifo), s(&img), s(&dest)])
    });
    copied(&out, &img, &dest);
    check_progress(&lines);

    // A FIFO without a reader: nothing waits, the copy is made.
    Command::new("mkfifo").arg(&fifo).status().unwrap();
    let out = copy(home, &["--psplash-pipe", s(&fifo), s(&img), s(&dest)]);
    copied(&out, &img, &dest);
    std::fs::remove_file(&fifo).unwrap();
    // Not a FIFO, or nothing there: a warning, and the copy is made.
    for path in [bmap.clone(), dir.path().join("nothing")] {
        let out = copy(home, &["--psplash-pipe", s(&path), s(&img), s(&dest)]);
        let stderr = copied(&out, &img, &dest);
        assert!(
            stderr.starts_with(&format!("blockmap: warning: {}: ", path.display()))
                && stderr.contains("no psplash progress"),
            "{stderr}"
        );
    }
}

#[test]
fn removable_device_refuses_what_is_not_a_block_device() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _, _) = image(dir.path());
    let home = dir.path();
    // A regular file, as bmaptool refuses it: left as it was.
    let file = dir.path().join("file.img");
    std::fs::write(&file, b"keep me").unwrap();
    let out = copy(home, &["--removable-device", s(&img), s(&file)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.starts_with(&format!("blockmap: {}: not a block device", file.display())),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // Nothing there: refused, not created.
    let absent = dir.path().join("sdz");
    let out = copy(home, &["--removable-device", s(&img), s(&absent)]);
    refused(
        &out,
        &absent,
        "needs an existing removable block device",
        &absent,
    );
    // Without the option the file is written.
    copied(&copy(home, &[s(&img), s(&file)]), &img, &file);
}
