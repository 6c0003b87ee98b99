//! Chorus load-test harness library: a real client that talks to the server over the
//! wire like an app does (WebSocket signaling + WebRTC audio), used by the integration
//! tests and by the `chorus-loadtest` harness.
//!
//! - [`audio`]: signal generators, Opus encode/decode, level and frequency measurement.
//! - [`stats`]: per-stream receive statistics (loss, duplicates, reordering, jitter,
//!   timestamp monotonicity, latency).
//! - [`registry`]: the in-process send-time registry that maps a received Opus payload
//!   back to its speaker and send time (end-to-end latency without touching payloads).
//! - [`signal`]: the WebSocket client speaking `signaling::protocol`.
//! - [`peer`]: the WebRTC peer that answers the server's offers, publishes and receives.
//! - [`session`]: the glue (connect, join room, join call, answer, publish, listen).
//! - [`listener`]: the receive-only client on the sans-I/O `rtc` core that load runs
//!   use for listeners (a fraction of the CPU per packet of [`peer`]).
//! - [`reception`]: per-slot and per-speaker receive accounting shared by both clients.
//! - [`harness`]: the load-test harness (scenarios, tokens, runner, report) behind
//!   `chorus-loadtest`.
//!
//! A speaker and a listener against a running server (base URL + access tokens):
//!
//! ```no_run
//! use loadtest::audio::Tone;
//! use loadtest::peer::PeerConfig;
//! use loadtest::registry::SendRegistry;
//! use loadtest::session::{DEFAULT_WS_PATH, Session, SessionConfig, ws_url};
//! use std::{sync::Arc, time::Duration};
//!
//! # async fn demo(owner_token: String, listener_token: String) -> loadtest::Result<()> {
//! let url = ws_url("http://127.0.0.1:5500", DEFAULT_WS_PATH);
//! // One registry per process: listeners get latency and exact speaker attribution.
//! let registry = Arc::new(SendRegistry::default());
//! let peer = PeerConfig { decode: true, registry: Some(registry), ..Default::default() };
//!
//! // The room owner joins as a moderator, unmuted: it talks once media is connected.
//! let mut cfg = SessionConfig::new(&url, owner_token, "room-id").speaking(Tone::new(440.0, 0.5));
//! cfg.peer = peer.clone();
//! let speaker = Session::connect(cfg).await?;
//! let speaker_id = speaker.participant_id().expect("joined");
//!
//! let mut cfg = SessionConfig::new(&url, listener_token, "room-id");
//! cfg.peer = peer;
//! let listener = Session::connect(cfg).await?;
//! let join_time = listener.wait_first_audio(Duration::from_secs(10)).await?;
//! let rx = listener.peer().expect("in the call");
//! rx.wait_until(Duration::from_secs(10), "a second of audio", |s| {
//!     s.sources.get(&speaker_id).is_some_and(|st| st.packets >= 50)
//! })
//! .await?;
//! let heard = rx.source_frequency(speaker_id); // Some(~440.0)
//! let stats = &rx.snapshot().sources[&speaker_id]; // loss, jitter, latency, ...
//! # let _ = (join_time, heard, stats);
//! listener.leave().await;
//! speaker.leave().await;
//! # Ok(())
//! # }
//! ```
//!
//! A listener on the `rtc` engine: `cfg.engine = loadtest::session::Engine::Rtc`, then
//! [`session::Session::media`] gives the same snapshots.

pub mod audio;
pub mod harness;
pub mod listener;
pub mod peer;
pub mod reception;
pub mod registry;
pub mod session;
pub mod signal;
pub mod stats;

pub use signaling::protocol;

/// Everything that can go wrong in the client. Server misbehaviour is reported here,
/// never as a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        what: String,
        after: std::time::Duration,
    },
    #[error("signaling connection closed")]
    Closed,
    #[error("server error {code:?}: {message}")]
    Server {
        code: protocol::ErrorCode,
        message: String,
        fatal: bool,
    },
    /// The server sent something this client cannot work with (bad SDP layout, ...).
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Waits until a connection-state channel says connected; a failed or closed
/// connection is an error. `what` names the connection in errors.
pub(crate) async fn wait_connected(
    conn: &tokio::sync::watch::Sender<rtc::peer_connection::state::RTCPeerConnectionState>,
    deadline: std::time::Duration,
    what: &str,
) -> Result<()> {
    use rtc::peer_connection::state::RTCPeerConnectionState as State;
    let mut conn = conn.subscribe();
    within(deadline, format!("{what} to connect"), async {
        loop {
            match *conn.borrow_and_update() {
                State::Connected => return Ok(()),
                State::Failed | State::Closed => {
                    return Err(Error::Protocol(format!("{what} failed")));
                }
                _ => {}
            }
            conn.changed().await.map_err(|_| Error::Closed)?;
        }
    })
    .await
}

/// Waits until the first-packet channel holds a time.
pub(crate) async fn wait_first_packet(
    first: &tokio::sync::watch::Sender<Option<std::time::Instant>>,
    deadline: std::time::Duration,
) -> Result<std::time::Instant> {
    let mut w = first.subscribe();
    within(deadline, "the first audio packet", async {
        loop {
            if let Some(t) = *w.borrow_and_update() {
                return Ok(t);
            }
            w.changed().await.map_err(|_| Error::Closed)?;
        }
    })
    .await
}

/// Runs `fut` with a deadline, turning expiry into [`Error::Timeout`].
pub(crate) async fn within<T>(
    after: std::time::Duration,
    what: impl Into<String>,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            what: what.into(),
            after,
        }),
    }
}
