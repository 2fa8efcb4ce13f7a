//! Size limits of library code (issue #12): no function over [`MAX_FN_LINES`] lines and no
//! source file over [`MAX_FILE_LINES`] lines in `crates/*/src`.
//!
//! A function is measured from the line of its `fn` to the line of its body's closing brace;
//! functions inside `#[cfg(test)]` items are left out. A file is measured whole, its
//! `#[cfg(test)] mod tests { … }` included; a file that is itself a test module (declared by
//! `#[cfg(test)] mod name;`, its submodules, or one that starts with `#![cfg(test)]`) is not
//! library code and is left out of both checks, so that a big test module can move to a
//! sibling file. Functions are found in `proc-macro2`'s tokens, never in comments or strings.

use std::collections::BTreeSet;

use proc_macro2::{Delimiter, Group, TokenTree};

use super::{
    Source, is_cfg_test, is_cfg_test_attr, is_crate_src, is_ident, line_of, report, sources, visit,
};

/// The most lines a library function may have.
const MAX_FN_LINES: usize = 100;
/// The most lines a library source file may have.
const MAX_FILE_LINES: usize = 700;

/// A function found in a source: the line of its `fn`, its name, and its length in lines.
#[derive(Debug, PartialEq, Eq)]
struct Function {
    line: usize,
    name: String,
    lines: usize,
}

/// The functions with a body outside `#[cfg(test)]` items, nested ones included, in order.
fn functions(source: &Source) -> Vec<Function> {
    let mut found = Vec::new();
    visit(source.tokens(), true, &mut |token, rest| {
        if !is_ident(token, "fn") {
            return;
        }
        // `fn name`: an item; `fn(…)` is a pointer type.
        let Some(TokenTree::Ident(name)) = rest.first() else {
            return;
        };
        let body = rest.iter().find_map(|t| match t {
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => Some(Some(g)),
            TokenTree::Punct(p) if p.as_char() == ';' => Some(None),
            _ => None,
        });
        if let Some(Some(body)) = body {
            let line = line_of(token);
            found.push(Function {
                line,
                name: name.to_string(),
                lines: body.span().end().line - line + 1,
            });
        }
    });
    found
}

/// The paths of the sources that are test modules: declared by `#[cfg(test)] mod name;` in
/// another source, under such a module's directory, or starting with `#![cfg(test)]`.
fn test_only_files(sources: &[Source]) -> BTreeSet<String> {
    let mut dirs = Vec::new();
    let mut files = BTreeSet::new();
    for source in sources {
        let tokens: Vec<TokenTree> = source.tokens().into_iter().collect();
        if inner_attributes(&tokens).any(is_cfg_test_attr) {
            files.insert(source.path.clone());
        }
        for name in test_modules(&tokens) {
            let dir = module_dir(&source.path);
            files.insert(format!("{dir}/{name}.rs"));
            dirs.push(format!("{dir}/{name}/"));
        }
    }
    for source in sources {
        if dirs.iter().any(|d| source.path.starts_with(d.as_str())) {
            files.insert(source.path.clone());
        }
    }
    files
}

/// The groups of the inner attributes (`#![…]`, `//!` comments included) that start `tokens`.
fn inner_attributes(tokens: &[TokenTree]) -> impl Iterator<Item = &Group> {
    tokens.chunks(3).map_while(|chunk| match chunk {
        [
            TokenTree::Punct(hash),
            TokenTree::Punct(bang),
            TokenTree::Group(attr),
        ] if hash.as_char() == '#' && bang.as_char() == '!' => Some(attr),
        _ => None,
    })
}

/// The names of the `#[cfg(test)] mod name;` declarations among top-level `tokens`.
fn test_modules(tokens: &[TokenTree]) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..tokens.len() {
        if !is_cfg_test(&tokens[i..]) {
            continue;
        }
        // The item after the attribute, up to its `;` or body: other attributes, `pub`…
        let item: Vec<&TokenTree> = tokens[i + 2..]
            .iter()
            .take_while(|t| !matches!(t, TokenTree::Punct(p) if p.as_char() == ';'))
            .take_while(|t| !matches!(t, TokenTree::Group(g) if g.delimiter() == Delimiter::Brace))
            .collect();
        let ends_with_semicolon = matches!(
            tokens.get(i + 2 + item.len()),
            Some(TokenTree::Punct(p)) if p.as_char() == ';'
        );
        if let [.., module, TokenTree::Ident(name)] = &item[..]
            && is_ident(module, "mod")
            && ends_with_semicolon
        {
            names.push(name.to_string());
        }
    }
    names
}

/// The directory that holds the files of the submodules of the module in `path`:
/// `a/src` for `a/src/lib.rs`, `main.rs` or `x/mod.rs`'s `a/src/x`, `a/src/foo` for `a/src/foo.rs`.
fn module_dir(path: &str) -> String {
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    match file {
        "lib.rs" | "main.rs" | "mod.rs" => dir.to_owned(),
        _ => format!("{dir}/{}", file.trim_end_matches(".rs")),
    }
}

/// The library sources of `crates/*/src`, test modules left out.
fn library_sources() -> Vec<Source> {
    let all: Vec<Source> = sources()
        .into_iter()
        .filter(|s| is_crate_src(&s.path))
        .collect();
    let tests = test_only_files(&all);
    all.into_iter()
        .filter(|s| !tests.contains(&s.path))
        .collect()
}

/// `file:line fn name (N lines)` for each function of `source` over `max` lines.
fn long_functions(source: &Source, max: usize) -> Vec<String> {
    functions(source)
        .into_iter()
        .filter(|f| f.lines > max)
        .map(|f| {
            format!(
                "{}:{} fn {} ({} lines)",
                source.path, f.line, f.name, f.lines
            )
        })
        .collect()
}

/// `file: N lines` if `source` is over `max` lines.
fn long_file(source: &Source, max: usize) -> Option<String> {
    let lines = source.text.lines().count();
    (lines > max).then(|| format!("{}: {lines} lines", source.path))
}

#[test]
fn no_library_function_over_100_lines() {
    let violations = library_sources()
        .iter()
        .flat_map(|s| long_functions(s, MAX_FN_LINES))
        .collect();
    report(
        &format!("library functions over {MAX_FN_LINES} lines (split them)"),
        violations,
    );
}

#[test]
fn no_library_file_over_700_lines() {
    let violations = library_sources()
        .iter()
        .filter_map(|s| long_file(s, MAX_FILE_LINES))
        .collect();
    report(
        &format!("library files over {MAX_FILE_LINES} lines (split them by concern)"),
        violations,
    );
}

mod self_tests {
    //! The size checks on small sources whose answers are known.

    use super::*;

    fn src(path: &str, text: &str) -> Source {
        Source::new(path, text)
    }

    /// A function `name` of `lines` lines, `fn` to `}`.
    fn function(name: &str, lines: usize) -> String {
        assert!(lines >= 2);
        let mut f = format!("fn {name}() {{\n");
        for i in 0..lines - 2 {
            f += &format!("    let _x{i} = {i};\n");
        }
        f + "}\n"
    }

    #[test]
    fn functions_are_measured_from_fn_to_the_closing_brace() {
        let text = format!(
            "//! x\n/// Docs do not count.\n#[inline]\npub {}{}",
            function("short", 3),
            function("longer", 10)
        );
        let found = functions(&src("crates/x/src/lib.rs", &text));
        let expected = [
            Function {
                line: 4,
                name: "short".into(),
                lines: 3,
            },
            Function {
                line: 7,
                name: "longer".into(),
                lines: 10,
            },
        ];
        assert_eq!(found, expected);
    }

    #[test]
    fn only_functions_over_the_limit_are_reported() {
        let text = format!(
            "//! x\n{}{}",
            function("at_limit", 100),
            function("over", 101)
        );
        let s = src("crates/x/src/a.rs", &text);
        assert_eq!(
            long_functions(&s, 100),
            ["crates/x/src/a.rs:102 fn over (101 lines)"]
        );
        assert_eq!(long_functions(&s, 101), Vec::<String>::new());
    }

    #[test]
    fn methods_nested_functions_and_test_items() {
        let text = format!(
            concat!(
                "//! x\n",
                "// fn in_a_comment() {{ }}\n",
                "const S: &str = \"fn in_a_string() {{ }}\";\n",
                "trait T {{\n",
                "    fn declared(&self) -> u8;\n",
                "    fn provided(&self) -> fn(u8) -> u8 {{ |x| x }}\n",
                "}}\n",
                "impl X {{\n",
                "    fn method(&self) where F: Fn() -> u8 {{\n",
                "        fn inner() {{}}\n",
                "    }}\n",
                "}}\n",
                "#[cfg(test)]\n",
                "mod tests {{\n",
                "{}",
                "}}\n",
                "#[cfg(test)]\n",
                "{}",
            ),
            function("a_long_test", 150),
            function("a_long_helper", 150)
        );
        let found: Vec<(usize, String, usize)> = functions(&src("crates/x/src/lib.rs", &text))
            .into_iter()
            .map(|f| (f.line, f.name, f.lines))
            .collect();
        assert_eq!(
            found,
            [
                (6, "provided".to_owned(), 1),
                (9, "method".to_owned(), 3),
                (10, "inner".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn files_over_the_limit_are_reported() {
        let at = "//! x\n".repeat(700);
        let over = "//! x\n".repeat(701);
        assert_eq!(long_file(&src("crates/x/src/a.rs", &at), 700), None);
        assert_eq!(
            long_file(&src("crates/x/src/a.rs", &over), 700).as_deref(),
            Some("crates/x/src/a.rs: 701 lines")
        );
    }

    #[test]
    fn test_modules_in_their_own_files_are_not_library_code() {
        let sources = [
            src(
                "crates/x/src/lib.rs",
                "//! x\nmod engine;\n#[cfg(test)]\nmod tests;\npub fn f() {}\n",
            ),
            src(
                "crates/x/src/engine.rs",
                "//! x\n#[cfg(test)]\n#[allow(dead_code)]\npub(crate) mod tests;\nmod io;\n#[cfg(test)]\nmod inline {}\n",
            ),
            src("crates/x/src/engine/io.rs", "//! x\n"),
            src("crates/x/src/engine/tests.rs", "//! x\nmod helpers;\n"),
            src("crates/x/src/engine/tests/helpers.rs", "//! x\n"),
            src("crates/x/src/tests/mod.rs", "//! x\n"),
            src("crates/x/src/model.rs", "//! x\n#![cfg(test)]\n"),
            src(
                "crates/x/src/models.rs",
                "//! x\n#![cfg(feature = \"m\")]\n",
            ),
        ];
        let tests: Vec<String> = test_only_files(&sources).into_iter().collect();
        let tests: BTreeSet<&str> = tests.iter().map(String::as_str).collect();
        for path in [
            "crates/x/src/engine/tests.rs",
            "crates/x/src/engine/tests/helpers.rs",
            "crates/x/src/tests/mod.rs",
            "crates/x/src/model.rs",
        ] {
            assert!(tests.contains(path), "{path} is a test module: {tests:?}");
        }
        for path in [
            "crates/x/src/lib.rs",
            "crates/x/src/engine.rs",
            "crates/x/src/engine/io.rs",
            "crates/x/src/models.rs",
        ] {
            assert!(!tests.contains(path), "{path} is library code: {tests:?}");
        }
        assert_eq!(module_dir("crates/x/src/lib.rs"), "crates/x/src");
        assert_eq!(module_dir("crates/x/src/a/mod.rs"), "crates/x/src/a");
        assert_eq!(module_dir("crates/x/src/a/b.rs"), "crates/x/src/a/b");
    }
}
