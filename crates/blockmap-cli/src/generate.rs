//! `blockmap --generate man|complete-bash|complete-zsh|complete-fish`: the man page and the
//! shell completion scripts, made from the clap definitions of [`crate::cli`] so that they
//! never fall behind them.
//!
//! The man page is one page, `blockmap(1)`: the top command's sections as clap_mangen renders
//! them, then a COMMANDS section with a subsection per command of the tree (`blockmap map`,
//! `blockmap copy`, `blockmap bmap`, `blockmap bmap create`, `blockmap bmap copy`), each with
//! its synopsis, description, options and notes. One page installs as one file, and `man
//! blockmap` shows everything, as `man dd` does.

use std::io::{self, Write};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;

use crate::cli::{Cli, Generate};

/// Prints what `what` names on stdout.
pub(crate) fn run(what: Generate) -> Result<()> {
    let mut command = Cli::command();
    // Made in memory first: clap_complete panics on a failed write (a closed pipe).
    let mut text = Vec::new();
    match what {
        Generate::Man => man_page(command, &mut text).context("rendering the man page")?,
        Generate::CompleteBash => complete(Shell::Bash, &mut command, &mut text),
        Generate::CompleteZsh => complete(Shell::Zsh, &mut command, &mut text),
        Generate::CompleteFish => complete(Shell::Fish, &mut command, &mut text),
    }
    let mut out = io::stdout().lock();
    out.write_all(&text)
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

fn complete(shell: Shell, command: &mut clap::Command, out: &mut Vec<u8>) {
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, command, name, out);
}

/// The one page: the top command's sections, COMMANDS, EXIT STATUS, SEE ALSO, VERSION.
fn man_page(command: clap::Command, out: &mut Vec<u8>) -> io::Result<()> {
    // `help` is a command of the command line, not of the manual.
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let page = Man::new(command.clone());
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    out.extend_from_slice(b".SH COMMANDS\n");
    for sub in visible_subcommands(&command) {
        command_section(sub, out)?;
    }
    out.extend_from_slice(EXIT_STATUS.as_bytes());
    page.render_version_section(out)?;
    Ok(())
}

/// A subsection for `command` (a subcommand, as built within the whole tree, so that its
/// name is `blockmap bmap copy`), then one for each of its own subcommands.
fn command_section(command: &clap::Command, out: &mut Vec<u8>) -> io::Result<()> {
    let name = command.get_bin_name().unwrap_or_else(|| command.get_name());
    writeln!(out, ".SS \"{name}\"")?;
    // The global options (-v, -q) and -h, -V are described once, at the top.
    let mut own = command.clone();
    for arg in command.get_arguments() {
        if arg.is_global_set() || matches!(arg.get_id().as_str(), "help" | "version") {
            own = own.mut_arg(arg.get_id(), |a| a.hide(true));
        }
    }
    let page = Man::new(own);
    let mut section = Vec::new();
    page.render_synopsis_section(&mut section)?;
    page.render_description_section(&mut section)?;
    page.render_options_section(&mut section)?;
    if command.get_after_help().is_some() || command.get_after_long_help().is_some() {
        page.render_extra_section(&mut section)?;
    }
    out.extend_from_slice(demoted(&section).as_bytes());
    for sub in visible_subcommands(command) {
        command_section(sub, out)?;
    }
    Ok(())
}

fn visible_subcommands(command: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    command.get_subcommands().filter(|c| !c.is_hide_set())
}

/// clap_mangen's sections of one command, fit inside a subsection: each section heading
/// (`.SH OPTIONS`) becomes a paragraph, with a label where it helps (`Options:`), and the
/// apostrophe preamble that each rendering repeats is left out (the page's first one
/// stays). clap_mangen escapes a text line that starts with a dot, so every line starting
/// `.SH ` or `.ie`/`.el` is one of its requests.
fn demoted(roff: &[u8]) -> String {
    let mut out = String::new();
    for line in String::from_utf8_lossy(roff).lines() {
        if line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq") {
            continue;
        }
        match line.strip_prefix(".SH ") {
            Some("SYNOPSIS" | "DESCRIPTION" | "EXTRA") => out.push_str(".PP\n"),
            Some(heading) => {
                let label = heading.trim_matches('"').to_lowercase();
                out.push_str(&format!(
                    ".PP\n\\fI{}{}:\\fR\n",
                    label[..1].to_uppercase(),
                    &label[1..]
                ));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
0
Success.
.TP
1
Failure, said in one line on stderr naming the path and the cause.
.TP
2
A usage error: an unknown option, a missing or malformed argument.
.TP
128+N
Stopped by signal N: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP.
.SH "SEE ALSO"
dd(1), cp(1), filefrag(8), bmaptool(1)
"#;
