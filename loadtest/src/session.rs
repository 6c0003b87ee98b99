//! A participant, end to end: WebSocket connect with the token -> `join_room` ->
//! `join_call` -> answer the server's offer -> connected -> publishing and/or listening.
//! A background task keeps answering renegotiation offers (role change, ICE restart),
//! applies `slots` to the peer's attribution, tracks the participant list, and
//! forwards every server message to the test through [`Session::wait_event`].
//!
//! Join time is measured from the moment [`Session::connect`] is called with a token in
//! hand to the first audio packet received ([`Session::join_time`]).

use crate::audio::SignalSource;
use crate::listener::RtcListener;
use crate::peer::{ClientPeer, OfferLayout, PeerConfig};
use crate::protocol::{ClientMessage, Participant, ParticipantId, Role, ServerMessage};
use crate::reception::RxSnapshot;
use crate::signal::{Auth, SignalClient, SignalReceiver, SignalSender};
use crate::{Error, Result};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Path of the signaling WebSocket on the server (appended to the base URL).
pub const DEFAULT_WS_PATH: &str = "/ws";
/// Server messages buffered for the test; beyond this they are dropped and counted.
const EVENT_BUFFER: usize = 4096;

/// Turns `http://host:port` (or `https://`) plus a path into the WebSocket URL.
pub fn ws_url(base_url: &str, path: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}{path}")
}

/// Which client carries the session's media.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The async `webrtc` [`ClientPeer`]: publishes and receives, decodes on request.
    #[default]
    Webrtc,
    /// The sans-I/O [`RtcListener`]: receives only, a fraction of the CPU per packet.
    Rtc,
}

impl std::str::FromStr for Engine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "webrtc" => Ok(Engine::Webrtc),
            "rtc" => Ok(Engine::Rtc),
            other => Err(Error::Invalid(format!(
                "unknown engine {other:?} (expected rtc or webrtc)"
            ))),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Webrtc => "webrtc",
            Engine::Rtc => "rtc",
        })
    }
}

/// A session's media connection, whichever engine carries it.
#[derive(Clone)]
pub enum Media {
    Webrtc(Arc<ClientPeer>),
    Rtc(Arc<RtcListener>),
}

impl Media {
    /// Statistics of everything received so far.
    pub fn snapshot(&self) -> RxSnapshot {
        match self {
            Media::Webrtc(p) => p.snapshot(),
            Media::Rtc(l) => l.snapshot(),
        }
    }

    /// Packets received from `source` so far.
    pub fn packets_from(&self, source: ParticipantId) -> u64 {
        match self {
            Media::Webrtc(p) => p.packets_from(source),
            Media::Rtc(l) => l.packets_from(source),
        }
    }

    /// Forgets the latency samples kept so far.
    pub fn clear_latency(&self) {
        match self {
            Media::Webrtc(p) => p.clear_latency(),
            Media::Rtc(l) => l.clear_latency(),
        }
    }

    /// When the first audio packet arrived (any slot).
    pub fn first_packet_at(&self) -> Option<Instant> {
        match self {
            Media::Webrtc(p) => p.first_packet_at(),
            Media::Rtc(l) => l.first_packet_at(),
        }
    }

    /// Waits for the first audio packet on any slot.
    pub async fn wait_first_packet(&self, deadline: Duration) -> Result<Instant> {
        match self {
            Media::Webrtc(p) => p.wait_first_packet(deadline).await,
            Media::Rtc(l) => l.wait_first_packet(deadline).await,
        }
    }

    /// The async peer, when that is the engine.
    pub fn webrtc(&self) -> Option<&ClientPeer> {
        match self {
            Media::Webrtc(p) => Some(p),
            Media::Rtc(_) => None,
        }
    }

    /// The rtc listener, when that is the engine.
    pub fn rtc(&self) -> Option<&RtcListener> {
        match self {
            Media::Webrtc(_) => None,
            Media::Rtc(l) => Some(l),
        }
    }

    fn set_slot_map(&self, slots: &[Option<ParticipantId>]) {
        match self {
            Media::Webrtc(p) => p.set_slot_map(slots),
            Media::Rtc(l) => l.set_slot_map(slots),
        }
    }

    async fn answer_offer(&self, sdp: &str, layout: &OfferLayout) -> Result<String> {
        match self {
            Media::Webrtc(p) => p.answer_offer(sdp, layout, true).await,
            Media::Rtc(l) => l.answer_offer(sdp, layout),
        }
    }

    async fn wait_connected(&self, deadline: Duration) -> Result<()> {
        match self {
            Media::Webrtc(p) => p.wait_connected(deadline).await,
            Media::Rtc(l) => l.wait_connected(deadline).await,
        }
    }

    async fn close(&self) {
        match self {
            Media::Webrtc(p) => p.close().await,
            Media::Rtc(l) => l.close(),
        }
    }
}

/// How to join.
pub struct SessionConfig {
    /// Full WebSocket URL, e.g. `ws_url("http://127.0.0.1:8080", DEFAULT_WS_PATH)`.
    pub ws_url: String,
    pub auth: Auth,
    pub room_id: String,
    /// Join the call (audio) right after the room; false = chat/presence only.
    pub join_call: bool,
    /// What to say once connected, if the role allows publishing (speakers). Also
    /// sent after a promotion if it was refused at join.
    pub publish: Option<Box<dyn SignalSource>>,
    pub peer: PeerConfig,
    /// The media client; [`Engine::Rtc`] only listens (no `publish`).
    pub engine: Engine,
    /// Bound on each network step (connect, joined, offer, ICE/DTLS).
    pub step_timeout: Duration,
}

impl SessionConfig {
    pub fn new(
        ws_url: impl Into<String>,
        token: impl Into<String>,
        room_id: impl Into<String>,
    ) -> Self {
        Self {
            ws_url: ws_url.into(),
            auth: Auth::Bearer(token.into()),
            room_id: room_id.into(),
            join_call: true,
            publish: None,
            peer: PeerConfig::default(),
            engine: Engine::default(),
            step_timeout: Duration::from_secs(10),
        }
    }

    /// Speak this signal once connected.
    pub fn speaking(mut self, source: impl SignalSource + 'static) -> Self {
        self.publish = Some(Box::new(source));
        self
    }
}

/// Milestones of the join, for join-time measurement.
#[derive(Clone, Copy, Debug)]
pub struct JoinTimings {
    /// When `connect` was called (token in hand).
    pub started: Instant,
    pub ws_connected: Option<Instant>,
    pub joined_room: Option<Instant>,
    pub offer_received: Option<Instant>,
    pub media_connected: Option<Instant>,
}

/// Live view of the room as this participant sees it.
#[derive(Debug, Default)]
struct SessionState {
    me: Option<Participant>,
    participants: HashMap<ParticipantId, Participant>,
    slots: Vec<Option<ParticipantId>>,
    offers_answered: u64,
    removed: Option<String>,
    closed: bool,
    last_error: Option<String>,
    events_dropped: u64,
}

struct Inner {
    media: Option<Media>,
    state: Mutex<SessionState>,
    sender: SignalSender,
    /// Publishing wanted once the role allows it (held until then).
    pending_publish: Mutex<Option<Box<dyn SignalSource>>>,
    registry_me: Mutex<Option<ParticipantId>>,
}

/// A connected participant.
pub struct Session {
    inner: Arc<Inner>,
    events: mpsc::Receiver<ServerMessage>,
    task: tokio::task::JoinHandle<()>,
    timings: JoinTimings,
    resume_token: String,
    slot_count: usize,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    /// Connects, joins the room and (if configured) the call, and waits until media is
    /// connected. Every wait is bounded by `step_timeout`; a server `error` reply to a
    /// join step is returned as [`Error::Server`].
    pub async fn connect(mut cfg: SessionConfig) -> Result<Session> {
        let started = Instant::now();
        let step = cfg.step_timeout;
        if cfg.engine == Engine::Rtc && cfg.publish.is_some() {
            return Err(Error::Invalid(
                "the rtc engine only listens; speakers need the webrtc engine".into(),
            ));
        }
        let SignalClient {
            sender,
            mut receiver,
        } = SignalClient::connect(&cfg.ws_url, &cfg.auth, step).await?;
        let ws_connected = Some(Instant::now());
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_BUFFER);

        sender
            .send(&ClientMessage::JoinRoom {
                room_id: cfg.room_id.clone(),
                resume_token: None,
            })
            .await?;
        let mut state = SessionState::default();
        let (me, resume_token, ice_servers, slot_count) = loop {
            let m = receiver.recv(step).await?;
            let _ = ev_tx.try_send(m.clone());
            match m {
                ServerMessage::Joined {
                    you,
                    resume_token,
                    ice_servers,
                    slot_count,
                    ..
                } => break (you, resume_token, ice_servers, slot_count),
                ServerMessage::Error {
                    code,
                    message,
                    fatal,
                } => {
                    return Err(Error::Server {
                        code,
                        message,
                        fatal,
                    });
                }
                other => apply_room_event(&mut state, &other),
            }
        };
        let joined_room = Some(Instant::now());
        state.participants.insert(me.participant_id, me.clone());
        state.me = Some(me.clone());

        let mut timings = JoinTimings {
            started,
            ws_connected,
            joined_room,
            offer_received: None,
            media_connected: None,
        };

        let media = if cfg.join_call {
            let mut pcfg = cfg.peer.clone();
            if pcfg.ice_servers.is_empty() {
                pcfg.ice_servers = ice_servers;
            }
            Some(match cfg.engine {
                Engine::Webrtc => Media::Webrtc(Arc::new(ClientPeer::new(pcfg).await?)),
                Engine::Rtc => Media::Rtc(Arc::new(RtcListener::new(&pcfg).await?)),
            })
        } else {
            None
        };
        let inner = Arc::new(Inner {
            media: media.clone(),
            state: Mutex::new(state),
            sender: sender.clone(),
            pending_publish: Mutex::new(cfg.publish.take()),
            registry_me: Mutex::new(Some(me.participant_id)),
        });

        if let Some(peer) = &media {
            sender.send(&ClientMessage::JoinCall).await?;
            // Handle everything up to the first offer inline, so no `slots` is missed.
            loop {
                let m = receiver.recv(step).await?;
                if let ServerMessage::Error {
                    code,
                    message,
                    fatal,
                } = &m
                {
                    let _ = ev_tx.try_send(m.clone());
                    return Err(Error::Server {
                        code: *code,
                        message: message.clone(),
                        fatal: *fatal,
                    });
                }
                let is_offer = matches!(m, ServerMessage::Offer { .. });
                if is_offer {
                    timings.offer_received = Some(Instant::now());
                }
                inner.handle(m, &ev_tx).await?;
                if is_offer {
                    break;
                }
            }
            peer.wait_connected(step).await?;
            timings.media_connected = Some(Instant::now());
            inner.maybe_start_publishing().await?;
        }

        let task_inner = inner.clone();
        let task = tokio::spawn(async move {
            run(task_inner, receiver, ev_tx).await;
        });

        Ok(Session {
            inner,
            events: ev_rx,
            task,
            timings,
            resume_token,
            slot_count,
        })
    }

    /// This participant as the server described it (role updates included).
    pub fn me(&self) -> Option<Participant> {
        self.inner.state.lock().me.clone()
    }

    pub fn participant_id(&self) -> Option<ParticipantId> {
        self.inner
            .state
            .lock()
            .me
            .as_ref()
            .map(|p| p.participant_id)
    }

    /// Participants currently in the room, from `online_users` and the deltas.
    pub fn participants(&self) -> Vec<Participant> {
        self.inner
            .state
            .lock()
            .participants
            .values()
            .cloned()
            .collect()
    }

    /// The latest `slots` message.
    pub fn slots(&self) -> Vec<Option<ParticipantId>> {
        self.inner.state.lock().slots.clone()
    }

    pub fn slot_count(&self) -> usize {
        self.slot_count
    }

    pub fn resume_token(&self) -> &str {
        &self.resume_token
    }

    /// Offers answered so far (1 after joining; +1 per renegotiation).
    pub fn offers_answered(&self) -> u64 {
        self.inner.state.lock().offers_answered
    }

    /// Why the server removed us, if it did.
    pub fn removed(&self) -> Option<String> {
        self.inner.state.lock().removed.clone()
    }

    /// The signaling connection ended.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().closed
    }

    /// Last failure of the background task (e.g. a renegotiation it could not answer).
    pub fn last_error(&self) -> Option<String> {
        self.inner.state.lock().last_error.clone()
    }

    /// The async WebRTC peer (stats, decoded audio, publishing); `None` without
    /// `join_call` or with the rtc engine (see [`Session::media`]).
    pub fn peer(&self) -> Option<&ClientPeer> {
        self.inner.media.as_ref().and_then(Media::webrtc)
    }

    /// The media connection, whichever engine carries it; `None` without `join_call`.
    pub fn media(&self) -> Option<&Media> {
        self.inner.media.as_ref()
    }

    pub fn timings(&self) -> JoinTimings {
        self.timings
    }

    /// Token-to-first-audio-packet, once audio has arrived.
    pub fn join_time(&self) -> Option<Duration> {
        let first = self.inner.media.as_ref()?.first_packet_at()?;
        Some(first.saturating_duration_since(self.timings.started))
    }

    /// Waits for the first audio packet and returns the join time.
    pub async fn wait_first_audio(&self, deadline: Duration) -> Result<Duration> {
        let peer = self
            .inner
            .media
            .as_ref()
            .ok_or_else(|| Error::Invalid("session did not join the call".into()))?;
        let first = peer.wait_first_packet(deadline).await?;
        Ok(first.saturating_duration_since(self.timings.started))
    }

    /// Sends a protocol message.
    pub async fn send(&self, msg: &ClientMessage) -> Result<()> {
        self.inner.sender.send(msg).await
    }

    /// Sends a raw text frame (malformed-input tests).
    pub async fn send_raw(&self, text: impl Into<String>) -> Result<()> {
        self.inner.sender.send_raw(text.into()).await
    }

    /// Next server message that `pick` accepts (others are skipped), within `deadline`.
    /// Every server message is seen here, including those the session acted on.
    pub async fn wait_event<T>(
        &mut self,
        deadline: Duration,
        mut pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Result<T> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(end, self.events.recv()).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        what: "a server event".into(),
                        after: deadline,
                    });
                }
                Ok(None) => return Err(Error::Closed),
                Ok(Some(m)) => {
                    if let Some(t) = pick(&m) {
                        return Ok(t);
                    }
                }
            }
        }
    }

    /// Starts (or replaces) what this participant says. If the role does not allow
    /// publishing yet, it starts after a promotion's renegotiation.
    pub async fn start_publishing(&self, source: Box<dyn SignalSource>) -> Result<()> {
        *self.inner.pending_publish.lock() = Some(source);
        self.inner.maybe_start_publishing().await
    }

    pub fn stop_publishing(&self) {
        if let Some(p) = self.peer() {
            p.stop_publishing();
        }
    }

    pub async fn mute(&self) -> Result<()> {
        self.send(&ClientMessage::Mute).await
    }

    pub async fn unmute(&self) -> Result<()> {
        self.send(&ClientMessage::Unmute).await
    }

    /// Asks the server for an ICE restart; the offer is answered in the background.
    pub async fn restart_ice(&self) -> Result<()> {
        self.send(&ClientMessage::RestartIce).await
    }

    /// Leaves politely: `leave_call`, `leave_room`, then closes everything (bounded).
    pub async fn leave(self) {
        let _ = self.inner.sender.send(&ClientMessage::LeaveCall).await;
        let _ = self.inner.sender.send(&ClientMessage::LeaveRoom).await;
        self.inner.sender.close().await;
        if let Some(m) = &self.inner.media {
            m.close().await;
        }
    }

    /// Vanishes without a word (a killed client): stops the tasks and the media
    /// sockets, drops the WebSocket without a close frame.
    pub async fn kill(self) {
        self.task.abort();
        if let Some(m) = &self.inner.media {
            m.close().await;
        }
    }
}

impl Inner {
    /// Acts on one server message, then forwards it to the test.
    async fn handle(&self, m: ServerMessage, events: &mpsc::Sender<ServerMessage>) -> Result<()> {
        let result = match &m {
            ServerMessage::Offer {
                sdp,
                publish_mid,
                slot_mids,
            } => match &self.media {
                Some(media) => {
                    let layout = OfferLayout {
                        publish_mid: publish_mid.clone(),
                        slot_mids: slot_mids.clone(),
                    };
                    let answer = media.answer_offer(sdp, &layout).await;
                    match answer {
                        Ok(sdp) => {
                            self.state.lock().offers_answered += 1;
                            let r = self.sender.send(&ClientMessage::Answer { sdp }).await;
                            if r.is_ok() {
                                self.maybe_start_publishing().await?;
                            }
                            r
                        }
                        Err(e) => Err(e),
                    }
                }
                None => Err(Error::Protocol(
                    "offer received without joining the call".into(),
                )),
            },
            ServerMessage::Slots { slots } => {
                if let Some(m) = &self.media {
                    m.set_slot_map(slots);
                }
                self.state.lock().slots = slots.clone();
                Ok(())
            }
            other => {
                apply_room_event(&mut self.state.lock(), other);
                Ok(())
            }
        };
        if events.try_send(m).is_err() {
            self.state.lock().events_dropped += 1;
        }
        result
    }

    /// Starts the pending signal once the mic is negotiated for sending and media is
    /// connected (earlier packets would be dropped before SRTP is ready).
    async fn maybe_start_publishing(&self) -> Result<()> {
        let Some(peer) = self.media.as_ref().and_then(Media::webrtc) else {
            return Ok(());
        };
        if peer.send_params().is_none()
            || peer.connection_state() != webrtc::peer_connection::RTCPeerConnectionState::Connected
        {
            return Ok(());
        }
        let Some(source) = self.pending_publish.lock().take() else {
            return Ok(());
        };
        let me = *self.registry_me.lock();
        peer.start_publishing(source, me).await
    }
}

/// Room bookkeeping shared by the setup phase and the background task.
fn apply_room_event(state: &mut SessionState, m: &ServerMessage) {
    match m {
        ServerMessage::OnlineUsers { participants } => {
            state.participants = participants
                .iter()
                .map(|p| (p.participant_id, p.clone()))
                .collect();
        }
        ServerMessage::ParticipantJoined { participant }
        | ServerMessage::ParticipantUpdated { participant } => {
            if state
                .me
                .as_ref()
                .is_some_and(|me| me.participant_id == participant.participant_id)
            {
                state.me = Some(participant.clone());
            }
            state
                .participants
                .insert(participant.participant_id, participant.clone());
        }
        ServerMessage::ParticipantLeft { participant_id } => {
            state.participants.remove(participant_id);
        }
        ServerMessage::Removed { reason } => state.removed = Some(reason.clone()),
        ServerMessage::Error { message, .. } => state.last_error = Some(message.clone()),
        _ => {}
    }
}

async fn run(inner: Arc<Inner>, mut receiver: SignalReceiver, events: mpsc::Sender<ServerMessage>) {
    loop {
        match receiver.recv(Duration::from_secs(3600)).await {
            Ok(m) => {
                if let Err(e) = inner.handle(m, &events).await {
                    tracing::warn!(error = %e, "session could not act on a server message");
                    inner.state.lock().last_error = Some(e.to_string());
                }
            }
            Err(Error::Timeout { .. }) => continue,
            Err(_) => {
                inner.state.lock().closed = true;
                return;
            }
        }
    }
}

/// Role helper for tests: does the server currently let this participant publish?
pub fn may_publish(p: &Participant) -> bool {
    Role::can_publish(p.role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_swaps_the_scheme_and_appends_the_path() {
        assert_eq!(
            ws_url("http://127.0.0.1:8080", "/ws"),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(ws_url("https://x.example/", "/ws"), "wss://x.example/ws");
        assert_eq!(ws_url("ws://h:1", "/a"), "ws://h:1/a");
    }
}
