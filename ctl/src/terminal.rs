//! The local terminal for `droverctl exec -it`: raw mode while a remote
//! terminal drives it, and its size.
//!
//! Raw mode is held by a guard, [`RawMode`]: it is restored when the guard
//! drops, so on every way out of the command (its exit, an error, a lost
//! agent, a panic unwinding) the shell gets its terminal back as it was.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd};

use nix::pty::Winsize;
use nix::sys::termios::{self, SetArg, Termios};

nix::ioctl_read_bad!(get_window_size, nix::libc::TIOCGWINSZ, Winsize);

/// Whether stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// The size of the terminal on stdin, as (columns, rows).
pub fn size() -> Option<(u16, u16)> {
    let mut ws = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one Winsize through the pointer, which points
    // at a live, writable value for the duration of the call.
    unsafe { get_window_size(std::io::stdin().as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// The terminal on stdin in raw mode until this is dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Put stdin's terminal in raw mode (keys go through as typed: Ctrl-C
    /// reaches the remote command, not droverctl).
    pub fn enable() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())
            .map_err(|e| anyhow::anyhow!("cannot read the terminal's settings: {e}"))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|e| anyhow::anyhow!("cannot put the terminal in raw mode: {e}"))?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}
