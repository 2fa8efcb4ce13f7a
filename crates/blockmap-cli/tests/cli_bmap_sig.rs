//! `blockmap bmap copy` and GPG-signed bmap files, as bmaptool treats them: a detached
//! signature beside the bmap (`.asc`, `.sig`) or given (`--bmap-sig`), a clearsigned bmap; a
//! bad signature, an unknown key, a missing signature file or no GnuPG stop the copy before
//! DEST is touched; `--no-sig-verify` skips the check. Keys are made here with GnuPG in a
//! throw-away `GNUPGHOME` (needs `gpg`: the gnupg package, which `.ci/run` installs).

use crate::common::{BLOCKMAP, s};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A GnuPG home with one signing key, its agent killed when dropped.
struct Keyring {
    home: tempfile::TempDir,
    fingerprint: String,
}

impl Keyring {
    /// `None` (skipped, with a reason) when gpg is missing outside CI; in CI it must be there.
    fn new() -> Option<Keyring> {
        if Command::new("gpg").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "gpg is missing in CI: .ci/run installs gnupg"
            );
            eprintln!("SKIPPED: gpg is not installed (apt-get install gnupg)");
            return None;
        }
        let home = tempfile::tempdir().unwrap();
        let mut ring = Keyring {
            home,
            fingerprint: String::new(),
        };
        let out = ring.gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            "Test Signer <signer@example.com>",
            "ed25519",
            "sign",
            "never",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The fingerprint as GnuPG lists it: the `fpr` record's tenth field.
        let out = ring.gpg(&["--with-colons", "--list-keys"]);
        let listing = String::from_utf8(out.stdout).unwrap();
        ring.fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').nth(8))
            .unwrap()
            .to_owned();
        Some(ring)
    }

    fn gpg(&self, args: &[&str]) -> Output {
        Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--yes", "--no-tty"])
            .args(args)
            .output()
            .unwrap()
    }

    fn sign(&self, args: &[&str]) {
        let out = self.gpg(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .output();
    }
}

/// `blockmap bmap copy ARGS…` with the keyring at `home`.
fn copy(home: &Path, args: &[&str]) -> Output {
    Command::new(BLOCKMAP)
        .env("GNUPGHOME", home)
        .args(["bmap", "copy"])
        .args(args)
        .output()
        .unwrap()
}

/// `copy` with the file `input` as stdin (a pipe's worth: a bmap given as `/dev/stdin` is a
/// stream, spooled once).
fn copy_stdin(home: &Path, args: &[&str], input: &Path) -> Output {
    Command::new(BLOCKMAP)
        .env("GNUPGHOME", home)
        .args(["bmap", "copy"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let bytes = std::fs::read(input)?;
            // The child may refuse before reading it all.
            let _ = child.stdin.take().expect("piped").write_all(&bytes);
            child.wait_with_output()
        })
        .unwrap()
}

/// The copy worked, equals the image, and the summary names the signer as `signer` says.
fn assert_copied(out: &Output, image: &Path, dest: &Path, signer: Option<&str>) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read(image).unwrap(), std::fs::read(dest).unwrap());
    match signer {
        Some(fpr) => assert!(
            stderr.contains(&format!(
                "signed by Test Signer <signer@example.com> ({fpr})"
            )),
            "{stderr}"
        ),
        None => assert!(!stderr.contains("signed by"), "{stderr}"),
    }
    std::fs::remove_file(dest).unwrap();
}

/// One line, status 1, naming `path` and `why`; DEST not created.
fn assert_refused(out: &Output, path: &Path, why: &str, dest: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.starts_with(&format!("blockmap: {}: ", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains(why), "{why:?} missing from {stderr}");
    assert!(
        !dest.exists(),
        "DEST was created before the signature was checked"
    );
}

/// An 8 MiB image with two data ranges, and its bmap beside it.
fn image(dir: &Path) -> (PathBuf, PathBuf) {
    let path = dir.join("disk.img");
    let f = File::create(&path).unwrap();
    f.write_all_at(&[0x5a; 9000], 4096).unwrap();
    f.write_all_at(b"the end", (8 << 20) - 7).unwrap();
    f.sync_all().unwrap();
    let bmap = blockmap_bmap::create(&path, &blockmap_bmap::CreateOptions::default()).unwrap();
    let bmap_path = dir.join("disk.img.bmap");
    std::fs::write(&bmap_path, bmap.to_xml()).unwrap();
    (path, bmap_path)
}

#[test]
fn signed_bmaps() {
    let Some(ring) = Keyring::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (img, bmap) = image(dir.path());
    let dest = dir.path().join("dest.img");
    let home = ring.home.path();
    let fpr = Some(ring.fingerprint.as_str());
    let asc = dir.path().join("disk.img.bmap.asc");
    let sig = dir.path().join("disk.img.bmap.sig");

    // Unsigned: copied, no signer; no GnuPG needed.
    let out = Command::new(BLOCKMAP)
        .env("BLOCKMAP_GPG", "/nonexistent/gpg")
        .args(["bmap", "copy", s(&img), s(&dest)])
        .output()
        .unwrap();
    assert_copied(&out, &img, &dest, None);

    // Detached, armored, found beside the bmap.
    ring.sign(&["--armor", "--detach-sign", "-o", s(&asc), s(&bmap)]);
    assert_copied(&copy(home, &[s(&img), s(&dest)]), &img, &dest, fpr);
    // No GnuPG to check it with: refused.
    let out = Command::new(BLOCKMAP)
        .env("BLOCKMAP_GPG", "/nonexistent/gpg")
        .args(["bmap", "copy", s(&img), s(&dest)])
        .output()
        .unwrap();
    assert_refused(&out, &asc, "cannot run /nonexistent/gpg", &dest);
    // A keyring without the key: refused, unless the check is skipped.
    let stranger = tempfile::tempdir().unwrap();
    let out = copy(stranger.path(), &[s(&img), s(&dest)]);
    assert_refused(&out, &asc, "NO_PUBKEY", &dest);
    let out = copy(stranger.path(), &["--no-sig-verify", s(&img), s(&dest)]);
    assert_copied(&out, &img, &dest, None);

    // The bmap replaced by another (valid in itself, of the same image without checksums):
    // the signature no longer matches.
    let signed = std::fs::read(&bmap).unwrap();
    let mut other = blockmap_bmap::Bmap::read(&bmap).unwrap();
    other.ranges.iter_mut().for_each(|r| r.checksum = None);
    std::fs::write(&bmap, other.to_xml()).unwrap();
    let out = copy(home, &[s(&img), s(&dest)]);
    assert_refused(&out, &asc, "bad signature", &dest);
    std::fs::write(&bmap, &signed).unwrap();

    // Binary detached `.sig` beside it (`.asc` gone), and one given elsewhere by --bmap-sig.
    std::fs::remove_file(&asc).unwrap();
    ring.sign(&["--detach-sign", "-o", s(&sig), s(&bmap)]);
    assert_copied(&copy(home, &[s(&img), s(&dest)]), &img, &dest, fpr);
    let elsewhere = dir.path().join("elsewhere.sig");
    std::fs::rename(&sig, &elsewhere).unwrap();
    let out = copy(home, &["--bmap-sig", s(&elsewhere), s(&img), s(&dest)]);
    assert_copied(&out, &img, &dest, fpr);
    let missing = dir.path().join("missing.sig");
    let out = copy(home, &["--bmap-sig", s(&missing), s(&img), s(&dest)]);
    assert_refused(&out, &missing, "No such file", &dest);
    // A signature file with no signature in it.
    std::fs::write(&elsewhere, "not a signature\n").unwrap();
    let out = copy(home, &["--bmap-sig", s(&elsewhere), s(&img), s(&dest)]);
    assert_refused(&out, &elsewhere, "signature not verified", &dest);
    let out = copy(
        home,
        &[
            "--bmap-sig",
            s(&elsewhere),
            "--no-sig-verify",
            s(&img),
            s(&dest),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "usage error expected");

    // Clearsigned bmap: verified and unwrapped; tampered: refused; a detached one as well:
    // refused.
    let clear = dir.path().join("clear.bmap");
    ring.sign(&["--clearsign", "-o", s(&clear), s(&bmap)]);
    let out = copy(home, &["--bmap", s(&clear), s(&img), s(&dest)]);
    assert_copied(&out, &img, &dest, fpr);
    let out = copy(
        stranger.path(),
        &["--bmap", s(&clear), "--no-sig-verify", s(&img), s(&dest)],
    );
    assert_copied(&out, &img, &dest, None);
    let out = copy(
        home,
        &[
            "--bmap",
            s(&clear),
            "--bmap-sig",
            s(&elsewhere),
            s(&img),
            s(&dest),
        ],
    );
    assert_refused(&out, &elsewhere, "clearsigned", &dest);
    // Through a pipe (spooled, then given to gpg on its stdin): clearsigned, and with a
    // detached signature; the wrong detached one refused.
    let out = copy_stdin(home, &["--bmap", "/dev/stdin", s(&img), s(&dest)], &clear);
    assert_copied(&out, &img, &dest, fpr);
    ring.sign(&["--detach-sign", "-o", s(&sig), s(&bmap)]);
    let args = [
        "--bmap",
        "/dev/stdin",
        "--bmap-sig",
        s(&sig),
        s(&img),
        s(&dest),
    ];
    assert_copied(&copy_stdin(home, &args, &bmap), &img, &dest, fpr);
    let out = copy_stdin(home, &args, &clear);
    assert_refused(&out, &sig, "clearsigned", &dest);
    std::fs::write(dir.path().join("other.bmap"), other.to_xml()).unwrap();
    let out = copy_stdin(home, &args, &dir.path().join("other.bmap"));
    assert_refused(&out, &sig, "bad signature", &dest);

    let text = std::fs::read_to_string(&clear).unwrap();
    let tampered = text.replacen("<BlockSize>", "<BlockSize> ", 1);
    assert_ne!(text, tampered);
    std::fs::write(&clear, tampered).unwrap();
    let out = copy(home, &["--bmap", s(&clear), s(&img), s(&dest)]);
    assert_refused(&out, &clear, "bad signature", &dest);
}
