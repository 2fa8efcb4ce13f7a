//! blockmap-cli's integration tests, one binary (one link): each module is what was once a test
//! file of its own. `cli*` run anywhere, on `$TMPDIR`; `fs_*` need what `cargo xtask fs-test`
//! sets up (loop-mounted filesystems, faultfs, HTTP servers: see `testkit`), are `#[ignore]`d
//! so that a plain `cargo test` reports them, and are run by fs-test (`--ignored`).
//! `autotests = false`: a new file here is a module of this binary, declared below.

#![allow(clippy::print_stderr)] // tests say on stderr what they ran and where

mod common;

mod cli;
mod cli_bmap;
mod cli_bmap_edges;
mod cli_bmap_inputs;
mod cli_bmap_opts;
mod cli_bmap_parallel;
mod cli_bmap_sig;
mod cli_copy;
mod cli_defs;
mod cli_generate;
mod cli_json;
mod cli_progress;
mod cli_quiet;
mod cli_size;
mod fs_bmap;
mod fs_bmap_inputs;
mod fs_copy;
mod fs_edges_bmap;
mod fs_edges_copy;
mod fs_faultfs;
mod fs_faults;
mod fs_http;
mod fs_scenarios;
mod fs_verify;
