//! The `chorus` binary: reads configuration, opens the store, builds the HTTP app from
//! the control plane (and, later, the signaling/media side), serves it, and shuts down
//! cleanly on SIGINT/SIGTERM. Deliberately thin: all behaviour lives in the crates.

mod config;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use api::ApiConfig;
use api::AppState;
use api::store::{MongoStore, SqliteStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `.env` first, so its variables count as environment for the flags below.
    let dotenv = dotenvy::dotenv();
    let cfg = Config::load();
    init_tracing(cfg.log_format);
    if let Ok(path) = dotenv {
        tracing::info!(path = %path.display(), "loaded .env");
    }

    let shutdown = CancellationToken::new();
    let state = control_plane(&cfg).await?;
    let sweeper = api::sweeper::spawn_sweeper(state.clone(), shutdown.clone().cancelled_owned());

    // Signaling and static routes are merged here.
    let app = api::router(state);

    let addr = SocketAddr::new(cfg.host, cfg.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "chorus listening");

    tokio::spawn(cancel_on_signal(shutdown.clone()));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
    .await
    .context("HTTP server")?;

    shutdown.cancel();
    let _ = sweeper.await;
    tracing::info!("chorus stopped");
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The control plane's state: store, settings, secrets, SMS sender.
async fn control_plane(cfg: &Config) -> anyhow::Result<AppState> {
    let api_config = cfg.api_config()?;
    let store = open_store(cfg, &api_config).await?;
    if !api_config.secure_cookies {
        tracing::warn!("cookies are sent without Secure (INSECURE_COOKIES): development only");
    }
    let secrets = cfg.jwt_secrets()?;
    let sms = cfg.sms_sender()?;
    Ok(AppState::new(store, api_config, secrets).with_sms(sms))
}

async fn open_store(cfg: &Config, api_config: &ApiConfig) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(uri) = &cfg.mongo_uri {
        // The TTL index on rooms' lastActivity uses the same expiry as the sweeper.
        let expiry =
            std::time::Duration::from_secs(api_config.room_expiry.whole_seconds().max(1) as u64);
        return open_mongo(uri, expiry).await;
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let path = cfg.data_dir.join("chorus.sqlite3");
    let store = SqliteStore::open(&path)
        .await
        .with_context(|| format!("opening SQLite database {}", path.display()))?;
    tracing::info!(path = %path.display(), "using the embedded SQLite store");
    Ok(Arc::new(store))
}

async fn open_mongo(uri: &str, room_expiry: std::time::Duration) -> anyhow::Result<Arc<dyn Store>> {
    // The database is the one named in the URI's path (default "chorus").
    let store = MongoStore::connect_uri(uri, room_expiry)
        .await
        .context("connecting to MongoDB (MONGO_URI)")?;
    tracing::info!("using the MongoDB store");
    Ok(Arc::new(store))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (container stop) by cancelling `token`.
async fn cancel_on_signal(token: CancellationToken) {
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
