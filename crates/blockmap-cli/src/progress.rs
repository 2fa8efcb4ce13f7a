//! A copy's progress on stderr, for `copy` and `bmap copy`: data bytes done against the data
//! total, holes counted apart as skipped ([`Progress`]).
//!
//! - stderr a terminal (and not `--no-progress`): an indicatif bar, drawn only once there is
//!   something to show (the data total, or data done), so no `0 B/0 B` flashes by; while the
//!   total is unknown, a spinner with the bytes done;
//! - `--progress` and stderr not a terminal (a CI log): a plain line as soon as there is
//!   something to show (so that even a short copy's log says what it is doing), then one every
//!   few seconds, no carriage returns or escape codes; the summary line is the last word;
//! - otherwise nothing.
//!
//! `BLOCKMAP_PROGRESS_INTERVAL_MS` sets the interval of the plain lines: for tests only, which
//! cannot wait 5 s for one.

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sparsecopy::{Progress, human_size};

/// How often a plain progress line is written.
const INTERVAL: Duration = Duration::from_secs(5);

/// Where the progress goes.
pub(crate) enum Display {
    Off,
    /// The bar, hidden until [`Display::update`] has something to show.
    Bar {
        bar: ProgressBar,
        shown: bool,
        known: bool,
    },
    /// Plain lines: the last one's time (`None` before the first) and data done.
    Lines {
        every: Duration,
        last: Option<Instant>,
        last_done: u64,
    },
}

impl Display {
    /// The display the flags and stderr ask for (`--no-progress` wins; `-q` hides the progress
    /// unless `--progress` asks for it).
    pub(crate) fn new(progress: bool, no_progress: bool, quiet: bool) -> Display {
        if no_progress || (quiet && !progress) {
            Display::Off
        } else if io::stderr().is_terminal() {
            // Hidden until there is something to show.
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
            Display::Bar {
                bar,
                shown: false,
                known: false,
            }
        } else if progress {
            let every = std::env::var("BLOCKMAP_PROGRESS_INTERVAL_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map_or(INTERVAL, Duration::from_millis);
            Display::Lines {
                every,
                last: None,
                last_done: 0,
            }
        } else {
            Display::Off
        }
    }

    /// Shows `p`.
    pub(crate) fn update(&mut self, p: Progress) {
        match self {
            Display::Off => {}
            Display::Bar { bar, shown, known } => {
                if !*shown && !something_to_show(p) {
                    return;
                }
                if !*shown || *known != p.data_total.is_some() {
                    *known = p.data_total.is_some();
                    bar.set_style(style(*known));
                }
                if p.skipped > 0 {
                    bar.set_message(format!("{} holes skipped", human_size(p.skipped)));
                }
                bar.set_length(p.data_total.unwrap_or(0));
                bar.set_position(p.data_done);
                if !*shown {
                    // Drawn only now, with its length and position set: the ticker's first
                    // draw would otherwise show the hidden bar's `0 B/0 B`.
                    *shown = true;
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                    bar.enable_steady_tick(Duration::from_millis(200));
                }
            }
            Display::Lines {
                every,
                last,
                last_done,
            } => {
                let now = Instant::now();
                let rate = match *last {
                    None if !something_to_show(p) => return,
                    // The first line: no rate yet.
                    None => None,
                    Some(at) if now.duration_since(at) < *every => return,
                    Some(at) => {
                        let elapsed = now.duration_since(at).as_secs_f64();
                        Some(p.data_done.saturating_sub(*last_done) as f64 / elapsed)
                    }
                };
                crate::say(format_args!("{}", line(p, rate)));
                (*last, *last_done) = (Some(now), p.data_done);
            }
        }
    }

    /// Takes the bar away, before the summary or the error line, which must stand alone.
    pub(crate) fn finish(&self) {
        if let Display::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// The bar's look: a bar of data bytes when the total is `known`, else a spinner and the
/// bytes done; the holes skipped as its message. Within 80 columns; no colours (`NO_COLOR`
/// has nothing to turn off here).
fn style(known: bool) -> ProgressStyle {
    let template = if known {
        "{spinner} [{wide_bar}] {bytes}/{total_bytes} data ({bytes_per_sec}, {eta}) {msg}"
    } else {
        "{spinner} {bytes} data ({bytes_per_sec}, {elapsed}) {msg}"
    };
    ProgressStyle::with_template(template)
        .expect("the template is valid")
        .progress_chars("=> ")
}

/// Whether `p` says anything: data done, or a data total that is not zero.
fn something_to_show(p: Progress) -> bool {
    p.data_done > 0 || p.data_total.is_some_and(|t| t > 0)
}

/// A plain progress line: `copied 1.2 GiB of 3.4 GiB data (35%), 12.0 GiB holes skipped,
/// 210.0 MiB/s` (`rate` in data bytes a second since the line before; none on the first).
fn line(p: Progress, rate: Option<f64>) -> String {
    let mut line = format!("copied {}", human_size(p.data_done));
    match p.data_total {
        Some(total) if total > 0 => {
            // Rounded down: 100% only once every byte is done.
            let percent = u128::from(p.data_done) * 100 / u128::from(total);
            line += &format!(" of {} data ({percent}%)", human_size(total));
        }
        _ => line += " of data",
    }
    if p.skipped > 0 {
        line += &format!(", {} holes skipped", human_size(p.skipped));
    }
    if let Some(rate) = rate {
        line += &format!(", {}/s", human_size(rate as u64));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_say_data_total_and_holes() {
        let p = Progress {
            data_done: 3 << 29,
            data_total: Some(6 << 29),
            skipped: 12 << 30,
        };
        assert_eq!(
            line(p, Some((210 << 20) as f64)),
            "copied 1.5 GiB of 3.0 GiB data (50%), 12.0 GiB holes skipped, 210.0 MiB/s"
        );
        let p = Progress {
            data_total: None,
            skipped: 0,
            ..p
        };
        assert_eq!(line(p, Some(1024.0)), "copied 1.5 GiB of data, 1.0 KiB/s");
        assert_eq!(line(p, None), "copied 1.5 GiB of data");
        let p = Progress {
            data_done: 999,
            data_total: Some(1000),
            skipped: 0,
        };
        assert_eq!(
            line(p, Some(0.0)),
            "copied 999 B of 1000 B data (99%), 0 B/s"
        );
    }
}
