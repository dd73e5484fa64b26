//! Ctrl+C (SIGINT) and SIGTERM during a long command: the first one asks the command to stop cleanly
//! (`loft train` saves a checkpoint and says how to resume); a second one quits at once, for when waiting
//! is not wanted. The handler only counts signals, the one thing a signal handler may safely do; the
//! command polls [`requested`].

use std::sync::atomic::{AtomicUsize, Ordering};

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// The exit status of a process stopped by SIGINT, by shell convention (128 + 2).
pub const INTERRUPTED_EXIT: i32 = 130;

/// Whether a stop was asked for since [`install`].
pub fn requested() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe; nothing else runs after it.
        unsafe { libc::_exit(INTERRUPTED_EXIT) }
    }
}

/// Catch SIGINT and SIGTERM from now on. Returns whether the handler is in place (on other systems
/// Ctrl+C keeps its default: the process ends, and the last checkpoint is what remains).
#[cfg(unix)]
pub fn install() -> bool {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only touches an
    // atomic and calls _exit, both async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        [libc::SIGINT, libc::SIGTERM]
            .iter()
            .all(|&signal| libc::sigaction(signal, &action, std::ptr::null_mut()) == 0)
    }
}

#[cfg(not(unix))]
pub fn install() -> bool {
    false
}
