//! `nereid`: parse the flags, start logging (and OTLP export), bind, run the server until
//! SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;

use nereid::Cli;
use nereid::{Listeners, RunningServer};

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
    let guard =
        match nereid::init_logging(&config.log.settings(), rust_log.as_deref(), &config.trace) {
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
    // A load abandoned at shutdown may still be creating a session on a blocking thread: do
    // not wait for it (dropping the runtime would), the process is exiting.
    drop(_rt);
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: nereid::ServerConfig) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    // The first SIGINT/SIGTERM starts a graceful stop; a second one exits at once.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(watch_signals(first_tx));
    let server = RunningServer::start(config, listeners, async {
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
