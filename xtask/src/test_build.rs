//! The build of fs-test's executables: `cargo test --workspace --no-run`, the very build of
//! `cargo test --workspace`.
//!
//! Cargo resolves features for the packages a command selects: `cargo test -p blockmap-cli`
//! turns on fewer features of libc, rustix, zstd, clap… than `cargo test --workspace`, where
//! xtask, benches and faultfs add theirs, and so compiles its own copy of every crate in
//! between (dozens of crates). Building with `--workspace` instead makes the artifacts of
//! `cargo test --workspace` and fs-test's one and the same whatever dependency is added later:
//! under `cargo xtask ci`, fs-test compiles nothing. Then fs-test runs the test executables
//! itself, each with its own arguments, from its package's directory as `cargo test` would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::cleanup;
use crate::cmd;

/// `cargo test --workspace`: `cargo xtask ci`'s test step and, with `--no-run`, fs-test's build,
/// one constant so that the two cannot drift apart.
pub const CARGO_TEST_WORKSPACE: [&str; 2] = ["test", "--workspace"];

/// A test executable of the workspace's build.
#[derive(Debug)]
pub struct TestExe {
    /// The executable, under `target/debug/deps/`.
    pub path: PathBuf,
    /// Its package's directory: the working directory `cargo test` runs it in.
    pub package_dir: PathBuf,
}

/// What the build made that fs-test runs.
#[derive(Debug, Default)]
pub struct Built {
    /// `(package, test target)` → its executable.
    tests: BTreeMap<(String, String), TestExe>,
    /// Binary name → its executable (e.g. `faultfs`).
    bins: BTreeMap<String, PathBuf>,
}

impl Built {
    /// The executable of `package`'s integration test `target`.
    pub fn test(&self, package: &str, target: &str) -> Result<&TestExe> {
        self.tests
            .get(&(package.to_owned(), target.to_owned()))
            .ok_or_else(|| {
                anyhow!("`cargo test --workspace` built no test `{target}` of {package}")
            })
    }

    /// The executable of the binary `name`.
    pub fn bin(&self, name: &str) -> Result<&Path> {
        self.bins
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| anyhow!("`cargo test --workspace` built no binary `{name}`"))
    }
}

/// Builds every test of the workspace, as `cargo test --workspace` does (cargo's progress on
/// the terminal), and returns the executables.
pub fn build() -> Result<Built> {
    let mut command = crate::cargo_command();
    command
        .args(CARGO_TEST_WORKSPACE)
        .args(["--no-run", "--message-format=json-render-diagnostics"]);
    let (status, stdout) = cmd::run_stdout_captured(&mut command)?;
    cleanup::check_interrupted()?;
    if !status.success() {
        bail!(
            "building the tests failed: `{}` ({status})",
            cmd::describe(&command)
        );
    }
    parse(&stdout).with_context(|| format!("reading the output of `{}`", cmd::describe(&command)))
}

/// Reads cargo's JSON messages: each `compiler-artifact` with an executable (a binary, a test).
fn parse(messages: &str) -> Result<Built> {
    let mut built = Built::default();
    for line in messages.lines().filter(|l| l.starts_with('{')) {
        let message: serde_json::Value = serde_json::from_str(line)?;
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let str_of = |v: &serde_json::Value, what: &str| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("a compiler-artifact message without {what}: {line}"))
        };
        let target = &message["target"];
        let name = str_of(&target["name"], "target.name")?;
        let kinds = target["kind"].as_array().cloned().unwrap_or_default();
        if kinds.iter().any(|k| k == "bin") {
            // Not the bin's unit tests (`profile.test`), which are an executable of that name too.
            if message["profile"]["test"] == false {
                built.bins.insert(name, executable.into());
            }
        } else if kinds.iter().any(|k| k == "test") {
            let package = package_name(&str_of(&message["package_id"], "package_id")?)?;
            let manifest = PathBuf::from(str_of(&message["manifest_path"], "manifest_path")?);
            let package_dir = manifest
                .parent()
                .ok_or_else(|| anyhow!("a manifest path without a directory: {line}"))?
                .to_owned();
            let exe = TestExe {
                path: executable.into(),
                package_dir,
            };
            built.tests.insert((package, name), exe);
        }
    }
    Ok(built)
}

/// The package name of a package ID spec: `path+file:///w/crates/sparsecopy#0.1.0` (the name
/// is the directory's) or `path+file:///w/crates/cli#blockmap-cli@0.1.0`.
fn package_name(id: &str) -> Result<String> {
    let (url, fragment) = id
        .rsplit_once('#')
        .ok_or_else(|| anyhow!("a package ID without `#`: {id}"))?;
    match fragment.split_once('@') {
        Some((name, _version)) => Ok(name.to_owned()),
        None => url
            .rsplit('/')
            .next()
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("a package ID without a name: {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_of_both_id_forms() {
        assert_eq!(
            package_name("path+file:///w/crates/sparsecopy#0.1.0").unwrap(),
            "sparsecopy"
        );
        assert_eq!(
            package_name("path+file:///w/crates/cli#blockmap-cli@0.1.0").unwrap(),
            "blockmap-cli"
        );
        assert!(package_name("sparsecopy").is_err());
    }

    #[test]
    fn executables_of_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/sparsecopy#0.1.0","manifest_path":"/w/crates/sparsecopy/Cargo.toml","target":{"kind":["test"],"name":"main"},"executable":"/w/target/debug/deps/main-1"}
{"reason":"compiler-artifact","package_id":"path+file:///w/crates/sparsecopy#0.1.0","manifest_path":"/w/crates/sparsecopy/Cargo.toml","target":{"kind":["lib"],"name":"sparsecopy"},"executable":null}
{"reason":"compiler-artifact","package_id":"path+file:///w/testing/faultfs#0.1.0","manifest_path":"/w/testing/faultfs/Cargo.toml","target":{"kind":["bin"],"name":"faultfs"},"profile":{"test":false},"executable":"/w/target/debug/faultfs"}
{"reason":"compiler-artifact","package_id":"path+file:///w/testing/faultfs#0.1.0","manifest_path":"/w/testing/faultfs/Cargo.toml","target":{"kind":["bin"],"name":"faultfs"},"profile":{"test":true},"executable":"/w/target/debug/deps/faultfs-2"}
{"reason":"build-finished","success":true}
"#;
        let built = parse(messages).unwrap();
        let test = built.test("sparsecopy", "main").unwrap();
        assert_eq!(test.path, Path::new("/w/target/debug/deps/main-1"));
        assert_eq!(test.package_dir, Path::new("/w/crates/sparsecopy"));
        assert_eq!(
            built.bin("faultfs").unwrap(),
            Path::new("/w/target/debug/faultfs")
        );
        assert!(built.test("blockmap-cli", "main").is_err());
        assert!(built.bin("sparsecopy").is_err());
    }
}
