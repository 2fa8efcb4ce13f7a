//! `blockmap`: where a file's data lives and where its holes are, and sparse copies that move
//! only data.
//!
//! This binary is a thin shell: argument parsing ([`cli`]), one module per command, and the
//! error policy of README.md's "Use" — every failure is one line on stderr naming the path and the
//! cause, exit status 2 for usage errors and 1 for the rest, never a panic.

// A command-line tool writes to its terminal; the libraries below it never do.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bmap;
mod cli;
mod copy;
mod generate;
mod json;
mod map;
mod progress;
mod signals;
mod size;

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    init_tracing(cli.verbose);
    let result = match (cli.generate, cli.command) {
        (Some(what), None) => generate::run(what),
        (None, Some(Command::Map(args))) => map::run(&args),
        (None, Some(Command::Copy(args))) => copy::run(&args, cli.quiet),
        (None, Some(Command::Bmap(command))) => bmap::run(&command, cli.quiet),
        (generate, _) => {
            let message = match generate {
                Some(_) => "--generate takes no command",
                None => "a command is required: map, copy or bmap",
            };
            return usage_error(
                &Cli::command().error(clap::error::ErrorKind::MissingSubcommand, message),
            );
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`blockmap map big.img | head`): nothing more to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Our error messages already carry their causes; print the top one only.
            say(format_args!("{e}"));
            match signals::caught() {
                // Stopped by a signal: the status a shell expects of a process it killed.
                Some(signal) => ExitCode::from(128 + signal as u8),
                None => ExitCode::from(1),
            }
        }
    }
}

/// One line on stderr, `blockmap: ` first, in one write (stderr is unbuffered: a formatted
/// line would otherwise be a write per piece, and could interleave with another process's).
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    // A URL's password is never shown (`https://user:***@host/…`).
    let line = ::blockmap_bmap::redact(&format!("blockmap: {line}\n")).into_owned();
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

/// Help and version go to stdout with status 0; a usage error becomes one line and status 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect();
    say(format_args!(
        "{} (see 'blockmap --help')",
        message.join(" ")
    ));
    ExitCode::from(2)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// `-v` shows the libraries' debug events, `-vv` their trace events; `RUST_LOG` overrides.
/// Without either nothing is installed: the libraries log at debug and trace only, so the
/// default filter (`warn`) would show nothing, and building it is a tenth of a millisecond
/// of a command that may take one.
fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    if verbose == 0 && std::env::var_os(EnvFilter::DEFAULT_ENV).is_none_or(|v| v.is_empty()) {
        return;
    }
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        // Colours only on a terminal, and not when NO_COLOR is set (https://no-color.org).
        .with_ansi(
            io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_target(true)
        .without_time()
        .init();
}
