//! The `chorus` server as a library, so integration tests start the real thing
//! in-process: [`start`] opens the store, starts the SFU's media thread and the
//! signaling service, wires them to the control plane, and serves HTTP, the
//! WebSocket, the web client and `/metrics`. `main.rs` only adds config loading,
//! logging and signal handling.

pub mod cluster_redis;
pub mod config;
pub mod serve;
pub mod telemetry;
mod web;
pub mod wiring;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use api::AppState;
use api::store::{MongoStore, SqliteStore, Store};
use signaling::{Signaling, SignalingPorts};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use telemetry::Telemetry;

/// A running server. Dropping it does not stop it: call [`Server::shutdown`].
pub struct Server {
    /// Where HTTP, the WebSocket and the web client are served.
    pub http_addr: SocketAddr,
    /// The first media thread's UDP socket (`sfu.local_addrs()` has them all).
    pub media_addr: SocketAddr,
    /// `/metrics` when it has its own port.
    pub metrics_addr: Option<SocketAddr>,
    pub signaling: Signaling,
    pub sfu: media::Sfu,
    pub telemetry: Telemetry,
    /// The control plane's store (tests create users and read what was stored).
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// A token that stops the server when cancelled (e.g. from a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Completes when the server has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.signaling.shutdown();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Stops accepting, closes every WebSocket, lets in-flight requests finish, stops
    /// the media thread.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// Starts every part of the server and returns once the sockets are bound.
pub async fn start(cfg: Config) -> anyhow::Result<Server> {
    let shutdown = CancellationToken::new();
    let telemetry = Telemetry::new()?;

    let timed = api::store::Timed::new(open_store(&cfg).await?, telemetry.store_observer());
    let store: Arc<dyn Store> = Arc::new(if cfg.mongo_uri.is_some() {
        timed.with_deadline(cfg.mongo_settings()?.1)
    } else {
        timed
    });
    let api_config = cfg.api_config()?;
    if !api_config.secure_cookies {
        tracing::warn!("cookies are sent without Secure (INSECURE_COOKIES): development only");
    }
    let base_url = api_config.base_url.clone();
    let state =
        AppState::new(store.clone(), api_config, cfg.jwt_secrets()?).with_sms(cfg.sms_sender()?);

    let (sfu, sfu_events) = media::Sfu::start(cfg.sfu_config()?).context("starting the SFU")?;
    let media_addrs: Vec<String> = sfu.local_addrs().iter().map(|a| a.to_string()).collect();
    tracing::info!(
        sockets = %media_addrs.join(","),
        "media sockets bound (UDP, one per media thread)"
    );
    telemetry.register_sfu(sfu.clone())?;

    let ports = SignalingPorts {
        auth: Arc::new(wiring::ApiAuthenticator {
            verifier: state.token_verifier(),
            store: store.clone(),
            base_url,
        }),
        directory: Arc::new(wiring::ApiRoomDirectory {
            store: store.clone(),
        }),
        chat: Arc::new(wiring::ApiChatStore {
            state: state.clone(),
        }),
        media: Arc::new(sfu.clone()),
    };
    let signaling = match cfg.cluster_settings()? {
        None => Signaling::new(
            cfg.signaling_config()?,
            ports,
            signaling::sfu_events(sfu_events),
        ),
        Some(settings) => {
            let store = cluster_redis::RedisCluster::start(settings, shutdown.clone()).await?;
            Signaling::with_cluster(
                cfg.signaling_config()?,
                ports,
                signaling::sfu_events(sfu_events),
                signaling::cluster::Cluster {
                    store,
                    relay: Arc::new(wiring::SfuRelay(sfu.clone())),
                },
            )
        }
    };
    telemetry.register_signaling(signaling.clone())?;
    let state = state.with_live_rooms(Arc::new(wiring::SignalingLiveRooms {
        signaling: signaling.clone(),
    }));

    let mut limits = cfg.http_limits()?;
    let fd_limit = serve::raise_fd_limit();
    limits.max_connections = serve::effective_cap(limits.max_connections, fd_limit);
    tracing::info!(
        max_connections = limits.max_connections,
        open_files_limit = fd_limit,
        "connection cap"
    );
    let conn_stats = Arc::new(serve::ConnStats::default());
    telemetry.register_connections(conn_stats.clone())?;

    let mut tasks = Vec::new();
    let sweeper = api::sweeper::spawn_sweeper(state.clone(), shutdown.clone().cancelled_owned());
    tasks.push(tokio::spawn(async move {
        let _ = sweeper.await;
    }));

    let mut app = api::router(state).merge(signaling.routes());
    let metrics_addr = match cfg.metrics_port {
        Some(port) => {
            let addr = SocketAddr::new(cfg.host, port);
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics {addr}"))?;
            let bound = listener.local_addr()?;
            tasks.push(serve::serve(
                listener,
                telemetry.routes(),
                limits.clone(),
                Arc::new(serve::ConnStats::default()),
                shutdown.clone(),
            ));
            tracing::info!(addr = %bound, "metrics listening");
            Some(bound)
        }
        None => {
            app = app.merge(telemetry.routes());
            None
        }
    };
    let app = telemetry.instrument(serve::with_request_timeout(
        app.merge(web::routes(&cfg.base_url)),
        limits.request_timeout,
    ));

    let addr = SocketAddr::new(cfg.host, cfg.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let http_addr = listener.local_addr()?;
    tracing::info!(addr = %http_addr, "chorus listening (HTTP, WebSocket /ws, web client /)");
    tasks.push(serve::serve(
        listener,
        app,
        limits,
        conn_stats,
        shutdown.clone(),
    ));

    Ok(Server {
        http_addr,
        media_addr: sfu.local_addr(),
        metrics_addr,
        signaling,
        sfu,
        telemetry,
        store,
        shutdown,
        tasks,
    })
}

async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(uri) = &cfg.mongo_uri {
        let expiry =
            std::time::Duration::from_secs(u64::try_from(cfg.room_expiry_days.max(1))? * 86_400);
        // Does not wait for the database: until it answers, requests get 503 and
        // `/api/ready` says so; the store connects on its own once it is up.
        let store = MongoStore::open(uri, expiry, &cfg.mongo_settings()?.0)
            .await
            .context("MongoDB connection string")?;
        tracing::info!("using the MongoDB store");
        return Ok(Arc::new(store));
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
