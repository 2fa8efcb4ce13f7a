//! `blockmap copy`: the sparse copy of SRC's window into DST by the `sparsecopy` engine, with
//! a progress bar on stderr and one summary line (or a JSON report) at the end.

use std::io::{self, IsTerminal};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sparsecopy::{Copier, Options, Progress, Window};

use crate::cli::CopyArgs;

pub(crate) fn run(args: &CopyArgs) -> Result<()> {
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

    let show_progress = !args.no_progress && (args.progress || io::stderr().is_terminal());
    let bar = show_progress.then(progress_bar);
    let mut on_progress = |p: Progress| {
        if let Some(bar) = &bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
        }
    };
    // SIGINT, SIGTERM, SIGHUP stop the copy within a step; `main` exits 128 + signal.
    let stop = crate::signals::install().context("installing signal handlers")?;
    let result = Copier::new(window, options)
        .progress(&mut on_progress)
        .interrupt(stop)
        .copy_paths(&args.src, &args.dst);
    if let Some(bar) = &bar {
        // Gone before the summary or the error line, which must stand alone.
        bar.finish_and_clear();
    }
    let report = result.map_err(|e| match (e, crate::signals::caught()) {
        (sparsecopy::Error::Interrupted { dst }, Some(signal)) => {
            anyhow!("interrupted by {}: {dst}", crate::signals::name(signal))
        }
        (e, _) => e.into(),
    })?;

    if args.json {
        crate::json::print_report(crate::json::COPY_VERSION, &report)?;
    } else {
        // The one summary line: data copied, holes skipped, methods, time.
        // A closed stderr leaves nothing to report to; the copy itself succeeded.
        crate::say(format_args!("{report}"));
    }
    Ok(())
}

pub(crate) fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
