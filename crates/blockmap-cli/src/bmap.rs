//! `blockmap bmap create` and `blockmap bmap copy`: bmaptool-compatible bmap files made from
//! our block map, and images copied by them with verification (the `blockmap-bmap` crate), with the
//! same progress bar and one summary line as `blockmap copy`.

use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use blockmap_bmap::{Copier, CreateOptions, Progress, SignatureCheck};
use sparsecopy::Destination;
use sparsecopy::human_size;

use crate::cli::{BmapCommand, BmapCopyArgs, BmapCreateArgs};
use crate::progress::Display;

/// `quiet` (`-q`): no summary line, and no progress bar unless `--progress`.
pub(crate) fn run(command: &BmapCommand, quiet: bool) -> Result<()> {
    match command {
        BmapCommand::Create(args) => create(args, quiet),
        BmapCommand::Copy(args) => copy(args, quiet),
    }
}

fn create(args: &BmapCreateArgs, quiet: bool) -> Result<()> {
    let started = Instant::now();
    let options = CreateOptions {
        checksums: !args.no_checksum,
        backend: args.backend,
        ..CreateOptions::default()
    };
    // The bmap is written as its ranges are hashed, into the file or, for stdout (which may
    // be a pipe, and the file checksum goes into the header last), into a temporary file
    // copied out at the end.
    let to_stream = |out: &mut dyn Write, name: &str| -> Result<blockmap_bmap::BmapInfo> {
        let spool = tempfile::tempfile().context("cannot make a temporary file")?;
        let info =
            blockmap_bmap::create_to(&args.image, &options, &spool, Path::new("<temporary file>"))?;
        io::copy(&mut &spool, out)
            .and_then(|_| out.flush())
            .with_context(|| format!("writing the bmap to {name}"))?;
        Ok(info)
    };
    let info = match &args.output {
        // `-o /dev/stdout` and other streams: as stdout.
        Some(path) if std::fs::metadata(path).is_ok_and(|m| is_stream(m.file_type())) => {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
            to_stream(&mut out, &path.display().to_string())?
        }
        Some(path) => {
            let image = std::fs::File::open(&args.image)
                .map_err(|e| anyhow!("{}: cannot open the image: {e}", args.image.display()))?;
            let out = Destination::open(path)?;
            let refused = if out.is_block_device() {
                Some(format!(
                    "{}: a block device; the bmap goes to a file",
                    path.display()
                ))
            } else {
                match out.is_same_file(&image, &args.image) {
                    Ok(false) => None,
                    Ok(true) => Some(format!(
                        "{} and {} are the same file: nothing written",
                        args.image.display(),
                        path.display()
                    )),
                    Err(e) => Some(e.to_string()),
                }
            };
            if let Some(refused) = refused {
                out.remove_if_created();
                bail!(refused);
            }
            match blockmap_bmap::create_to(&args.image, &options, out.file(), path) {
                // A failed close (NFS, FUSE) is a failed write; a file it created is removed.
                Ok(info) => out.close().map(|()| info)?,
                Err(e) => {
                    out.remove_if_created();
                    return Err(e.into());
                }
            }
        }
        None => to_stream(&mut io::stdout().lock(), "stdout")?,
    };
    if quiet {
        return Ok(());
    }
    let percent = if info.blocks_count == 0 {
        0.0
    } else {
        info.mapped_blocks_count as f64 * 100.0 / info.blocks_count as f64
    };
    crate::say(format_args!(
        "bmap of {}: {} of {} blocks of {} mapped ({} of {}, {percent:.1}%) in {} ranges{} in {:.2} s",
        args.image.display(),
        info.mapped_blocks_count,
        info.blocks_count,
        info.block_size,
        human_size(info.mapped_bytes),
        human_size(info.image_size),
        info.ranges,
        if args.no_checksum {
            String::new()
        } else {
            format!(", {} checksums", options.checksum_type)
        },
        started.elapsed().as_secs_f64(),
    ));
    Ok(())
}

/// A FIFO, character device or socket: written in order, never sized or rewritten.
fn is_stream(kind: std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    kind.is_fifo() || kind.is_char_device() || kind.is_socket()
}

fn copy(args: &BmapCopyArgs, quiet: bool) -> Result<()> {
    // From here on SIGINT, SIGTERM and SIGHUP stop the copy between two chunks.
    let stop = crate::signals::install().context("cannot install the signal handlers")?;
    if args.removable_device {
        blockmap_bmap::check_removable(&args.dest)?;
    }
    let mut copy_options = blockmap_bmap::CopyOptions::new()
        .verify(!args.no_verify)
        .sync(!args.no_sync);
    copy_options.checksum_retry = args.checksum_retry;
    let mut input = None;
    let (copier, source) = if args.nobmap {
        // A plain file is copied by its own block map; anything else (compressed, an
        // archive, a stream) all of it, as bmaptool does.
        let opened = blockmap_bmap::Input::open(&args.image)?;
        let plain = opened.is_plain_file() && args.image != Path::new("-");
        input = Some(opened);
        if plain {
            (
                Copier::from_image_map(
                    &args.image,
                    blockmap_core::BackendChoice::Auto,
                    copy_options,
                )?,
                "no bmap: the image's own block map".to_owned(),
            )
        } else {
            (
                Copier::whole_image(copy_options),
                "no bmap: all of the image written".to_owned(),
            )
        }
    } else {
        let (file, source) = signed_bmap(args)?;
        (Copier::from_file(file, copy_options), source)
    };

    let mut display = Display::new(args.progress, args.no_progress, quiet);
    let mut splash = psplash(args);
    let mut on_progress = |p: Progress| {
        if let (Some(s), Some(total)) = (splash.as_mut(), p.data_total) {
            s.progress(p.data_done, total);
        }
        display.update(p);
    };
    let copier = copier.interrupt(stop).progress(&mut on_progress);
    let result = match input {
        Some(input) => copier.copy_input(input, &args.dest),
        None => copier.copy(&args.image, &args.dest),
    };
    display.finish();
    let report = signal_named(result)?;
    if args.json {
        crate::json::print_report(crate::json::BMAP_COPY_VERSION, &report)?;
    } else if !quiet {
        crate::say(format_args!("{report} ({source})"));
    }
    Ok(())
}

/// The bmap file for `args` (`--bmap`, else found beside the image) read with its signature
/// checked as asked, and how the summary names it.
fn signed_bmap(args: &BmapCopyArgs) -> Result<(blockmap_bmap::BmapFile, String)> {
    let path = match &args.bmap {
        Some(p) => p.clone(),
        None if args.image == Path::new("-") => bail!(
            "-: standard input has no name to find its bmap beside: give --bmap FILE (or --nobmap to write all of it)"
        ),
        None => blockmap_bmap::find_bmap(&args.image)?,
    };
    if path == args.image {
        bail!(
            "{}: given as both the image and its bmap file; give the image",
            args.image.display()
        );
    }
    let check = if args.no_sig_verify {
        SignatureCheck::Skip
    } else {
        SignatureCheck::Verify
    };
    let options = blockmap_bmap::SignatureOptions {
        keyring: args.keyring.clone(),
        fingerprint: args.fingerprint.clone(),
    };
    let signed = blockmap_bmap::read_signed_with(&path, args.bmap_sig.as_deref(), check, &options);
    let (file, signer) = match signed {
        Err(e @ blockmap_bmap::Error::Signature { .. }) => {
            bail!("{e}; --no-sig-verify skips the check")
        }
        other => other?,
    };
    let source = match &signer {
        None => format!("bmap {}", path.display()),
        Some(signer) => format!(
            "bmap {}, signed by {} ({})",
            path.display(),
            signer.user_id,
            signer.fingerprint
        ),
    };
    Ok((file, source))
}

/// `--psplash-pipe`'s progress pipe. Best effort, as bmaptool: a path that is no FIFO is a
/// warning, the copy goes on.
fn psplash(args: &BmapCopyArgs) -> Option<blockmap_bmap::Psplash> {
    let path = args.psplash_pipe.as_ref()?;
    match blockmap_bmap::Psplash::new(path) {
        Ok(s) => Some(s),
        Err(e) => {
            crate::say(format_args!("warning: {e}: no psplash progress"));
            None
        }
    }
}

/// The copy's report, or its error as one line: an interruption names the signal caught
/// ("DEST: interrupted by SIGINT: …").
fn signal_named(
    result: blockmap_bmap::Result<blockmap_bmap::CopyReport>,
) -> Result<blockmap_bmap::CopyReport> {
    match (result, crate::signals::caught()) {
        (Ok(report), _) => Ok(report),
        (Err(e @ blockmap_bmap::Error::Interrupted { .. }), Some(signal)) => {
            let line = e.to_string().replacen(
                ": interrupted: ",
                &format!(": interrupted by {}: ", crate::signals::name(signal)),
                1,
            );
            bail!(line)
        }
        (Err(e), _) => Err(e.into()),
    }
}
