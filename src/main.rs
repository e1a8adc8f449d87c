//! The `credgate` binary: parse the command line, start logging, run.

use clap::Parser;
use credgate::cli::{self, Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // Administrative commands print their result alone; only `serve` chats.
    let filter = match cli.command {
        cli::Command::Serve { .. } => cli.settings.log.clone(),
        _ => std::env::var("CREDGATE_LOG").unwrap_or_else(|_| "error".into()),
    };
    credgate::telemetry::init(&filter, &cli.settings.log_format);
    if let Err(e) = cli::run(cli, shutdown_signal()).await {
        eprintln!("credgate: {e:#}");
        std::process::exit(1);
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
