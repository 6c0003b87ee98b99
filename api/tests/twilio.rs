//! The Twilio sender against a local mock of the Messages API, and how the login endpoint
//! reports a provider failure.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use api::sms::{SmsError, SmsSender, TwilioConfig, TwilioSender};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use base64::Engine;
use common::{TestApp, test_config};
use parking_lot::Mutex;
use serde_json::json;

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    sid: String,
    authorization: Option<String>,
    content_type: Option<String>,
    form: Vec<(String, String)>,
}

#[derive(Clone)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
    status: StatusCode,
}

async fn messages(
    State(mock): State<Mock>,
    method: Method,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let form = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    mock.seen.lock().push(Seen {
        method,
        sid,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        form,
    });
    (
        mock.status,
        json!({"sid": "SM123", "status": "queued"}).to_string(),
    )
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).expect("utf8 form")
}

async fn start_mock(status: StatusCode) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", any(messages))
        .with_state(Mock {
            seen: seen.clone(),
            status,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

fn sender(base_url: String) -> TwilioSender {
    TwilioSender::new(TwilioConfig {
        account_sid: "AC0123".into(),
        auth_token: "s3cret".into(),
        from_number: "+15005550006".into(),
        base_url,
    })
    .expect("sender builds")
}

#[tokio::test]
async fn twilio_sender_posts_the_form_with_basic_auth_to_the_messages_api() {
    let (url, seen) = start_mock(StatusCode::CREATED).await;
    sender(url)
        .send("+14155550123", "Your code is 123456 & more")
        .await
        .expect("mock accepts");
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, Method::POST);
    assert_eq!(s.sid, "AC0123");
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("AC0123:s3cret")
    );
    assert_eq!(s.authorization.as_deref(), Some(expected.as_str()));
    assert_eq!(
        s.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let get = |k: &str| s.form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("To"), Some("+14155550123"));
    assert_eq!(get("From"), Some("+15005550006"));
    assert_eq!(get("Body"), Some("Your code is 123456 & more"));
}

#[tokio::test]
async fn twilio_errors_are_reported() {
    let (url, _) = start_mock(StatusCode::UNAUTHORIZED).await;
    match sender(url).send("+14155550123", "x").await {
        Err(SmsError::Rejected { status: 401, .. }) => {}
        other => panic!("expected a rejection, got {other:?}"),
    }
    // Nothing listens here: a transport error, not a hang.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    assert!(matches!(
        sender(dead).send("+14155550123", "x").await,
        Err(SmsError::Transport(_))
    ));
}

#[tokio::test]
async fn twilio_sender_requires_all_settings() {
    let r = TwilioSender::new(TwilioConfig {
        account_sid: "AC0123".into(),
        auth_token: String::new(),
        from_number: "+15005550006".into(),
        base_url: "http://127.0.0.1:1".into(),
    });
    assert!(matches!(r, Err(SmsError::Config(_))));
}

#[tokio::test]
async fn send_otp_delivers_through_twilio_and_a_provider_failure_is_502_without_the_code() {
    let (url, seen) = start_mock(StatusCode::CREATED).await;
    let app = TestApp::with_config(test_config()).await;
    let state = app.state.clone().with_sms(Arc::new(sender(url)));
    let router = api::router(state);
    let app = TestApp { router, ..app };
    let r = app.send_otp("+14155550123").await;
    assert_eq!(r.status, StatusCode::OK);
    let body = seen.lock()[0]
        .form
        .iter()
        .find(|(k, _)| k == "Body")
        .map(|(_, v)| v.clone())
        .expect("Body");
    let code: String = body.chars().filter(char::is_ascii_digit).take(6).collect();
    assert_eq!(code.len(), 6);
    assert!(!String::from_utf8_lossy(&r.body).contains(&code));

    let (bad_url, _) = start_mock(StatusCode::BAD_REQUEST).await;
    let state = app.state.clone().with_sms(Arc::new(sender(bad_url)));
    let app = TestApp {
        router: api::router(state),
        ..app
    };
    let r = app.send_otp("+14155550123").await;
    r.assert_error(StatusCode::BAD_GATEWAY, "upstream_failed");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("SM123"),
        "provider details stay in the log"
    );
}
