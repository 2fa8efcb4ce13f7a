//! bmap's integration tests, one binary (one link): each module was once a test file of its
//! own. `autotests = false`: a new file here is a module of this binary, declared below.

#![allow(clippy::print_stderr)] // a case that cannot run here says why on the test output

mod copy;
mod edges;
mod format;
mod inputs;
