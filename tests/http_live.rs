//! Changes made over HTTP reach the people in the room live: the real server
//! in-process on loopback, two users logged in through the real phone-code flow
//! (send-otp, the code read from the development SMS sender's log event, verify-otp,
//! activate), one of them listening on the WebSocket while the other posts, deletes
//! and finally deletes the room over plain HTTP/1.1.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use chorus::Config;
use clap::Parser;
use loadtest::protocol::{ClientMessage, ServerMessage};
use loadtest::signal::{Auth, SignalClient};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Bound on every single step a test waits for (a busy 2-core machine).
const STEP: Duration = Duration::from_secs(15);
/// Responses larger than this are a server bug here.
const MAX_RESPONSE: usize = 1 << 20;

/// Development SMS messages seen in this process, as (to, body).
fn sms_log() -> &'static Mutex<Vec<(String, String)>> {
    static LOG: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();
    LOG.get_or_init(Default::default)
}

/// Records the `to` and `body` fields of the development SMS sender's log events, so
/// the test reads login codes exactly as a developer reads them from the log.
struct SmsCapture;

#[derive(Default)]
struct SmsFields {
    to: Option<String>,
    body: Option<String>,
}

impl Visit for SmsFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "to" => self.to = Some(value.to_owned()),
            "body" => self.body = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SmsCapture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        if event.metadata().target() != "chorus::dev_sms" {
            return;
        }
        let mut fields = SmsFields::default();
        event.record(&mut fields);
        if let (Some(to), Some(body)) = (fields.to, fields.body)
            && let Ok(mut log) = sms_log().lock()
        {
            log.push((to, body));
        }
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::registry().with(SmsCapture).try_init();
}

/// A fresh data directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("chorus-http-live-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Response {
    status: u16,
    body: Value,
}

/// One HTTP/1.1 request on its own connection (`Connection: close`, so the response
/// ends at EOF), JSON in and out, bearer-authenticated when `token` is given.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Response> {
    let body = body.map(serde_json::to_string).transpose()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    match &body {
        Some(b) => req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => req.push_str("Content-Length: 0\r\n\r\n"),
    }
    let raw = tokio::time::timeout(STEP, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
            .await?;
        anyhow::Ok(raw)
    })
    .await
    .with_context(|| format!("{method} {path} timed out"))??;
    anyhow::ensure!(
        raw.len() <= MAX_RESPONSE,
        "{method} {path}: response too large"
    );
    let text = String::from_utf8(raw).context("response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} {path}: no header end in {text:?}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("{method} {path}: chunked responses are not expected here");
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status code")?
        .parse()?;
    let body = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).with_context(|| format!("{method} {path}: body {body:?}"))?
    };
    Ok(Response { status, body })
}

/// `http`, insisting on `want`.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    want: u16,
) -> anyhow::Result<Value> {
    let r = http(addr, method, path, token, body.as_ref()).await?;
    anyhow::ensure!(
        r.status == want,
        "{method} {path}: expected {want}, got {} {}",
        r.status,
        r.body
    );
    Ok(r.body)
}

/// Logs in with the phone-code flow and sets the user's name; returns the access token.
async fn log_in(addr: std::net::SocketAddr, phone: &str, name: &str) -> anyhow::Result<String> {
    let sent = call(
        addr,
        "POST",
        "/api/send-otp",
        None,
        Some(json!({ "phone": phone })),
        200,
    )
    .await?;
    let hash = sent["hash"].as_str().context("send-otp gave no hash")?;
    // The number as the server normalised it is the one the SMS goes to.
    let phone = sent["phone"].as_str().context("send-otp gave no phone")?;
    let body = sms_log()
        .lock()
        .map_err(|_| anyhow::anyhow!("sms log poisoned"))?
        .iter()
        .rev()
        .find(|(to, _)| to == phone)
        .map(|(_, body)| body.clone())
        .context("no development SMS was logged for the phone")?;
    let code = body
        .split("code is ")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .with_context(|| format!("no code in {body:?}"))?;
    let verified = call(
        addr,
        "POST",
        "/api/verify-otp",
        None,
        Some(json!({ "phone": phone, "hash": hash, "otp": code, "tokenInBody": true })),
        200,
    )
    .await?;
    let token = verified["accessToken"]
        .as_str()
        .context("verify-otp gave no access token")?
        .to_owned();
    call(
        addr,
        "POST",
        "/api/activate",
        Some(&token),
        Some(json!({ "name": name })),
        200,
    )
    .await?;
    Ok(token)
}

/// Joins `room` on the WebSocket; returns once `joined` arrived.
async fn join(ws_url: &str, token: &str, room: &str) -> anyhow::Result<SignalClient> {
    let mut c = SignalClient::connect(ws_url, &Auth::Bearer(token.to_owned()), STEP).await?;
    c.send(&ClientMessage::JoinRoom {
        room_id: room.to_owned(),
        resume_token: None,
    })
    .await?;
    c.wait_for(STEP, |m| {
        matches!(m, ServerMessage::Joined { .. }).then_some(())
    })
    .await?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_posted_and_deleted_over_http_and_the_room_deletion_reach_the_socket_live()
-> anyhow::Result<()> {
    init_tracing();
    let dir = TempDir::new()?;
    let data_dir = dir.0.to_string_lossy().into_owned();
    let cfg = Config::try_parse_from([
        "chorus",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--media-host",
        "127.0.0.1",
        "--media-port",
        "0",
        "--data-dir",
        &data_dir,
        "--insecure-cookies",
        "--jwt-access-token-secret",
        "http-live-test-access-secret-0123456789",
        "--jwt-refresh-token-secret",
        "http-live-test-refresh-secret-0123456789",
    ])?;
    let server = chorus::start(cfg).await?;
    let addr = server.http_addr;
    let ws_url = format!("ws://{addr}/ws");

    let host = log_in(addr, "+15550100071", "Hana Host").await?;
    let guest = log_in(addr, "+15550100072", "Gus Guest").await?;
    let room = call(
        addr,
        "POST",
        "/api/rooms",
        Some(&host),
        Some(json!({ "topic": "Live over HTTP", "roomType": "open" })),
        201,
    )
    .await?;
    let room_id = room["id"].as_str().context("room has no id")?.to_owned();

    let mut listener = join(&ws_url, &guest, &room_id).await?;
    // Someone in another room must not hear about this room's changes.
    let other = call(
        addr,
        "POST",
        "/api/rooms",
        Some(&guest),
        Some(json!({ "topic": "Elsewhere", "roomType": "open" })),
        201,
    )
    .await?;
    let other_id = other["id"].as_str().context("room has no id")?.to_owned();
    let mut elsewhere = join(&ws_url, &host, &other_id).await?;

    let posted = call(
        addr,
        "POST",
        &format!("/api/room/{room_id}/messages"),
        Some(&host),
        Some(json!({ "message": "hello from HTTP" })),
        201,
    )
    .await?;
    let message_id = posted["id"]
        .as_str()
        .context("message has no id")?
        .to_owned();
    let live = listener
        .wait_for(STEP, |m| match m {
            ServerMessage::ReceiveMessage { message } => Some(message.clone()),
            _ => None,
        })
        .await
        .context("the HTTP-posted message never reached the socket")?;
    assert_eq!(live.id, message_id);
    assert_eq!(live.message, "hello from HTTP");
    assert_eq!(live.username, "Hana Host");
    assert_eq!(live.room_id, room_id);
    assert_eq!(live.kind, "text");
    // The socket carries the same JSON fields as the HTTP answer.
    assert_eq!(serde_json::to_value(&live)?, posted);

    call(
        addr,
        "DELETE",
        &format!("/api/room/{room_id}/messages/{message_id}"),
        Some(&host),
        None,
        204,
    )
    .await?;
    let deleted = listener
        .wait_for(STEP, |m| match m {
            ServerMessage::MessageDeleted { message_id } => Some(message_id.clone()),
            _ => None,
        })
        .await
        .context("the HTTP deletion never reached the socket")?;
    assert_eq!(deleted, message_id);

    call(
        addr,
        "DELETE",
        &format!("/api/rooms/{room_id}"),
        Some(&host),
        None,
        204,
    )
    .await?;
    let reason = listener
        .wait_for(STEP, |m| match m {
            ServerMessage::Removed { reason } => Some(reason.clone()),
            _ => None,
        })
        .await
        .context("the room deletion never reached the socket")?;
    assert_eq!(reason, "room deleted");
    // The server closes the socket after `removed`.
    let end = listener.recv(STEP).await;
    assert!(
        matches!(end, Err(loadtest::Error::Closed)),
        "socket still open after removal: {end:?}"
    );
    assert!(server.signaling.room_snapshot(&room_id).is_none());

    // The other room heard none of it and is still live.
    elsewhere.send(&ClientMessage::Ping).await?;
    let mut before_pong = Vec::new();
    loop {
        match elsewhere.recv(STEP).await? {
            ServerMessage::Pong => break,
            m => before_pong.push(m),
        }
    }
    assert!(
        !before_pong.iter().any(|m| matches!(
            m,
            ServerMessage::ReceiveMessage { .. }
                | ServerMessage::MessageDeleted { .. }
                | ServerMessage::Removed { .. }
        )),
        "another room saw this room's changes: {before_pong:?}"
    );
    assert_eq!(
        server
            .signaling
            .room_snapshot(&other_id)
            .map(|s| s.total_people),
        Some(1)
    );

    server.shutdown().await;
    Ok(())
}
