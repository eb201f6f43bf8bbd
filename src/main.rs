//! `nereid`: parse the flags, start logging, bind, run the server until SIGINT/SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use nereid::cli::Cli;
use nereid::server::{RunningServer, bind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log_filter());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let config = match cli.into_config() {
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
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: nereid::cli::ServerConfig) -> anyhow::Result<()> {
    let grpc = match config.grpc_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let http = match config.http_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    // The first SIGINT/SIGTERM starts a graceful stop; a second one exits at once.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(watch_signals(first_tx));
    let server = RunningServer::start(config, grpc, http, async {
        let _ = first_rx.await;
    })
    .await?;
    server.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Listens for SIGINT and SIGTERM for the life of the process: the first one is reported on
/// `first` (graceful stop), a second one exits at once. The listeners are created once: a
/// listener created after a signal arrived could see that same signal again.
async fn watch_signals(first: tokio::sync::oneshot::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot listen for SIGINT/SIGTERM: {e}");
            return;
        }
    };
    let mut first = Some(first);
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        match first.take() {
            Some(tx) => {
                let _ = tx.send(());
            }
            None => {
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    }
}
