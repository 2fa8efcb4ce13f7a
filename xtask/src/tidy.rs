//! Tidy checks over the workspace's Rust sources, run as ordinary tests by
//! `cargo test --workspace` (the habit of rust-analyzer's `xtask/src/tidy.rs`).
//!
//! - every `.rs` file starts with a `//!` comment saying what it is for;
//! - `unsafe` appears only in the crates of [`UNSAFE_CRATES`], each there for a reason (a
//!   syscall or ioctl without a safe wrapper), as ARCHITECTURE.md's crate table says; an entry
//!   whose crate no longer has any `unsafe` is reported as stale; every `unsafe` block or impl
//!   has a `// SAFETY:` comment within the three lines above it (the comment may be longer:
//!   the `//` block it belongs to may start further up);
//! - library code is not too long: no function over 100 lines, no file over 700 (see
//!   [`size`]);
//! - library code does not print: no `println!`, `eprintln!`, `print!`, `eprint!` or `dbg!`
//!   in `crates/*/src` outside `#[cfg(test)]` items, except the `blockmap` binary's own
//!   output (`crates/blockmap-cli/src/main.rs`, `src/bin/`, an `output` module); `dbg!` is
//!   never allowed in `src`.
//! - every crate of `crates/` can be published and ships LICENSE-MIT, LICENSE-APACHE and a
//!   README (see [`package`]).
//!
//! Sources are read with `proc-macro2`'s lexer, so that words inside comments, doc comments,
//! string and raw string literals never count; comments are then looked up in the raw lines.
//! Checked: `crates/`, `testing/` and this crate.

use std::fs;
use std::path::Path;

use proc_macro2::{Delimiter, Group, TokenStream, TokenTree};
use walkdir::WalkDir;

mod package;
mod size;

/// A crate where `unsafe` is allowed, and why.
#[derive(Debug)]
struct UnsafeCrate {
    /// The crate's directory: `crates/<name>`, `testing/<name>` or `xtask`.
    dir: &'static str,
    /// Only in its integration tests (`tests/`), never in the code it ships.
    tests_only: bool,
    why: &'static str,
}

/// The crates where `unsafe` is allowed, whole crates rather than files, so that moving code
/// between a crate's modules needs no change here (only the FIEMAP wrapper and, if
/// unavoidable, the copy engine's calls: the `unsafe` column of ARCHITECTURE.md's crate table).
const UNSAFE_CRATES: &[UnsafeCrate] = &[
    UnsafeCrate {
        dir: "crates/fiemap-sys",
        tests_only: false,
        why: "the kernel ABI: the FIEMAP, FIGETBSZ and btrfs tree-search ioctls and the \
              cachestat(2) syscall, which rustix does not wrap",
    },
    UnsafeCrate {
        dir: "crates/sparsecopy",
        tests_only: false,
        why: "FICLONERANGE through rustix's typed ioctl, and close(2) of a raw descriptor to \
              hear a failed write, which `OwnedFd`'s drop ignores",
    },
    UnsafeCrate {
        dir: "crates/blockmap-cli",
        tests_only: true,
        why: "faultfs's self-test closes a file with close(2) to see its flush fault, which \
              `File`'s drop ignores",
    },
];

/// Macros that write to stdout or stderr.
const PRINT_MACROS: &[&str] = &["println", "eprintln", "print", "eprint", "dbg"];

/// The lines the `SAFETY:` comment may be above its `unsafe`.
const SAFETY_WINDOW: usize = 3;

/// A source file: its path relative to the root, with `/`, and its text.
#[derive(Debug)]
struct Source {
    path: String,
    text: String,
}

impl Source {
    fn new(path: &str, text: &str) -> Source {
        Source {
            path: path.to_owned(),
            text: text.to_owned(),
        }
    }

    fn tokens(&self) -> TokenStream {
        self.text
            .parse()
            .unwrap_or_else(|e| panic!("{}: cannot be lexed as Rust: {e:?}", self.path))
    }
}

/// Every `.rs` file under `crates/`, `testing/` and `xtask/`, sorted, skipping `target` and hidden
/// directories.
fn sources() -> Vec<Source> {
    let root = crate::project_root();
    let mut sources = Vec::new();
    for top in ["crates", "testing", "xtask"] {
        let walk = WalkDir::new(root.join(top))
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                let name = e.file_name().to_string_lossy();
                e.depth() == 0 || !(name.starts_with('.') || name == "target")
            });
        for entry in walk {
            let entry = entry.expect("walking the workspace");
            let path = entry.path();
            if !entry.file_type().is_file() || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).unwrap_or(path);
            let text = fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            sources.push(Source {
                path: to_slashes(relative),
                text,
            });
        }
    }
    assert!(
        sources.len() > 10,
        "found only {} Rust files: is the walk broken?",
        sources.len()
    );
    sources
}

fn to_slashes(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Calls `f` with every token, at every depth, and the tokens after it at its level. With
/// `skip_test_items`, the items under a `#[cfg(test)]` attribute are left out.
fn visit(stream: TokenStream, skip_test_items: bool, f: &mut impl FnMut(&TokenTree, &[TokenTree])) {
    let tokens: Vec<TokenTree> = stream.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        if skip_test_items && is_cfg_test(&tokens[i..]) {
            // The attribute, then the item up to its body (or its `;`).
            i += 2;
            while let Some(token) = tokens.get(i) {
                i += 1;
                match token {
                    TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => break,
                    TokenTree::Punct(p) if p.as_char() == ';' => break,
                    _ => {}
                }
            }
            continue;
        }
        f(&tokens[i], &tokens[i + 1..]);
        if let TokenTree::Group(group) = &tokens[i] {
            visit(group.stream(), skip_test_items, f);
        }
        i += 1;
    }
}

/// Whether `tokens` start with `#[cfg(test)]`.
fn is_cfg_test(tokens: &[TokenTree]) -> bool {
    match tokens {
        [TokenTree::Punct(hash), TokenTree::Group(attr), ..] => {
            hash.as_char() == '#' && is_cfg_test_attr(attr)
        }
        _ => false,
    }
}

/// Whether `attr` is the `[cfg(test)]` of an attribute.
fn is_cfg_test_attr(attr: &Group) -> bool {
    attr.delimiter() == Delimiter::Bracket
        && attr.stream().to_string().replace(' ', "") == "cfg(test)"
}

fn is_ident(token: &TokenTree, name: &str) -> bool {
    matches!(token, TokenTree::Ident(ident) if ident == name)
}

fn line_of(token: &TokenTree) -> usize {
    token.span().start().line
}

/// Lines (1-based) where the `unsafe` keyword appears in code.
fn unsafe_lines(source: &Source) -> Vec<usize> {
    let mut lines = Vec::new();
    visit(source.tokens(), false, &mut |token, _| {
        if is_ident(token, "unsafe") {
            lines.push(line_of(token));
        }
    });
    lines
}

/// Lines (1-based) of `unsafe { … }` blocks and `unsafe impl`s without a `SAFETY:` comment.
fn undocumented_unsafe(source: &Source) -> Vec<usize> {
    let lines: Vec<&str> = source.text.lines().collect();
    let mut missing = Vec::new();
    visit(source.tokens(), false, &mut |token, rest| {
        let needs_comment = is_ident(token, "unsafe")
            && match rest.first() {
                Some(TokenTree::Group(g)) => g.delimiter() == Delimiter::Brace,
                Some(next) => is_ident(next, "impl"),
                None => false,
            };
        if needs_comment && !has_safety_comment(&lines, line_of(token)) {
            missing.push(line_of(token));
        }
    });
    missing
}

/// Whether a `// SAFETY:` comment is on one of the [`SAFETY_WINDOW`] lines above `line`
/// (1-based), or starts the block of `//` comments that reaches into them.
fn has_safety_comment(lines: &[&str], line: usize) -> bool {
    let is_comment = |l: &str| l.trim_start().starts_with("//");
    let unsafe_index = line - 1;
    (unsafe_index.saturating_sub(SAFETY_WINDOW)..unsafe_index).any(|near| {
        if lines[near].contains("// SAFETY:") {
            return true;
        }
        if !is_comment(lines[near]) {
            return false;
        }
        // Up through the comment block this line belongs to.
        lines[..near]
            .iter()
            .rev()
            .take_while(|l| is_comment(l))
            .any(|l| l.contains("SAFETY:"))
    })
}

/// Whether `path` is code of the `blockmap` binary that prints its output.
fn may_print(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("crates/blockmap-cli/src/") else {
        return false;
    };
    rest == "main.rs"
        || rest.starts_with("bin/")
        || rest == "output.rs"
        || rest.starts_with("output/")
}

/// The crate a source belongs to (`crates/<name>`, `testing/<name>`, `xtask`) and the part
/// of it (`src`, `tests`, `benches`…), from its path.
fn crate_and_part(path: &str) -> Option<(&str, &str)> {
    let dir_len = match path.split('/').next()? {
        "crates" | "testing" => path.match_indices('/').nth(1)?.0,
        "xtask" => "xtask".len(),
        _ => return None,
    };
    let (dir, rest) = path.split_at(dir_len);
    let part = rest.strip_prefix('/')?.split('/').next()?;
    Some((dir, part))
}

/// The entry of [`UNSAFE_CRATES`] that allows `unsafe` in `path`, if any.
fn unsafe_allowed(path: &str) -> Option<&'static UnsafeCrate> {
    let (dir, part) = crate_and_part(path)?;
    UNSAFE_CRATES
        .iter()
        .find(|c| c.dir == dir && (!c.tests_only || part == "tests"))
}

/// Whether `path` is under some `crates/<name>/src/`.
fn is_crate_src(path: &str) -> bool {
    matches!(crate_and_part(path), Some((dir, "src")) if dir.starts_with("crates/"))
}

/// Lines (1-based) and names of the printing macros used outside `#[cfg(test)]` items.
fn prints(source: &Source) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    visit(source.tokens(), true, &mut |token, rest| {
        if let TokenTree::Ident(ident) = token {
            let bang = matches!(rest.first(), Some(TokenTree::Punct(p)) if p.as_char() == '!');
            let name = ident.to_string();
            if bang && PRINT_MACROS.contains(&name.as_str()) {
                found.push((line_of(token), name));
            }
        }
    });
    found
}

/// Fails with every violation, one per line.
fn report(check: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{check}:\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn every_file_starts_with_a_doc_comment() {
    let violations = sources()
        .into_iter()
        .filter(|s| !s.text.starts_with("//!"))
        .map(|s| format!("{}: the first line is not a `//!` comment", s.path))
        .collect();
    report("files without a `//!` header", violations);
}

#[test]
fn unsafe_only_where_it_belongs() {
    let mut violations = Vec::new();
    let mut used = vec![false; UNSAFE_CRATES.len()];
    for source in sources() {
        let lines = unsafe_lines(&source);
        match unsafe_allowed(&source.path) {
            Some(allowed) => {
                let i = UNSAFE_CRATES.iter().position(|c| std::ptr::eq(c, allowed));
                used[i.expect("an entry of UNSAFE_CRATES")] |= !lines.is_empty();
            }
            None => {
                for line in lines {
                    violations.push(format!(
                        "{}:{line}: `unsafe` outside the crates that need it (UNSAFE_CRATES)",
                        source.path
                    ));
                }
            }
        }
    }
    for (krate, used) in UNSAFE_CRATES.iter().zip(used) {
        if !used {
            violations.push(format!(
                "{}: allowed `unsafe` ({}) but has none: remove its UNSAFE_CRATES entry",
                krate.dir, krate.why
            ));
        }
    }
    report("`unsafe` where it does not belong", violations);
}

#[test]
fn every_unsafe_has_a_safety_comment() {
    let mut violations = Vec::new();
    for source in sources() {
        for line in undocumented_unsafe(&source) {
            violations.push(format!(
                "{}:{line}: `unsafe` without a `// SAFETY:` comment in the {SAFETY_WINDOW} lines above",
                source.path
            ));
        }
    }
    report("undocumented `unsafe`", violations);
}

#[test]
fn libraries_do_not_print() {
    let mut violations = Vec::new();
    for source in sources().into_iter().filter(|s| is_crate_src(&s.path)) {
        for (line, name) in prints(&source) {
            if name != "dbg" && may_print(&source.path) {
                continue;
            }
            violations.push(format!(
                "{}:{line}: `{name}!` in library code (use `tracing`, or the binary's output)",
                source.path
            ));
        }
    }
    report("printing outside the binary's output", violations);
}

mod self_tests {
    //! The checks on small sources whose answers are known.

    use super::*;

    fn src(text: &str) -> Source {
        Source::new("crates/x/src/lib.rs", text)
    }

    #[test]
    fn words_in_comments_and_strings_do_not_count() {
        let s = src(concat!(
            "//! Header mentioning unsafe { and println!.\n",
            "#![forbid(unsafe_code)]\n",
            "/// Docs: `unsafe { x }` and println!(\"hi\").\n",
            "fn f() -> &'static str {\n",
            "    let _c = '\"';\n",
            "    /* unsafe { /* nested */ println!() } */\n",
            "    let _r = r#\"unsafe { dbg!(1) }\"#;\n",
            "    \"unsafe { eprintln!() }\"\n",
            "}\n",
        ));
        assert_eq!(unsafe_lines(&s), Vec::<usize>::new());
        assert_eq!(prints(&s), Vec::new());
    }

    #[test]
    fn unsafe_is_found_with_its_line() {
        let s = src(
            "//! x\nfn f() {\n    let p = 0;\n    unsafe { g(p) }\n}\nunsafe impl Send for X {}\n",
        );
        assert_eq!(unsafe_lines(&s), [4, 6]);
        assert_eq!(undocumented_unsafe(&s), [4, 6]);
    }

    #[test]
    fn safety_comments_are_found_above_blocks_and_impls() {
        let s = src(concat!(
            "//! x\n",
            "fn f() {\n",
            "    // SAFETY: a long proof\n",
            "    // that goes on\n",
            "    // and on\n",
            "    // and on.\n",
            "    unsafe { g() };\n",
            "    // SAFETY: short.\n",
            "    let x = h(\n",
            "        1,\n",
            "        unsafe { g() },\n",
            "    );\n",
            "    // SAFETY: too far away.\n",
            "    let a = 1;\n",
            "    let b = 2;\n",
            "    let c = 3;\n",
            "    unsafe { g() };\n",
            "}\n",
            "// SAFETY: the impl is sound.\n",
            "unsafe impl Send for X {}\n",
            "unsafe fn not_a_block() {}\n",
        ));
        assert_eq!(undocumented_unsafe(&s), [17]);
    }

    #[test]
    fn prints_in_test_items_are_allowed_and_others_found() {
        let s = src(concat!(
            "//! x\n",
            "pub fn f() {\n",
            "    println!(\"a\");\n",
            "    std::eprintln!(\"b\");\n",
            "    let _ = dbg!(1);\n",
            "}\n",
            "#[cfg(test)]\n",
            "mod tests {\n",
            "    #[test]\n",
            "    fn t() { println!(\"fine in tests\"); }\n",
            "}\n",
            "#[cfg(test)]\n",
            "fn helper() { eprintln!(\"fine too\"); }\n",
            "fn print() {}\n",
            "fn g() { print(); }\n",
        ));
        let found = prints(&s);
        let found: Vec<(usize, &str)> = found.iter().map(|(l, n)| (*l, n.as_str())).collect();
        assert_eq!(found, [(3, "println"), (4, "eprintln"), (5, "dbg")]);
    }

    #[test]
    fn only_the_binary_output_may_print() {
        assert!(may_print("crates/blockmap-cli/src/main.rs"));
        assert!(may_print("crates/blockmap-cli/src/output.rs"));
        assert!(may_print("crates/blockmap-cli/src/bin/extra.rs"));
        assert!(!may_print("crates/blockmap-cli/src/map.rs"));
        assert!(!may_print("crates/sparsecopy/src/main.rs"));
        assert!(is_crate_src("crates/seekmap/src/walk.rs"));
        assert!(!is_crate_src("crates/seekmap/tests/kernel.rs"));
        assert!(!is_crate_src("xtask/src/main.rs"));
    }

    #[test]
    fn unsafe_is_allowed_per_crate() {
        let allowed = |path| unsafe_allowed(path).map(|c| c.dir);
        assert_eq!(
            allowed("crates/fiemap-sys/src/ioctl.rs"),
            Some("crates/fiemap-sys")
        );
        assert_eq!(
            allowed("crates/fiemap-sys/src/a/new.rs"),
            Some("crates/fiemap-sys")
        );
        assert_eq!(
            allowed("crates/fiemap-sys/tests/layout.rs"),
            Some("crates/fiemap-sys")
        );
        assert_eq!(
            allowed("crates/sparsecopy/src/engine/clone.rs"),
            Some("crates/sparsecopy")
        );
        assert_eq!(allowed("crates/fiemap-sys-extra/src/lib.rs"), None);
        assert_eq!(allowed("crates/blockmap-core/src/lib.rs"), None);
        assert_eq!(allowed("crates/blockmap-cli/src/main.rs"), None);
        assert_eq!(
            allowed("crates/blockmap-cli/tests/fs/faultfs.rs"),
            Some("crates/blockmap-cli")
        );
        assert_eq!(allowed("testing/faultfs/src/fs.rs"), None);
        assert_eq!(allowed("xtask/src/tidy.rs"), None);
        assert_eq!(crate_and_part("xtask/src/tidy.rs"), Some(("xtask", "src")));
        assert_eq!(
            crate_and_part("testing/faultfs/src/main.rs"),
            Some(("testing/faultfs", "src"))
        );
        assert_eq!(
            crate_and_part("crates/blockmap-bmap/tests/copy.rs"),
            Some(("crates/blockmap-bmap", "tests"))
        );
        assert_eq!(crate_and_part("README.md"), None);
    }
}
