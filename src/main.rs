//! `nereid`: parse the flags, start logging (and OTLP export), bind, run the server until
//! SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;

use nereid::cli::Cli;
use nereid::server::{Listeners, RunningServer};
use nereid::telemetry::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's channel lives on this runtime, so logging starts inside it.
    let _rt = runtime.enter();
    let rust_log = std::env::var("RUST_LOG").ok();
    let guard = match logging::init(&config.log.settings(), rust_log.as_deref(), &config.trace) {
        Ok((control, guard)) => {
            config.log = control;
            guard
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(config));
    // Export the spans still queued while the runtime (and so the exporter's channel) lives.
    guard.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: nereid::cli::ServerConfig) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    let server = RunningServer::start(config, listeners, shutdown_signal()).await?;
    server.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
