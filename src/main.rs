//! The `chorus` binary: reads configuration (flags, environment, `.env`), sets up
//! logging, starts the server (`chorus::start`) and stops it on SIGINT/SIGTERM.
//! Deliberately thin: all behaviour lives in the library and the crates.

use chorus::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `.env` first, so its variables count as environment for the flags below.
    let dotenv = dotenvy::dotenv();
    let cfg = Config::load();
    init_tracing(cfg.log_format);
    if let Ok(path) = dotenv {
        tracing::info!(path = %path.display(), "loaded .env");
    }
    let server = chorus::start(cfg).await?;
    tokio::spawn(cancel_on_signal(server.shutdown_token()));
    server.wait().await;
    tracing::info!("chorus stopped");
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour escape codes only for a person at a terminal, never into files or collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (container stop) by cancelling `token`.
async fn cancel_on_signal(token: tokio_util::sync::CancellationToken) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
    token.cancel();
}
