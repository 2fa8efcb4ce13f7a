//! sparsecopy's integration tests, one binary (one link): each module is what was once a test
//! file of its own. The tests that need root or the filesystems `cargo xtask fs-test` mounts
//! are `#[ignore]`d; fs-test runs them (`--include-ignored`), with `BLOCKMAP_TEST_DIRS` and
//! `BLOCKMAP_FS_TEST_MOUNTS` naming its mounts. `autotests = false`: a new file here is a
//! module of this binary, declared below.

#![allow(clippy::print_stderr)] // tests say on stderr what they ran and where

mod behaviour;
mod blockdev;
mod edges;
mod errors;
mod model;
