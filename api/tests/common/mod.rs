//! Shared test harness: the real router over an in-memory SQLite store, a manual clock,
//! an SMS sender that captures codes, and a fake live-room view.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use api::clock::ManualClock;
use api::config::ApiConfig;
use api::live::{LiveRoomInfo, LiveRooms};
use api::sms::{SmsError, SmsSender};
use api::store::{Message, MessageId, RoomId, SqliteStore, Store, UserId};
use api::{AppState, JwtSecrets};
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const ACCESS_SECRET: &[u8] = b"test-access-secret-0123456789abcdef";

#[derive(Default)]
pub struct CapturingSms {
    pub sent: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl SmsSender for CapturingSms {
    async fn send(&self, to: &str, body: &str) -> Result<(), SmsError> {
        self.sent.lock().push((to.to_owned(), body.to_owned()));
        Ok(())
    }
}

impl CapturingSms {
    /// The 6-digit code of the last SMS sent to `phone`.
    pub fn last_code(&self, phone: &str) -> String {
        let sent = self.sent.lock();
        let (_, body) = sent
            .iter()
            .rev()
            .find(|(to, _)| to == phone)
            .expect("an SMS was sent to this phone");
        body.split(|c: char| !c.is_ascii_digit())
            .find(|w| w.len() == 6)
            .expect("the SMS holds a 6-digit code")
            .to_owned()
    }
}

#[derive(Default)]
pub struct FakeLive {
    pub rooms: Mutex<HashMap<RoomId, LiveRoomInfo>>,
    pub created: Mutex<Vec<Message>>,
    pub deleted: Mutex<Vec<MessageId>>,
    pub rooms_deleted: Mutex<Vec<RoomId>>,
}

impl LiveRooms for FakeLive {
    fn snapshot(&self, room: &RoomId) -> LiveRoomInfo {
        self.rooms.lock().get(room).cloned().unwrap_or_default()
    }
    fn message_created(&self, m: &Message) {
        self.created.lock().push(m.clone());
    }
    fn message_deleted(&self, _room: &RoomId, m: &MessageId) {
        self.deleted.lock().push(m.clone());
    }
    fn room_deleted(&self, room: &RoomId) {
        self.rooms_deleted.lock().push(room.clone());
    }
    fn occupied_rooms(&self) -> Vec<RoomId> {
        self.rooms
            .lock()
            .iter()
            .filter(|(_, info)| info.total_people > 0)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    pub clock: ManualClock,
    pub sms: Arc<CapturingSms>,
    pub live: Arc<FakeLive>,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("ascii cookie").to_owned())
            .collect()
    }
    /// The value a `Set-Cookie` gives to `name` (None if not set).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies().iter().find_map(|c| {
            let first = c.split(';').next()?;
            let (k, v) = first.split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    }
    pub fn cookie_attrs(&self, name: &str) -> String {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no Set-Cookie for {name}"))
    }
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let j = self.json();
        assert_eq!(j["code"], code, "body: {j}");
        assert!(
            j["message"].as_str().is_some_and(|m| !m.is_empty()),
            "body: {j}"
        );
    }
}

/// A logged-in user's credentials.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: String,
    pub phone: String,
    pub access: String,
    pub refresh: String,
}

pub fn test_config() -> ApiConfig {
    ApiConfig {
        // Generous limits so only the rate-limit tests hit them.
        rate_limits: api::config::RateLimitConfig {
            send_otp_per_phone: 1000,
            send_otp_per_ip: 1000,
            verify_otp_per_phone: 1000,
            verify_otp_per_ip: 1000,
            create_room_per_user: 1000,
        },
        ..ApiConfig::default()
    }
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with_config(test_config()).await
    }

    pub async fn with_config(config: ApiConfig) -> Self {
        let store = SqliteStore::open_in_memory()
            .await
            .expect("in-memory store opens");
        Self::with_store(config, Arc::new(store))
    }

    /// The app over any store (the MongoDB run uses this).
    pub fn with_store(config: ApiConfig, store: Arc<dyn Store>) -> Self {
        let clock = ManualClock::new();
        let sms = Arc::new(CapturingSms::default());
        let live = Arc::new(FakeLive::default());
        let secrets = JwtSecrets {
            access: ACCESS_SECRET.to_vec(),
            refresh: b"test-refresh-secret-0123456789abcdef".to_vec(),
        };
        let state = AppState::new(store, config, secrets)
            .with_clock(Arc::new(clock.clone()))
            .with_sms(sms.clone())
            .with_live_rooms(live.clone());
        Self {
            router: api::router(state.clone()),
            state,
            clock,
            sms,
            live,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("router is infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body collects")
            .to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        }
        .expect("valid request");
        self.send(req).await
    }

    pub async fn get(&self, uri: &str, token: &str) -> Resp {
        self.call(Method::GET, uri, Some(token), None).await
    }

    pub async fn post(&self, uri: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, uri, Some(token), Some(body)).await
    }

    pub async fn send_otp(&self, phone: &str) -> Resp {
        self.call(
            Method::POST,
            "/api/send-otp",
            None,
            Some(json!({ "phone": phone })),
        )
        .await
    }

    pub async fn verify(&self, phone: &str, hash: &str, otp: &str) -> Resp {
        self.call(
            Method::POST,
            "/api/verify-otp",
            None,
            Some(json!({ "phone": phone, "hash": hash, "otp": otp })),
        )
        .await
    }

    /// Full phone login; returns the session from the cookies.
    pub async fn login(&self, phone: &str) -> Session {
        let sent = self.send_otp(phone).await;
        assert_eq!(sent.status, StatusCode::OK, "{:?}", sent.body);
        let hash = sent.json()["hash"].as_str().expect("hash").to_owned();
        let code = self.sms.last_code(phone);
        let r = self.verify(phone, &hash, &code).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        Session {
            user_id: r.json()["user"]["id"].as_str().expect("user id").to_owned(),
            phone: phone.to_owned(),
            access: r.cookie("accessToken").expect("access cookie"),
            refresh: r.cookie("refreshToken").expect("refresh cookie"),
        }
    }

    /// Login plus activation with `name` (no avatar).
    pub async fn user(&self, phone: &str, name: &str) -> Session {
        let s = self.login(phone).await;
        let r = self
            .post("/api/activate", &s.access, json!({ "name": name }))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        s
    }

    pub async fn create_room(&self, s: &Session, topic: &str, room_type: &str) -> Value {
        let r = self
            .post(
                "/api/rooms",
                &s.access,
                json!({ "topic": topic, "roomType": room_type }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.json()
    }
}

pub fn cookie_header(pairs: &[(&str, &str)]) -> HeaderValue {
    let s = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    HeaderValue::from_str(&s).expect("ascii cookie")
}

pub fn user_id(s: &Session) -> UserId {
    UserId::parse(s.user_id.clone()).expect("valid id")
}
