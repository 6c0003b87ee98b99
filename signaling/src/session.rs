//! One WebSocket connection: a reader (this task) that enforces the limits, parses
//! and handles client messages one at a time, and a writer task that drains the
//! connection's bounded outgoing queue and sends keepalive pings.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::Command;
use crate::config::SignalingConfig;
use crate::error::SignalingError;
use crate::ports::{AuthUser, CallEvent, DeleteOutcome, MediaOffer, RoomAccess};
use crate::protocol::{
    ClientMessage, ErrorCode, Participant, ParticipantId, RemovedUser, Role, ServerMessage,
};
use crate::rate::TokenBucket;
use crate::rooms::{CallPhase, Conn, Outgoing, Part, Room, State, encode};
use crate::server::Inner;

/// Close code for a connection ended by the server for a policy reason (refused
/// auth or join, removal).
const CLOSE_POLICY: u16 = 1008;
const CLOSE_GOING_AWAY: u16 = 1001;
/// Error texts quote at most this much of what the client sent.
const MAX_ERROR_DETAIL: usize = 200;
/// How often a join asks the directory again because a room closed meanwhile.
const MAX_JOIN_RECHECKS: u32 = 3;

/// Why a client message was refused; becomes an `error` message.
#[derive(Debug)]
pub(crate) struct Refusal {
    code: ErrorCode,
    message: String,
    fatal: bool,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            fatal: false,
        }
    }

    fn fatal(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            fatal: true,
        }
    }

    /// Backend and media failures: logged here, only a generic text goes out.
    fn internal(what: &str, err: &SignalingError) -> Self {
        tracing::warn!(error = %err, "{what} failed");
        Refusal::new(ErrorCode::Internal, format!("{what} failed; try again"))
    }
}

pub(crate) type Handled = Result<(), Refusal>;

pub(crate) async fn run(
    inner: Arc<Inner>,
    socket: WebSocket,
    auth: Result<AuthUser, SignalingError>,
) {
    let (mut sink, stream) = socket.split();
    let user = match auth {
        Ok(user) => user,
        Err(e) => {
            let (code, message) = match e {
                SignalingError::Unauthorized => {
                    (ErrorCode::Unauthorized, "missing or invalid access token")
                }
                other => {
                    tracing::warn!(error = %other, "authentication backend failed");
                    (ErrorCode::Internal, "authentication unavailable")
                }
            };
            let msg = ServerMessage::Error {
                code,
                message: message.into(),
                fatal: true,
            };
            // Best effort with a bound: the client may already be gone.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                if let Some(text) = encode(&msg) {
                    sink.send(Message::Text(text)).await?;
                }
                sink.send(Message::Close(Some(CloseFrame {
                    code: CLOSE_POLICY,
                    reason: "unauthorized".into(),
                })))
                .await
            })
            .await;
            return;
        }
    };

    inner.open_connections.fetch_add(1, Ordering::Relaxed);
    let _count = ConnectionCount(&inner);
    let (tx, rx) = mpsc::channel(inner.cfg.outgoing_queue.max(1));
    let cancel = inner.shutdown.child_token();
    let conn = Conn {
        id: inner.next_conn_id(),
        tx,
        cancel: cancel.clone(),
    };
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        cancel.clone(),
        inner.cfg.ping_interval,
    ));
    let bucket = TokenBucket::new(
        inner.cfg.rate_per_sec,
        inner.cfg.rate_burst,
        std::time::Instant::now(),
    );
    let mut session = Session {
        inner: inner.clone(),
        user,
        conn,
        pid: None,
        bucket,
        closing: false,
    };
    session.read_loop(stream, &cancel).await;
    cancel.cancel();
    if let Some(pid) = session.pid {
        inner.socket_gone(pid, session.conn.id);
    }
    let _ = writer.await;
}

/// Decrements the open-connection count however the session ends.
struct ConnectionCount<'a>(&'a Inner);

impl Drop for ConnectionCount<'_> {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
    ping_interval: Duration,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => {
                // Shutdown or a slow client: a close frame if it goes out quickly.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    sink.send(Message::Close(Some(CloseFrame {
                        code: CLOSE_GOING_AWAY,
                        reason: "closing".into(),
                    }))),
                )
                .await;
                break;
            }
            out = rx.recv() => match out {
                Some(Outgoing::Text(text)) => Message::Text(text),
                Some(Outgoing::Close { code, reason }) => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))),
                    )
                    .await;
                    break;
                }
                None => break,
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        let sent = tokio::select! {
            _ = cancel.cancelled() => break,
            r = sink.send(msg) => r,
        };
        if sent.is_err() {
            break;
        }
    }
    cancel.cancel();
}

struct Session {
    inner: Arc<Inner>,
    user: AuthUser,
    conn: Conn,
    /// The participant this connection carries, once it joined a room.
    pid: Option<ParticipantId>,
    bucket: TokenBucket,
    /// A fatal error was sent: later input is ignored while the close goes out.
    closing: bool,
}

fn new_resume_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

impl Session {
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>, cancel: &CancellationToken) {
        let timeout = self.inner.cfg.ping_timeout;
        let mut deadline = Instant::now() + timeout;
        loop {
            let frame = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(conn = self.conn.id, "keepalive timeout");
                    break;
                }
                frame = stream.next() => frame,
            };
            let msg = match frame {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    tracing::debug!(conn = self.conn.id, error = %e, "websocket read failed");
                    break;
                }
                None => break,
            };
            deadline = Instant::now() + timeout;
            if self.closing {
                // A fatal error is being flushed; the writer closes the socket next.
                continue;
            }
            match msg {
                Message::Text(text) => self.on_text(text.as_str()).await,
                Message::Binary(_) => {
                    if !self.bucket.try_take(std::time::Instant::now()) {
                        self.refuse(Refusal::new(
                            ErrorCode::RateLimited,
                            "too many messages; slow down",
                        ));
                    } else {
                        self.refuse(Refusal::new(
                            ErrorCode::BadMessage,
                            "binary frames are not part of the protocol; send JSON text",
                        ));
                    }
                }
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(_) => break,
            }
        }
    }

    fn refuse(&mut self, r: Refusal) {
        self.conn.send(&ServerMessage::Error {
            code: r.code,
            message: r.message,
            fatal: r.fatal,
        });
        if r.fatal {
            self.closing = true;
            self.conn.close(CLOSE_POLICY, "refused");
        }
    }

    fn send(&self, msg: &ServerMessage) {
        self.conn.send(msg);
    }

    async fn on_text(&mut self, text: &str) {
        if text.len() > self.inner.cfg.max_frame_bytes {
            return self.refuse(Refusal::new(
                ErrorCode::TooLarge,
                format!(
                    "message of {} bytes exceeds the {} byte limit",
                    text.len(),
                    self.inner.cfg.max_frame_bytes
                ),
            ));
        }
        if !self.bucket.try_take(std::time::Instant::now()) {
            return self.refuse(Refusal::new(
                ErrorCode::RateLimited,
                "too many messages; slow down",
            ));
        }
        let msg: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                return self.refuse(Refusal::new(
                    ErrorCode::BadMessage,
                    truncate(&format!("malformed message: {e}"), MAX_ERROR_DETAIL),
                ));
            }
        };
        if let Err(r) = self.handle(msg).await {
            self.refuse(r);
        }
    }

    async fn handle(&mut self, msg: ClientMessage) -> Handled {
        match msg {
            ClientMessage::JoinRoom {
                room_id,
                resume_token,
            } => self.join_room(room_id, resume_token).await,
            ClientMessage::LeaveRoom => self.leave_room(),
            ClientMessage::JoinCall => self.join_call().await,
            ClientMessage::LeaveCall => self.leave_call().await,
            ClientMessage::Answer { sdp } => self.answer(sdp).await,
            // The server is ICE-lite: it learns the client's address from its checks.
            ClientMessage::IceCandidate { .. } => Ok(()),
            ClientMessage::RestartIce => self.restart_ice().await,
            ClientMessage::Mute => self.set_self_muted(true),
            ClientMessage::Unmute => self.set_self_muted(false),
            ClientMessage::RaiseHand => self.set_hand(true),
            ClientMessage::LowerHand => self.set_hand(false),
            ClientMessage::SetRole {
                participant_id,
                role,
            } => self.set_role(participant_id, role).await,
            ClientMessage::MuteParticipant { participant_id } => {
                self.mute_participant(participant_id)
            }
            ClientMessage::RemoveParticipant { participant_id } => {
                self.remove_participant(participant_id).await
            }
            ClientMessage::LetBackIn { user_id } => self.let_back_in(user_id),
            ClientMessage::SendMessage { message } => self.send_message(message).await,
            ClientMessage::DeleteMessage { message_id } => self.delete_message(message_id).await,
            ClientMessage::Ping => {
                self.send(&ServerMessage::Pong);
                Ok(())
            }
        }
    }

    /// The participant of this connection, if it is (still) in a room.
    fn current(&self) -> Result<(ParticipantId, String), Refusal> {
        let pid = self
            .pid
            .ok_or_else(|| Refusal::new(ErrorCode::InvalidState, "join a room first"))?;
        let st = self.inner.state.lock();
        match st.parts.get(&pid) {
            Some(p) => Ok((pid, p.room_id.clone())),
            None => Err(Refusal::new(ErrorCode::InvalidState, "join a room first")),
        }
    }

    /// The directory's verdict on joining `room_id`; a refusal when it says no.
    async fn check_join(&self, room_id: &str) -> Result<RoomAccess, Refusal> {
        match self
            .inner
            .ports
            .directory
            .check_join(room_id, &self.user)
            .await
        {
            Ok(a) => Ok(a),
            Err(SignalingError::RoomNotFound) => {
                Err(Refusal::fatal(ErrorCode::NotFound, "room not found"))
            }
            Err(SignalingError::Forbidden(why)) => {
                tracing::debug!(reason = %why, "join refused");
                Err(Refusal::fatal(
                    ErrorCode::Forbidden,
                    "you may not join this room",
                ))
            }
            Err(SignalingError::Unauthorized) => {
                Err(Refusal::fatal(ErrorCode::Unauthorized, "session expired"))
            }
            Err(e) => Err(Refusal::internal("room lookup", &e)),
        }
    }

    async fn join_room(&mut self, room_id: String, resume_token: Option<String>) -> Handled {
        if self.current().is_ok() {
            return Err(Refusal::new(
                ErrorCode::InvalidState,
                "already in a room; send leave_room first",
            ));
        }
        if room_id.is_empty() || room_id.len() > self.inner.cfg.max_room_id_len {
            return Err(Refusal::new(ErrorCode::BadMessage, "invalid roomId"));
        }
        let mut rechecks = 0;
        // Places of this user freed to stay within the per-user cap (finished below,
        // outside the state lock).
        let mut evicted = Vec::new();
        // Cluster mode: the room as the other nodes have it, and a place of this user
        // held (or left behind) by another node that the resume token names.
        let adoptable = self
            .inner
            .load_room_from_cluster(&room_id, resume_token.as_deref(), &self.user.user_id)
            .await;
        loop {
            let closures_seen = self.inner.state.lock().closures;
            let access = self.check_join(&room_id).await?;
            let cfg = &self.inner.cfg;
            let mut st = self.inner.state.lock();
            // A room was closed (deleted) while the directory was asked: ask again,
            // so this join cannot re-create a room deleted in the meantime. Bounded:
            // under a storm of closures elsewhere the last answer stands.
            if st.closures != closures_seen && rechecks < MAX_JOIN_RECHECKS {
                rechecks += 1;
                continue;
            }
            if let Some(token) = resume_token.as_deref()
                && let Some(pid) = st.resume.get(token).copied()
                && st
                    .parts
                    .get(&pid)
                    .is_some_and(|p| p.user.user_id == self.user.user_id && p.room_id == room_id)
            {
                let new_token = new_resume_token();
                st.resume.remove(token);
                st.resume.insert(new_token.clone(), pid);
                let Some(part) = st.parts.get_mut(&pid) else {
                    return Err(Refusal::new(ErrorCode::Internal, "resume failed"));
                };
                if let Some(old) = part.conn.take() {
                    // The old socket has not noticed it is dead yet: retire it.
                    old.cancel.cancel();
                }
                part.conn = Some(self.conn.clone());
                part.detach_gen += 1;
                part.resume_token = new_token.clone();
                let you = part.info.clone();
                let you_moderate = you.role == Role::Moderator;
                let call = (part.call == CallPhase::InCall).then_some(part.media_connected);
                self.pid = Some(pid);
                self.send(&ServerMessage::Joined {
                    room_id: room_id.clone(),
                    you,
                    resume_token: new_token,
                    resumed: true,
                    ice_servers: cfg.ice_servers.clone(),
                    slot_count: cfg.slot_count,
                });
                self.send(&ServerMessage::OnlineUsers {
                    participants: st.participants_of(&room_id),
                });
                if let Some(connected) = call {
                    self.send(&ServerMessage::CallState { connected });
                    st.send_slots(&room_id, Some(pid));
                }
                if you_moderate && st.removed.contains_key(&room_id) {
                    self.send(&st.removed_message(&room_id));
                }
                return Ok(());
            }
            if let Some(found) = &adoptable
                && st.rooms.contains_key(&room_id)
            {
                // Resumed on this node: the place comes over with its id and role;
                // its old node lets go when it sees the move.
                let pid = found.info.participant_id;
                let token = new_resume_token();
                let mut info = found.info.clone();
                info.in_call = false;
                if let Some(old) = st.parts.remove(&pid) {
                    st.resume.remove(&old.resume_token);
                }
                if let Some(room) = st.rooms.get_mut(&room_id) {
                    room.owner_user_id = access.owner_user_id.clone();
                    room.members.insert(pid);
                }
                st.parts.insert(
                    pid,
                    Part {
                        info: info.clone(),
                        user: self.user.clone(),
                        room_id: room_id.clone(),
                        conn: Some(self.conn.clone()),
                        resume_token: token.clone(),
                        call: CallPhase::Idle,
                        media_connected: false,
                        had_media: true,
                        detach_gen: 0,
                        remote: None,
                    },
                );
                st.resume.insert(token.clone(), pid);
                self.pid = Some(pid);
                self.send(&ServerMessage::Joined {
                    room_id: room_id.clone(),
                    you: info.clone(),
                    resume_token: token,
                    resumed: true,
                    ice_servers: cfg.ice_servers.clone(),
                    slot_count: cfg.slot_count,
                });
                self.send(&ServerMessage::OnlineUsers {
                    participants: st.participants_of(&room_id),
                });
                if info.role == Role::Moderator && st.removed.contains_key(&room_id) {
                    self.send(&st.removed_message(&room_id));
                }
                st.broadcast(
                    &room_id,
                    &ServerMessage::ParticipantUpdated { participant: info },
                    Some(pid),
                );
                tracing::info!(pid = pid.0, "place resumed from another node");
                return Ok(());
            }

            if st.is_removed(&room_id, &self.user.user_id) {
                return Err(Refusal::fatal(
                    ErrorCode::Removed,
                    "a moderator removed you from this room; the host can let you back in",
                ));
            }
            let is_owner = self.user.user_id == access.owner_user_id;
            let evict = places_to_free(&st, &room_id, &self.user.user_id, cfg)?;
            // The owner (the room's moderator) is never locked out of their own room.
            if !is_owner
                && st.rooms.get(&room_id).is_some_and(|r| {
                    r.members.len().saturating_sub(evict.len()) >= cfg.max_participants
                })
            {
                return Err(Refusal::fatal(ErrorCode::RoomFull, "the room is full"));
            }
            for old in evict {
                if let Some(part) = st.remove_and_announce(old) {
                    tracing::debug!(pid = old.0, "place over the per-user cap freed");
                    evicted.push(part);
                }
            }
            let pid = self.inner.next_pid();
            let role = if is_owner {
                Role::Moderator
            } else {
                Role::Listener
            };
            let info = Participant {
                participant_id: pid,
                user_id: self.user.user_id.clone(),
                name: self.user.name.clone(),
                avatar: self.user.avatar.clone(),
                role,
                muted: !role.can_publish(),
                hand_raised: false,
                in_call: false,
            };
            let token = new_resume_token();
            if !st.rooms.contains_key(&room_id) {
                let key = self.inner.next_room_key();
                st.room_by_key.insert(key, room_id.clone());
                let mut room = Room::new(key, access.owner_user_id.clone(), cfg.slot_count);
                room.loaded = true;
                st.rooms.insert(room_id.clone(), room);
            }
            if let Some(room) = st.rooms.get_mut(&room_id) {
                room.owner_user_id = access.owner_user_id.clone();
                room.members.insert(pid);
            }
            st.parts.insert(
                pid,
                Part {
                    info: info.clone(),
                    user: self.user.clone(),
                    room_id: room_id.clone(),
                    conn: Some(self.conn.clone()),
                    resume_token: token.clone(),
                    call: CallPhase::Idle,
                    media_connected: false,
                    had_media: false,
                    detach_gen: 0,
                    remote: None,
                },
            );
            st.resume.insert(token.clone(), pid);
            self.pid = Some(pid);
            self.send(&ServerMessage::Joined {
                room_id: room_id.clone(),
                you: info.clone(),
                resume_token: token,
                resumed: false,
                ice_servers: cfg.ice_servers.clone(),
                slot_count: cfg.slot_count,
            });
            self.send(&ServerMessage::OnlineUsers {
                participants: st.participants_of(&room_id),
            });
            let speakers = st
                .rooms
                .get(&room_id)
                .map(|r| r.speakers.clone())
                .unwrap_or_default();
            if !speakers.is_empty() {
                self.send(&ServerMessage::ActiveSpeakers { speakers });
            }
            if role == Role::Moderator && st.removed.contains_key(&room_id) {
                self.send(&st.removed_message(&room_id));
            }
            st.broadcast(
                &room_id,
                &ServerMessage::ParticipantJoined { participant: info },
                Some(pid),
            );
            break;
        }
        for part in &evicted {
            self.inner.after_removal(part);
        }
        if let Err(e) = self.inner.ports.chat.touch_room(&room_id).await {
            tracing::warn!(error = %e, "failed to record room activity");
        }
        Ok(())
    }

    fn leave_room(&mut self) -> Handled {
        let (pid, _) = self.current()?;
        self.inner.remove_participant(pid);
        self.pid = None;
        Ok(())
    }

    async fn join_call(&mut self) -> Handled {
        let (pid, room_id) = self.current()?;
        let (room_key, can_publish, was_in_call) = {
            let mut st = self.inner.state.lock();
            let Some(key) = st.rooms.get(&room_id).map(|r| r.key) else {
                return Err(Refusal::new(ErrorCode::InvalidState, "join a room first"));
            };
            let Some(part) = st.parts.get_mut(&pid) else {
                return Err(Refusal::new(ErrorCode::InvalidState, "join a room first"));
            };
            let was_in_call = match part.call {
                CallPhase::Joining => {
                    return Err(Refusal::new(ErrorCode::InvalidState, "already joining"));
                }
                CallPhase::InCall => true,
                CallPhase::Idle => false,
            };
            part.call = CallPhase::Joining;
            part.media_connected = false;
            (key, part.info.role.can_publish(), was_in_call)
        };
        if was_in_call {
            // A resumed client whose peer connection did not survive (e.g. a page
            // reload) asks again: replace the media session, the call goes on.
            self.inner.ports.media.leave(pid);
        }
        let offer = match self
            .inner
            .ports
            .media
            .join(room_key, pid, can_publish)
            .await
        {
            Ok(offer) => offer,
            Err(e) => {
                let mut st = self.inner.state.lock();
                if let Some(part) = st.parts.get_mut(&pid) {
                    part.call = CallPhase::Idle;
                    if part.info.in_call {
                        part.info.in_call = false;
                        let info = part.info.clone();
                        st.broadcast(
                            &room_id,
                            &ServerMessage::ParticipantUpdated { participant: info },
                            None,
                        );
                    }
                }
                return Err(Refusal::internal("starting audio", &e));
            }
        };
        let can_publish_now = {
            let mut st = self.inner.state.lock();
            let Some(part) = st.parts.get_mut(&pid) else {
                // Removed while media was setting up.
                drop(st);
                self.inner.ports.media.leave(pid);
                return Ok(());
            };
            part.call = CallPhase::InCall;
            part.info.in_call = true;
            // Under the lock, like every mute change, so media sees them in order.
            self.inner.ports.media.set_muted(pid, part.info.muted);
            part.info.role.can_publish()
        };
        // A moderator may have changed the role while media was setting up.
        let offer = if can_publish_now != can_publish {
            match self
                .inner
                .ports
                .media
                .set_can_publish(pid, can_publish_now)
                .await
            {
                Ok(o) => o,
                Err(e) => return Err(Refusal::internal("renegotiation", &e)),
            }
        } else {
            offer
        };
        {
            let st = self.inner.state.lock();
            self.send(&offer_message(offer));
            if !was_in_call && let Some(part) = st.parts.get(&pid) {
                st.broadcast(
                    &room_id,
                    &ServerMessage::ParticipantUpdated {
                        participant: part.info.clone(),
                    },
                    None,
                );
            }
            st.send_slots(&room_id, Some(pid));
        }
        if !was_in_call {
            self.inner
                .call_notice(&room_id, &self.user, CallEvent::Joined)
                .await;
        }
        Ok(())
    }

    async fn leave_call(&mut self) -> Handled {
        let (pid, room_id) = self.current()?;
        {
            let mut st = self.inner.state.lock();
            let Some(part) = st.parts.get_mut(&pid) else {
                return Ok(());
            };
            if part.call != CallPhase::InCall {
                return Err(Refusal::new(ErrorCode::InvalidState, "not in the call"));
            }
            part.call = CallPhase::Idle;
            part.media_connected = false;
            part.info.in_call = false;
            let info = part.info.clone();
            st.broadcast(
                &room_id,
                &ServerMessage::ParticipantUpdated { participant: info },
                None,
            );
        }
        self.inner.ports.media.leave(pid);
        self.inner
            .call_notice(&room_id, &self.user, CallEvent::Left)
            .await;
        Ok(())
    }

    fn require_in_call(&self) -> Result<ParticipantId, Refusal> {
        let (pid, _) = self.current()?;
        let st = self.inner.state.lock();
        match st.parts.get(&pid) {
            Some(p) if p.call == CallPhase::InCall => Ok(pid),
            _ => Err(Refusal::new(
                ErrorCode::InvalidState,
                "not in the call; send join_call first",
            )),
        }
    }

    async fn answer(&mut self, sdp: String) -> Handled {
        let pid = self.require_in_call()?;
        self.inner
            .ports
            .media
            .accept_answer(pid, sdp)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "answer rejected");
                Refusal::new(ErrorCode::BadMessage, "the answer was not accepted")
            })
    }

    async fn restart_ice(&mut self) -> Handled {
        let pid = self.require_in_call()?;
        match self.inner.ports.media.restart_ice(pid).await {
            Ok(offer) => {
                self.send(&offer_message(offer));
                Ok(())
            }
            Err(e) => Err(Refusal::internal("ICE restart", &e)),
        }
    }

    /// Applies `change` to participant `pid` and broadcasts the result.
    fn update_and_broadcast(
        &self,
        pid: ParticipantId,
        change: impl FnOnce(&mut Part) -> Handled,
    ) -> Handled {
        let mut st = self.inner.state.lock();
        let Some(part) = st.parts.get_mut(&pid) else {
            return Err(Refusal::new(ErrorCode::NotFound, "no such participant"));
        };
        let was_muted = part.info.muted;
        change(part)?;
        if part.info.muted != was_muted && part.call == CallPhase::InCall {
            // Under the lock so concurrent mute changes reach media in state order.
            self.inner.ports.media.set_muted(pid, part.info.muted);
        }
        let (info, room_id) = (part.info.clone(), part.room_id.clone());
        st.broadcast(
            &room_id,
            &ServerMessage::ParticipantUpdated { participant: info },
            None,
        );
        Ok(())
    }

    fn set_self_muted(&mut self, muted: bool) -> Handled {
        let (pid, _) = self.current()?;
        self.update_and_broadcast(pid, |p| {
            if !muted && !p.info.role.can_publish() {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "listeners cannot unmute; raise your hand to ask to speak",
                ));
            }
            p.info.muted = muted;
            Ok(())
        })?;
        Ok(())
    }

    fn set_hand(&mut self, raised: bool) -> Handled {
        let (pid, _) = self.current()?;
        self.update_and_broadcast(pid, |p| {
            p.info.hand_raised = raised;
            Ok(())
        })?;
        Ok(())
    }

    /// This connection is a moderator of its room and `target` is in the same room.
    fn moderate(&self, target: ParticipantId) -> Result<ParticipantId, Refusal> {
        let (pid, room_id) = self.current()?;
        let st = self.inner.state.lock();
        let is_moderator = st
            .parts
            .get(&pid)
            .is_some_and(|p| p.info.role == Role::Moderator);
        if !is_moderator {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only a moderator may do that",
            ));
        }
        match st.parts.get(&target) {
            Some(t) if t.room_id == room_id => Ok(pid),
            _ => Err(Refusal::new(
                ErrorCode::NotFound,
                "no such participant in this room",
            )),
        }
    }

    /// Who may change `target`'s role to `role`: a speaker may step back to the
    /// audience themself; a moderator moves others between stage and audience; only
    /// the room owner names co-hosts (moderators) or takes the role back from them.
    /// Returns whether the caller is the room owner.
    fn check_set_role(&self, target: ParticipantId, role: Role) -> Result<bool, Refusal> {
        let (pid, room_id) = self.current()?;
        let is_owner = {
            let st = self.inner.state.lock();
            st.rooms
                .get(&room_id)
                .is_some_and(|r| r.owner_user_id == self.user.user_id)
        };
        if target == pid && role == Role::Listener {
            return Ok(is_owner);
        }
        self.moderate(target)?;
        if role == Role::Moderator && !is_owner {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the room owner may name co-hosts",
            ));
        }
        Ok(is_owner)
    }

    async fn set_role(&mut self, target: ParticipantId, role: Role) -> Handled {
        let by_owner = self.check_set_role(target, role)?;
        if self
            .inner
            .command_remote(target, Command::SetRole { role, by_owner })
        {
            return Ok(());
        }
        apply_set_role(
            &self.inner,
            target,
            role,
            by_owner,
            self.pid == Some(target),
        )
        .await
    }
}

/// Changes `target`'s role (rights already checked: `by_owner` says whether the room
/// owner asks, `self_change` whether the target asks for itself) and renegotiates its
/// audio when it gains or loses the right to publish.
pub(crate) async fn apply_set_role(
    inner: &Arc<Inner>,
    target: ParticipantId,
    role: Role,
    by_owner: bool,
    self_change: bool,
) -> Handled {
    {
        let (owner_id, room_id) = {
            let st = inner.state.lock();
            let room_id = st.parts.get(&target).map(|p| p.room_id.clone());
            let owner_id = room_id
                .as_ref()
                .and_then(|r| st.rooms.get(r))
                .map(|r| r.owner_user_id.clone());
            (owner_id, room_id)
        };
        let mut changed = false;
        let call = update_and_broadcast_if(inner, target, |p| {
            let owners = owner_id.as_deref() == Some(p.user.user_id.as_str());
            if p.info.role == Role::Moderator && (owners || !(by_owner || self_change)) {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "a moderator's role can be changed only by the room owner, and the owner's never",
                ));
            }
            if p.info.role == role {
                return Ok(false);
            }
            let could_publish = p.info.role.can_publish();
            p.info.role = role;
            p.info.hand_raised = false;
            if !role.can_publish() {
                p.info.muted = true;
            }
            changed = could_publish != role.can_publish();
            Ok(true)
        })?;
        if role == Role::Moderator
            && let Some(room_id) = &room_id
        {
            inner.state.lock().send_removed_to_moderators(room_id);
        }
        if !changed || call != CallPhase::InCall {
            return Ok(());
        }
        let media = &inner.ports.media;
        match media.set_can_publish(target, role.can_publish()).await {
            Ok(offer) => {
                inner.state.lock().send_to(target, &offer_message(offer));
                Ok(())
            }
            Err(e) => Err(Refusal::internal("renegotiation", &e)),
        }
    }
}

/// Applies `change` to participant `pid` and broadcasts the result; `change` says
/// whether anything changed (nothing is broadcast when it did not).
fn update_and_broadcast_if(
    inner: &Inner,
    pid: ParticipantId,
    change: impl FnOnce(&mut Part) -> Result<bool, Refusal>,
) -> Result<CallPhase, Refusal> {
    let mut st = inner.state.lock();
    let Some(part) = st.parts.get_mut(&pid) else {
        return Err(Refusal::new(ErrorCode::NotFound, "no such participant"));
    };
    let was_muted = part.info.muted;
    if !change(part)? {
        return Ok(part.call);
    }
    if part.info.muted != was_muted && part.call == CallPhase::InCall {
        inner.ports.media.set_muted(pid, part.info.muted);
    }
    let (info, room_id, call) = (part.info.clone(), part.room_id.clone(), part.call);
    st.broadcast(
        &room_id,
        &ServerMessage::ParticipantUpdated { participant: info },
        None,
    );
    Ok(call)
}

impl Session {
    fn mute_participant(&mut self, target: ParticipantId) -> Handled {
        self.moderate(target)?;
        if self.inner.command_remote(target, Command::Mute) {
            return Ok(());
        }
        self.update_and_broadcast(target, |p| {
            p.info.muted = true;
            Ok(())
        })?;
        Ok(())
    }

    async fn remove_participant(&mut self, target: ParticipantId) -> Handled {
        let me = self.moderate(target)?;
        if me == target {
            return Err(Refusal::new(
                ErrorCode::InvalidState,
                "use leave_room to leave",
            ));
        }
        // The person is removed, not just one tab: every connection of that user in
        // the room goes, and the user may not come back while the room is live (a
        // client that reconnects automatically would otherwise walk straight back in).
        let victims: Vec<ParticipantId> = {
            let mut guard = self.inner.state.lock();
            // A plain `&mut State` so rooms and parts can be borrowed separately.
            let st = &mut *guard;
            let Some(t) = st.parts.get(&target) else {
                return Err(Refusal::new(ErrorCode::NotFound, "no such participant"));
            };
            if t.info.role == Role::Moderator {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "a moderator cannot be removed",
                ));
            }
            let (user_id, room_id) = (t.user.user_id.clone(), t.room_id.clone());
            let removed = RemovedUser {
                user_id: user_id.clone(),
                name: t.user.name.clone(),
                avatar: t.user.avatar.clone(),
            };
            let Some(room) = st.rooms.get(&room_id) else {
                return Err(Refusal::new(ErrorCode::NotFound, "no such participant"));
            };
            let victims: Vec<ParticipantId> = room
                .members
                .iter()
                .copied()
                .filter(|pid| st.parts.get(pid).is_some_and(|p| p.user.user_id == user_id))
                .collect();
            for pid in &victims {
                if let Some(conn) = st.parts.get(pid).and_then(|p| p.conn.as_ref()) {
                    conn.send(&ServerMessage::Removed {
                        reason: "removed by a moderator".into(),
                    });
                    conn.close(CLOSE_POLICY, "removed");
                }
            }
            st.add_removed(&room_id, removed);
            st.send_removed_to_moderators(&room_id);
            st.publish_removed(&room_id);
            victims
        };
        for pid in victims {
            // Another node's participant is removed by its node.
            if !self.inner.command_remote(pid, Command::Remove) {
                self.inner.remove_participant(pid);
            }
        }
        Ok(())
    }

    fn let_back_in(&mut self, user_id: String) -> Handled {
        let (pid, room_id) = self.current()?;
        let mut st = self.inner.state.lock();
        if !st
            .parts
            .get(&pid)
            .is_some_and(|p| p.info.role == Role::Moderator)
        {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only a moderator may do that",
            ));
        }
        if !st.let_back_in(&room_id, &user_id) {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                "that user is not removed from this room",
            ));
        }
        st.send_removed_to_moderators(&room_id);
        st.publish_removed(&room_id);
        Ok(())
    }

    async fn send_message(&mut self, text: String) -> Handled {
        let (_, room_id) = self.current()?;
        // The chat rules (trimming, length, who may post) are the control plane's, the
        // same for this socket as for HTTP: the store applies them.
        let stored = self
            .inner
            .ports
            .chat
            .store_message(&room_id, &self.user, &text)
            .await
            .map_err(|e| match e {
                SignalingError::Refused { code, message } => Refusal::new(code, message),
                e => Refusal::internal("storing the message", &e),
            })?;
        self.inner
            .state
            .lock()
            .announce(&room_id, ServerMessage::ReceiveMessage { message: stored });
        Ok(())
    }

    async fn delete_message(&mut self, message_id: String) -> Handled {
        let (_, room_id) = self.current()?;
        if message_id.is_empty() || message_id.len() > 128 {
            return Err(Refusal::new(ErrorCode::BadMessage, "invalid messageId"));
        }
        let outcome = self
            .inner
            .ports
            .chat
            .delete_message(&room_id, &message_id, &self.user.user_id)
            .await
            .map_err(|e| Refusal::internal("deleting the message", &e))?;
        match outcome {
            DeleteOutcome::Deleted => {
                self.inner
                    .state
                    .lock()
                    .announce(&room_id, ServerMessage::MessageDeleted { message_id });
                Ok(())
            }
            DeleteOutcome::NotFound => Err(Refusal::new(ErrorCode::NotFound, "no such message")),
            DeleteOutcome::Forbidden => Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the author or the room owner may delete a message",
            )),
        }
    }
}

/// The places of `user_id` in `room_id` to free so one more fits under the per-user
/// cap: the oldest places waiting for a resume (a reloaded tab's old place). A refusal
/// when every place of theirs is live.
fn places_to_free(
    st: &State,
    room_id: &str,
    user_id: &str,
    cfg: &SignalingConfig,
) -> Result<Vec<ParticipantId>, Refusal> {
    let Some(room) = st.rooms.get(room_id) else {
        return Ok(Vec::new());
    };
    let cap = cfg.max_places_per_user.max(1);
    // Members are ordered by participant id, which grows with time: oldest first.
    let mine: Vec<(ParticipantId, bool)> = room
        .members
        .iter()
        .filter_map(|pid| {
            let p = st.parts.get(pid)?;
            // The cap is per node: another node's places of this user are its own.
            (p.is_local() && p.user.user_id == user_id).then_some((*pid, p.conn.is_none()))
        })
        .collect();
    if mine.len() < cap {
        return Ok(Vec::new());
    }
    let excess = mine.len() + 1 - cap;
    let resumable: Vec<ParticipantId> = mine
        .iter()
        .filter(|(_, resumable)| *resumable)
        .map(|(pid, _)| *pid)
        .take(excess)
        .collect();
    if resumable.len() < excess {
        return Err(Refusal::fatal(
            ErrorCode::TooManyTabs,
            format!("you are in this room in {cap} tabs already; close one to join here"),
        ));
    }
    Ok(resumable)
}

fn offer_message(offer: MediaOffer) -> ServerMessage {
    ServerMessage::Offer {
        sdp: offer.sdp,
        publish_mid: offer.publish_mid,
        slot_mids: offer.slot_mids,
    }
}
