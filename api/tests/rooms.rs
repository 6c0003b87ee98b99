//! Rooms over HTTP: create, list with pagination, get, update, delete, private-room
//! visibility and invitations, live state in room JSON, and the shared access check.

mod common;

use api::live::LiveRoomInfo;
use api::store::{RoomId, UserId};
use axum::http::{Method, StatusCode};
use common::{TestApp, user_id};
use serde_json::json;

#[tokio::test]
async fn creating_a_room_returns_201_and_the_room() {
    let app = TestApp::new().await;
    let alice = app.user("+14155550001", "Alice").await;
    let r = app
        .post(
            "/api/rooms",
            &alice.access,
            json!({"topic": "  Rust talk ", "roomType": "open"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let j = r.json();
    assert_eq!(j["topic"], "Rust talk");
    assert_eq!(j["roomType"], "open");
    assert_eq!(j["ownerId"], alice.user_id.as_str());
    assert_eq!(
        j["owner"],
        json!({"id": alice.user_id, "name": "Alice", "avatar": null})
    );
    assert_eq!(j["speakers"], json!([]));
    assert_eq!(j["totalPeople"], 0);
    assert!(j["id"].as_str().is_some_and(|s| s.len() == 24));
    assert!(j["createdAt"].is_string());
    assert!(
        !r.body.windows(6).any(|w| w == b"+14155"),
        "no phone numbers in room JSON"
    );
}

#[tokio::test]
async fn creating_a_room_validates_topic_and_type() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    for body in [
        json!({"topic": "", "roomType": "open"}),
        json!({"topic": "   ", "roomType": "open"}),
        json!({"topic": "x".repeat(121), "roomType": "open"}),
        json!({"topic": "free\u{202E}3pm.exe", "roomType": "open"}),
        json!({"topic": "\u{200B}\u{2060}", "roomType": "open"}),
        json!({"topic": "line\nbreak", "roomType": "open"}),
    ] {
        app.post("/api/rooms", &a.access, body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_topic");
    }
    app.post("/api/rooms", &a.access, json!({"topic": "t"}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_room_type");
    app.post(
        "/api/rooms",
        &a.access,
        json!({"topic": "t", "roomType": "secret"}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_json");
}

#[tokio::test]
async fn listing_shows_only_open_rooms_newest_first_with_cursor_pages() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let mut open_ids = Vec::new();
    for i in 0..5 {
        app.clock.advance(time::Duration::seconds(1));
        open_ids.push(app.create_room(&a, &format!("open {i}"), "open").await["id"].clone());
    }
    app.create_room(&a, "hidden social", "social").await;
    app.create_room(&a, "hidden private", "private").await;
    open_ids.reverse();

    let first = app.get("/api/rooms?limit=2", &a.access).await;
    assert_eq!(first.status, StatusCode::OK);
    let page: Vec<_> = first
        .json()
        .as_array()
        .expect("array body")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(page, open_ids[0..2]);
    let cursor = first
        .header("x-next-cursor")
        .expect("more pages")
        .to_owned();
    assert!(
        first
            .header("link")
            .is_some_and(|l| l.contains("rel=\"next\"") && l.contains(&cursor))
    );

    let second = app
        .get(&format!("/api/rooms?limit=2&cursor={cursor}"), &a.access)
        .await;
    let page: Vec<_> = second
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(page, open_ids[2..4]);
    let cursor = second
        .header("x-next-cursor")
        .expect("more pages")
        .to_owned();

    let last = app
        .get(&format!("/api/rooms?limit=2&cursor={cursor}"), &a.access)
        .await;
    let page: Vec<_> = last
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(page, open_ids[4..5]);
    assert!(
        last.header("x-next-cursor").is_none(),
        "last page has no cursor"
    );

    app.get("/api/rooms?limit=0", &a.access)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_limit");
    app.get("/api/rooms?limit=abc", &a.access)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.get("/api/rooms?cursor=%3Cscript%3E", &a.access)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_cursor");
}

#[tokio::test]
async fn room_json_reports_live_speakers_and_people_without_phones() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let b = app.user("+14155550002", "Bob").await;
    let room = app.create_room(&a, "live", "open").await;
    let id = room["id"].as_str().expect("id").to_owned();
    app.live.rooms.lock().insert(
        RoomId::parse(id.clone()).expect("valid id"),
        LiveRoomInfo {
            total_people: 7,
            speakers: vec![
                user_id(&a),
                user_id(&b),
                UserId::parse("ffffffffffffffffffffffff").expect("valid id"),
            ],
        },
    );
    let r = app.get(&format!("/api/rooms/{id}"), &b.access).await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["totalPeople"], 7);
    assert_eq!(
        j["speakers"],
        json!([
            {"id": a.user_id, "name": "Alice", "avatar": null},
            {"id": b.user_id, "name": "Bob", "avatar": null}
        ]),
        "unknown speaker ids are skipped"
    );
    let list = app.get("/api/rooms", &b.access).await;
    assert_eq!(list.json()[0]["totalPeople"], 7);
    assert!(!list.body.windows(6).any(|w| w == b"+14155"));
}

#[tokio::test]
async fn unknown_and_malformed_room_ids_are_404() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    for id in [
        "0123456789abcdef01234567",
        "no%20such",
        "a.b",
        &"x".repeat(65),
    ] {
        app.get(&format!("/api/rooms/{id}"), &a.access)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn social_rooms_are_unlisted_but_open_by_link() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let b = app.user("+14155550002", "Bob").await;
    let room = app.create_room(&a, "by link", "social").await;
    let id = room["id"].as_str().expect("id");
    assert_eq!(
        app.get(&format!("/api/rooms/{id}"), &b.access).await.status,
        StatusCode::OK
    );
    assert_eq!(app.get("/api/rooms", &b.access).await.json(), json!([]));
}

#[tokio::test]
async fn private_rooms_are_404_to_outsiders_and_visible_after_an_invite() {
    let app = TestApp::new().await;
    let owner = app.user("+14155550001", "Owner").await;
    let guest = app.user("+14155550002", "Guest").await;
    let room = app.create_room(&owner, "secret", "private").await;
    let id = room["id"].as_str().expect("id").to_owned();
    let url = format!("/api/rooms/{id}");

    assert_eq!(app.get(&url, &owner.access).await.status, StatusCode::OK);
    app.get(&url, &guest.access)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // Outsiders cannot invite themselves or others.
    app.post(
        &format!("{url}/invites"),
        &guest.access,
        json!({"userId": guest.user_id}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(matches!(
        api::can_join(
            app.state.store.as_ref(),
            &RoomId::parse(id.clone()).expect("valid id"),
            &user_id(&guest)
        )
        .await,
        Err(api::AccessError::NotFound)
    ));

    let r = app
        .post(
            &format!("{url}/invites"),
            &owner.access,
            json!({"userId": guest.user_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&url, &guest.access).await.status, StatusCode::OK);
    let room = api::can_join(
        app.state.store.as_ref(),
        &RoomId::parse(id).expect("valid id"),
        &user_id(&guest),
    )
    .await
    .expect("invited user may join");
    assert_eq!(room.topic, "secret");

    app.post(
        &format!("{url}/invites"),
        &owner.access,
        json!({"userId": "ffffffffffffffffffffffff"}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.post(&format!("{url}/invites"), &owner.access, json!({}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_user_id");
}

#[tokio::test]
async fn an_invite_code_admits_whoever_redeems_it_and_can_be_revoked() {
    let app = TestApp::new().await;
    let owner = app.user("+14155550001", "Owner").await;
    let guest = app.user("+14155550002", "Guest").await;
    let late = app.user("+14155550003", "Late").await;
    let room = app.create_room(&owner, "secret", "private").await;
    let id = room["id"].as_str().expect("id").to_owned();
    let url = format!("/api/rooms/{id}");

    app.call(
        Method::POST,
        &format!("{url}/invite-code"),
        Some(&guest.access),
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
    let r = app
        .call(
            Method::POST,
            &format!("{url}/invite-code"),
            Some(&owner.access),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let code = r.json()["code"].as_str().expect("code").to_owned();
    assert_eq!(r.json()["roomId"], id.as_str());
    // Only the owner sees the code in the room JSON.
    assert_eq!(
        app.get(&url, &owner.access).await.json()["inviteCode"],
        code.as_str()
    );

    app.post(
        &format!("{url}/redeem"),
        &guest.access,
        json!({"code": "wrong"}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
    let r = app
        .post(
            &format!("{url}/redeem"),
            &guest.access,
            json!({"code": code}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["id"], id.as_str());
    assert!(
        r.json().get("inviteCode").is_none(),
        "guests never see the code"
    );
    assert_eq!(app.get(&url, &guest.access).await.status, StatusCode::OK);

    let r = app
        .call(
            Method::DELETE,
            &format!("{url}/invite-code"),
            Some(&owner.access),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.post(
        &format!("{url}/redeem"),
        &late.access,
        json!({"code": code}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        app.get(&url, &guest.access).await.status,
        StatusCode::OK,
        "admitted users stay"
    );
}

#[tokio::test]
async fn only_the_owner_updates_the_topic() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let b = app.user("+14155550002", "Bob").await;
    let id = app.create_room(&a, "old", "open").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let url = format!("/api/rooms/{id}");
    app.call(
        Method::PATCH,
        &url,
        Some(&b.access),
        Some(json!({"topic": "hijack"})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "not_owner");
    app.call(
        Method::PATCH,
        &url,
        Some(&a.access),
        Some(json!({"topic": ""})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_topic");
    let r = app
        .call(
            Method::PATCH,
            &url,
            Some(&a.access),
            Some(json!({"topic": "new"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["topic"], "new");
    assert_eq!(app.get(&url, &b.access).await.json()["topic"], "new");
}

#[tokio::test]
async fn only_the_owner_deletes_and_deletion_cascades_to_messages() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let b = app.user("+14155550002", "Bob").await;
    let id = app.create_room(&a, "doomed", "open").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let msg = app
        .post(
            &format!("/api/room/{id}/messages"),
            &b.access,
            json!({"message": "hi"}),
        )
        .await;
    assert_eq!(msg.status, StatusCode::CREATED);
    let msg_id = msg.json()["id"].as_str().expect("id").to_owned();

    let url = format!("/api/rooms/{id}");
    app.call(Method::DELETE, &url, Some(&b.access), None)
        .await
        .assert_error(StatusCode::FORBIDDEN, "not_owner");
    let r = app.call(Method::DELETE, &url, Some(&a.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.get(&url, &a.access)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        app.state
            .store
            .get_message(&api::store::MessageId::parse(msg_id).expect("valid id"))
            .await
            .expect("store")
            .is_none(),
        "messages go with the room"
    );
    assert_eq!(
        app.live.rooms_deleted.lock().as_slice(),
        &[RoomId::parse(id).expect("valid id")]
    );
}

#[tokio::test]
async fn room_creation_is_rate_limited_per_user_with_retry_after() {
    let mut config = common::test_config();
    config.rate_limits.create_room_per_user = 3;
    let app = TestApp::with_config(config).await;
    let a = app.user("+14155550001", "Alice").await;
    let b = app.user("+14155550002", "Bob").await;
    for i in 0..3 {
        app.create_room(&a, &format!("room {i}"), "open").await;
    }
    let r = app
        .post(
            "/api/rooms",
            &a.access,
            json!({"topic": "one too many", "roomType": "open"}),
        )
        .await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=3600).contains(&wait), "Retry-After {wait}");
    // A chat room made on first use is a room too.
    app.get("/api/room/brand-new-slug", &a.access)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Only the greedy user is limited; existing chat rooms stay reachable.
    app.create_room(&b, "bob's room", "open").await;
    let r = app.get("/api/room/bobs-slug", &b.access).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.get("/api/room/bobs-slug", &a.access).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let listed = app.get("/api/rooms?limit=100", &a.access).await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(4));
}

#[tokio::test]
async fn a_room_id_as_cursor_tells_nothing_about_private_rooms() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let b = app.user("+14155550002", "Bob").await;
    for i in 0..3 {
        app.clock.advance(time::Duration::seconds(1));
        app.create_room(&a, &format!("open {i}"), "open").await;
    }
    let private = app.create_room(&a, "secret", "private").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let unknown = api::store::new_id();
    let as_private = app
        .get(&format!("/api/rooms?cursor={private}"), &b.access)
        .await;
    let as_unknown = app
        .get(&format!("/api/rooms?cursor={unknown}"), &b.access)
        .await;
    assert_eq!(as_private.status, as_unknown.status);
    assert_eq!(as_private.body, as_unknown.body);
    // A cursor is a position, not a room: one naming the private room at its time
    // answers exactly like one naming a room that never existed at that time.
    let at = time::OffsetDateTime::now_utc();
    let private_room = api::store::Room {
        id: RoomId::parse(private.clone()).expect("valid id"),
        topic: String::new(),
        room_type: api::store::RoomType::Private,
        owner_id: user_id(&a),
        invited: Vec::new(),
        invite_code: None,
        created_at: at,
        last_activity: at,
    };
    let forged =
        api::handlers::rooms::encode_room_cursor(&api::store::RoomCursor::after(&private_room));
    let unknown_room = api::store::Room {
        id: RoomId::parse(unknown).expect("valid id"),
        ..private_room
    };
    let forged_unknown =
        api::handlers::rooms::encode_room_cursor(&api::store::RoomCursor::after(&unknown_room));
    let r1 = app
        .get(&format!("/api/rooms?cursor={forged}"), &b.access)
        .await;
    let r2 = app
        .get(&format!("/api/rooms?cursor={forged_unknown}"), &b.access)
        .await;
    assert_eq!(r1.status, StatusCode::OK);
    assert_eq!((r1.status, r1.body), (r2.status, r2.body));
}

#[tokio::test]
async fn the_next_page_survives_the_deletion_of_the_cursor_room() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        app.clock.advance(time::Duration::seconds(1));
        ids.push(
            app.create_room(&a, &format!("open {i}"), "open").await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    ids.reverse();
    let first = app.get("/api/rooms?limit=2", &a.access).await;
    let cursor = first.header("x-next-cursor").expect("more").to_owned();
    assert!(!cursor.contains(&ids[1]), "the cursor is opaque: {cursor}");
    let deleted = app
        .call(
            Method::DELETE,
            &format!("/api/rooms/{}", ids[1]),
            Some(&a.access),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let next = app
        .get(&format!("/api/rooms?limit=2&cursor={cursor}"), &a.access)
        .await;
    assert_eq!(next.status, StatusCode::OK);
    let page: Vec<String> = next
        .json()
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(page, ids[2..4]);
}

/// The full error body, not only the code: a malformed id must answer exactly like an
/// unknown one, naming what was looked for.
#[track_caller]
fn assert_not_found(r: &common::Resp, what: &str) {
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.json(),
        json!({"code": "not_found", "message": format!("{what} not found")})
    );
}

#[tokio::test]
async fn malformed_ids_in_paths_get_the_same_404_body_as_unknown_ones() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let room = app.create_room(&a, "real", "open").await;
    let room = room["id"].as_str().expect("id");
    let unknown = api::store::new_id();
    for id in [
        unknown.as_str(),
        "no%20such",
        "a.b",
        "%C3%A9",
        &"x".repeat(65),
    ] {
        assert_not_found(
            &app.get(&format!("/api/rooms/{id}"), &a.access).await,
            "Room",
        );
        if id != unknown {
            // A well-formed unknown slug would create a chat room; a malformed one is 404.
            assert_not_found(
                &app.get(&format!("/api/room/{id}"), &a.access).await,
                "Room",
            );
            let post = app
                .post(
                    &format!("/api/room/{id}/messages"),
                    &a.access,
                    json!({"message": "hi"}),
                )
                .await;
            assert_not_found(&post, "Room");
        }
        assert_not_found(
            &app.call(
                Method::DELETE,
                &format!("/api/room/{room}/messages/{id}"),
                Some(&a.access),
                None,
            )
            .await,
            "Message",
        );
        for files in ["/api/voice", "/api/image"] {
            assert_not_found(&app.get(&format!("{files}/{id}"), &a.access).await, "File");
        }
        let avatar = app
            .call(Method::GET, &format!("/storage/{id}"), None, None)
            .await;
        assert_not_found(&avatar, "File");
    }
}

/// The five owner-only routes share one opening (`OwnedRoom`): each answers alike.
#[tokio::test]
async fn owner_only_routes_are_401_404_403_in_that_order_and_change_nothing() {
    let app = TestApp::new().await;
    let owner = app.user("+14155550001", "Owner").await;
    let member = app.user("+14155550002", "Member").await;
    let outsider = app.user("+14155550003", "Outsider").await;
    let room = app.create_room(&owner, "mine", "private").await;
    let id = room["id"].as_str().expect("id").to_owned();
    let invite = app
        .post(
            &format!("/api/rooms/{id}/invites"),
            &owner.access,
            json!({"userId": member.user_id}),
        )
        .await;
    assert_eq!(invite.status, StatusCode::NO_CONTENT);

    let routes = |id: &str| {
        [
            (
                Method::PATCH,
                format!("/api/rooms/{id}"),
                Some(json!({"topic": "x"})),
            ),
            (Method::DELETE, format!("/api/rooms/{id}"), None),
            (
                Method::POST,
                format!("/api/rooms/{id}/invites"),
                Some(json!({"userId": "0123456789abcdef01234567"})),
            ),
            (Method::POST, format!("/api/rooms/{id}/invite-code"), None),
            (Method::DELETE, format!("/api/rooms/{id}/invite-code"), None),
        ]
    };
    for (method, url, body) in routes(&id) {
        let anonymous = app.call(method.clone(), &url, None, body.clone()).await;
        anonymous.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
        // The private room does not exist for an outsider: the same body as a missing room.
        let hidden = app
            .call(method.clone(), &url, Some(&outsider.access), body.clone())
            .await;
        assert_not_found(&hidden, "Room");
        let malformed = url.replace(&id, "not.an.id");
        assert_not_found(
            &app.call(
                method.clone(),
                &malformed,
                Some(&owner.access),
                body.clone(),
            )
            .await,
            "Room",
        );
        // Seen but not owned: 403, before the body is even read.
        let refused = app
            .call(
                method.clone(),
                &url,
                Some(&member.access),
                Some(json!("not an object")),
            )
            .await;
        assert_eq!(
            refused.json(),
            json!({"code": "not_owner", "message": "Only the room owner can do this"}),
            "{method} {url}"
        );
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
    }
    // An id in a JSON body is a field error, not a missing resource.
    app.post(
        &format!("/api/rooms/{id}/invites"),
        &owner.access,
        json!({"userId": "not an id"}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_user_id");
    let after = app.get(&format!("/api/rooms/{id}"), &owner.access).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.json()["topic"], "mine");
    assert!(after.json().get("inviteCode").is_none(), "no code was made");
}
