//! Sessions over HTTP: refresh rotation, refresh-token reuse, logout, and how protected
//! routes treat missing, expired, tampered and foreign tokens.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine;
use common::{ACCESS_SECRET, TestApp, cookie_header};
use serde_json::json;

const PHONE: &str = "+14155550123";

async fn refresh_with_cookie(app: &TestApp, refresh: &str) -> common::Resp {
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/refresh")
        .header(header::COOKIE, cookie_header(&[("refreshToken", refresh)]))
        .body(Body::empty())
        .expect("request");
    app.send(req).await
}

#[tokio::test]
async fn refresh_rotates_both_tokens() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    let r = refresh_with_cookie(&app, &s.refresh).await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["auth"], true);
    assert_eq!(j["user"]["id"], s.user_id.as_str());
    assert!(
        j.get("refreshToken").is_none(),
        "cookie clients get no tokens in the body"
    );
    let new_refresh = r.cookie("refreshToken").expect("rotated refresh cookie");
    let new_access = r.cookie("accessToken").expect("new access cookie");
    assert_ne!(new_refresh, s.refresh);
    assert!(r.cookie_attrs("refreshToken").contains("HttpOnly"));
    assert_eq!(app.get("/api/me", &new_access).await.status, StatusCode::OK);
    // The new refresh token works in turn.
    assert_eq!(
        refresh_with_cookie(&app, &new_refresh).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_login() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    let first = refresh_with_cookie(&app, &s.refresh).await;
    assert_eq!(first.status, StatusCode::OK);
    let current = first.cookie("refreshToken").expect("rotated");

    // An attacker replays the old token: refused, and the family is revoked...
    let replay = refresh_with_cookie(&app, &s.refresh).await;
    replay.assert_error(StatusCode::UNAUTHORIZED, "refresh_token_reused");
    assert!(
        replay.cookie_attrs("refreshToken").contains("Max-Age=0"),
        "cookies cleared"
    );
    // ...so the legitimate holder's current token no longer works either.
    let r = refresh_with_cookie(&app, &current).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn another_login_survives_reuse_in_a_different_family() {
    let app = TestApp::new().await;
    let a = app.login(PHONE).await;
    let b = app.login(PHONE).await;
    assert_eq!(
        refresh_with_cookie(&app, &a.refresh).await.status,
        StatusCode::OK
    );
    assert_eq!(
        refresh_with_cookie(&app, &a.refresh).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh_with_cookie(&app, &b.refresh).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn refresh_by_post_body_returns_tokens_in_the_body() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    let r = app
        .call(
            Method::POST,
            "/api/refresh",
            None,
            Some(json!({"refreshToken": s.refresh})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    let access = j["accessToken"].as_str().expect("access token in body");
    let refresh = j["refreshToken"].as_str().expect("refresh token in body");
    assert_ne!(refresh, s.refresh);
    assert_eq!(app.get("/api/me", access).await.status, StatusCode::OK);
}

#[tokio::test]
async fn refresh_without_a_token_or_with_garbage_is_401() {
    let app = TestApp::new().await;
    app.call(Method::GET, "/api/refresh", None, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    refresh_with_cookie(&app, "garbage")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    app.call(
        Method::POST,
        "/api/refresh",
        None,
        Some(json!({"refreshToken": 5})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_json");
}

#[tokio::test]
async fn an_expired_refresh_token_is_401() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    app.clock.advance(time::Duration::days(31));
    refresh_with_cookie(&app, &s.refresh)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "refresh_token_expired");
}

#[tokio::test]
async fn logout_revokes_the_login_and_clears_cookies() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/logout")
        .header(
            header::COOKIE,
            cookie_header(&[("accessToken", &s.access), ("refreshToken", &s.refresh)]),
        )
        .body(Body::empty())
        .expect("request");
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"user": null, "auth": false}));
    for name in ["accessToken", "refreshToken"] {
        let c = r.cookie_attrs(name);
        assert!(
            c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0"),
            "{c}"
        );
    }
    assert_eq!(
        refresh_with_cookie(&app, &s.refresh).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn logout_with_only_a_bearer_token_revokes_its_login() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    let r = app
        .call(Method::POST, "/api/logout", Some(&s.access), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        refresh_with_cookie(&app, &s.refresh).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn logout_without_any_session_is_401() {
    let app = TestApp::new().await;
    app.call(Method::POST, "/api/logout", None, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn protected_routes_refuse_requests_without_a_token() {
    let app = TestApp::new().await;
    for (m, uri) in [
        (Method::GET, "/api/me"),
        (Method::GET, "/api/rooms"),
        (Method::GET, "/api/rooms/0123456789abcdef01234567"),
        (Method::GET, "/api/room/lobby"),
        (Method::GET, "/api/voice/0123456789abcdef01234567"),
        (Method::GET, "/api/image/0123456789abcdef01234567"),
    ] {
        let r = app.call(m, uri, None, None).await;
        r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    app.call(
        Method::POST,
        "/api/activate",
        None,
        Some(json!({"name": "x"})),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    app.call(
        Method::POST,
        "/api/rooms",
        None,
        Some(json!({"topic": "x", "roomType": "open"})),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn an_expired_access_token_is_401_token_expired() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    app.clock.advance(time::Duration::minutes(15));
    app.get("/api/me", &s.access)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "token_expired");
}

#[tokio::test]
async fn a_tampered_access_token_is_401() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    let other = app.login("+442079460018").await;
    // Swap in another user's id while keeping the original signature.
    let parts: Vec<&str> = s.access.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).expect("b64")).expect("json");
    claims["sub"] = other.user_id.clone().into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    app.get("/api/me", &forged)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    app.get("/api/me", "not.a.jwt")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
}

#[tokio::test]
async fn a_token_signed_with_another_secret_or_alg_none_is_401() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    let claims = json!({"sub": s.user_id, "iat": 0, "exp": 4_000_000_000i64, "typ": "access"});
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret"),
    )
    .expect("encode");
    app.get("/api/me", &other)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    app.get("/api/me", &none)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    // The genuine secret does work (so the refusals above are about the key).
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(ACCESS_SECRET),
    )
    .expect("encode");
    assert_eq!(app.get("/api/me", &good).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_access_cookie_authenticates_like_the_bearer_header() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    let req = Request::builder()
        .uri("/api/me")
        .header(header::COOKIE, cookie_header(&[("accessToken", &s.access)]))
        .body(Body::empty())
        .expect("request");
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["user"]["id"], s.user_id.as_str());
}

#[tokio::test]
async fn the_token_verifier_and_extractor_serve_the_signaling_side() {
    let app = TestApp::new().await;
    let s = app.login(PHONE).await;
    let verifier = app.state.token_verifier();
    let user = verifier.verify_access(&s.access).expect("valid token");
    assert_eq!(user.user_id.as_str(), s.user_id);

    let query = format!("room=x&token={}", s.access);
    assert_eq!(
        api::extract_access_token(&axum::http::HeaderMap::new(), Some(&query)),
        Some(s.access.clone())
    );
    app.clock.advance(time::Duration::minutes(16));
    assert_eq!(
        verifier.verify_access(&s.access),
        Err(api::AuthError::Expired)
    );
}
