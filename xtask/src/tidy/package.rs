//! Packaging (issue #13): every crate of `crates/` can be published, and each ships its
//! licence texts and README and carries the metadata crates.io shows.
//!
//! The publishable crates are those without `publish = false`, as `cargo metadata` lists
//! them; what one ships is what `cargo package --list` says (no build, no network). The
//! licence texts live once, at the root: a crate's `LICENSE-*` is a symbolic link to them,
//! which cargo packages as the text itself; a copy that no longer equals the root's is
//! reported too.

use crate::cmd::Interruptible;
use std::fs;
use std::path::Path;

use serde_json::Value;

use super::report;
use crate::project_root;

/// What every published package must hold, at its root.
const SHIPPED: &[&str] = &["LICENSE-MIT", "LICENSE-APACHE", "README.md"];

/// The manifest fields, as `cargo metadata` names them, that every published package sets.
const METADATA: &[&str] = &[
    "description",
    "license",
    "readme",
    "keywords",
    "categories",
    "rust_version",
];

/// Runs cargo in the workspace root: its standard output, or why it failed.
fn cargo(args: &[&str]) -> Result<String, String> {
    crate::cmd::run_captured(crate::cargo_command().args(args), Interruptible::No)
        .map_err(|e| format!("{e:#}"))
}

/// The workspace's packages, as `cargo metadata --no-deps` describes them.
fn packages() -> Result<Vec<Value>, String> {
    let metadata: Value =
        serde_json::from_str(&cargo(&["metadata", "--no-deps", "--format-version", "1"])?)
            .map_err(|e| format!("cargo metadata: {e}"))?;
    let packages = metadata["packages"].as_array();
    Ok(packages.expect("cargo metadata lists packages").clone())
}

/// `publish = false` is an empty list of registries; no `publish` key is null.
fn is_publishable(package: &Value) -> bool {
    package["publish"]
        .as_array()
        .is_none_or(|registries| !registries.is_empty())
}

/// The package's directory, relative to the root: `crates/seekmap`.
fn dir_of(package: &Value) -> String {
    let manifest = Path::new(package["manifest_path"].as_str().expect("a manifest path"));
    let dir = manifest.parent().expect("a manifest is in a directory");
    dir.strip_prefix(project_root())
        .unwrap_or(dir)
        .to_string_lossy()
        .into_owned()
}

/// What is wrong with one publishable package: files it would not ship, licence texts that
/// differ from the root's, metadata it lacks.
fn problems(package: &Value) -> Vec<String> {
    let name = package["name"].as_str().expect("a package name");
    let dir = dir_of(package);
    let mut found: Vec<String> =
        match cargo(&["package", "--list", "--allow-dirty", "--package", name]) {
            Ok(listed) => SHIPPED
                .iter()
                .filter(|file| !listed.lines().any(|line| line == **file))
                .map(|file| format!("{name}: `cargo package --list` has no {file}"))
                .collect(),
            Err(e) => vec![e],
        };
    for licence in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let root = fs::read(project_root().join(licence));
        let own = fs::read(project_root().join(&dir).join(licence));
        if let (Ok(root), Ok(own)) = (root, own)
            && root != own
        {
            found.push(format!("{dir}/{licence} differs from the root's {licence}"));
        }
    }
    for field in METADATA {
        let value = &package[field];
        let empty = value.is_null()
            || value.as_str().is_some_and(str::is_empty)
            || value.as_array().is_some_and(Vec::is_empty);
        if empty {
            found.push(format!("{name}: no `{field}` in {dir}/Cargo.toml"));
        }
    }
    found
}

#[test]
fn published_crates_ship_licences_and_a_readme() {
    let packages = packages().unwrap_or_else(|e| panic!("{e}"));
    let mut violations: Vec<String> = packages
        .iter()
        .filter(|p| dir_of(p).starts_with("crates/") && !is_publishable(p))
        .map(|p| {
            format!(
                "{}: `publish = false`, but crates/ are published",
                dir_of(p)
            )
        })
        .collect();
    let publishable: Vec<&Value> = packages.iter().filter(|p| is_publishable(p)).collect();
    assert!(!publishable.is_empty(), "no publishable package found");
    for package in publishable {
        violations.extend(problems(package));
    }
    report("packages not fit to publish", violations);
}
