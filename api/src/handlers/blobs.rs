//! Streaming stored bytes to clients: content type from the upload-time sniff, length,
//! single-range requests for seeking, and headers that keep browsers from sniffing or
//! executing anything.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::TryStreamExt;

use crate::error::{ApiError, ApiResult};
use crate::media::{RangeRequest, is_safe_inline_image, parse_range};
use crate::state::AppState;
use crate::store::BlobMeta;

pub async fn blob_response(
    state: &AppState,
    meta: &BlobMeta,
    request_headers: &HeaderMap,
    cache_control: &'static str,
) -> ApiResult<Response> {
    let len = meta.len;
    let range = parse_range(
        request_headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok()),
        len,
    );
    let (status, start, end) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeRequest::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { len }),
    };
    let stream = state.store.read_blob(&meta.id, start..end).await?;
    let body = Body::from_stream(stream.map_err(|e| std::io::Error::other(e.to_string())));

    let content_type = HeaderValue::from_str(&meta.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    // Opened directly, the bytes can never run script.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    if is_safe_inline_image(&meta.content_type) {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("inline"),
        );
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, len))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}
