//! SIGINT, SIGTERM and SIGHUP during a copy: the first one raises a flag that the copy engines
//! poll between chunks (they stop, remove a DST they created, and say what may be partly
//! written); a second one (of any of the three) ends the process at once, as it would have
//! without us. [`caught`] tells `main` which signal it was, for the exit status 128 + signal.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The number of the first signal caught, 0 while none was.
fn caught_signal() -> &'static Arc<AtomicUsize> {
    static CAUGHT: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    CAUGHT.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// Installs the handlers and returns the flag they raise. Called by the commands that write
/// (`copy`, `bmap copy`); the others keep the default actions.
pub(crate) fn install() -> io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // The second signal of a kind takes the default action (ends the process); then the
        // first raises the flag and records which signal it was.
        signal_hook::flag::register_conditional_default(signal, Arc::clone(&stop))?;
        signal_hook::flag::register_usize(signal, Arc::clone(caught_signal()), signal as usize)?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// The first signal caught since [`install`], if any.
pub(crate) fn caught() -> Option<i32> {
    match caught_signal().load(Ordering::SeqCst) {
        0 => None,
        signal => i32::try_from(signal).ok(),
    }
}

/// The signal's name in messages.
pub(crate) fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
