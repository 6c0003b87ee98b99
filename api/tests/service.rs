//! Service-level behaviour: health and readiness, the OpenAPI document's completeness,
//! JSON errors for unknown routes, CORS, and the room-expiry sweeper.

mod common;

use api::live::LiveRoomInfo;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::TestApp;
use serde_json::json;

#[tokio::test]
async fn health_returns_the_chillout_body() {
    let app = TestApp::new().await;
    let r = app.call(Method::GET, "/api/health", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["status"], "ok");
    assert!(j["message"].is_string());
    let ts = j["timestamp"].as_str().expect("timestamp");
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 timestamp");
}

#[tokio::test]
async fn ready_touches_the_database() {
    let app = TestApp::new().await;
    let r = app.call(Method::GET, "/api/ready", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ready");
}

#[tokio::test]
async fn unknown_routes_get_a_json_404() {
    let app = TestApp::new().await;
    let r = app.call(Method::GET, "/api/nope", None, None).await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(r.json()["message"], "Route not found");
    let r = app.call(Method::PUT, "/api/rooms", None, None).await;
    r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

/// The document states what every route shares: how to authenticate, and the errors of
/// authentication and of JSON bodies; required fields are required; page sizes bounded.
#[tokio::test]
async fn the_openapi_document_declares_security_errors_and_required_fields() {
    let doc = serde_json::to_value(api::openapi()).expect("serialises");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["cookie"]["in"], "cookie");
    assert_eq!(schemes["cookie"]["name"], "accessToken");
    let op = |m: &str, p: &str| doc["paths"][p][m].clone();
    for (m, p) in [
        ("get", "/api/me"),
        ("post", "/api/rooms"),
        ("get", "/api/voice/{fileId}"),
    ] {
        let o = op(m, p);
        assert!(
            o["security"].as_array().is_some_and(|s| s.len() == 2),
            "{m} {p}"
        );
        assert!(o["responses"]["401"].is_object(), "{m} {p}: 401");
    }
    for (m, p) in [("post", "/api/send-otp"), ("get", "/api/health")] {
        assert!(op(m, p)["security"].is_null(), "{m} {p} is public");
    }
    for (m, p) in [
        ("post", "/api/send-otp"),
        ("post", "/api/rooms"),
        ("patch", "/api/rooms/{roomId}"),
        ("post", "/api/room/{roomId}/messages"),
    ] {
        for status in ["400", "413", "415"] {
            assert!(
                op(m, p)["responses"][status].is_object(),
                "{m} {p}: {status}"
            );
        }
    }
    assert!(op("post", "/api/rooms")["responses"]["429"].is_object());
    assert!(op("post", "/api/activate")["responses"]["503"].is_object());
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    for (name, fields) in [
        ("SendOtpRequest", vec!["phone"]),
        ("VerifyOtpRequest", vec!["otp", "hash", "phone"]),
        ("ActivateRequest", vec!["name"]),
        ("CreateRoomRequest", vec!["topic", "roomType"]),
        ("PostMessageRequest", vec!["message"]),
    ] {
        let required = schema(name)["required"].clone();
        for f in fields {
            assert!(
                required
                    .as_array()
                    .is_some_and(|r| r.iter().any(|v| v == f)),
                "{name}.{f} required: {required}"
            );
        }
    }
    let limit = op("get", "/api/rooms")["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "limit").cloned())
        .expect("limit parameter");
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], 100);
}

/// Every route in the document is served, and every route the issue names is documented.
#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = TestApp::new().await;
    let r = app.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc = r.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");

    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "patch", "delete", "put"] {
            if item.get(method).is_some() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    let required = [
        ("POST", "/api/send-otp"),
        ("POST", "/api/verify-otp"),
        ("POST", "/api/activate"),
        ("GET", "/api/refresh"),
        ("POST", "/api/refresh"),
        ("POST", "/api/logout"),
        ("GET", "/api/me"),
        ("POST", "/api/rooms"),
        ("GET", "/api/rooms"),
        ("GET", "/api/rooms/{roomId}"),
        ("PATCH", "/api/rooms/{roomId}"),
        ("DELETE", "/api/rooms/{roomId}"),
        ("POST", "/api/rooms/{roomId}/invites"),
        ("POST", "/api/rooms/{roomId}/invite-code"),
        ("DELETE", "/api/rooms/{roomId}/invite-code"),
        ("POST", "/api/rooms/{roomId}/redeem"),
        ("GET", "/api/room/{roomId}"),
        ("POST", "/api/room/{roomId}/messages"),
        ("DELETE", "/api/room/{roomId}/messages/{messageId}"),
        ("POST", "/api/room/{roomId}/voice"),
        ("POST", "/api/room/{roomId}/image"),
        ("GET", "/api/voice/{fileId}"),
        ("GET", "/api/image/{fileId}"),
        ("GET", "/storage/{fileId}"),
        ("GET", "/api/health"),
        ("GET", "/api/ready"),
        ("GET", "/api/openapi.json"),
    ];
    for (m, p) in required {
        assert!(
            documented.iter().any(|(dm, dp)| dm == m && dp == p),
            "{m} {p} missing from the OpenAPI document"
        );
    }
    assert_eq!(
        documented.len(),
        required.len(),
        "undocumented extras or missing: {documented:?}"
    );

    // Each documented operation reaches a handler (not the fallback, not 405).
    for (m, p) in &documented {
        let uri = p
            .replace("{roomId}", "lobby")
            .replace("{messageId}", "0123456789abcdef01234567")
            .replace("{fileId}", "0123456789abcdef01234567");
        let method = Method::from_bytes(m.as_bytes()).expect("method");
        let r = app.call(method, &uri, None, None).await;
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {p}");
        if r.status == StatusCode::NOT_FOUND {
            assert_ne!(
                r.json()["message"],
                "Route not found",
                "{m} {p} is not routed"
            );
        }
    }
}

#[tokio::test]
async fn cors_allows_the_configured_origin_with_credentials_only() {
    let mut config = common::test_config();
    config.cors_origins = vec!["http://localhost:3000".into()];
    let app = TestApp::with_config(config).await;
    let preflight = |origin: &'static str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api/rooms")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
            .body(Body::empty())
            .expect("request")
    };
    let ok = app.send(preflight("http://localhost:3000")).await;
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    let evil = app.send(preflight("https://evil.example")).await;
    assert!(evil.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn by_default_no_origin_is_allowed_cross_origin() {
    let app = TestApp::new().await;
    let r = app
        .send(
            Request::builder()
                .method(Method::OPTIONS)
                .uri("/api/rooms")
                .header(header::ORIGIN, "http://localhost:3000")
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(r.header("access-control-allow-credentials").is_none());
}

#[tokio::test]
async fn the_sweeper_deletes_rooms_idle_past_the_expiry_and_keeps_active_ones() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    let idle = app.create_room(&a, "idle", "open").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.get("/api/room/active", &a.access).await;

    app.clock.advance(time::Duration::days(20));
    let a = app.login("+14155550001").await;
    let r = app
        .post(
            "/api/room/active/messages",
            &a.access,
            json!({"message": "still here"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    app.clock.advance(time::Duration::days(11));

    let report = api::sweeper::sweep_once(&app.state).await.expect("sweep");
    assert_eq!(report.rooms_expired, 1);

    let a = app.login("+14155550001").await;
    app.get(&format!("/api/rooms/{idle}"), &a.access)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let active = app.get("/api/room/active", &a.access).await.json();
    assert_eq!(active["messages"][0]["message"], "still here");

    // A room people sit in silently for longer than the expiry is still active.
    let a = app.login("+14155550001").await;
    let quiet = app.create_room(&a, "quiet but occupied", "open").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.live.rooms.lock().insert(
        api::store::RoomId::parse(quiet.clone()).expect("valid id"),
        LiveRoomInfo {
            total_people: 2,
            speakers: vec![],
        },
    );
    app.clock.advance(time::Duration::days(31));
    let report = api::sweeper::sweep_once(&app.state).await.expect("sweep");
    assert_eq!(
        report.rooms_expired, 1,
        "only the chat room, idle for 31 days"
    );
    let a = app.login("+14155550001").await;
    let r = app.get(&format!("/api/rooms/{quiet}"), &a.access).await;
    assert_eq!(r.status, StatusCode::OK, "an occupied room expired");
    // Once everyone left, it expires like any other.
    app.live.rooms.lock().clear();
    app.clock.advance(time::Duration::days(31));
    let report = api::sweeper::sweep_once(&app.state).await.expect("sweep");
    assert_eq!(report.rooms_expired, 1);
}
