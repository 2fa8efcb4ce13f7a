//! The binary's own clap definitions and size parser, compiled into the test binary too: the
//! tests walk the real command tree (`cli_generate`) and call the real parser (`cli_size`).
#![allow(dead_code)] // the tests use a few of the definitions

#[path = "../src/cli.rs"]
pub mod cli;
#[path = "../src/size.rs"]
pub mod size;
