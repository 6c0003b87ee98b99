//! Voice notes and images over HTTP: multipart upload limits and sniffing, the message an
//! upload creates, downloads with ranges and safe headers, access checks, byte deletion.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{Session, TestApp, test_config};
use serde_json::json;

const BOUNDARY: &str = "chorus-test-boundary";

fn webm(len: usize) -> Vec<u8> {
    let mut v = vec![0x1A, 0x45, 0xDF, 0xA3];
    v.extend((0..len - 4).map(|i| (i % 251) as u8));
    v
}

fn png_bytes() -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(4, 4, image::Rgba([1, 2, 3, 255]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

fn multipart_body(field: &str, bytes: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    // Chillout clients also send `username`; it is ignored.
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nmallory\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"f\"\r\nContent-Type: text/html\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(bytes);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

async fn upload(
    app: &TestApp,
    s: &Session,
    room: &str,
    kind: &str,
    field: &str,
    bytes: &[u8],
) -> common::Resp {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/room/{room}/{kind}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", s.access))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(multipart_body(field, bytes)))
        .expect("request");
    app.send(req).await
}

async fn get_range(app: &TestApp, s: &Session, url: &str, range: Option<&str>) -> common::Resp {
    let mut b = Request::builder()
        .uri(url)
        .header(header::AUTHORIZATION, format!("Bearer {}", s.access));
    if let Some(r) = range {
        b = b.header(header::RANGE, r);
    }
    app.send(b.body(Body::empty()).expect("request")).await
}

#[tokio::test]
async fn a_voice_upload_creates_the_message_and_streams_back_with_safe_headers() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    let bytes = webm(1000);
    let r = upload(&app, &a, "lobby", "voice", "voice", &bytes).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let j = r.json();
    let url = j["url"].as_str().expect("url").to_owned();
    let file_id = j["message"]["fileId"].as_str().expect("fileId").to_owned();
    assert_eq!(url, format!("/api/voice/{file_id}"));
    assert_eq!(j["message"]["type"], "voice");
    assert_eq!(j["message"]["url"], url.as_str());
    assert_eq!(
        j["message"]["username"], "Alice",
        "author from the token, not the form"
    );

    let hist = app.get("/api/room/lobby", &a.access).await.json();
    assert_eq!(hist["messages"][0]["url"], url.as_str());
    assert_eq!(app.live.created.lock().len(), 1);

    let d = get_range(&app, &a, &url, None).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.header("content-type"), Some("audio/webm"));
    assert_eq!(d.header("content-length"), Some("1000"));
    assert_eq!(d.header("accept-ranges"), Some("bytes"));
    assert_eq!(d.header("x-content-type-options"), Some("nosniff"));
    assert!(d.header("content-disposition").is_none());
    assert_eq!(d.body.as_ref(), bytes.as_slice());
}

#[tokio::test]
async fn range_requests_get_206_and_unsatisfiable_ranges_416() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    let bytes = webm(1000);
    let url = upload(&app, &a, "lobby", "voice", "voice", &bytes)
        .await
        .json()["url"]
        .as_str()
        .expect("url")
        .to_owned();

    let r = get_range(&app, &a, &url, Some("bytes=10-19")).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/1000"));
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(r.body.as_ref(), &bytes[10..20]);

    let r = get_range(&app, &a, &url, Some("bytes=-5")).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), Some("bytes 995-999/1000"));
    assert_eq!(r.body.as_ref(), &bytes[995..]);

    let r = get_range(&app, &a, &url, Some("bytes=990-")).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.as_ref(), &bytes[990..]);

    let r = get_range(&app, &a, &url, Some("bytes=1000-")).await;
    r.assert_error(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable");
    assert_eq!(r.header("content-range"), Some("bytes */1000"));
}

#[tokio::test]
async fn uploads_over_the_limit_are_413() {
    let mut cfg = test_config();
    cfg.max_voice_bytes = 1000;
    cfg.max_image_bytes = 100;
    let app = TestApp::with_config(cfg).await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    assert_eq!(
        upload(&app, &a, "lobby", "voice", "voice", &webm(1000))
            .await
            .status,
        StatusCode::CREATED
    );
    upload(&app, &a, "lobby", "voice", "voice", &webm(1001))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Far beyond the limit: refused by the body limit while streaming.
    upload(&app, &a, "lobby", "voice", "voice", &webm(300_000))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let mut big_png = png_bytes();
    big_png.resize(101, 0);
    upload(&app, &a, "lobby", "image", "image", &big_png)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(
        app.get("/api/room/lobby", &a.access).await.json()["messages"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn uploads_of_the_wrong_type_are_415() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    upload(
        &app,
        &a,
        "lobby",
        "voice",
        "voice",
        b"<html><script>alert(1)</script></html>",
    )
    .await
    .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    upload(&app, &a, "lobby", "voice", "voice", &png_bytes())
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    upload(
        &app,
        &a,
        "lobby",
        "image",
        "image",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    )
    .await
    .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    upload(&app, &a, "lobby", "voice", "audio", &webm(100))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "missing_file");
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/room/lobby/voice")
        .header(header::AUTHORIZATION, format!("Bearer {}", a.access))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .expect("request");
    app.send(req)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_multipart");
    assert_eq!(
        app.get("/api/room/lobby", &a.access).await.json()["messages"],
        json!([])
    );
}

#[tokio::test]
async fn images_are_served_inline_with_their_sniffed_type() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    let png = png_bytes();
    let r = upload(&app, &a, "lobby", "image", "image", &png).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let url = r.json()["url"].as_str().expect("url").to_owned();
    assert!(url.starts_with("/api/image/"));
    assert_eq!(r.json()["message"]["type"], "image");
    let d = get_range(&app, &a, &url, None).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(
        d.header("content-type"),
        Some("image/png"),
        "not the client's text/html"
    );
    assert_eq!(d.header("content-disposition"), Some("inline"));
    assert_eq!(d.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(d.body.as_ref(), png.as_slice());
    // The voice route does not serve images.
    let id = url.trim_start_matches("/api/image/");
    get_range(&app, &a, &format!("/api/voice/{id}"), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn private_room_files_are_404_to_outsiders() {
    let app = TestApp::new().await;
    let owner = app.user("+14155550001", "Owner").await;
    let outsider = app.user("+14155550002", "Out").await;
    let id = app.create_room(&owner, "p", "private").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let url = upload(&app, &owner, &id, "voice", "voice", &webm(100))
        .await
        .json()["url"]
        .as_str()
        .expect("url")
        .to_owned();
    assert_eq!(
        get_range(&app, &owner, &url, None).await.status,
        StatusCode::OK
    );
    get_range(&app, &outsider, &url, None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    upload(&app, &outsider, &id, "voice", "voice", &webm(100))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    get_range(&app, &owner, "/api/voice/ffffffffffffffffffffffff", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    get_range(&app, &owner, "/api/voice/..%2F..%2Fetc", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn deleting_a_voice_message_deletes_its_bytes() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    let j = upload(&app, &a, "lobby", "voice", "voice", &webm(100))
        .await
        .json();
    let url = j["url"].as_str().expect("url").to_owned();
    let msg = j["message"]["id"].as_str().expect("id").to_owned();
    let file = j["message"]["fileId"].as_str().expect("fileId").to_owned();
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/room/lobby/messages/{msg}"),
            Some(&a.access),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    get_range(&app, &a, &url, None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        app.state
            .store
            .get_blob_meta(&api::store::FileId::parse(file).expect("valid id"))
            .await
            .expect("store")
            .is_none()
    );
}

#[tokio::test]
async fn users_without_a_name_cannot_upload() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    let b = app.login("+14155550002").await;
    upload(&app, &b, "lobby", "voice", "voice", &webm(100))
        .await
        .assert_error(StatusCode::FORBIDDEN, "not_activated");
}

#[tokio::test]
async fn a_truncated_multipart_body_is_a_clear_400() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    let mut body = multipart_body("voice", &webm(100));
    body.truncate(body.len() - 30);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/room/lobby/voice")
        .header(header::AUTHORIZATION, format!("Bearer {}", a.access))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(body))
        .expect("request");
    app.send(req)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_multipart");
    assert_eq!(
        app.get("/api/room/lobby", &a.access).await.json()["messages"],
        json!([])
    );
}

#[tokio::test]
async fn uploads_larger_than_the_json_body_limit_are_accepted_up_to_their_own_limit() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    let bytes = webm(2 * 1024 * 1024);
    let r = upload(&app, &a, "lobby", "voice", "voice", &bytes).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let url = r.json()["url"].as_str().expect("url").to_owned();
    let d = get_range(&app, &a, &url, None).await;
    assert_eq!(d.header("content-length"), Some("2097152"));
    assert_eq!(d.body.len(), bytes.len());
    assert!(d.body.as_ref() == bytes.as_slice());
}

/// An Ogg Opus stream of `seconds` (pre-skip 312): OpusHead, OpusTags, one audio page.
fn ogg_opus(seconds: u64) -> Vec<u8> {
    fn page(granule: u64, body: &[u8]) -> Vec<u8> {
        let mut v = b"OggS\0\0".to_vec();
        v.extend_from_slice(&granule.to_le_bytes());
        v.extend_from_slice(&[7, 0, 0, 0]); // serial
        v.extend_from_slice(&[0; 8]);
        v.push(1);
        v.push(body.len() as u8);
        v.extend_from_slice(body);
        v
    }
    let mut head = b"OpusHead\x01\x01".to_vec();
    head.extend_from_slice(&312u16.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes());
    let mut v = page(0, &head);
    v.extend(page(0, b"OpusTags"));
    v.extend(page(48_000 * seconds + 312, &[0xFC; 100]));
    v
}

#[tokio::test]
async fn a_voice_note_carries_its_measured_duration_in_the_upload_reply_and_the_history() {
    let app = TestApp::new().await;
    let a = app.user("+14155550001", "Alice").await;
    app.get("/api/room/lobby", &a.access).await;
    let r = upload(&app, &a, "lobby", "voice", "voice", &ogg_opus(3)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let j = r.json();
    let measured = j["message"]["id"].clone();
    assert_eq!(j["message"]["duration"], 3.0);
    assert_eq!(j["message"]["message"], "", "a voice note has no text");
    // Unmeasurable audio still uploads, without a duration.
    let r = upload(&app, &a, "lobby", "voice", "voice", &webm(1000)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.json()["message"]["duration"].is_null());

    let hist = app.get("/api/room/lobby", &a.access).await.json();
    let msgs = hist["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 2);
    // Both may share a timestamp: tell them apart by id, not by position.
    for m in msgs {
        assert_eq!(m["message"], "");
        if m["id"] == measured {
            assert_eq!(m["duration"], 3.0);
        } else {
            assert!(m["duration"].is_null(), "{m}");
        }
    }
    // Text messages have none.
    let t = app
        .post(
            "/api/room/lobby/messages",
            &a.access,
            json!({"message": "hi"}),
        )
        .await
        .json();
    assert!(t["duration"].is_null(), "{t}");
}
