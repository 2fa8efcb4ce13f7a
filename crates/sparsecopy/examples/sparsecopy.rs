//! The engine without the CLI, with every knob, for trying fast paths by hand:
//!
//! ```text
//! cargo run --release -p sparsecopy --example sparsecopy -- SRC DST \
//!     [--skip N] [--seek N] [--length N] [--reflink auto|always|never] \
//!     [--method auto|copy_file_range|read_write] [--backend auto|fiemap|seek|none] \
//!     [--detect-zeros] [--zero-holes] [--sync] [--reflink-min N] [--buffer N]
//! ```
//! Prints the report as JSON on stdout.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line example

use sparsecopy::{Method, Options, Reflink, Window};

fn main() {
    if let Err(e) = run() {
        eprintln!("sparsecopy: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut paths = Vec::new();
    let mut window = Window::new();
    let mut options = Options::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--skip" => window.skip = value()?.parse()?,
            "--seek" => window.seek = value()?.parse()?,
            "--length" => window.length = Some(value()?.parse()?),
            "--reflink-min" => options.reflink_min = value()?.parse()?,
            "--buffer" => options.buffer_size = value()?.parse()?,
            "--backend" => options.backend = value()?.parse()?,
            "--reflink" => {
                options.reflink = match value()?.as_str() {
                    "auto" => Reflink::Auto,
                    "always" => Reflink::Always,
                    "never" => Reflink::Never,
                    other => return Err(format!("unknown reflink mode {other}").into()),
                }
            }
            "--method" => {
                options.method = match value()?.as_str() {
                    "auto" => Method::Auto,
                    "copy_file_range" => Method::CopyFileRange,
                    "read_write" => Method::ReadWrite,
                    other => return Err(format!("unknown method {other}").into()),
                }
            }
            "--detect-zeros" => options.detect_zeros = true,
            "--zero-holes" => options.zero_holes = true,
            "--sync" => options.sync = true,
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}").into()),
            _ => paths.push(arg),
        }
    }
    let [src, dst] = paths.as_slice() else {
        return Err("usage: sparsecopy [options] SRC DST".into());
    };
    let report = sparsecopy::copy(src, dst, window, &options)?;
    eprintln!("{report}");
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
