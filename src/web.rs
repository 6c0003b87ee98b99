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

#[derive(Embed)]
#[folder = "web/"]
struct Assets;

pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/{*path}", get(asset))
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
