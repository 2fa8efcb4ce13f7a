//! GPG signatures of bmap files, checked as bmaptool checks them: a detached signature given
//! or found beside the bmap (`disk.img.bmap.asc`, then `disk.img.bmap.sig`), or a bmap file
//! clearsigned as a whole. GnuPG itself (`gpg`, as bmaptool's gpgme runs it) does the
//! cryptography, with the caller's keyring (`GNUPGHOME`); its machine-readable status lines
//! are what is read. `BLOCKMAP_GPG` names another `gpg` program.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tracing::debug;

use crate::error::{Error, Result};
use crate::file::{BmapFile, Data, Input};

/// How [`read_signed`] treats signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Verify the signature when there is one (a detached one given, found beside the bmap,
    /// or the bmap clearsigned), as `bmaptool copy` does.
    Verify,
    /// Do not verify (`--no-sig-verify`); a clearsigned bmap is still unwrapped.
    Skip,
}

/// A signature that [`read_signed`] verified.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Signer {
    /// The signature: the detached file, or the bmap file itself when clearsigned.
    pub signature: PathBuf,
    /// The signing key's fingerprint.
    pub fingerprint: String,
    /// The user id GnuPG names for the key.
    pub user_id: String,
    /// The fingerprint of the primary key, when a subkey signed (GnuPG's `VALIDSIG` says it).
    pub primary_fingerprint: Option<String>,
}

/// What [`read_signed_with`] demands of a signature beyond its being good: bmaptool 3.9's
/// `--keyring` and `--fingerprint`. Either one makes a signature required.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureOptions {
    /// Check against the keys of this keyring only (GnuPG's `--no-default-keyring
    /// --keyring FILE`, in a temporary home of its own), not the caller's `GNUPGHOME`.
    pub keyring: Option<PathBuf>,
    /// Accept only a signature by this key: the fingerprint of the signing key or of its
    /// primary key (hex, any case, spaces ignored).
    pub fingerprint: Option<String>,
}

/// [`read_signed`] with `options`: a bmap without a signature is refused when either option
/// is set, and a good signature by a key other than `options.fingerprint`'s is refused.
pub fn read_signed_with(
    path: impl AsRef<Path>,
    detached: Option<&Path>,
    check: SignatureCheck,
    options: &SignatureOptions,
) -> Result<(BmapFile, Option<Signer>)> {
    let path = path.as_ref();
    let keyring = match &options.keyring {
        // gpg takes a name without a slash as relative to its home directory.
        Some(k) => Some(std::path::absolute(k).map_err(|e| Error::io("find the keyring", k, e))?),
        None => None,
    };
    if let Some(k) = &keyring {
        std::fs::File::open(k).map_err(|e| Error::io("read the keyring", k, e))?;
    }
    let (bmap, signer) = read_signed_in(path, detached, check, keyring.as_deref())?;
    let wanted = options.fingerprint.as_deref();
    match (&signer, wanted) {
        (None, _) if check == SignatureCheck::Verify && (wanted.is_some() || keyring.is_some()) => {
            Err(Error::Signature {
                path: path.to_owned(),
                reason: format!(
                    "not signed (no detached .asc or .sig beside it, not clearsigned), but {} asks for a signature",
                    if wanted.is_some() {
                        "--fingerprint"
                    } else {
                        "--keyring"
                    }
                ),
            })
        }
        (Some(signer), Some(wanted)) if !fingerprint_matches(signer, wanted) => {
            Err(Error::Signature {
                path: signer.signature.clone(),
                reason: format!(
                    "signed by {} ({}), not by the key {wanted} that --fingerprint asks for",
                    signer.user_id, signer.fingerprint
                ),
            })
        }
        _ => Ok((bmap, signer)),
    }
}

/// Whether `wanted` is the signing key's or its primary key's fingerprint.
fn fingerprint_matches(signer: &Signer, wanted: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase()
    };
    let wanted = norm(wanted);
    !wanted.is_empty()
        && std::iter::once(&signer.fingerprint)
            .chain(signer.primary_fingerprint.as_ref())
            .any(|f| norm(f) == wanted)
}

/// Reads the bmap file at `path`, verifying its GPG signature as bmaptool does: the detached
/// signature `detached` if given (an error if it cannot be read), else `path.asc` or
/// `path.sig` if present, or the file's own clearsign signature. `Ok((bmap, None))` when the
/// file is not signed or `check` is [`SignatureCheck::Skip`].
///
/// A bad signature, a signature by a key not in the keyring (GnuPG's `NO_PUBKEY`), an expired
/// or revoked key, or a signature file without a signature is an [`Error::Signature`] naming
/// the signature file; so is a signed file when `gpg` cannot be run.
pub fn read_signed(
    path: impl AsRef<Path>,
    detached: Option<&Path>,
    check: SignatureCheck,
) -> Result<(BmapFile, Option<Signer>)> {
    read_signed_in(path.as_ref(), detached, check, None)
}

/// [`read_signed`], the keys from `keyring` alone if given.
fn read_signed_in(
    path: &Path,
    detached: Option<&Path>,
    check: SignatureCheck,
    keyring: Option<&Path>,
) -> Result<(BmapFile, Option<Signer>)> {
    let mut input = Input::open(path)?;
    if input.clearsigned {
        if let Some(sig) = detached {
            return Err(Error::Signature {
                path: sig.to_owned(),
                reason: format!(
                    "{} is clearsigned and holds its own signature: give no detached one",
                    path.display()
                ),
            });
        }
        input.spool_all(path)?;
        // gpg writes the signed text to a file of ours, not into our memory.
        let plain = tempfile::NamedTempFile::new()
            .map_err(|e| Error::io("make a temporary file for the bmap", path, e))?;
        let out = plain.path().to_owned();
        let (_, status) = gpg(
            path,
            &[
                "--yes".as_ref(),
                "--output".as_ref(),
                out.as_os_str(),
                "--decrypt".as_ref(),
            ],
            &[],
            input.data(path)?,
            keyring,
        )?;
        let signer = match check {
            SignatureCheck::Verify => Some(signer(path, &status)?),
            SignatureCheck::Skip => None,
        };
        let plain_input = Input::open(&out)?;
        let is_empty = std::fs::metadata(&out).map_or(true, |m| m.len() == 0);
        if is_empty {
            return Err(Error::Signature {
                path: path.to_owned(),
                reason: "gpg found no signed text in the clearsigned file".to_owned(),
            });
        }
        // Errors name the file the user gave, lines counted in its signed text.
        let file = plain_input.into_bmap_file(path)?;
        drop(plain);
        return Ok((file, signer));
    }
    let bmap = input.into_bmap_file(path)?;
    if check == SignatureCheck::Skip {
        return Ok((bmap, None));
    }
    let sig = match detached {
        Some(sig) => {
            // Named on the command line: it must be there (a URL: fetched below).
            if !crate::remote::is_url_path(sig) {
                std::fs::metadata(sig).map_err(|e| Error::io("read the bmap signature", sig, e))?;
            }
            sig.to_owned()
        }
        None => {
            let beside = |ext: &str| {
                let mut p = path.as_os_str().to_owned();
                p.push(ext);
                PathBuf::from(p)
            };
            let mut found = None;
            for candidate in [beside(".asc"), beside(".sig")] {
                if crate::remote::is_there(&candidate)? {
                    found = Some(candidate);
                    break;
                }
            }
            match found {
                Some(sig) => sig,
                None => return Ok((bmap, None)),
            }
        }
    };
    debug!(signature = %sig.display(), "verifying the bmap's detached signature");
    // A signature at a URL is downloaded for gpg; messages name the URL.
    let downloaded = crate::remote::signature_file(&sig)?;
    let local = downloaded.as_ref().map_or(sig.as_path(), |f| f.path());
    let (_, status) = gpg(
        &sig,
        &["--verify".as_ref()],
        &[local],
        bmap.data()?,
        keyring,
    )?;
    Ok((bmap, Some(signer(&sig, &status)?)))
}

/// Runs `gpg` in batch mode with `args`, then `files`, then the bmap's `data`; returns its
/// standard output and its status lines (`--status-fd`). Its exit code is not judged here: the
/// status lines say what it found.
fn gpg(
    sig: &Path,
    args: &[&OsStr],
    files: &[&Path],
    data: Data,
    keyring: Option<&Path>,
) -> Result<(Vec<u8>, String)> {
    let program = std::env::var_os("BLOCKMAP_GPG").unwrap_or_else(|| "gpg".into());
    // A keyring alone: an empty home of its own, so that no other key (GNUPGHOME's) counts,
    // as bmaptool 3.9 runs gpg.
    let home = match keyring {
        Some(_) => Some(
            tempfile::Builder::new()
                .prefix("blockmap-gnupg.")
                .tempdir()
                .map_err(|e| Error::io("make a temporary GnuPG home", sig, e))?,
        ),
        None => None,
    };
    let mut keyring_args: Vec<&OsStr> = Vec::new();
    if let (Some(home), Some(keyring)) = (&home, keyring) {
        keyring_args.extend([
            "--homedir".as_ref(),
            home.path().as_os_str(),
            "--no-default-keyring".as_ref(),
            "--keyring".as_ref(),
            keyring.as_os_str(),
        ]);
    }
    // The bmap's bytes last: by name, or `-` for a spooled stream given as stdin.
    let (data, stdin): (PathBuf, Stdio) = match data {
        Data::Path(p) => (p, Stdio::null()),
        Data::Stdin(file) => (PathBuf::from("-"), Stdio::from(file)),
    };
    let out = Command::new(&program)
        .args(["--batch", "--no-tty", "--status-fd", "2"])
        .args(&keyring_args)
        .args(args)
        .args(files)
        .arg(&data)
        .stdin(stdin)
        .output()
        .map_err(|e| Error::Signature {
            path: sig.to_owned(),
            reason: format!(
                "cannot run {} to verify it ({e}): is GnuPG installed?",
                program.to_string_lossy()
            ),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    debug!(status = ?out.status, "gpg");
    Ok((out.stdout, stderr))
}

/// The signer if GnuPG's status lines show one good, valid signature and nothing bad.
fn signer(sig: &Path, status: &str) -> Result<Signer> {
    let mut good = None;
    let mut fingerprint = None;
    let mut primary_fingerprint = None;
    let mut bad = None;
    for line in status.lines() {
        let Some(line) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
        match keyword {
            "GOODSIG" => good = Some(rest.split_once(' ').map_or("", |(_, uid)| uid).to_owned()),
            "VALIDSIG" => {
                let fields: Vec<&str> = rest.split(' ').collect();
                fingerprint = fields.first().map(|f| (*f).to_owned());
                primary_fingerprint = fields.get(9).map(|f| (*f).to_owned());
            }
            "BADSIG" => bad = Some("bad signature: the bmap file is not what was signed"),
            "EXPSIG" => bad = Some("the signature has expired"),
            "EXPKEYSIG" => bad = Some("the signing key has expired"),
            "REVKEYSIG" => bad = Some("the signing key has been revoked"),
            "NO_PUBKEY" => bad = Some("the signing key is not in the keyring (NO_PUBKEY)"),
            "ERRSIG" if bad.is_none() => bad = Some("the signature cannot be checked (ERRSIG)"),
            "NODATA" if bad.is_none() => bad = Some("no signature found in it (NODATA)"),
            _ => {}
        }
    }
    let reason = match (bad, good, fingerprint) {
        (None, Some(user_id), Some(fingerprint)) => {
            return Ok(Signer {
                signature: sig.to_owned(),
                fingerprint,
                user_id,
                primary_fingerprint,
            });
        }
        (Some(bad), _, _) => bad.to_owned(),
        _ => {
            let said = status
                .lines()
                .filter(|l| !l.starts_with("[GNUPG:]"))
                .collect::<Vec<_>>()
                .join("; ");
            format!("gpg found no good signature: {said}")
        }
    };
    Err(Error::Signature {
        path: sig.to_owned(),
        reason,
    })
}
