//! The real server on MongoDB (SecantusDB, started, killed with SIGKILL and restarted
//! by the test) through outages: requests fail fast with 503 and `Retry-After` while
//! the database is down and work again once it is back; the server starts with the
//! database down and becomes ready when it comes up; and no acknowledged message is
//! lost when the database is killed in the middle of a stream of posts.

#[allow(dead_code)]
#[path = "../api/tests/support/secantus.rs"]
mod secantus;
mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use api::store::{MessageCursor, RoomId};
use secantus::SecantusServer;
use support::*;

/// Short, so a test of an outage does not wait the production 2 s per request.
const SELECTION_MS: &str = "500";
/// A request during an outage must answer well within this (the driver's default would
/// hold it for 30 s).
const FAST: Duration = Duration::from_secs(5);
/// Waiting for the store to find a restarted database.
const RECOVERY: Duration = Duration::from_secs(60);

/// Starts SecantusDB (a Python process) off the async runtime; retries a few times when
/// restarting on a port the killed process just released.
async fn start_db(port: u16, storage: PathBuf) -> anyhow::Result<SecantusServer> {
    tokio::task::spawn_blocking(move || {
        let mut last = None;
        for _ in 0..5 {
            match SecantusServer::start_at(port, &storage) {
                Ok(db) => return Ok(db),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("SecantusDB did not start")))
    })
    .await?
}

async fn kill_db(db: SecantusServer) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || db.kill()).await?
}

fn mongo_uri(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/chorus?directConnection=true")
}

async fn start_server(port: u16, extra: &[&str]) -> anyhow::Result<TestServer> {
    let uri = mongo_uri(port);
    let mut args = vec![
        "--mongo-uri",
        uri.as_str(),
        "--mongo-server-selection-timeout-ms",
        SELECTION_MS,
    ];
    args.extend_from_slice(extra);
    TestServer::start(&args).await
}

async fn wait_ready(s: &TestServer) -> anyhow::Result<()> {
    eventually_async(RECOVERY, "/api/ready 200", || async {
        let r = s.http("GET", "/api/ready", None, None).await.ok()?;
        (r.status == 200).then_some(())
    })
    .await
}

/// A request during the outage: 503 with `Retry-After`, fast.
async fn expect_unavailable(s: &TestServer, path: &str, token: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let r = s.http("GET", path, Some(token), None).await?;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{path}: {}", r.body);
    assert_eq!(r.header("retry-after"), Some("2"), "{path}");
    assert!(took < FAST, "{path} took {took:?}");
    println!("{path}: 503 in {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mongodb_down_requests_get_503_fast_and_recover_when_it_is_back() -> anyhow::Result<()>
{
    let dir = TempDir::new()?;
    let storage = dir.0.join("db");
    let db = start_db(0, storage.clone()).await?;
    let port = db.port();
    let s = start_server(port, &[]).await?;
    wait_ready(&s).await?;
    let owner = s.activated_user("+14155550301", "Owner").await?;
    let token = s.token(&owner);
    let room = s.create_room(&owner, "open").await?;
    let room_path = format!("/api/room/{room}");

    kill_db(db).await?;
    for _ in 0..3 {
        expect_unavailable(&s, &room_path, &token).await?;
    }
    expect_unavailable(&s, "/api/rooms", &token).await?;
    let ready = s.http("GET", "/api/ready", None, None).await?;
    assert_eq!(ready.status, 503);

    let _db = start_db(port, storage).await?;
    let back = Instant::now();
    wait_ready(&s).await?;
    println!("ready {:?} after SecantusDB was back", back.elapsed());
    let r = s.http("GET", &room_path, Some(&token), None).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_starts_with_mongodb_down_and_becomes_ready_when_it_is_up() -> anyhow::Result<()>
{
    let dir = TempDir::new()?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let started = Instant::now();
    let s = start_server(port, &[]).await?;
    assert!(started.elapsed() < FAST, "start-up waited for the database");
    let ready = s.http("GET", "/api/ready", None, None).await?;
    assert_eq!(ready.status, 503, "{}", ready.body);
    expect_unavailable(&s, "/api/rooms", &s.token("someone")).await?;

    let _db = start_db(port, dir.0.join("db")).await?;
    wait_ready(&s).await?;
    let owner = s.activated_user("+14155550302", "Owner").await?;
    let room = s.create_room(&owner, "open").await?;
    let r = s
        .http(
            "GET",
            &format!("/api/room/{room}"),
            Some(&s.token(&owner)),
            None,
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    s.stop().await;
    Ok(())
}

/// Posts until `stop`; returns the ids of the messages the server acknowledged (201).
async fn post_until(
    addr: std::net::SocketAddr,
    path: String,
    token: String,
    tag: usize,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let body = format!(r#"{{"message":"poster {tag} message {i}"}}"#);
        match http(addr, "POST", &path, Some(&token), Some(&body)).await {
            Ok(r) if r.status == 201 => {
                if let Some(id) = r
                    .json()
                    .ok()
                    .and_then(|j| j["id"].as_str().map(String::from))
                {
                    acked.push(id);
                }
            }
            // Refused during the outage (503), or the connection dropped: not acknowledged.
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_when_mongodb_is_killed_mid_stream() -> anyhow::Result<()> {
    const POSTERS: usize = 4;
    /// Acknowledged posts before the kill.
    const BEFORE_KILL: usize = 150;
    let dir = TempDir::new()?;
    let storage = dir.0.join("db");
    let db = start_db(0, storage.clone()).await?;
    let port = db.port();
    let s = start_server(port, &[]).await?;
    wait_ready(&s).await?;
    let author = s.activated_user("+14155550303", "Author").await?;
    let room = s.create_room(&author, "open").await?;
    let path = format!("/api/room/{room}/messages");
    let addr = s.server().http_addr;

    let stop = Arc::new(AtomicBool::new(false));
    let posters: Vec<_> = (0..POSTERS)
        .map(|tag| {
            tokio::spawn(post_until(
                addr,
                path.clone(),
                s.token(&author),
                tag,
                stop.clone(),
            ))
        })
        .collect();
    // Kill the database while the posts stream in.
    let probe = s.server().store.clone();
    let room_id = RoomId::parse(room.clone()).expect("valid id");
    eventually_async(RECOVERY, "posts acknowledged before the kill", || {
        let (probe, room_id) = (probe.clone(), room_id.clone());
        async move {
            let n = probe.list_messages(&room_id, None, 500).await.ok()?.len();
            (n >= BEFORE_KILL).then_some(())
        }
    })
    .await?;
    kill_db(db).await?;
    // Posts keep coming for a moment against the dead database.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for p in posters {
        acked.extend(p.await?);
    }
    // The probe counts stored messages; each poster may have had one stored
    // whose answer the kill cut off (stored, not acknowledged: not a loss).
    anyhow::ensure!(
        acked.len() >= BEFORE_KILL - POSTERS,
        "only {} acked",
        acked.len()
    );

    let _db = start_db(port, storage).await?;
    wait_ready(&s).await?;
    let store = &s.server().store;
    let mut stored = HashSet::new();
    let mut before: Option<MessageCursor> = None;
    loop {
        let page = store
            .list_messages(&room_id, before.as_ref(), 500)
            .await
            .context("reading the history back")?;
        let Some(last) = page.last() else { break };
        before = Some(MessageCursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        stored.extend(page.iter().map(|m| m.id.to_string()));
    }
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    println!(
        "acknowledged {}, stored after restart {}, lost {}",
        acked.len(),
        stored.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost acknowledged messages: {lost:?}");
    s.stop().await;
    Ok(())
}
