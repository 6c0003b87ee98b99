//! Chat rooms by slug and messages over HTTP: creation on first use, posting, history
//! pages, deletion rights.

mod common;

use axum::http::{Method, StatusCode};
use common::TestApp;
use serde_json::json;

#[tokio::test]
async fn a_valid_slug_creates_a_social_room_owned_by_the_first_visitor() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let b = app.user("+14155550002", "Bob").await;
    let r = app.get("/api/room/lobby_1-x", &a.access).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"roomId": "lobby_1-x", "messages": [], "nextCursor": null})
    );
    // The second visitor sees the same room, still owned by the first.
    assert_eq!(
        app.get("/api/room/lobby_1-x", &b.access).await.status,
        StatusCode::OK
    );
    let room = app.get("/api/rooms/lobby_1-x", &b.access).await.json();
    assert_eq!(room["roomType"], "social");
    assert_eq!(room["ownerId"], a.user_id.as_str());
}

#[tokio::test]
async fn an_invalid_slug_is_404_and_creates_nothing() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    for slug in ["bad.slug", "has%20space", &"x".repeat(65)] {
        app.get(&format!("/api/room/{slug}"), &a.access)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn a_private_room_is_404_by_slug_to_outsiders() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let b = app.user("+14155550002", "Bob").await;
    let id = app.create_room(&a, "p", "private").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.get(&format!("/api/room/{id}"), &b.access)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.post(
        &format!("/api/room/{id}/messages"),
        &b.access,
        json!({"message": "hi"}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        app.get(&format!("/api/room/{id}"), &a.access).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn posting_a_message_returns_it_with_chillout_and_new_fields() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    let r = app
        .post(
            "/api/room/lobby/messages",
            &a.access,
            json!({"message": "  hello  "}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let m = r.json();
    assert_eq!(m["message"], "hello");
    assert_eq!(m["type"], "text");
    assert_eq!(m["username"], "Alice");
    assert_eq!(m["userId"], a.user_id.as_str());
    assert_eq!(m["roomId"], "lobby");
    assert_eq!(m["_id"], m["id"]);
    assert_eq!(m["url"], serde_json::Value::Null);
    assert_eq!(m["fileId"], serde_json::Value::Null);
    assert!(m["createdAt"].is_string());
    assert_eq!(app.live.created.lock().len(), 1, "the live side is told");

    let hist = app.get("/api/room/lobby", &a.access).await.json();
    assert_eq!(hist["messages"][0]["id"], m["id"]);
}

#[tokio::test]
async fn message_text_is_validated_and_unknown_rooms_are_404() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    for body in [
        json!({"message": ""}),
        json!({"message": "   "}),
        json!({}),
        json!({"message": "x".repeat(2001)}),
    ] {
        app.post("/api/room/lobby/messages", &a.access, body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_message");
    }
    app.post(
        "/api/room/nowhere/messages",
        &a.access,
        json!({"message": "hi"}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn messages_lose_control_and_direction_characters_and_invisible_ones_are_refused() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    let r = app
        .post(
            "/api/room/lobby/messages",
            &a.access,
            json!({"message": "see\u{202E}txt.exe\u{1b}[2J\r\nline two\u{7}"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.json()["message"], "seetxt.exe[2J\nline two");
    for invisible in ["\u{202E}\u{202C}", "\u{200B}\u{2060}", "\u{3164}"] {
        app.post(
            "/api/room/lobby/messages",
            &a.access,
            json!({ "message": invisible }),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_message");
    }
}

#[tokio::test]
async fn users_without_a_name_cannot_post() {
    let app = TestApp::new().await;
    let a = app.login("+14155550001").await;
    app.get("/api/room/lobby", &a.access).await;
    app.post(
        "/api/room/lobby/messages",
        &a.access,
        json!({"message": "hi"}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "not_activated");
}

#[tokio::test]
async fn history_pages_go_back_in_time_by_cursor() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    for i in 0..7 {
        app.clock.advance(time::Duration::milliseconds(10));
        let r = app
            .post(
                "/api/room/lobby/messages",
                &a.access,
                json!({"message": format!("m{i}")}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let texts = |j: &serde_json::Value| -> Vec<String> {
        j["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["message"].as_str().expect("text").to_owned())
            .collect()
    };
    let p1 = app.get("/api/room/lobby?limit=3", &a.access).await.json();
    assert_eq!(texts(&p1), ["m4", "m5", "m6"], "newest page, oldest first");
    let c1 = p1["nextCursor"].as_str().expect("older pages exist");
    let p2 = app
        .get(&format!("/api/room/lobby?limit=3&before={c1}"), &a.access)
        .await
        .json();
    assert_eq!(texts(&p2), ["m1", "m2", "m3"]);
    let c2 = p2["nextCursor"].as_str().expect("older pages exist");
    let p3 = app
        .get(&format!("/api/room/lobby?limit=3&before={c2}"), &a.access)
        .await
        .json();
    assert_eq!(texts(&p3), ["m0"]);
    assert_eq!(p3["nextCursor"], serde_json::Value::Null);

    app.get("/api/room/lobby?before=garbage", &a.access)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_cursor");
    app.get("/api/room/lobby?limit=201", &a.access)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_limit");
}

#[tokio::test]
async fn only_the_author_or_the_room_owner_deletes_a_message() {
    let app = TestApp::new().await;
    let owner = app.user("+14155550001", "Owner").await;
    let author = app.user("+14155550002", "Author").await;
    let other = app.user("+14155550003", "Other").await;
    app.get("/api/room/lobby", &owner.access).await;
    let post = |text: &'static str| {
        let app = &app;
        let author = &author;
        async move {
            app.post(
                "/api/room/lobby/messages",
                &author.access,
                json!({"message": text}),
            )
            .await
            .json()["id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
    };
    let m1 = post("one").await;
    let m2 = post("two").await;

    app.call(
        Method::DELETE,
        &format!("/api/room/lobby/messages/{m1}"),
        Some(&other.access),
        None,
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "not_author");
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/room/lobby/messages/{m1}"),
            Some(&author.access),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/room/lobby/messages/{m2}"),
            Some(&owner.access),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.call(
        Method::DELETE,
        &format!("/api/room/lobby/messages/{m2}"),
        Some(&owner.access),
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        app.get("/api/room/lobby", &owner.access).await.json()["messages"],
        json!([])
    );
    assert_eq!(app.live.deleted.lock().len(), 2);
}

#[tokio::test]
async fn a_message_cannot_be_deleted_through_another_room() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/one", &a.access).await;
    app.get("/api/room/two", &a.access).await;
    let id = app
        .post("/api/room/one/messages", &a.access, json!({"message": "x"}))
        .await
        .json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.call(
        Method::DELETE,
        &format!("/api/room/two/messages/{id}"),
        Some(&a.access),
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn the_chat_functions_for_signaling_apply_the_same_rules() {
    use api::store::{MessageType, RoomId, UserId};
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let b = app.user("+14155550002", "Bob").await;
    let (ua, ub) = (
        UserId::parse(a.user_id.clone()).expect("valid id"),
        UserId::parse(b.user_id.clone()).expect("valid id"),
    );
    app.get("/api/room/lobby", &a.access).await;
    let lobby = RoomId::parse("lobby").expect("valid id");

    let m = api::chat::post_text(&app.state, &lobby, &ub, " over the socket ")
        .await
        .expect("stored");
    assert_eq!(m.text, "over the socket");
    assert_eq!(m.author_name, "Bob");
    let err = api::chat::post_text(&app.state, &lobby, &ub, "")
        .await
        .expect_err("empty text");
    assert!(
        matches!(err, api::chat::ChatError::InvalidText { .. }),
        "{err:?}"
    );

    app.clock.advance(time::Duration::milliseconds(1));
    let notice = api::chat::post_system(
        &app.state,
        &lobby,
        &ua,
        "Alice",
        MessageType::CallNotification,
        "Alice joined the call",
    )
    .await
    .expect("stored");
    let hist = app.get("/api/room/lobby", &a.access).await.json();
    assert_eq!(hist["messages"][1]["type"], "call_notification");
    assert_eq!(hist["messages"][1]["id"], notice.id.as_str());
    assert!(
        api::chat::post_system(&app.state, &lobby, &ua, "Alice", MessageType::Text, "x")
            .await
            .is_err()
    );

    let private = app.create_room(&a, "p", "private").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let err = api::chat::post_text(
        &app.state,
        &RoomId::parse(private).expect("valid id"),
        &ub,
        "hi",
    )
    .await
    .expect_err("outsider");
    assert!(matches!(err, api::chat::ChatError::RoomNotFound), "{err:?}");

    let err = api::chat::delete_message(&app.state, &lobby, &notice.id, &ub)
        .await
        .expect_err("not the author");
    assert!(matches!(err, api::chat::ChatError::NotAuthor), "{err:?}");
    api::chat::delete_message(&app.state, &lobby, &m.id, &ub)
        .await
        .expect("author deletes");
    assert!(
        app.live.created.lock().is_empty(),
        "these functions leave broadcasting to the caller"
    );
}
