//! The whole Chorus server in-process on loopback, without audio: HTTP smoke checks,
//! `/metrics`, chat over the WebSocket (persisted and broadcast), and the protocol's
//! refusals (malformed input, no token, private rooms).

mod support;

use std::time::Duration;

use loadtest::Error;
use loadtest::protocol::{ClientMessage, ErrorCode, ServerMessage};
use loadtest::signal::{Auth, SignalClient};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_web_client_and_metrics_with_route_templates_are_served() -> anyhow::Result<()> {
    let s = TestServer::start(&[]).await?;

    let health = s.http("GET", "/api/health", None, None).await?;
    assert_eq!(health.status, 200, "{}", health.body);
    let body = health.json()?;
    assert_eq!(body["status"], "ok");
    assert!(body["timestamp"].is_string(), "{body}");

    let index = s.http("GET", "/", None, None).await?;
    assert_eq!(index.status, 200);
    assert!(
        index
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/html")),
        "{:?}",
        index.headers
    );
    assert!(
        index.body.to_lowercase().contains("<!doctype html"),
        "{}",
        &index.body[..index.body.len().min(200)]
    );

    // A request to a parameterised route, so its label can be checked.
    let room = s.create_room("metrics-owner", "open").await?;
    let got = s
        .http(
            "GET",
            &format!("/api/rooms/{room}"),
            Some(&s.token("metrics-owner")),
            None,
        )
        .await?;
    assert_eq!(got.status, 200, "{}", got.body);

    let m = s.metrics().await?;
    let http_lines: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("chorus_http_requests_total{"))
        .collect();
    assert!(
        http_lines
            .iter()
            .any(|l| l.contains("route=\"/api/health\"") && l.contains("status=\"200\"")),
        "{http_lines:#?}"
    );
    assert!(
        http_lines
            .iter()
            .any(|l| l.contains("route=\"/api/rooms/{roomId}\"")
                || l.contains("route=\"/api/rooms/:roomId\"")),
        "route template label for /api/rooms/:roomId: {http_lines:#?}"
    );
    assert!(
        !m.contains(&room),
        "a room id leaked into a metric label:\n{m}"
    );
    for name in [
        "chorus_media_participants",
        "chorus_media_packets_total",
        "chorus_media_packets_dropped_total",
        "chorus_http_request_duration_seconds_bucket",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_the_socket_is_persisted_broadcast_and_deletable_only_by_its_author()
-> anyhow::Result<()> {
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("chat-owner", "open").await?;
    let alice_id = s.activated_user("+14155550101", "Alice").await?;
    let bob_id = s.activated_user("+14155550102", "Bob").await?;
    let mut alice = s.joiner(&alice_id, &room).no_call().connect().await?;
    let mut bob = s.joiner(&bob_id, &room).no_call().connect().await?;
    let mut owner = s.joiner("chat-owner", &room).no_call().connect().await?;

    alice
        .send(&ClientMessage::SendMessage {
            message: "hello from alice".into(),
        })
        .await?;
    let mut ids = Vec::new();
    for (who, sess) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("owner", &mut owner),
    ] {
        let m = expect_event(sess, &format!("receive_message at {who}"), |m| match m {
            ServerMessage::ReceiveMessage { message } => Some(message.clone()),
            _ => None,
        })
        .await?;
        assert_eq!(m.message, "hello from alice");
        assert_eq!(m.user_id, alice_id);
        assert_eq!(m.username, "Alice");
        assert_eq!(m.room_id, room);
        ids.push(m.id);
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let id = ids[0].clone();

    // Persisted: the HTTP history has it.
    let hist = s
        .http(
            "GET",
            &format!("/api/room/{room}"),
            Some(&s.token(&bob_id)),
            None,
        )
        .await?;
    assert_eq!(hist.status, 200, "{}", hist.body);
    let hist = hist.json()?;
    let msgs = hist["messages"].as_array().cloned().unwrap_or_default();
    assert!(
        msgs.iter()
            .any(|m| m["id"] == id.as_str() && m["message"] == "hello from alice"),
        "{hist}"
    );

    // Bob may not delete Alice's message; the socket stays usable.
    bob.send(&ClientMessage::DeleteMessage {
        message_id: id.clone(),
    })
    .await?;
    let code = expect_event(&mut bob, "bob's refusal", |m| match m {
        ServerMessage::Error { code, fatal, .. } => Some((*code, *fatal)),
        ServerMessage::MessageDeleted { .. } => Some((ErrorCode::Internal, true)),
        _ => None,
    })
    .await?;
    assert_eq!(code, (ErrorCode::Forbidden, false));
    let still = s
        .http(
            "GET",
            &format!("/api/room/{room}"),
            Some(&s.token(&bob_id)),
            None,
        )
        .await?
        .json()?;
    assert!(
        still["messages"]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m["id"] == id.as_str())),
        "refused delete removed the message: {still}"
    );

    // Alice may; everyone hears of it and the history no longer has it.
    alice
        .send(&ClientMessage::DeleteMessage {
            message_id: id.clone(),
        })
        .await?;
    for (who, sess) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("owner", &mut owner),
    ] {
        let gone = expect_event(sess, &format!("message_deleted at {who}"), |m| match m {
            ServerMessage::MessageDeleted { message_id } => Some(message_id.clone()),
            _ => None,
        })
        .await?;
        assert_eq!(gone, id);
    }
    let after = s
        .http(
            "GET",
            &format!("/api/room/{room}"),
            Some(&s.token(&bob_id)),
            None,
        )
        .await?
        .json()?;
    assert!(
        !after["messages"]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m["id"] == id.as_str())),
        "deleted message still in history: {after}"
    );
    // Bob's connection still works after his refusal.
    bob.send(&ClientMessage::SendMessage {
        message: "bob still here".into(),
    })
    .await?;
    let m = expect_event(&mut alice, "bob's message", |m| match m {
        ServerMessage::ReceiveMessage { message } => Some(message.clone()),
        _ => None,
    })
    .await?;
    assert_eq!(m.message, "bob still here");
    s.stop().await;
    Ok(())
}

/// Chat over the socket goes through the control plane's rules, the same as
/// `POST /api/room/{id}/messages`: text is trimmed, empty text is refused, and only a
/// user who set a name may post (a named-less account and a minted guest may join, not
/// post). Refusals are non-fatal errors with the HTTP API's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_the_socket_applies_the_same_rules_as_http() -> anyhow::Result<()> {
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("rules-owner", "open").await?;
    let alice = s.activated_user("+14155550201", "Alice").await?;
    let nameless = s.new_user("+14155550202").await?;
    let mut a = s.joiner(&alice, &room).no_call().connect().await?;
    let mut n = s.joiner(&nameless, &room).no_call().connect().await?;
    let mut guest = s.joiner("minted-guest", &room).no_call().connect().await?;

    // Refused over the socket and over HTTP alike, and nothing is stored or broadcast.
    let refusal = |m: &ServerMessage| match m {
        ServerMessage::Error {
            code,
            message,
            fatal,
        } => Some((*code, message.clone(), *fatal)),
        ServerMessage::ReceiveMessage { message } => {
            Some((ErrorCode::Internal, format!("broadcast {message:?}"), true))
        }
        _ => None,
    };
    n.send(&ClientMessage::SendMessage {
        message: "no name yet".into(),
    })
    .await?;
    let (code, message, fatal) = expect_event(&mut n, "nameless refusal", refusal).await?;
    assert_eq!((code, fatal), (ErrorCode::Forbidden, false), "{message}");
    assert!(message.contains("Set your name"), "{message}");
    let http = s
        .http(
            "POST",
            &format!("/api/room/{room}/messages"),
            Some(&s.token(&nameless)),
            Some(r#"{"message":"no name yet"}"#),
        )
        .await?;
    assert_eq!(http.status, 403, "{}", http.body);
    assert_eq!(http.json()?["code"], "not_activated");

    guest
        .send(&ClientMessage::SendMessage {
            message: "guest talk".into(),
        })
        .await?;
    let (code, _, fatal) = expect_event(&mut guest, "guest refusal", refusal).await?;
    assert_eq!((code, fatal), (ErrorCode::Forbidden, false));

    a.send(&ClientMessage::SendMessage {
        message: " \n\t ".into(),
    })
    .await?;
    let (code, message, fatal) = expect_event(&mut a, "empty refusal", refusal).await?;
    assert_eq!((code, fatal), (ErrorCode::BadMessage, false));
    assert_eq!(message, "Message must be 1 to 2000 visible characters");
    // Only invisible and text-direction characters: nothing visible is left.
    a.send(&ClientMessage::SendMessage {
        message: "\u{202E}\u{200B}\u{0007}".into(),
    })
    .await?;
    let (code, _, _) = expect_event(&mut a, "invisible refusal", refusal).await?;
    assert_eq!(code, ErrorCode::BadMessage);
    a.send(&ClientMessage::SendMessage {
        message: "x".repeat(2001),
    })
    .await?;
    let (code, message, _) = expect_event(&mut a, "overlong refusal", refusal).await?;
    assert_eq!(code, ErrorCode::BadMessage);
    assert_eq!(message, "Message must be 1 to 2000 visible characters");

    // Accepted: cleaned of a bell and a right-to-left override, trimmed, under the
    // profile's name, for everyone in the room.
    a.send(&ClientMessage::SendMessage {
        message: "  hello,\u{0007} \u{202E}room \n".into(),
    })
    .await?;
    for (who, sess) in [
        ("alice", &mut a),
        ("nameless", &mut n),
        ("guest", &mut guest),
    ] {
        let m = expect_event(sess, &format!("receive_message at {who}"), |m| match m {
            ServerMessage::ReceiveMessage { message } => Some(message.clone()),
            _ => None,
        })
        .await?;
        assert_eq!(m.message, "hello, room");
        assert_eq!(m.username, "Alice");
        assert_eq!(m.user_id, alice);
    }
    let hist = s
        .http(
            "GET",
            &format!("/api/room/{room}"),
            Some(&s.token(&alice)),
            None,
        )
        .await?
        .json()?;
    let texts: Vec<&str> = hist["messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["message"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(texts, vec!["hello, room"], "{hist}");
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_messages_get_bad_message_and_the_socket_stays_usable()
-> anyhow::Result<()> {
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("bad-owner", "open").await?;
    let mut c = s.joiner("bad-client", &room).no_call().connect().await?;
    for raw in [
        "{not json",
        r#"{"type":"no_such_message"}"#,
        r#"{"type":"send_message"}"#,
        "[1,2,3]",
    ] {
        c.send_raw(raw).await?;
        let (code, fatal) = expect_event(&mut c, &format!("error for {raw}"), |m| match m {
            ServerMessage::Error { code, fatal, .. } => Some((*code, *fatal)),
            _ => None,
        })
        .await?;
        assert_eq!(code, ErrorCode::BadMessage, "for {raw}");
        assert!(
            !fatal,
            "a malformed message must not end the connection ({raw})"
        );
    }
    // Still usable: a ping is answered.
    c.send(&ClientMessage::Ping).await?;
    expect_event(&mut c, "pong", |m| {
        matches!(m, ServerMessage::Pong).then_some(())
    })
    .await?;
    assert!(!c.is_closed());
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_without_a_valid_token_gets_unauthorized_and_is_closed() -> anyhow::Result<()> {
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("auth-owner", "open").await?;
    for auth in [
        Auth::None,
        Auth::Bearer("not-a-jwt".into()),
        // Signed with another secret.
        Auth::Bearer(
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4IiwiaWF0IjowLCJleHAiOjQxMDI0NDQ4MDAsInR5cCI6ImFjY2VzcyJ9.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                .into(),
        ),
    ] {
        let SignalClient {
            sender,
            mut receiver,
        } = SignalClient::connect(&s.ws, &auth, STEP).await?;
        // Whatever the client says, the answer is an unauthorized error, then the close.
        let _ = sender
            .send(&ClientMessage::JoinRoom {
                room_id: room.clone(),
                resume_token: None,
            })
            .await;
        let first = receiver.recv(STEP).await?;
        match first {
            ServerMessage::Error { code, fatal, .. } => {
                assert_eq!(code, ErrorCode::Unauthorized, "{auth:?}");
                assert!(fatal, "{auth:?}");
            }
            other => panic!("expected an unauthorized error for {auth:?}, got {other:?}"),
        }
        let end = receiver.recv(STEP).await;
        assert!(
            matches!(end, Err(Error::Closed)),
            "socket not closed after unauthorized: {end:?}"
        );
    }
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_room_refuses_an_uninvited_user_but_admits_its_owner() -> anyhow::Result<()> {
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("private-owner", "private").await?;
    let refused = s.joiner("stranger", &room).no_call().connect().await;
    match refused {
        Err(e) => match e.downcast_ref::<Error>() {
            Some(Error::Server { code, fatal, .. }) => {
                // Reported like a missing room so private ids cannot be probed.
                assert!(
                    matches!(code, ErrorCode::NotFound | ErrorCode::Forbidden),
                    "{code:?}"
                );
                assert!(*fatal);
            }
            other => panic!("expected a server refusal, got {other:?} ({e:#})"),
        },
        Ok(_) => panic!("an uninvited user joined a private room"),
    }
    let owner = s.joiner("private-owner", &room).no_call().connect().await?;
    assert!(owner.me().is_some());
    s.stop().await;
    Ok(())
}

/// Keeps `Duration` in use when some tests are compiled out.
const _: Duration = STEP;

/// The socket takes its token by the control plane's one rule (`api::extract_access_token`):
/// bearer, then the `accessToken` cookie, then `?token=`; the first present one decides,
/// even when it is invalid and a later one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_takes_the_token_in_the_http_apis_order() -> anyhow::Result<()> {
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("order-owner", "open").await?;
    let good = s.token("order-user");
    let cookie = |token: &str| Auth::Cookie {
        name: "accessToken".into(),
        token: token.to_owned(),
    };
    let with_query = |token: &str| format!("{}?token={token}", s.ws);
    let cases = [
        // The cookie beats the query parameter (signaling once read the query first).
        (with_query("not-a-jwt"), cookie(&good), true),
        (with_query(&good), cookie("not-a-jwt"), false),
        // The bearer beats both.
        (with_query(&good), Auth::Bearer("not-a-jwt".into()), false),
        (with_query("not-a-jwt"), Auth::Bearer(good.clone()), true),
        // An empty cookie is no cookie: the query decides.
        (with_query(&good), cookie(""), true),
    ];
    for (url, auth, admitted) in cases {
        let SignalClient {
            sender,
            mut receiver,
        } = SignalClient::connect(&url, &auth, STEP).await?;
        let _ = sender
            .send(&ClientMessage::JoinRoom {
                room_id: room.clone(),
                resume_token: None,
            })
            .await;
        match receiver.recv(STEP).await? {
            ServerMessage::Joined { .. } => assert!(admitted, "{url} {auth:?} was admitted"),
            ServerMessage::Error { code, .. } => {
                assert!(!admitted, "{url} {auth:?} refused: {code:?}");
                assert_eq!(code, ErrorCode::Unauthorized, "{url} {auth:?}");
            }
            other => panic!("{url} {auth:?}: unexpected {other:?}"),
        }
    }
    s.stop().await;
    Ok(())
}
