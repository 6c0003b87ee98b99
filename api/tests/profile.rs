//! Profiles over HTTP: activation (name rules, bounded avatar decoding) and avatar serving.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{TestApp, test_config};
use serde_json::json;

fn png_data_url(w: u32, h: u32) -> String {
    let img = image::RgbaImage::from_pixel(w, h, image::Rgba([20, 120, 220, 255]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    format!(
        "data:image/png;base64,{}",
        STANDARD.encode(out.into_inner())
    )
}

/// Noise does not compress, so the data URL is large.
fn noisy_png_data_url(w: u32, h: u32) -> String {
    let mut x = 0x1234_5678u32;
    let img = image::RgbaImage::from_fn(w, h, |_, _| {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let b = x.to_be_bytes();
        image::Rgba([b[0], b[1], b[2], 255])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    format!(
        "data:image/png;base64,{}",
        STANDARD.encode(out.into_inner())
    )
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A tiny PNG whose header claims 100000 x 100000 pixels (40 GB of RGBA if decoded).
fn png_bomb_data_url() -> String {
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    let idat = b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01".to_vec();
    png.extend_from_slice(&((idat.len() - 4) as u32).to_be_bytes());
    png.extend_from_slice(&idat);
    png.extend_from_slice(&crc32(&idat).to_be_bytes());
    format!("data:image/png;base64,{}", STANDARD.encode(png))
}

#[tokio::test]
async fn activation_sets_the_name_and_a_150px_png_avatar_served_publicly() {
    let app = TestApp::new().await;
    let s = app.login("+14155550001").await;
    let r = app
        .post(
            "/api/activate",
            &s.access,
            json!({"name": "  Alice  ", "avatar": png_data_url(300, 600)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["auth"], true);
    assert_eq!(j["user"]["name"], "Alice");
    assert_eq!(j["user"]["activated"], true);
    assert_eq!(
        j["user"]["phone"], "+14155550001",
        "own record carries the phone"
    );
    let avatar = j["user"]["avatar"].as_str().expect("avatar url").to_owned();
    assert!(avatar.starts_with("/storage/"), "{avatar}");

    // Public, immutable, typed, not sniffable.
    let req = Request::builder()
        .uri(&avatar)
        .body(Body::empty())
        .expect("request");
    let d = app.send(req).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.header("content-type"), Some("image/png"));
    assert_eq!(d.header("x-content-type-options"), Some("nosniff"));
    assert!(
        d.header("cache-control")
            .is_some_and(|c| c.contains("immutable") && c.contains("max-age=31536000"))
    );
    let img = image::load_from_memory(&d.body).expect("served avatar decodes");
    assert_eq!((img.width(), img.height()), (150, 300));
}

#[tokio::test]
async fn avatar_urls_carry_the_base_url_when_configured() {
    let mut cfg = test_config();
    cfg.base_url = "https://chorus.example/".into();
    let app = TestApp::with_config(cfg).await;
    let s = app.login("+14155550001").await;
    let r = app
        .post(
            "/api/activate",
            &s.access,
            json!({"name": "A", "avatar": png_data_url(10, 10)}),
        )
        .await;
    let avatar = r.json()["user"]["avatar"]
        .as_str()
        .expect("avatar")
        .to_owned();
    assert!(
        avatar.starts_with("https://chorus.example/storage/"),
        "{avatar}"
    );
}

#[tokio::test]
async fn names_are_trimmed_and_must_be_1_to_64_characters() {
    let app = TestApp::new().await;
    let s = app.login("+14155550001").await;
    for name in [
        json!(""),
        json!("   "),
        json!("x".repeat(65)),
        json!(null),
        json!("a\u{0007}b"),
    ] {
        app.post("/api/activate", &s.access, json!({"name": name}))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_name");
    }
    let long = "é".repeat(64);
    let r = app
        .post("/api/activate", &s.access, json!({"name": long}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["user"]["name"], long.as_str());
    assert_eq!(r.json()["user"]["avatar"], serde_json::Value::Null);
}

#[tokio::test]
async fn names_with_direction_overrides_or_only_invisible_characters_are_refused() {
    let app = TestApp::new().await;
    let s = app.login("+14155550001").await;
    for name in [
        "Bob\u{202E}nimda",
        "\u{2067}Alice",
        "\u{200B}\u{200B}",
        "\u{3164}",
        "\u{2800}",
        "\u{1b}[31mred",
    ] {
        app.post("/api/activate", &s.access, json!({ "name": name }))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_name");
    }
    let r = app
        .post(
            "/api/activate",
            &s.access,
            json!({ "name": "👨\u{200D}👩\u{200D}👧 family" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn an_avatar_claiming_huge_dimensions_is_refused_without_decoding() {
    let app = TestApp::new().await;
    let s = app.login("+14155550001").await;
    let started = std::time::Instant::now();
    let r = app
        .post(
            "/api/activate",
            &s.access,
            json!({"name": "Bomb", "avatar": png_bomb_data_url()}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_avatar");
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("100000"))
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Nothing changed.
    assert_eq!(
        app.get("/api/me", &s.access).await.json()["user"]["activated"],
        false
    );
}

#[tokio::test]
async fn non_images_and_oversized_avatars_are_refused() {
    let mut cfg = test_config();
    cfg.max_avatar_bytes = 2000;
    let app = TestApp::with_config(cfg).await;
    let s = app.login("+14155550001").await;
    let html = format!(
        "data:image/png;base64,{}",
        STANDARD.encode("<html><script>1</script>")
    );
    for avatar in [
        html.as_str(),
        "https://evil.example/a.png",
        "data:image/png;base64,@@@@",
    ] {
        app.post(
            "/api/activate",
            &s.access,
            json!({"name": "A", "avatar": avatar}),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_avatar");
    }
    app.post(
        "/api/activate",
        &s.access,
        json!({"name": "A", "avatar": noisy_png_data_url(100, 100)}),
    )
    .await
    .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn storage_serves_only_avatars() {
    let app = TestApp::new().await;
    let s = app.user("+14155550001", "A").await;
    for path in ["/storage/ffffffffffffffffffffffff", "/storage/a.b"] {
        let req = Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request");
        app.send(req)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    // A chat image id is not served from /storage (that route has no access check).
    app.get("/api/room/lobby", &s.access).await;
    let id = api::store::FileId::generate();
    app.state
        .store
        .put_blob(
            api::store::BlobMeta {
                id: id.clone(),
                kind: api::store::BlobKind::Image,
                content_type: "image/png".into(),
                len: 3,
                room_id: Some(api::store::RoomId::parse("lobby").expect("valid id")),
                created_at: app.state.now(),
            },
            bytes::Bytes::from_static(b"abc"),
        )
        .await
        .expect("put");
    let req = Request::builder()
        .uri(format!("/storage/{id}"))
        .body(Body::empty())
        .expect("request");
    app.send(req)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn an_avatar_larger_than_the_json_body_limit_is_accepted() {
    let app = TestApp::new().await;
    let s = app.login("+14155550001").await;
    let avatar = noisy_png_data_url(300, 300);
    assert!(avatar.len() > 200 * 1024, "{} bytes", avatar.len());
    let r = app
        .post(
            "/api/activate",
            &s.access,
            json!({"name": "Big", "avatar": avatar}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.json()["user"]["avatar"].is_string());
}

#[tokio::test]
async fn an_avatar_gets_503_with_retry_after_when_no_decoding_slot_frees_in_time() {
    let mut config = test_config();
    config.avatar_decode_concurrency = 1;
    config.avatar_decode_wait = std::time::Duration::from_millis(200);
    let app = TestApp::with_config(config).await;
    let s = app.login("+14155550001").await;
    let body = json!({"name": "Alice", "avatar": png_data_url(64, 64)});
    let held = app.state.avatar_gate.acquire().await.expect("the one slot");
    let r = app.post("/api/activate", &s.access, body.clone()).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(wait >= 1);
    drop(held);
    let r = app.post("/api/activate", &s.access, body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(app.state.avatar_gate.in_use(), 0, "the slot is returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_avatars_are_decoded_at_most_gate_size_at_a_time() {
    let mut config = test_config();
    config.avatar_decode_concurrency = 2;
    config.avatar_decode_wait = std::time::Duration::from_secs(60);
    let app = TestApp::with_config(config).await;
    let mut sessions = Vec::new();
    for i in 0..8 {
        sessions.push(app.login(&format!("+1415555{i:04}")).await);
    }
    // Small to send, large to decode: decodes overlap when nothing stops them.
    let avatar = png_data_url(2000, 2000);
    let calls = sessions.iter().map(|s| {
        app.post(
            "/api/activate",
            &s.access,
            json!({"name": "Someone", "avatar": avatar}),
        )
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let peak = app.state.avatar_gate.peak();
    assert!((1..=2).contains(&peak), "peak concurrent decodes {peak}");
}
