//! droverctl, drover's kubectl-like command line.
//!
//! ```text
//!  argv ──clap──▶ Cli ──cmd::run──▶ one verb (cmd/*.rs)
//!                                     │  files.rs   reads -f inputs
//!                                     │  config.rs  contexts file → servers, namespace
//!                                     │  client     (drover-client) tries controllers in order, maps errors
//!                                     │  lab        (drover-lab) hosts in namespaces, faults, chaos
//!                                     ▼
//!                                   output.rs  tables, ages, Kubernetes-shaped objects
//! ```
//!
//! Results go to stdout; errors go to stderr as `error: <one sentence>`, one line
//! per error, and the exit code is 1. Exit code 0 means every part succeeded;
//! 130 means Ctrl-C ended a streaming command (`logs -f`); `exec` exits with
//! its command's code.
//!
//! **Crates it may depend on:** `drover-proto` (wire types, names),
//! `drover-manifest` (early manifest errors, rendering) and `drover-pki`
//! (`pki init`, tokens, TLS to controllers and agents); the controller and
//! the agent only as processes it starts (`lab`), never as libraries.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod files;
pub mod output;
pub mod resource;
pub mod terminal;
pub mod verbs_cli;

/// The controllers' client lives in its own crate, shared with the lab.
pub use drover_client as client;
/// `droverctl lab`'s library: the lab verb is a thin layer over it.
pub use drover_lab as lab;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// A command failed after printing its own errors; the caller only sets the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0} error(s) already reported")]
pub struct AlreadyReported(pub usize);

/// Ctrl-C ended a streaming command (`logs -f`): no message, and exit code
/// 130 as a shell reports a command ended by SIGINT.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// The command `droverctl exec` ran ended with this non-zero exit code,
/// which becomes droverctl's own (no message: the command spoke for itself).
#[derive(Debug, thiserror::Error)]
#[error("the command exited with code {0}")]
pub struct CommandExit(pub u8);

/// Parse the command line, run the command and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; usage errors fail
            // with 1 like kubectl (clap's own convention would be 2).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&anyhow::Error::new(e).context("cannot start the async runtime"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => ExitCode::from(130),
        Err(e) if e.downcast_ref::<CommandExit>().is_some() => {
            ExitCode::from(e.downcast_ref::<CommandExit>().map_or(1, |c| c.0))
        }
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Print an error as `error: ...`, one line per line of its message.
pub fn report(e: &anyhow::Error) {
    if e.downcast_ref::<AlreadyReported>().is_some() {
        return;
    }
    print_error(&format!("{e:#}"));
}

/// Print `error: <line>` to stderr for every line of `message`.
pub fn print_error(message: &str) {
    let mut err = std::io::stderr().lock();
    for line in message.lines() {
        let _ = writeln!(err, "error: {line}");
    }
}

/// Print `Warning: <line>` to stderr, as kubectl does for server warnings.
pub fn print_warning(message: &str) {
    let mut err = std::io::stderr().lock();
    for line in message.lines() {
        let _ = writeln!(err, "Warning: {line}");
    }
}

/// Print an informational note (`No resources found ...`) to stderr as is.
pub fn print_note(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `droverctl get ... | head` closes stdout early; that is not a failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
