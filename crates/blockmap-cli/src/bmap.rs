//! `blockmap bmap create` and `blockmap bmap copy`: bmaptool-compatible bmap files made from
//! our block map, and images copied by them with verification (the `bmap` crate), with the
//! same progress bar and one summary line as `blockmap copy`.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bmap::{Copier, CreateOptions, SignatureCheck, human_size};

use crate::cli::{BmapCommand, BmapCopyArgs, BmapCreateArgs};
use crate::copy::progress_bar;

pub(crate) fn run(command: &BmapCommand) -> Result<()> {
    match command {
        BmapCommand::Create(args) => create(args),
        BmapCommand::Copy(args) => copy(args),
    }
}

fn create(args: &BmapCreateArgs) -> Result<()> {
    let started = Instant::now();
    let options = CreateOptions {
        checksums: !args.no_checksum,
        backend: args.backend,
        ..CreateOptions::default()
    };
    let bmap = bmap::create(&args.image, &options)?;
    let xml = bmap.to_xml();
    match &args.output {
        Some(path) => std::fs::write(path, &xml)
            .with_context(|| format!("{}: cannot write the bmap file", path.display()))?,
        None => {
            let mut out = io::stdout().lock();
            out.write_all(&xml)
                .and_then(|()| out.flush())
                .context("writing the bmap to stdout")?;
        }
    }
    let percent = if bmap.blocks_count == 0 {
        0.0
    } else {
        bmap.mapped_blocks_count as f64 * 100.0 / bmap.blocks_count as f64
    };
    crate::say(format_args!(
        "bmap of {}: {} of {} blocks of {} mapped ({} of {}, {percent:.1}%) in {} ranges{} in {:.2} s",
        args.image.display(),
        bmap.mapped_blocks_count,
        bmap.blocks_count,
        bmap.block_size,
        human_size(bmap.mapped_bytes()),
        human_size(bmap.image_size),
        bmap.ranges.len(),
        if args.no_checksum {
            String::new()
        } else {
            format!(", {} checksums", options.checksum_type)
        },
        started.elapsed().as_secs_f64(),
    ));
    Ok(())
}

fn copy(args: &BmapCopyArgs) -> Result<()> {
    let (bmap, bmap_path, signer) = if args.nobmap {
        if bmap::Compression::of(&args.image)? != bmap::Compression::None {
            bail!(
                "{}: --nobmap needs an uncompressed image (its block map stands for the bmap)",
                args.image.display()
            );
        }
        let options = CreateOptions {
            checksums: false,
            ..CreateOptions::default()
        };
        (
            bmap::create(&args.image, &options)?,
            PathBuf::from("-"),
            None,
        )
    } else {
        let path = match &args.bmap {
            Some(p) => p.clone(),
            None => bmap::find_bmap(&args.image)?,
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
        let (bmap, signer) = match bmap::read_signed(&path, args.bmap_sig.as_deref(), check) {
            Err(e @ bmap::Error::Signature { .. }) => {
                bail!("{e}; --no-sig-verify skips the check")
            }
            other => other?,
        };
        (bmap, path, signer)
    };

    let show_progress = !args.no_progress && (args.progress || io::stderr().is_terminal());
    let bar = show_progress.then(progress_bar);
    let mut on_progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let result = Copier::new(bmap)
        .bmap_path(&bmap_path)
        .verify(!args.no_verify)
        .sync(!args.no_sync)
        .progress(&mut on_progress)
        .copy(&args.image, &args.dest);
    if let Some(bar) = &bar {
        // Gone before the summary or the error line, which must stand alone.
        bar.finish_and_clear();
    }
    let report = result?;
    let source = match (&signer, args.nobmap) {
        (_, true) => "no bmap: the image's own block map".to_owned(),
        (None, false) => format!("bmap {}", bmap_path.display()),
        (Some(signer), false) => format!(
            "bmap {}, signed by {} ({})",
            bmap_path.display(),
            signer.user_id,
            signer.fingerprint
        ),
    };
    crate::say(format_args!("{report} ({source})"));
    Ok(())
}
