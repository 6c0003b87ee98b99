//! The `Signaling` handle: construction from config and ports, the axum routes with
//! the WebSocket upgrade (token extraction), the media event pump, and the room-level
//! operations shared by sessions, grace timers and media events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use axum::Router;
use axum::extract::State as AxumState;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use axum::routing::get;
use futures::StreamExt;
use media::{RoomKey, SfuEvent};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, cluster_room_key};
use crate::config::SignalingConfig;
use crate::ports::{
    AuthUser, Authenticator, CallEvent, ChatStore, MediaControl, MediaEvents, RoomDirectory,
};
use crate::protocol::{ChatMessage, ErrorCode, ParticipantId, Role, ServerMessage, SpeakerLevel};
use crate::rooms::{CallPhase, Part, RoomSnapshot, SignalingStats, State};
use crate::session;

/// Close code for a room that ended: the connection did its job and is not to be
/// resumed (the client learns why from the `removed` message before it).
const CLOSE_NORMAL: u16 = 1000;

/// The trait objects signaling is built from (the binary's adapters, or test fakes).
#[derive(Clone)]
pub struct SignalingPorts {
    pub auth: Arc<dyn Authenticator>,
    pub directory: Arc<dyn RoomDirectory>,
    pub chat: Arc<dyn ChatStore>,
    pub media: Arc<dyn MediaControl>,
}

/// Cheap, cloneable handle to the signaling service.
#[derive(Clone)]
pub struct Signaling {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: SignalingConfig,
    pub(crate) ports: SignalingPorts,
    /// All live state; never locked across an await.
    pub(crate) state: Mutex<State>,
    next_pid: AtomicU64,
    next_room: AtomicU64,
    next_conn: AtomicU64,
    /// Authenticated sockets currently open (for metrics).
    pub(crate) open_connections: AtomicU64,
    /// Parent of every connection's cancellation token: `shutdown()` closes all.
    pub(crate) shutdown: CancellationToken,
    /// Cluster mode (`REDIS_URL`): the shared store and the media relay. `None` on a
    /// single node, where nothing of `crate::distributed` runs.
    pub(crate) cluster: Option<Cluster>,
    /// Cluster mode: per room, the relay address published and the nodes this one
    /// forwards audio to (changed by relay reconciliations, one at a time).
    pub(crate) relays: Mutex<std::collections::HashMap<String, crate::distributed::RelayState>>,
    /// Serialises relay reconciliations (heartbeat and event driven), so an older read of
    /// the store never undoes a newer one.
    pub(crate) relay_reconcile: tokio::sync::Mutex<()>,
    /// Cluster mode: a write to the store failed; the next heartbeat writes everything
    /// this node owns again.
    pub(crate) resync_needed: std::sync::atomic::AtomicBool,
}

impl Signaling {
    /// Builds the service and starts the task that consumes `media_events`.
    /// Must be called inside a Tokio runtime.
    pub fn new(cfg: SignalingConfig, ports: SignalingPorts, media_events: MediaEvents) -> Self {
        Self::build(cfg, ports, media_events, None)
    }

    /// `new` for one node of a cluster: rooms span the nodes that share `cluster`'s
    /// store (docs/ARCHITECTURE.md, *Running several nodes*).
    pub fn with_cluster(
        cfg: SignalingConfig,
        ports: SignalingPorts,
        media_events: MediaEvents,
        cluster: Cluster,
    ) -> Self {
        Self::build(cfg, ports, media_events, Some(cluster))
    }

    fn build(
        cfg: SignalingConfig,
        ports: SignalingPorts,
        media_events: MediaEvents,
        cluster: Option<Cluster>,
    ) -> Self {
        let first_pid = cluster
            .as_ref()
            .map_or(1, |c| c.store.pid_base().saturating_add(1));
        let mut state = State::default();
        let outbound = cluster.as_ref().map(|c| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            state.cluster = Some(crate::rooms::ClusterLink {
                node: c.store.node_id().to_owned(),
                tx,
            });
            rx
        });
        let inner = Arc::new(Inner {
            cfg,
            ports,
            state: Mutex::new(state),
            next_pid: AtomicU64::new(first_pid),
            next_room: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            open_connections: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            cluster,
            relays: Mutex::new(Default::default()),
            relay_reconcile: tokio::sync::Mutex::new(()),
            resync_needed: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(media_pump(Arc::downgrade(&inner), media_events));
        if let (Some(c), Some(rx)) = (&inner.cluster, outbound) {
            tokio::spawn(crate::distributed::publisher(
                Arc::downgrade(&inner),
                c.store.clone(),
                rx,
            ));
            tokio::spawn(crate::distributed::input_pump(
                Arc::downgrade(&inner),
                c.store.inputs(),
            ));
        }
        Signaling { inner }
    }

    /// The WebSocket endpoint, at `/ws` and (same handler) `/api/ws`, so it works both
    /// at the server root and behind a proxy that forwards only `/api/*`.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/ws", get(ws_upgrade))
            .route("/api/ws", get(ws_upgrade))
            .with_state(self.inner.clone())
    }

    /// Live participant count and speakers of a room; `None` when nobody is in it.
    /// Only takes a short lock: no awaits, nothing on the media thread.
    pub fn room_snapshot(&self, room_id: &str) -> Option<RoomSnapshot> {
        self.inner.state.lock().snapshot(room_id)
    }

    /// Ids of the rooms with at least one participant (waiting-to-resume ones included).
    pub fn occupied_rooms(&self) -> Vec<String> {
        self.inner.state.lock().rooms.keys().cloned().collect()
    }

    /// Sends a message stored elsewhere (e.g. posted or uploaded over HTTP) to everyone
    /// in the room as `receive_message`, serialised once. Never waits: a slow client's
    /// full queue disconnects it, as for any broadcast. A room nobody is in is a no-op.
    pub fn broadcast_message(&self, room_id: &str, message: ChatMessage) {
        self.inner
            .state
            .lock()
            .announce(room_id, ServerMessage::ReceiveMessage { message });
    }

    /// Tells everyone in the room that a message was deleted elsewhere (e.g. over HTTP).
    pub fn broadcast_message_deleted(&self, room_id: &str, message_id: &str) {
        self.inner.state.lock().announce(
            room_id,
            ServerMessage::MessageDeleted {
                message_id: message_id.to_owned(),
            },
        );
    }

    /// Ends a live room (e.g. it was deleted): each participant gets `removed` with
    /// `reason` and its socket is closed; every participant, including those waiting
    /// to resume, leaves the room and the call. Nothing is stored: the room is gone,
    /// so no call-left notices are written for it. Never waits. Returns how many
    /// participants were removed (0 when nobody was in the room).
    pub fn close_room(&self, room_id: &str, reason: &str) -> usize {
        self.inner
            .state
            .lock()
            .publish(crate::cluster::ClusterEvent::CloseRoom {
                room_id: room_id.to_owned(),
                reason: reason.to_owned(),
            });
        self.inner.close_room_here(room_id, reason)
    }

    /// Node id in cluster mode.
    pub fn node_id(&self) -> Option<&str> {
        self.inner.cluster.as_ref().map(|c| c.store.node_id())
    }
}

impl Inner {
    /// `Signaling::close_room` on this node only.
    pub(crate) fn close_room_here(&self, room_id: &str, reason: &str) -> usize {
        let removed = self.state.lock().close_room(
            room_id,
            &ServerMessage::Removed {
                reason: reason.to_owned(),
            },
            CLOSE_NORMAL,
            "room closed",
        );
        // Outside the state lock: `leave` only queues a command for the media thread.
        for part in &removed {
            if part.call != CallPhase::Idle {
                self.ports.media.leave(part.info.participant_id);
            }
        }
        removed.len()
    }
}

impl Signaling {
    /// Live counts for metrics. Walks the participants under the state lock: call it
    /// at scrape time, not per packet.
    pub fn stats(&self) -> SignalingStats {
        let mut s = self.inner.state.lock().stats();
        s.connections = self.inner.open_connections.load(Ordering::Relaxed);
        s
    }

    /// Closes every WebSocket (close code 1001) and stops accepting work on them.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    pub fn config(&self) -> &SignalingConfig {
        &self.inner.cfg
    }
}

/// Read buffer of each WebSocket connection while it reads; between messages a connection
/// keeps none (tungstenite, patched: PATCHES.md).
const WS_READ_BUFFER: usize = 4 * 1024;
/// Write buffer each WebSocket connection keeps between messages: none. The writer task
/// flushes every message anyway, and tungstenite (patched, PATCHES.md) gives back what a
/// message needed once it is written, so an idle connection holds no copy of the largest
/// message it was sent (a join's snapshot of a room of thousands is ~100 KiB).
const WS_WRITE_BUFFER: usize = 0;

/// Authenticates before upgrading, but always upgrades: a browser cannot read an HTTP
/// 401 on a WebSocket, so a refused client gets `error{unauthorized, fatal}` and a
/// close frame instead.
async fn ws_upgrade(
    AxumState(inner): AxumState<Arc<Inner>>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    // Where the token may come from, and in which order, is the Authenticator's rule
    // (the control plane's, the same as for its HTTP API): signaling hands over what
    // the upgrade request presented.
    let auth = inner.ports.auth.authenticate(&headers, uri.query()).await;
    // Frames between the configured limit and 4x it are read and answered with
    // `too_large`; anything bigger is cut off by the WebSocket layer itself.
    let hard_limit = inner.cfg.max_frame_bytes.saturating_mul(4).max(4096);
    // Signaling frames are small and rare: a 4 KiB read buffer per connection instead of
    // tungstenite's 128 KiB default (it grows for the occasional bigger frame), and no
    // write buffer kept (tungstenite's default batches up to 128 KiB before writing).
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| session::run(inner, socket, auth))
}

impl Inner {
    pub(crate) fn next_pid(&self) -> ParticipantId {
        ParticipantId(self.next_pid.fetch_add(1, Ordering::Relaxed))
    }

    /// The SFU's key for a room new on this node. On one node, the next number. In a
    /// cluster, every node must give a room the same key, because the media relay names
    /// rooms by key between nodes: the first 8 bytes of the SHA-256 of the room id (room
    /// ids are server-generated, so nobody can choose a collision); should one collide
    /// with a room already here anyway, the room gets a local number and no relay.
    pub(crate) fn room_key_for(&self, room_id: &str, taken: &HashMap<RoomKey, String>) -> RoomKey {
        if self.cluster.is_some() {
            let key = cluster_room_key(room_id);
            match taken.get(&key) {
                Some(other) if other != room_id => {
                    tracing::error!(
                        room_id,
                        other,
                        "room key collision; this room is not relayed"
                    );
                }
                _ => return key,
            }
        }
        RoomKey(self.next_room.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a participant out of its room for good: everyone else sees
    /// `participant_left`, media forgets it, and if it was in the call a call-left
    /// notice is stored and broadcast (in the background).
    pub(crate) fn remove_participant(self: &Arc<Self>, pid: ParticipantId) -> Option<Part> {
        self.remove_participant_if(pid, |_| true)
    }

    /// `remove_participant`, if `pred` holds for it; checked under the same lock as
    /// the removal so a concurrent resume cannot slip in between.
    pub(crate) fn remove_participant_if(
        self: &Arc<Self>,
        pid: ParticipantId,
        pred: impl FnOnce(&Part) -> bool,
    ) -> Option<Part> {
        let part = {
            let mut st = self.state.lock();
            if !st.parts.get(&pid).is_some_and(pred) {
                return None;
            }
            let part = st.remove_and_announce(pid)?;
            if part.info.role == Role::Moderator {
                st.hand_over_moderation(&part.room_id);
            }
            part
        };
        self.after_removal(&part);
        Some(part)
    }

    /// The rest of a removal, outside the state lock: media forgets the participant,
    /// and if it was in the call a call-left notice is stored and broadcast (in the
    /// background).
    pub(crate) fn after_removal(self: &Arc<Self>, part: &Part) {
        if part.call != CallPhase::Idle {
            self.ports.media.leave(part.info.participant_id);
        }
        // Only a completed join was announced; a join still in flight is not.
        if part.call == CallPhase::InCall {
            let inner = self.clone();
            let (room_id, user) = (part.room_id.clone(), part.user.clone());
            tokio::spawn(async move {
                inner.call_notice(&room_id, &user, CallEvent::Left).await;
            });
        }
    }

    /// Stores a call join/leave system message, then broadcasts it as
    /// `call_notification`. A store failure is logged and nothing is broadcast.
    pub(crate) async fn call_notice(&self, room_id: &str, user: &AuthUser, event: CallEvent) {
        match self.ports.chat.store_call_event(room_id, user, event).await {
            Ok(message) => self
                .state
                .lock()
                .announce(room_id, ServerMessage::CallNotification { message }),
            Err(e) => tracing::warn!(error = %e, "failed to store a call notice"),
        }
    }

    /// The socket of connection `conn_id` is gone. If it still carries participant
    /// `pid`, the participant is detached and removed after the resume grace unless a
    /// `join_room` with its resume token takes it back first.
    pub(crate) fn socket_gone(self: &Arc<Self>, pid: ParticipantId, conn_id: u64) {
        let (generation, had_media) = {
            let mut st = self.state.lock();
            let Some(part) = st.parts.get_mut(&pid) else {
                return;
            };
            if part.conn.as_ref().map(|c| c.id) != Some(conn_id) {
                return; // resumed on a newer socket meanwhile
            }
            part.conn = None;
            part.detach_gen += 1;
            (part.detach_gen, part.had_media)
        };
        // A place that never had audio is cheap to abandon in bulk (join, drop the TCP
        // connection, repeat): it is held only briefly.
        let grace = if had_media {
            self.cfg.resume_grace
        } else {
            self.cfg.unconnected_grace.min(self.cfg.resume_grace)
        };
        if grace.is_zero() {
            self.expire(pid, generation);
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(inner) = weak.upgrade() {
                inner.expire(pid, generation);
            }
        });
    }

    fn expire(self: &Arc<Self>, pid: ParticipantId, generation: u64) {
        let removed =
            self.remove_participant_if(pid, |p| p.conn.is_none() && p.detach_gen == generation);
        if removed.is_some() {
            tracing::debug!(pid = pid.0, "resume grace over; participant removed");
        }
    }

    fn on_media_event(self: &Arc<Self>, event: SfuEvent) {
        match event {
            SfuEvent::Connected { pid } => {
                let pid = ParticipantId::from(pid);
                let mut st = self.state.lock();
                if let Some(part) = st.parts.get_mut(&pid)
                    && part.call == CallPhase::InCall
                {
                    part.media_connected = true;
                    part.had_media = true;
                    st.send_to(pid, &ServerMessage::CallState { connected: true });
                }
            }
            SfuEvent::Disconnected { pid, reason } => {
                let pid = ParticipantId::from(pid);
                tracing::debug!(pid = pid.0, ?reason, "media disconnected");
                // Socket gone too: nothing left to resume into a call, leave the room.
                let gone = self.remove_participant_if(pid, |p| {
                    p.call == CallPhase::InCall && p.conn.is_none()
                });
                if gone.is_some() {
                    return;
                }
                let notice = {
                    let mut st = self.state.lock();
                    let Some(part) = st.parts.get_mut(&pid) else {
                        return;
                    };
                    if part.call != CallPhase::InCall {
                        return;
                    }
                    part.call = CallPhase::Idle;
                    part.media_connected = false;
                    part.info.in_call = false;
                    let info = part.info.clone();
                    let notice = (part.room_id.clone(), part.user.clone());
                    st.send_to(pid, &ServerMessage::CallState { connected: false });
                    st.broadcast(
                        &notice.0,
                        &ServerMessage::ParticipantUpdated { participant: info },
                        None,
                    );
                    notice
                };
                let inner = self.clone();
                tokio::spawn(async move {
                    inner
                        .call_notice(&notice.0, &notice.1, CallEvent::Left)
                        .await;
                });
            }
            SfuEvent::ActiveSpeakers { room, speakers } => {
                let mut st = self.state.lock();
                let Some(room_id) = st.room_by_key.get(&room).cloned() else {
                    return;
                };
                let speakers: Vec<SpeakerLevel> = speakers
                    .into_iter()
                    .map(|(pid, level)| SpeakerLevel {
                        participant_id: pid.into(),
                        level,
                    })
                    .collect();
                if let Some(c) = &self.cluster {
                    // The room's authority merges every node's speakers.
                    let node = c.store.node_id().to_owned();
                    crate::distributed::node_speakers(&mut st, &room_id, &node, speakers);
                    return;
                }
                if let Some(r) = st.rooms.get_mut(&room_id) {
                    r.speakers = speakers.clone();
                }
                st.broadcast(&room_id, &ServerMessage::ActiveSpeakers { speakers }, None);
            }
            SfuEvent::SlotsChanged { room, slots, spare } => {
                let mut st = self.state.lock();
                let Some(room_id) = st.room_by_key.get(&room).cloned() else {
                    return;
                };
                if let Some(r) = st.rooms.get_mut(&room_id) {
                    r.slots = slots.into_iter().map(|s| s.map(Into::into)).collect();
                    r.spare = spare.map(Into::into);
                }
                st.send_slots(&room_id, None);
            }
            SfuEvent::MediaRefused { pid } => {
                self.state.lock().send_to(
                    pid.into(),
                    &ServerMessage::Error {
                        code: ErrorCode::Forbidden,
                        message: "your role may not publish audio; raise your hand to ask".into(),
                        fatal: false,
                    },
                );
            }
        }
    }
}

async fn media_pump(inner: Weak<Inner>, mut events: MediaEvents) {
    while let Some(event) = events.next().await {
        let Some(inner) = inner.upgrade() else {
            break;
        };
        inner.on_media_event(event);
    }
}
