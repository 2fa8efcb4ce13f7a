//! `cargo xtask ci`: every check, in order, stopping at the first failure.
//!
//! 1. `cargo fmt --all --check`
//! 2. `cargo machete`: no unused dependency (cargo-machete, installed by `.ci/run`; a false
//!    positive is declared in the crate's `[package.metadata.cargo-machete] ignored`)
//! 3. `cargo clippy --workspace --all-targets -- -D warnings`
//! 4. `cargo test --workspace` (includes this crate's tidy tests)
//! 5. `cargo xtask fs-test` (skips itself, and says so, without root)
//!
//! The last line is a plain tally of the steps, `ci: 5 passed, 0 failed` (`, 1 skipped` when
//! fs-test could not run), so that a log reader sees at once what ran.

use anyhow::{Result, bail};

use crate::cmd;
use crate::fs_test::{self, Outcome};
use crate::test_build;

const CARGO_STEPS: &[&[&str]] = &[
    &["fmt", "--all", "--check"],
    &["machete"],
    &[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ],
    &test_build::CARGO_TEST_WORKSPACE,
];

/// Runs `cargo xtask ci`.
pub fn run() -> Result<()> {
    let steps = CARGO_STEPS.len() + 1;
    for (i, args) in CARGO_STEPS.iter().enumerate() {
        let mut step = crate::cargo_command();
        step.args(*args);
        let name = format!("cargo {}", args.join(" "));
        println!("ci: [{}/{steps}] {name}", i + 1);
        let status = step.status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => fail(i, steps, &name, &status.to_string())?,
            Err(e) => fail(
                i,
                steps,
                &name,
                &format!("cannot run `{}`: {e}", cmd::describe(&step)),
            )?,
        }
    }
    let name = "cargo xtask fs-test";
    println!("ci: [{steps}/{steps}] {name}");
    match fs_test::run(&fs_test::Args::default()) {
        Ok(Outcome::Passed) => println!("ci: {steps} passed, 0 failed"),
        Ok(Outcome::Skipped) => println!("ci: {} passed, 0 failed, 1 skipped", steps - 1),
        Err(e) => {
            println!("ci: step {steps}/{steps} `{name}` failed: {e:#}");
            println!("ci: {} passed, 1 failed", steps - 1);
            return Err(e.context(format!("ci step `{name}` failed")));
        }
    }
    Ok(())
}

/// Reports the failed step (index `i`) and returns the error that ends the run.
fn fail(i: usize, steps: usize, name: &str, why: &str) -> Result<()> {
    println!("ci: step {}/{steps} `{name}` failed ({why})", i + 1);
    println!("ci: {i} passed, 1 failed");
    bail!("ci step `{name}` failed ({why})")
}
