//! The router served over a real socket on 127.0.0.1:0, as the binary serves it: the
//! client IP comes from the connection, and concurrent logins race correctly.

mod common;

use std::net::SocketAddr;

use axum::http::StatusCode;
use common::{TestApp, test_config};
use serde_json::{Value, json};

async fn serve(app: &TestApp) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app.router.clone();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    format!("http://{addr}")
}

fn client() -> reqwest::Client {
    // reqwest is built without a bundled TLS provider (see TwilioSender); plain HTTP here,
    // but the builder still wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client")
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value) {
    let r = c.post(url).json_body(&body).send().await.expect("request");
    let status = StatusCode::from_u16(r.status().as_u16()).expect("status");
    let v = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    (status, v)
}

trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

#[tokio::test]
async fn over_a_socket_the_rate_limit_keys_on_the_peer_address() {
    let mut cfg = test_config();
    cfg.rate_limits.send_otp_per_ip = 2;
    let app = TestApp::with_config(cfg).await;
    let base = serve(&app).await;
    let c = client();
    for phone in ["+14155550001", "+14155550002"] {
        let (s, _) = post(
            &c,
            format!("{base}/api/send-otp"),
            json!({ "phone": phone }),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, body) = post(
        &c,
        format!("{base}/api/send-otp"),
        json!({"phone": "+14155550003"}),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "rate_limited");
}

#[tokio::test]
async fn concurrent_submissions_of_the_right_code_log_in_exactly_once() {
    let app = TestApp::new().await;
    let base = serve(&app).await;
    let c = client();
    let phone = "+14155550001";
    let (_, sent) = post(
        &c,
        format!("{base}/api/send-otp"),
        json!({ "phone": phone }),
    )
    .await;
    let hash = sent["hash"].as_str().expect("hash").to_owned();
    let code = app.sms.last_code(phone);
    let tries = (0..8).map(|_| {
        let c = c.clone();
        let url = format!("{base}/api/verify-otp");
        let body = json!({"phone": phone, "hash": hash, "otp": code});
        tokio::spawn(async move { post(&c, url, body).await.0 })
    });
    let mut ok = 0;
    for t in tries {
        match t.await.expect("task") {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_REQUEST => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1, "single use under concurrency");
}

#[tokio::test]
async fn concurrent_wrong_guesses_never_exceed_the_attempt_budget() {
    let app = TestApp::new().await;
    let base = serve(&app).await;
    let c = client();
    let phone = "+14155550001";
    let (_, sent) = post(
        &c,
        format!("{base}/api/send-otp"),
        json!({ "phone": phone }),
    )
    .await;
    let hash = sent["hash"].as_str().expect("hash").to_owned();
    let code = app.sms.last_code(phone);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let tries: Vec<_> = (0..12)
        .map(|_| {
            let c = c.clone();
            let url = format!("{base}/api/verify-otp");
            let body = json!({"phone": phone, "hash": hash, "otp": wrong});
            tokio::spawn(async move { post(&c, url, body).await.1 })
        })
        .collect();
    let mut codes = std::collections::HashMap::<String, usize>::new();
    for t in tries {
        let code = t.await.expect("task")["code"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        *codes.entry(code).or_default() += 1;
    }
    // 5 attempts: 4 plain refusals and the one that exhausts the code; every other
    // request found the challenge gone or out of attempts without checking the code.
    let checked = codes.get("invalid_otp").copied().unwrap_or(0);
    assert!(checked <= 4, "{codes:?}");
    assert_eq!(
        checked
            + codes.get("otp_attempts_exhausted").copied().unwrap_or(0)
            + codes.get("otp_not_found").copied().unwrap_or(0),
        12,
        "{codes:?}"
    );
    let (s, body) = post(
        &c,
        format!("{base}/api/verify-otp"),
        json!({"phone": phone, "hash": hash, "otp": code}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
}
