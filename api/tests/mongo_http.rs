//! The main HTTP flows over the MongoDB store (on SecantusDB, like the store contract
//! suite): login and refresh reuse, rooms and privacy, chat paging, a voice note with a
//! range request, and deletion of its bytes. The rest of the HTTP suite runs on SQLite;
//! the two stores are held to the same contract by `store_contract.rs`.

mod common;
#[path = "support/mod.rs"]
mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{TestApp, cookie_header, test_config};
use serde_json::json;

#[tokio::test]
async fn the_main_http_flows_work_on_mongodb() {
    let fixture = support::mongo().await.expect("MongoDB store on SecantusDB");
    let app = TestApp::with_store(test_config(), fixture.store.clone());

    // Login, activation, refresh rotation and reuse detection.
    let alice = app.user("+14155550001", "Alice").await;
    let bob = app.user("+14155550002", "Bob").await;
    let refresh = |token: String| {
        Request::builder()
            .uri("/api/refresh")
            .header(header::COOKIE, cookie_header(&[("refreshToken", &token)]))
            .body(Body::empty())
            .expect("request")
    };
    assert_eq!(
        app.send(refresh(alice.refresh.clone())).await.status,
        StatusCode::OK
    );
    app.send(refresh(alice.refresh.clone()))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "refresh_token_reused");

    // Rooms: open listing, private visibility, invite code.
    let open = app.create_room(&alice, "open one", "open").await;
    let private = app.create_room(&alice, "private one", "private").await;
    let listed = app.get("/api/rooms", &bob.access).await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["id"], open["id"]);
    let pid = private["id"].as_str().expect("id").to_owned();
    app.get(&format!("/api/rooms/{pid}"), &bob.access)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let code = app
        .call(
            Method::POST,
            &format!("/api/rooms/{pid}/invite-code"),
            Some(&alice.access),
            None,
        )
        .await
        .json()["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let r = app
        .post(
            &format!("/api/rooms/{pid}/redeem"),
            &bob.access,
            json!({ "code": code }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Chat by slug with paging.
    app.get("/api/room/lobby", &alice.access).await;
    for i in 0..5 {
        app.clock.advance(time::Duration::milliseconds(5));
        let r = app
            .post(
                "/api/room/lobby/messages",
                &bob.access,
                json!({"message": format!("m{i}")}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let p1 = app
        .get("/api/room/lobby?limit=3", &alice.access)
        .await
        .json();
    assert_eq!(p1["messages"][0]["message"], "m2");
    let cursor = p1["nextCursor"].as_str().expect("cursor");
    let p2 = app
        .get(
            &format!("/api/room/lobby?limit=3&before={cursor}"),
            &alice.access,
        )
        .await
        .json();
    assert_eq!(p2["messages"].as_array().map(Vec::len), Some(2));

    // A voice note: upload, ranged download, deletion removes the bytes.
    let boundary = "b0undary";
    let mut audio = vec![0x1A, 0x45, 0xDF, 0xA3];
    audio.extend((0..600u32).map(|i| (i % 256) as u8));
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"voice\"; filename=\"v.webm\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&audio);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/room/lobby/voice")
        .header(header::AUTHORIZATION, format!("Bearer {}", bob.access))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .expect("request");
    let up = app.send(req).await;
    assert_eq!(up.status, StatusCode::CREATED);
    let url = up.json()["url"].as_str().expect("url").to_owned();
    let msg = up.json()["message"]["id"].as_str().expect("id").to_owned();
    let req = Request::builder()
        .uri(&url)
        .header(header::AUTHORIZATION, format!("Bearer {}", alice.access))
        .header(header::RANGE, "bytes=100-199")
        .body(Body::empty())
        .expect("request");
    let part = app.send(req).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.header("content-range"), Some("bytes 100-199/604"));
    assert_eq!(part.body.as_ref(), &audio[100..200]);

    let r = app
        .call(
            Method::DELETE,
            &format!("/api/room/lobby/messages/{msg}"),
            Some(&alice.access),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "the room owner deletes");
    app.get(&url, &alice.access)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    // Readiness touches MongoDB.
    assert_eq!(
        app.call(Method::GET, "/api/ready", None, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn ready_is_503_when_the_database_is_gone() {
    let server = support::secantus::SecantusServer::start(1.0).expect("own SecantusDB server");
    let store = api::store::MongoStore::connect(
        &format!("{}&serverSelectionTimeoutMS=500", server.uri()),
        "chorus_ready",
        support::LONG_ROOM_EXPIRY,
    )
    .await
    .expect("connect");
    let app = TestApp::with_store(test_config(), std::sync::Arc::new(store));
    assert_eq!(
        app.call(Method::GET, "/api/ready", None, None).await.status,
        StatusCode::OK
    );

    // Dropping the handle stops the server (and waits for it to exit).
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("server stops");
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        app.call(Method::GET, "/api/ready", None, None),
    )
    .await
    .expect("readiness answers promptly even with the database down");
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    // Liveness does not depend on the database.
    assert_eq!(
        app.call(Method::GET, "/api/health", None, None)
            .await
            .status,
        StatusCode::OK
    );
}
