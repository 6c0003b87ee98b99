//! One WebSocket connection: a reader (this task) that enforces the limits, parses
//! and handles client messages one at a time, and a writer task that drains the
//! connection's bounded outgoing queue and sends keepalive pings.
//!
//! This module owns the connection (its tasks, limits and the dispatch of each client
//! message); what each message does lives with its kind:
//! - `room`: joining a room, resuming a place after a reconnect, the per-user cap on
//!   places, leaving;
//! - `call`: joining and leaving the call, the SDP answer and ICE restarts;
//! - `moderation`: self mute and hand, roles, moderator mute, removal, letting back in;
//! - `chat`: sending and deleting messages.

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

use crate::error::SignalingError;
use crate::ports::AuthUser;
use crate::protocol::{ClientMessage, ErrorCode, ParticipantId, ServerMessage};
use crate::rate::TokenBucket;
use crate::rooms::{Conn, Outgoing, encode};
use crate::server::Inner;

mod call;
mod chat;
mod moderation;

pub(crate) use moderation::apply_set_role;
mod room;

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

    /// Backend and media failures: logged here, only a generic text goes out. An
    /// overloaded SFU is `busy`, so clients can tell "retry in a moment" from a failure.
    fn internal(what: &str, err: &SignalingError) -> Self {
        tracing::warn!(error = %err, "{what} failed");
        if let SignalingError::Busy(_) = err {
            return Refusal::new(
                ErrorCode::Busy,
                format!("{what}: the server is busy; try again in a moment"),
            );
        }
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
}
