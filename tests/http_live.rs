//! Changes made over HTTP reach the people in the room live: the real server
//! in-process on loopback, two users logged in through the real phone-code flow
//! (send-otp, the code read from the development SMS sender's log event, verify-otp,
//! activate), one of them listening on the WebSocket while the other posts, deletes
//! and finally deletes the room over plain HTTP/1.1.

mod support;

use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use chorus::Config;
use clap::Parser;
use loadtest::protocol::{ClientMessage, ServerMessage};
use loadtest::signal::{Auth, SignalClient};
use serde_json::{Value, json};
use support::{STEP, TempDir};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

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

/// `http`, insisting on `want`.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    want: u16,
) -> anyhow::Result<Value> {
    let body = body.map(|b| b.to_string());
    let r = support::http(addr, method, path, token, body.as_deref()).await?;
    anyhow::ensure!(
        r.status == want,
        "{method} {path}: expected {want}, got {} {}",
        r.status,
        r.body
    );
    if r.body.trim().is_empty() {
        return Ok(Value::Null);
    }
    r.json()
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
