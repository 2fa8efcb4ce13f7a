//! `blockmap --generate man|complete-bash|complete-zsh|complete-fish`: every command of the
//! clap tree (walked, not listed by hand) and every long option of it is in the man page, in
//! that command's own subsection as `man` shows it, and in each shell's completions; the man
//! page renders without a groff warning, and bash, zsh and fish parse their scripts.

use std::io::Write;
use std::process::{Command, Stdio};

use clap::CommandFactory;

use crate::cli_defs::cli::Cli;
use crate::common::{blockmap, stderr, tool};

/// A command of the tree: its path of names (`["bmap", "copy"]`, empty for the top) and its
/// visible long options (`--help` and `--version` come with every one).
struct Node {
    path: Vec<String>,
    longs: Vec<String>,
}

fn tree() -> Vec<Node> {
    fn walk(command: &clap::Command, path: Vec<String>, out: &mut Vec<Node>) {
        let longs = command
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
            let mut sub_path = path.clone();
            sub_path.push(sub.get_name().to_owned());
            walk(sub, sub_path, out);
        }
        out.push(Node { path, longs });
    }
    let mut nodes = Vec::new();
    walk(&Cli::command(), Vec::new(), &mut nodes);
    // The walk must have found the commands the README documents, and options in each leaf.
    let names: Vec<String> = nodes.iter().map(|n| n.path.join(" ")).collect();
    for expected in ["map", "copy", "bmap", "bmap create", "bmap copy"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    nodes
}

/// `blockmap --generate WHAT`'s stdout, which must be its only output.
fn generated(what: &str) -> String {
    let out = blockmap(&["--generate", what]);
    assert!(out.status.success(), "--generate {what}: {}", stderr(&out));
    assert!(out.stderr.is_empty(), "--generate {what}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `program args` with `input` on stdin: its stdout, after asserting it succeeded with
/// nothing on stderr.
fn run_with_input(program: &str, args: &[&str], input: &str) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{program} {args:?}: {}: {}",
        out.status,
        stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn man_page_shows_every_command_with_all_its_options() {
    let groff = tool("groff", "groff-base");
    let roff = generated("man");
    // As `man` renders it (`-k`: preconv, as man-db runs it), every warning on (`-ww`),
    // plain text (`-P-cbou`), long lines and no hyphenation so that an option stays whole.
    let text = run_with_input(
        groff,
        &[
            "-k",
            "-man",
            "-Tutf8",
            "-ww",
            "-rLL=400n",
            "-rHY=0",
            "-P-cbou",
        ],
        &roff,
    );
    let lines: Vec<&str> = text.lines().collect();
    for node in tree() {
        // The top command's part is what comes before COMMANDS; a command's is its subsection
        // (a heading indented by 3), up to the next heading.
        let section: &[&str] = if node.path.is_empty() {
            let end = lines
                .iter()
                .position(|l| *l == "COMMANDS")
                .expect("COMMANDS");
            &lines[..end]
        } else {
            let heading = format!("   blockmap {}", node.path.join(" "));
            let start = lines
                .iter()
                .position(|l| *l == heading)
                .unwrap_or_else(|| panic!("no subsection {heading:?} in\n{text}"));
            let len = lines[start + 1..]
                .iter()
                .position(|l| !l.is_empty() && !l.starts_with("    "))
                .unwrap_or(lines.len() - start - 1);
            &lines[start..start + 1 + len]
        };
        for long in &node.longs {
            // Listed as an item: `--long`, `-s, --long`, maybe with `<VALUE>` after it.
            let item = format!("--{long}");
            let listed = section.iter().any(|l| {
                let l = l.trim_start();
                let l = l
                    .split_once(", ")
                    .filter(|(s, _)| s.len() == 2)
                    .map_or(l, |(_, r)| r);
                l == item || l.starts_with(&format!("{item} "))
            });
            assert!(
                listed,
                "{item} of {:?} not listed in:\n{}",
                node.path,
                section.join("\n")
            );
        }
    }
}

#[test]
fn man_page_renders_without_warnings() {
    let groff = tool("groff", "groff-base");
    run_with_input(
        groff,
        &["-k", "-man", "-Tutf8", "-ww", "-z"],
        &generated("man"),
    );
}

#[test]
fn bash_completion_offers_each_commands_options() {
    let bash = tool("bash", "bash");
    let script = generated("complete-bash");
    run_with_input(bash, &["-n"], &script);
    for node in tree() {
        // clap_complete's case label of a command, and the `opts` it completes there.
        let mut label = "blockmap".to_owned();
        for name in &node.path {
            label.push_str(&format!("__subcmd__{name}"));
        }
        let lines: Vec<&str> = script.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim() == format!("{label})"))
            .unwrap_or_else(|| panic!("no case {label}) in the bash completion"));
        let opts = lines[at + 1].trim();
        assert!(opts.starts_with("opts=\""), "{label}: {opts}");
        let offered: Vec<&str> = opts["opts=\"".len()..]
            .trim_end_matches('"')
            .split(' ')
            .collect();
        for long in &node.longs {
            assert!(
                offered.contains(&format!("--{long}").as_str()),
                "{label}: --{long} in {opts}"
            );
        }
    }
}

#[test]
fn zsh_completion_mentions_each_command_and_option() {
    let zsh = tool("zsh", "zsh");
    let script = generated("complete-zsh");
    run_with_input(zsh, &["-n"], &script);
    for node in tree() {
        if let Some(name) = node.path.last() {
            assert!(script.contains(&format!("({name})")), "zsh: ({name})");
        }
        for long in &node.longs {
            // `'--skip=[…]'` for an option with a value, `'--json[…]'` for a flag, maybe
            // after what it conflicts with (`'(--nobmap)--checksum-retry=[…]'`) or a `*` if
            // it repeats (`'*--verbose[…]'`).
            let mentioned = ["'", ")", "*"].iter().any(|before| {
                [format!("{before}--{long}=["), format!("{before}--{long}[")]
                    .iter()
                    .any(|m| script.contains(m.as_str()))
            });
            assert!(mentioned, "zsh: --{long} of {:?}", node.path);
        }
    }
}

#[test]
fn fish_completion_offers_each_commands_options() {
    let fish = tool("fish", "fish");
    let script = generated("complete-fish");
    run_with_input(fish, &["--no-execute"], &script);
    for node in tree() {
        // The condition under which clap_complete offers a command's options.
        let condition = match node.path.as_slice() {
            [] => "__fish_blockmap_needs_command".to_owned(),
            [one] => format!("__fish_blockmap_using_subcommand {one}\""),
            [first, .., last] => format!(
                "__fish_blockmap_using_subcommand {first}; and __fish_seen_subcommand_from {last}\""
            ),
        };
        for long in &node.longs {
            let offered = script.lines().any(|l| {
                l.starts_with("complete -c blockmap ")
                    && l.contains(&condition)
                    && l.contains(&format!(" -l {long} "))
            });
            assert!(offered, "fish: --{long} under {condition}");
        }
    }
}

/// `--generate` needs no command and takes none; without it a command is required: each a
/// usage error of one line and status 2.
#[test]
fn generate_stands_alone_and_a_command_is_otherwise_required() {
    for (args, says) in [
        (&[][..], "a command is required: map, copy or bmap"),
        (&["-v"][..], "a command is required"),
        (
            &["--generate", "man", "map", "x"][..],
            "--generate takes no command",
        ),
        (&["--generate", "man", "-v"][..], "cannot be used with"),
        (&["--generate", "complete-tcsh"][..], "complete-tcsh"),
    ] {
        let out = blockmap(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(
            err.starts_with("blockmap: ") && err.contains(says),
            "{args:?}: {err:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
