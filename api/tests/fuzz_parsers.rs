//! Property tests of the control plane's parsers of client bytes: the `Range` header,
//! upload sniffing, avatar data URLs (header checks and decoding), and multipart upload
//! bodies through the real router. Any input gives an answer or a clear error, never a
//! panic or a 5xx.
//!
//! A short run is part of the suite; `FUZZ_CASES=<n>` runs `n` inputs per property
//! (the long run recorded in BENCHMARKS.md).

mod common;

use axum::body::Body;
use axum::http::{Method, Request, header};
use base64::Engine;
use common::*;
use proptest::prelude::*;

use api::avatar::{AvatarError, process_avatar};
use api::media::{RangeRequest, parse_range, sniff_audio, sniff_image};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs for regression files; failures print their
        // minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `Range` headers: mostly well-formed-looking, with numbers near the edges.
fn range_header() -> impl Strategy<Value = String> {
    let num = prop_oneof![
        Just(String::new()),
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..2048).prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_owned()),
        "[ -~]{0,6}",
    ];
    prop_oneof![
        (num.clone(), num, "[ ,]{0,2}").prop_map(|(a, b, sep)| format!("bytes={a}-{b}{sep}")),
        "[ -~]{0,40}",
        ".{0,40}",
    ]
}

/// Byte strings that often start with a known magic number.
fn magic_prefixed() -> impl Strategy<Value = Vec<u8>> {
    let magic: &[&[u8]] = &[
        &[0x1A, 0x45, 0xDF, 0xA3],
        b"OggS",
        b"ID3",
        &[0xFF, 0xFB],
        b"RIFF\0\0\0\0WAVE",
        b"RIFF\0\0\0\0WEBP",
        &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A],
        &[0xFF, 0xD8, 0xFF],
        b"GIF89a",
        b"\0\0\0\x18ftypmp42",
        b"",
    ];
    (
        prop::sample::select(magic),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(m, rest)| [m, &rest].concat())
}

/// A PNG whose header claims arbitrary dimensions, followed by arbitrary bytes.
fn png_with_header(w: u32, h: u32, tail: &[u8]) -> Vec<u8> {
    let mut b = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    b.extend_from_slice(&13u32.to_be_bytes());
    b.extend_from_slice(b"IHDR");
    b.extend_from_slice(&w.to_be_bytes());
    b.extend_from_slice(&h.to_be_bytes());
    b.extend_from_slice(&[8, 6, 0, 0, 0]);
    b.extend_from_slice(&[0, 0, 0, 0]); // CRC (wrong on purpose, often)
    b.extend_from_slice(tail);
    b
}

fn data_url() -> impl Strategy<Value = String> {
    let mime = prop::sample::select(
        &[
            "image/png",
            "image/jpeg",
            "image/jpg",
            "image/webp",
            "image/gif",
            "image/svg+xml",
            "text/html",
            "",
        ][..],
    );
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256)
            .prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        (
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(w, h, tail)| base64::engine::general_purpose::STANDARD
                .encode(png_with_header(w, h, &tail))),
        "[A-Za-z0-9+/=]{0,64}",
        ".{0,64}",
    ];
    prop_oneof![
        (
            mime,
            prop::sample::select(&["base64", "BASE64", "utf8", ""][..]),
            payload
        )
            .prop_map(|(m, enc, p)| format!("data:{m};{enc},{p}")),
        ".{0,80}",
    ]
}

proptest! {
    #![proptest_config(config(cases()))]

    #[test]
    fn range_headers_parse_to_a_range_inside_the_resource_or_a_clear_answer(
        h in range_header(),
        len in prop_oneof![0u64..4096, any::<u64>()],
    ) {
        match parse_range(Some(&h), len) {
            RangeRequest::Partial { start, end } => {
                prop_assert!(start < end && end <= len, "{h:?} len {len}: {start}..{end}");
            }
            RangeRequest::Full | RangeRequest::Unsatisfiable => {}
        }
    }

    #[test]
    fn sniffing_any_bytes_answers_without_panicking(
        b in prop_oneof![magic_prefixed(), prop::collection::vec(any::<u8>(), 0..32)],
    ) {
        if let Some(t) = sniff_image(&b) {
            prop_assert!(api::media::is_safe_inline_image(t));
        }
        if let Some(t) = sniff_audio(&b) {
            prop_assert!(t.starts_with("audio/"));
        }
    }

    #[test]
    fn avatar_data_urls_are_decoded_or_refused_within_the_bounds(url in data_url()) {
        // The production limits: 2 MB of data URL, 4096 pixels a side.
        match process_avatar(&url, 2 * 1024 * 1024, 4096) {
            Ok(png) => prop_assert!(png.starts_with(&[0x89, b'P', b'N', b'G'])),
            Err(AvatarError::Encode(e)) => prop_assert!(false, "encoder failed: {e}"),
            Err(_) => {}
        }
    }
}

/// A multipart body whose structure is mostly right and whose parts are arbitrary.
fn multipart() -> impl Strategy<Value = (String, Vec<u8>)> {
    let boundary = prop_oneof![Just("b0undary".to_owned()), "[A-Za-z0-9'()+_,./:=?-]{1,70}"];
    let part = (
        prop::sample::select(&["voice", "image", "username", "", "voice\"; x=\"y"][..]),
        prop::option::of("[ -~]{0,20}"),
        prop_oneof![magic_prefixed(), prop::collection::vec(any::<u8>(), 0..128)],
    );
    (
        boundary,
        prop::collection::vec(part, 0..4),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(boundary, parts, close, junk)| {
            let mut b = Vec::new();
            for (name, filename, bytes) in parts {
                b.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                let file = filename
                    .map(|f| format!("; filename=\"{f}\""))
                    .unwrap_or_default();
                b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n")
                        .as_bytes(),
                );
                b.extend_from_slice(&bytes);
                b.extend_from_slice(b"\r\n");
            }
            if close {
                b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            }
            b.extend_from_slice(&junk);
            (boundary, b)
        })
}

#[test]
fn multipart_uploads_of_any_shape_get_an_answer_never_a_5xx() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (app, session) = rt.block_on(async {
        let app = TestApp::new().await;
        let s = app.user("+14155550001", "Alice").await;
        app.get("/api/room/lobby", &s.access).await;
        (app, s)
    });
    // Each case is a whole HTTP request through the router: a quarter of the cases.
    let cfg = config((cases() / 4).max(1));
    proptest!(cfg, |(
        (boundary, body) in multipart(),
        kind in prop::sample::select(&["voice", "image"][..]),
        declared in prop::sample::select(&["multipart/form-data; boundary=", "multipart/form-data", "text/plain; boundary="][..]),
    )| {
        let ct = if declared.ends_with('=') { format!("{declared}{boundary}") } else { declared.to_owned() };
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("/api/room/lobby/{kind}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", session.access))
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body))
            .expect("request");
        let r = rt.block_on(app.send(req));
        prop_assert!(
            !r.status.is_server_error(),
            "{}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    });
}
