//! `blockmap copy`: the sparse copy of SRC's window into DST by the `sparsecopy` engine, with
//! its progress on stderr ([`crate::progress`]) and one summary line (or a JSON report) at
//! the end.

use anyhow::{Context, Result, anyhow};
use sparsecopy::{Copier, Options, Progress, Window};

use crate::cli::CopyArgs;
use crate::progress::Display;

/// `quiet` (`-q`): no summary line, and no progress bar unless `--progress`.
pub(crate) fn run(args: &CopyArgs, quiet: bool) -> Result<()> {
    let mut window = Window::new().skip(args.skip).seek(args.seek);
    if let Some(length) = args.length {
        window = window.length(length);
    }
    let options = Options::new()
        .backend(args.backend)
        .reflink(args.reflink.into())
        .method(args.method.into())
        .detect_zeros(args.detect_zeros)
        .zero_holes(args.zero_holes)
        .sync(args.sync);

    let mut display = Display::new(args.progress, args.no_progress, quiet);
    let mut on_progress = |p: Progress| display.update(p);
    // SIGINT, SIGTERM, SIGHUP stop the copy within a step; `main` exits 128 + signal.
    let stop = crate::signals::install().context("installing signal handlers")?;
    let result = Copier::new(window, options)
        .progress(&mut on_progress)
        .interrupt(stop)
        .copy_paths(&args.src, &args.dst);
    display.finish();
    let report = result.map_err(|e| match (e, crate::signals::caught()) {
        (sparsecopy::Error::Interrupted { dst }, Some(signal)) => {
            anyhow!("interrupted by {}: {dst}", crate::signals::name(signal))
        }
        (e, _) => e.into(),
    })?;

    if args.json {
        crate::json::print_report(crate::json::COPY_VERSION, &report)?;
    } else if !quiet {
        // The one summary line: data copied, holes skipped, methods, time.
        // A closed stderr leaves nothing to report to; the copy itself succeeded.
        crate::say(format_args!("{report}"));
    }
    Ok(())
}
