//! The web client (`web/`), embedded in the binary and served at `/`.
//!
//! Files are compiled in so the one binary is the whole product. The client routes
//! with the URL hash, so only real files are served; anything else under `/` that
//! is not an API route gets the app's `index.html`, which shows its own not-found view.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::Embed;
use tower_http::set_header::SetResponseHeaderLayer;

#[derive(Embed)]
#[folder = "web/"]
struct Assets;

/// What the client's pages may load: its own modules and styles (plus inline style
/// attributes, which the UI sets for avatar hues and waveforms), images from itself,
/// `data:` (generated avatars) and `blob:` (picked files), voice notes from itself or
/// `blob:` (recordings), fetch and the WebSocket to itself; nothing may frame it.
/// `extra_img` is the origin avatars are served from when `BASE_URL` points elsewhere.
pub fn content_security_policy(extra_img: Option<&str>) -> String {
    let extra = extra_img.map(|o| format!(" {o}")).unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data: blob:{extra}; media-src 'self' blob:; connect-src 'self'; \
         font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

/// The scheme, host and port of an absolute `http(s)` URL, for the policy.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    valid.then(|| format!("{scheme}://{host}"))
}

/// The web client's routes; `base_url` is `BASE_URL` (avatar URLs are prefixed with it).
pub fn routes(base_url: &str) -> Router {
    let csp = content_security_policy(origin_of(base_url).as_deref());
    let csp = HeaderValue::from_str(&csp)
        .unwrap_or_else(|_| HeaderValue::from_static("frame-ancestors 'none'"));
    Router::new()
        .route("/", get(index))
        .route("/{*path}", get(asset))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            csp,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    // API-looking paths that reached here are unknown API routes: answer like the API.
    if path.starts_with("api/") {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"code":"not_found","message":"No such route"}"#,
        )
            .into_response();
    }
    if Assets::get(&path).is_some() {
        serve(&path)
    } else {
        serve("index.html")
    }
}

fn serve(path: &str) -> Response {
    let Some(file) = Assets::get(path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mime = file.metadata.mimetype().to_owned();
    let mut resp = (StatusCode::OK, file.data.into_owned()).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    // The HTML names the scripts without version hashes: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avatars_from_another_origin_are_allowed_as_images_only() {
        assert_eq!(
            origin_of("https://cdn.example:8443/x/y").as_deref(),
            Some("https://cdn.example:8443")
        );
        assert_eq!(origin_of(""), None);
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(origin_of("https://a b"), None);
        let csp = content_security_policy(Some("https://cdn.example"));
        assert!(
            csp.contains("img-src 'self' data: blob: https://cdn.example;"),
            "{csp}"
        );
        assert!(!csp.contains("script-src 'self' https"), "{csp}");
    }
}
