//! drover-agent binary: parse flags, set up logging, run until signalled.
//!
//! Exit codes: 0 after a signal, 2 when the Docker engine cannot be reached,
//! 1 for every other error (including a node name held by another agent).
//! `drover-agent __log-shim ...` is the process runtime's log shim
//! (`runtime::log_files`), not meant to be run by hand.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use drover_agent::{AgentConfig, AgentError};

fn main() -> ExitCode {
    // The process runtime runs this binary as each replica log's shim.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == drover_agent::runtime::log_files::SHIM_ARG)
    {
        let code = drover_agent::runtime::log_files::run_shim(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cfg = AgentConfig::parse();
    init_logging(&cfg.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        match drover_agent::run(cfg, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                match e {
                    AgentError::DockerUnavailable { .. } => ExitCode::from(2),
                    _ => ExitCode::FAILURE,
                }
            }
        }
    })
}

/// First SIGINT/SIGTERM: orderly shutdown (containers keep running). Second:
/// exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutting down; containers keep running (signal again to force)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    std::process::exit(130);
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("DROVER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,bollard=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
