//! Phone login over HTTP: send-otp, verify-otp, attempts, expiry, reuse, rate limits, cookies.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{TestApp, test_config};
use serde_json::json;

const PHONE: &str = "+14155550123";

#[tokio::test]
async fn send_otp_returns_hash_and_phone_but_never_the_code() {
    let app = TestApp::new().await;
    let r = app.send_otp("+1 415 555 0123").await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["phone"], PHONE);
    let hash = j["hash"].as_str().expect("hash is a string");
    assert!(hash.len() >= 40, "handle is long and opaque: {hash}");
    let code = app.sms.last_code(PHONE);
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        !body.contains(&code),
        "the code must never be in the response"
    );
    assert_eq!(
        j.as_object().map(|o| o.len()),
        Some(2),
        "only hash and phone: {j}"
    );
}

#[tokio::test]
async fn send_otp_refuses_missing_and_non_e164_numbers() {
    let app = TestApp::new().await;
    let r = app
        .call(Method::POST, "/api/send-otp", None, Some(json!({})))
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "phone_required");
    for bad in ["4155550123", "+0123456789", "+12", "hello"] {
        app.send_otp(bad)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_phone");
    }
    assert!(app.sms.sent.lock().is_empty(), "no SMS for invalid numbers");
}

#[tokio::test]
async fn malformed_json_gets_a_json_400() {
    let app = TestApp::new().await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/send-otp")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"phone\": "))
        .expect("request");
    app.send(req)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_json");
}

/// serde fills a struct from an array too; the API's bodies are objects (found by
/// schemathesis: `POST /api/logout` with `[null]` was accepted).
#[tokio::test]
async fn a_body_that_is_not_an_object_gets_a_json_400() {
    let app = TestApp::new().await;
    for (path, body) in [
        ("/api/send-otp", "[\"+14155550123\"]"),
        ("/api/logout", "[null]"),
        ("/api/refresh", "[\"token\"]"),
        ("/api/logout", "\"token\""),
        // Form feed is not JSON whitespace (schemathesis sent it as "random bytes").
        ("/api/logout", "\u{c}"),
        ("/api/refresh", "\u{c}"),
    ] {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("request");
        app.send(req)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    }
    assert!(app.sms.sent.lock().is_empty(), "no SMS for an array body");
}

#[tokio::test]
async fn verify_otp_logs_in_and_sets_httponly_samesite_secure_cookies() {
    let app = TestApp::new().await;
    let hash = app.send_otp(PHONE).await.json()["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    let code = app.sms.last_code(PHONE);
    let r = app.verify(PHONE, &hash, &code).await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["auth"], true);
    assert_eq!(j["user"]["phone"], PHONE);
    assert_eq!(j["user"]["activated"], false);
    assert!(j["user"]["id"].as_str().is_some_and(|s| s.len() == 24));
    assert!(j["user"]["createdAt"].is_string());
    assert!(
        j.get("accessToken").is_none(),
        "tokens only in cookies by default"
    );

    let access = r.cookie_attrs("accessToken");
    for attr in [
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Path=/;",
        "Max-Age=900",
    ] {
        assert!(access.contains(attr), "{attr} missing in {access}");
    }
    let refresh = r.cookie_attrs("refreshToken");
    for attr in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/api;"] {
        assert!(refresh.contains(attr), "{attr} missing in {refresh}");
    }
    // The access token works.
    let me = app
        .get("/api/me", &r.cookie("accessToken").expect("cookie"))
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["user"]["phone"], PHONE);
}

#[tokio::test]
async fn insecure_cookies_setting_drops_secure() {
    let mut cfg = test_config();
    cfg.secure_cookies = false;
    let app = TestApp::with_config(cfg).await;
    let hash = app.send_otp(PHONE).await.json()["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    let r = app.verify(PHONE, &hash, &app.sms.last_code(PHONE)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.cookie_attrs("accessToken").contains("Secure"));
    assert!(r.cookie_attrs("accessToken").contains("HttpOnly"));
}

#[tokio::test]
async fn the_same_phone_logs_into_the_same_user() {
    let app = TestApp::new().await;
    let a = app.login(PHONE).await;
    let b = app.login(PHONE).await;
    assert_eq!(a.user_id, b.user_id);
    let c = app.login("+442079460018").await;
    assert_ne!(a.user_id, c.user_id);
}

#[tokio::test]
async fn verify_otp_can_return_tokens_in_the_body_for_api_clients() {
    let app = TestApp::new().await;
    let hash = app.send_otp(PHONE).await.json()["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    let r = app
        .call(
            Method::POST,
            "/api/verify-otp",
            None,
            Some(json!({"phone": PHONE, "hash": hash, "otp": app.sms.last_code(PHONE), "tokenInBody": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    let access = j["accessToken"].as_str().expect("access token in body");
    assert!(j["refreshToken"].is_string());
    assert_eq!(app.get("/api/me", access).await.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_codes_exhaust_the_attempts_and_then_even_the_right_code_fails() {
    let app = TestApp::new().await;
    let hash = app.send_otp(PHONE).await.json()["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    let code = app.sms.last_code(PHONE);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    for _ in 0..4 {
        app.verify(PHONE, &hash, wrong)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_otp");
    }
    app.verify(PHONE, &hash, wrong)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "otp_attempts_exhausted");
    let r = app.verify(PHONE, &hash, &code).await;
    r.assert_error(StatusCode::BAD_REQUEST, "otp_not_found");
    assert!(r.cookie("accessToken").is_none());
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let app = TestApp::new().await;
    let hash = app.send_otp(PHONE).await.json()["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    app.clock.advance(time::Duration::seconds(121));
    app.verify(PHONE, &hash, &app.sms.last_code(PHONE))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "otp_expired");
}

#[tokio::test]
async fn a_code_just_before_expiry_still_works() {
    let app = TestApp::new().await;
    let hash = app.send_otp(PHONE).await.json()["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    app.clock.advance(time::Duration::seconds(119));
    let r = app.verify(PHONE, &hash, &app.sms.last_code(PHONE)).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_code_cannot_be_used_twice() {
    let app = TestApp::new().await;
    let hash = app.send_otp(PHONE).await.json()["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    let code = app.sms.last_code(PHONE);
    assert_eq!(app.verify(PHONE, &hash, &code).await.status, StatusCode::OK);
    app.verify(PHONE, &hash, &code)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "otp_not_found");
}

#[tokio::test]
async fn a_code_only_works_with_the_phone_it_was_sent_to() {
    let app = TestApp::new().await;
    let hash = app.send_otp(PHONE).await.json()["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    let code = app.sms.last_code(PHONE);
    app.verify("+442079460018", &hash, &code)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_otp");
    app.verify(PHONE, "not-a-handle", &code)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "otp_not_found");
}

#[tokio::test]
async fn verify_otp_requires_all_fields() {
    let app = TestApp::new().await;
    app.call(
        Method::POST,
        "/api/verify-otp",
        None,
        Some(json!({"phone": PHONE})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "missing_fields");
}

#[tokio::test]
async fn send_otp_is_rate_limited_per_phone_with_retry_after() {
    let mut cfg = test_config();
    cfg.rate_limits.send_otp_per_phone = 2;
    let app = TestApp::with_config(cfg).await;
    assert_eq!(app.send_otp(PHONE).await.status, StatusCode::OK);
    assert_eq!(app.send_otp(PHONE).await.status, StatusCode::OK);
    let r = app.send_otp(PHONE).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("seconds");
    // 2 per hour: the next token comes within 30 minutes.
    assert!((1..=1800).contains(&retry), "retry after {retry}");
    // Another phone is not affected.
    assert_eq!(app.send_otp("+442079460018").await.status, StatusCode::OK);
    assert_eq!(app.sms.sent.lock().len(), 3);
}

#[tokio::test]
async fn send_otp_is_rate_limited_per_client_ip() {
    let mut cfg = test_config();
    cfg.rate_limits.send_otp_per_ip = 2;
    let app = TestApp::with_config(cfg).await;
    assert_eq!(app.send_otp("+14155550001").await.status, StatusCode::OK);
    assert_eq!(app.send_otp("+14155550002").await.status, StatusCode::OK);
    app.send_otp("+14155550003")
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

#[tokio::test]
async fn forwarded_for_is_only_trusted_when_configured() {
    async fn send_from(app: &TestApp, phone: &str, ip: &str) -> StatusCode {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/send-otp")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-forwarded-for", ip)
            .body(Body::from(json!({ "phone": phone }).to_string()))
            .expect("request");
        app.send(req).await.status
    }
    let mut cfg = test_config();
    cfg.rate_limits.send_otp_per_ip = 1;
    // Untrusted: the header is ignored, so two "different" clients share the socket's limit.
    let app = TestApp::with_config(cfg.clone()).await;
    assert_eq!(
        send_from(&app, "+14155550001", "10.0.0.1").await,
        StatusCode::OK
    );
    assert_eq!(
        send_from(&app, "+14155550002", "10.0.0.2").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Trusted: each forwarded client has its own bucket.
    cfg.trust_proxy = true;
    let app = TestApp::with_config(cfg).await;
    assert_eq!(
        send_from(&app, "+14155550001", "10.0.0.1").await,
        StatusCode::OK
    );
    assert_eq!(
        send_from(&app, "+14155550002", "10.0.0.2").await,
        StatusCode::OK
    );
    assert_eq!(
        send_from(&app, "+14155550003", "10.0.0.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn verify_otp_is_rate_limited_per_phone() {
    let mut cfg = test_config();
    cfg.rate_limits.verify_otp_per_phone = 3;
    let app = TestApp::with_config(cfg).await;
    let hash = app.send_otp(PHONE).await.json()["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    for _ in 0..3 {
        assert_eq!(
            app.verify(PHONE, &hash, "999999x").await.status,
            StatusCode::BAD_REQUEST
        );
    }
    let r = app.verify(PHONE, &hash, &app.sms.last_code(PHONE)).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(r.header("retry-after").is_some());
}
