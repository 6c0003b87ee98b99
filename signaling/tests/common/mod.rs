//! Test harness: the real signaling router on 127.0.0.1:0 with fake ports, and a
//! tokio-tungstenite client speaking `signaling::protocol`.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use media::{Offer, RoomKey, SfuEvent};
use parking_lot::Mutex;
use signaling::protocol::{ChatMessage, ClientMessage, ParticipantId, ServerMessage};
use signaling::{
    AuthUser, Authenticator, CallEvent, ChatStore, DeleteOutcome, MediaControl, RoomAccess,
    RoomDirectory, Signaling, SignalingConfig, SignalingError, SignalingPorts,
};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expectation may take on a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Tokens are `tok-<user>`; the user's name is the capitalised id. The token is read
/// from the bearer header, else the `accessToken` cookie, else the `token` query
/// parameter (the control plane's order; the real rule is `api::extract_access_token`,
/// tested through the binary's adapter).
pub struct FakeAuth;

fn fake_token(headers: &axum::http::HeaderMap, query: Option<&str>) -> Option<String> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(t) = header("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
        return Some(t.to_owned());
    }
    if let Some(t) = header("cookie").and_then(|v| {
        v.split(';')
            .find_map(|p| p.trim().strip_prefix("accessToken="))
    }) {
        return Some(t.to_owned());
    }
    query?
        .split('&')
        .find_map(|p| p.strip_prefix("token="))
        .map(str::to_owned)
}

#[async_trait]
impl Authenticator for FakeAuth {
    async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
        query: Option<&str>,
    ) -> Result<AuthUser, SignalingError> {
        let token = fake_token(headers, query).ok_or(SignalingError::Unauthorized)?;
        let user = token
            .strip_prefix("tok-")
            .filter(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric()))
            .ok_or(SignalingError::Unauthorized)?;
        Ok(AuthUser {
            user_id: user.to_owned(),
            name: format!("Name of {user}"),
            avatar: Some(format!("/api/avatar/{user}")),
        })
    }
}

/// Rooms: `open` and `open2` (owner alice) and `private` (owner alice, only alice and
/// carol may join); anything else does not exist.
pub struct FakeDirectory;

#[async_trait]
impl RoomDirectory for FakeDirectory {
    async fn check_join(
        &self,
        room_id: &str,
        user: &AuthUser,
    ) -> Result<RoomAccess, SignalingError> {
        let access = RoomAccess {
            owner_user_id: "alice".into(),
        };
        match room_id {
            "open" | "open2" => Ok(access),
            "private" if ["alice", "carol"].contains(&user.user_id.as_str()) => Ok(access),
            "private" => Err(SignalingError::Forbidden("not invited".into())),
            _ => Err(SignalingError::RoomNotFound),
        }
    }
}

/// Longest chat message `FakeChat` accepts.
pub const FAKE_MAX_CHAT_CHARS: usize = 100;

/// Records every stored message; can hold `store_message` at a gate so tests can see
/// that nothing is broadcast before the store finished.
#[derive(Default)]
pub struct FakeChat {
    pub messages: Mutex<Vec<ChatMessage>>,
    pub touched: Mutex<Vec<String>>,
    next: AtomicU64,
    /// When set, `store_message` waits for a permit.
    pub gate: Mutex<Option<Arc<Semaphore>>>,
    /// Signalled when `store_message` was entered.
    pub store_entered: tokio::sync::Notify,
}

impl FakeChat {
    fn make(&self, room_id: &str, user: &AuthUser, text: &str, kind: &str) -> ChatMessage {
        let id = format!("m{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        ChatMessage {
            underscore_id: id.clone(),
            id,
            room_id: room_id.to_owned(),
            user_id: user.user_id.clone(),
            username: user.name.clone(),
            message: text.to_owned(),
            kind: kind.to_owned(),
            url: None,
            file_id: None,
            created_at: "2026-11-21T00:00:00Z".into(),
            duration: None,
        }
    }

    pub fn texts(&self) -> Vec<String> {
        self.messages
            .lock()
            .iter()
            .filter(|m| m.kind == "text")
            .map(|m| m.message.clone())
            .collect()
    }

    pub fn kinds(&self) -> Vec<String> {
        self.messages
            .lock()
            .iter()
            .map(|m| m.kind.clone())
            .collect()
    }
}

#[async_trait]
impl ChatStore for FakeChat {
    async fn store_message(
        &self,
        room_id: &str,
        author: &AuthUser,
        text: &str,
    ) -> Result<ChatMessage, SignalingError> {
        self.store_entered.notify_one();
        let gate = self.gate.lock().clone();
        if let Some(gate) = gate {
            let permit = gate
                .acquire()
                .await
                .map_err(|e| SignalingError::Backend(e.to_string()))?;
            permit.forget();
        }
        // Stands in for the control plane's chat rules: trimmed, 1 to 100 characters.
        let text = text.trim();
        if text.is_empty() || text.chars().count() > FAKE_MAX_CHAT_CHARS {
            return Err(SignalingError::Refused {
                code: signaling::protocol::ErrorCode::BadMessage,
                message: format!("Message must be 1 to {FAKE_MAX_CHAT_CHARS} characters"),
            });
        }
        let m = self.make(room_id, author, text, "text");
        self.messages.lock().push(m.clone());
        Ok(m)
    }

    async fn delete_message(
        &self,
        _room_id: &str,
        message_id: &str,
        user_id: &str,
    ) -> Result<DeleteOutcome, SignalingError> {
        let mut msgs = self.messages.lock();
        let Some(pos) = msgs.iter().position(|m| m.id == message_id) else {
            return Ok(DeleteOutcome::NotFound);
        };
        if msgs[pos].user_id != user_id && user_id != "alice" {
            return Ok(DeleteOutcome::Forbidden);
        }
        msgs.remove(pos);
        Ok(DeleteOutcome::Deleted)
    }

    async fn store_call_event(
        &self,
        room_id: &str,
        user: &AuthUser,
        event: CallEvent,
    ) -> Result<ChatMessage, SignalingError> {
        let (text, kind) = match event {
            CallEvent::Joined => (
                format!("{} joined the call", user.name),
                "call_notification",
            ),
            CallEvent::Left => (format!("{} left the call", user.name), "call_ended"),
        };
        let m = self.make(room_id, user, &text, kind);
        self.messages.lock().push(m.clone());
        Ok(m)
    }

    async fn touch_room(&self, room_id: &str) -> Result<(), SignalingError> {
        self.touched.lock().push(room_id.to_owned());
        Ok(())
    }
}

/// What the fake SFU was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaCall {
    Join {
        room: RoomKey,
        pid: ParticipantId,
        can_publish: bool,
    },
    Answer {
        pid: ParticipantId,
        sdp: String,
    },
    SetCanPublish {
        pid: ParticipantId,
        can_publish: bool,
    },
    RestartIce {
        pid: ParticipantId,
    },
    SetMuted {
        pid: ParticipantId,
        muted: bool,
    },
    Leave {
        pid: ParticipantId,
    },
}

#[derive(Default)]
pub struct FakeMedia {
    pub calls: Mutex<Vec<MediaCall>>,
    /// While set, joins are refused as the real SFU refuses them when its queues are full.
    pub busy: std::sync::atomic::AtomicBool,
    offers: AtomicU64,
    pub known: Mutex<HashSet<ParticipantId>>,
}

impl FakeMedia {
    fn offer(&self, pid: ParticipantId, why: &str) -> Offer {
        let n = self.offers.fetch_add(1, Ordering::Relaxed) + 1;
        Offer {
            sdp: format!("v=0 fake {why} offer {n} for {}", pid.0),
            publish_mid: "0".into(),
            slot_mids: vec!["1".into(), "2".into(), "3".into()],
        }
    }

    pub fn calls(&self) -> Vec<MediaCall> {
        self.calls.lock().clone()
    }

    pub fn room_of(&self, pid: ParticipantId) -> Option<RoomKey> {
        self.calls.lock().iter().find_map(|c| match c {
            MediaCall::Join { room, pid: p, .. } if *p == pid => Some(*room),
            _ => None,
        })
    }
}

#[async_trait]
impl MediaControl for FakeMedia {
    async fn join(
        &self,
        room: RoomKey,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<Offer, SignalingError> {
        if self.busy.load(Ordering::Relaxed) {
            return Err(SignalingError::Busy("the event backlog is full".into()));
        }
        self.calls.lock().push(MediaCall::Join {
            room,
            pid,
            can_publish,
        });
        self.known.lock().insert(pid);
        Ok(self.offer(pid, "join"))
    }

    async fn accept_answer(&self, pid: ParticipantId, sdp: String) -> Result<(), SignalingError> {
        self.calls.lock().push(MediaCall::Answer {
            pid,
            sdp: sdp.clone(),
        });
        if sdp.starts_with("v=0") {
            Ok(())
        } else {
            Err(SignalingError::Media("not an SDP".into()))
        }
    }

    async fn set_can_publish(
        &self,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<Offer, SignalingError> {
        self.calls
            .lock()
            .push(MediaCall::SetCanPublish { pid, can_publish });
        if !self.known.lock().contains(&pid) {
            return Err(SignalingError::Media("unknown participant".into()));
        }
        Ok(self.offer(pid, "renegotiation"))
    }

    async fn restart_ice(&self, pid: ParticipantId) -> Result<Offer, SignalingError> {
        self.calls.lock().push(MediaCall::RestartIce { pid });
        Ok(self.offer(pid, "restart"))
    }

    fn set_muted(&self, pid: ParticipantId, muted: bool) {
        self.calls.lock().push(MediaCall::SetMuted { pid, muted });
    }

    fn leave(&self, pid: ParticipantId) {
        self.calls.lock().push(MediaCall::Leave { pid });
        self.known.lock().remove(&pid);
    }
}

pub struct Harness {
    pub addr: SocketAddr,
    pub signaling: Signaling,
    pub chat: Arc<FakeChat>,
    pub media: Arc<FakeMedia>,
    pub events: mpsc::UnboundedSender<SfuEvent>,
}

/// Test defaults: production values except short timings where a test waits on them.
pub fn test_config() -> SignalingConfig {
    SignalingConfig {
        resume_grace: Duration::from_millis(1500),
        ..SignalingConfig::default()
    }
}

pub async fn start(cfg: SignalingConfig) -> anyhow::Result<Harness> {
    start_with(cfg, Arc::new(FakeDirectory)).await
}

/// `start` with another room directory (e.g. one that holds joins at a gate).
pub async fn start_with(
    cfg: SignalingConfig,
    directory: Arc<dyn RoomDirectory>,
) -> anyhow::Result<Harness> {
    let chat = Arc::new(FakeChat::default());
    let media = Arc::new(FakeMedia::default());
    let (events, rx) = mpsc::unbounded_channel();
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .boxed();
    let signaling = Signaling::new(
        cfg,
        SignalingPorts {
            auth: Arc::new(FakeAuth),
            directory,
            chat: chat.clone(),
            media: media.clone(),
        },
        stream,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = signaling.routes();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Harness {
        addr,
        signaling,
        chat,
        media,
        events,
    })
}

pub enum Cred<'a> {
    Cookie(&'a str),
    Bearer(&'a str),
    Query(&'a str),
    None,
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages read while looking for something else, oldest first.
    pub seen: Vec<ServerMessage>,
}

impl Harness {
    /// A harness for a server started elsewhere (e.g. with the real SFU); the fake
    /// chat and media here are unused.
    pub fn for_addr(addr: SocketAddr, signaling: Signaling) -> Harness {
        let (events, _rx) = mpsc::unbounded_channel();
        Harness {
            addr,
            signaling,
            chat: Arc::new(FakeChat::default()),
            media: Arc::new(FakeMedia::default()),
            events,
        }
    }

    pub async fn connect_with(&self, path: &str, cred: Cred<'_>) -> anyhow::Result<Client> {
        let mut url = format!("ws://{}{}", self.addr, path);
        if let Cred::Query(t) = cred {
            url.push_str(&format!("?token={t}"));
        }
        let mut req = url.into_client_request()?;
        match cred {
            Cred::Cookie(t) => {
                req.headers_mut()
                    .insert("cookie", format!("theme=dark; accessToken={t}").parse()?);
            }
            Cred::Bearer(t) => {
                req.headers_mut()
                    .insert("authorization", format!("Bearer {t}").parse()?);
            }
            Cred::Query(_) | Cred::None => {}
        }
        let (ws, _resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
            .await
            .context("connect timed out")??;
        Ok(Client {
            ws,
            seen: Vec::new(),
        })
    }

    /// Connects as `user` (bearer token).
    pub async fn connect(&self, user: &str) -> anyhow::Result<Client> {
        self.connect_with("/ws", Cred::Bearer(&format!("tok-{user}")))
            .await
    }

    /// Connects as `user` and joins `room`; returns the client and its participant id.
    pub async fn join(&self, user: &str, room: &str) -> anyhow::Result<(Client, ParticipantId)> {
        let mut c = self.connect(user).await?;
        let pid = c.join_room(room).await?;
        Ok((c, pid))
    }

    pub fn emit(&self, ev: SfuEvent) -> anyhow::Result<()> {
        self.events.send(ev).context("media event channel closed")
    }

    /// Waits until the fake media saw a call matching `pred`.
    pub async fn media_saw(&self, pred: impl Fn(&MediaCall) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if self.media.calls().iter().any(&pred) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "media never saw the expected call; saw {:?}",
                    self.media.calls()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Client {
    pub async fn send(&mut self, msg: &ClientMessage) -> anyhow::Result<()> {
        self.send_raw(&serde_json::to_string(msg)?).await
    }

    pub async fn send_raw(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Next server message (pings are answered by tungstenite while reading).
    pub async fn recv(&mut self) -> anyhow::Result<ServerMessage> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("timed out waiting for a server message")?;
            match frame {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .with_context(|| format!("unparseable server message {t}"));
                }
                Some(Ok(Message::Close(f))) => bail!("socket closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket ended"),
            }
        }
    }

    /// Reads until a message matches `pred`, keeping the others in `seen`.
    pub async fn expect(
        &mut self,
        what: &str,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> anyhow::Result<ServerMessage> {
        if let Some(i) = self.seen.iter().position(&pred) {
            return Ok(self.seen.remove(i));
        }
        loop {
            let m = self
                .recv()
                .await
                .with_context(|| format!("waiting for {what}; seen so far {:?}", self.seen))?;
            if pred(&m) {
                return Ok(m);
            }
            self.seen.push(m);
        }
    }

    /// Sends a protocol ping and returns everything received before the pong: a
    /// barrier proving the server handled all earlier messages of this connection.
    pub async fn sync(&mut self) -> anyhow::Result<Vec<ServerMessage>> {
        self.send(&ClientMessage::Ping).await?;
        let mut before = Vec::new();
        loop {
            match self.recv().await? {
                ServerMessage::Pong => return Ok(before),
                m => before.push(m),
            }
        }
    }

    pub async fn expect_error(
        &mut self,
        code: signaling::protocol::ErrorCode,
    ) -> anyhow::Result<(String, bool)> {
        match self
            .expect(
                &format!("error {code:?}"),
                |m| matches!(m, ServerMessage::Error { code: got, .. } if *got == code),
            )
            .await?
        {
            ServerMessage::Error { message, fatal, .. } => Ok((message, fatal)),
            other => bail!("expected error {code:?}, got {other:?}"),
        }
    }

    /// Waits for the server to close the socket.
    pub async fn expect_closed(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("socket was not closed in time")?
            {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(Message::Text(t))) => {
                    if let Ok(m) = serde_json::from_str(t.as_str()) {
                        self.seen.push(m);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }

    pub async fn join_room(&mut self, room: &str) -> anyhow::Result<ParticipantId> {
        self.send(&ClientMessage::JoinRoom {
            room_id: room.into(),
            resume_token: None,
        })
        .await?;
        match self
            .expect("joined", |m| {
                matches!(
                    m,
                    ServerMessage::Joined { .. } | ServerMessage::Error { .. }
                )
            })
            .await?
        {
            ServerMessage::Joined { you, .. } => Ok(you.participant_id),
            other => bail!("join refused: {other:?}"),
        }
    }

    /// join_call, answer the offer; returns the offer's SDP.
    pub async fn join_call(&mut self) -> anyhow::Result<String> {
        self.send(&ClientMessage::JoinCall).await?;
        let sdp = match self
            .expect("offer", |m| matches!(m, ServerMessage::Offer { .. }))
            .await?
        {
            ServerMessage::Offer { sdp, .. } => sdp,
            _ => unreachable!(),
        };
        self.send(&ClientMessage::Answer {
            sdp: "v=0 answer".into(),
        })
        .await?;
        Ok(sdp)
    }

    /// Closes the TCP connection without a close handshake (a dropped network).
    pub fn drop_connection(self) {
        drop(self.ws);
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.ws.close(None).await?;
        Ok(())
    }
}

pub fn map_of(m: &[signaling::protocol::Participant]) -> HashMap<ParticipantId, String> {
    m.iter()
        .map(|p| (p.participant_id, p.user_id.clone()))
        .collect()
}

/// Waits until `room` has `n` participants waiting for a resume.
pub async fn wait_reconnecting(h: &Harness, room: &str, n: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = h
            .signaling
            .room_snapshot(room)
            .map_or(0, |s| s.reconnecting);
        if now == n {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{room}: {now} reconnecting, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
