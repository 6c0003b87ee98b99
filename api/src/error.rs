//! The one error type of the HTTP edge: every handler returns `Result<_, ApiError>`, and
//! this is the only place that chooses a status code. Bodies are always
//! `{"code": "...", "message": "..."}`: `message` is what the reference web clients show,
//! `code` is stable for programs. Internal details are logged here and never returned.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::access::AccessError;
use crate::auth::SigningError;
use crate::chat::ChatError;
use crate::ids::{FileId, MessageId, RoomId, UserId};
use crate::store::StoreError;

/// `Retry-After` of a 503: a database outage is retried after this many seconds.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or a value is out of range.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: no valid credentials.
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// 403: authenticated, but not allowed.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// 404: unknown, malformed, or not visible to the caller (private rooms).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 416 with `Content-Range: bytes */len`.
    #[error("range not satisfiable")]
    RangeNotSatisfiable { len: u64 },
    /// 429 with `Retry-After`.
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    /// 502: an upstream (the SMS provider) failed.
    #[error("{0}")]
    BadGateway(String),
    /// 503 with `Retry-After`: the database is unreachable.
    #[error("service unavailable")]
    Unavailable,
    /// 503 with `Retry-After`: a bounded resource (avatar decoding) is busy right now.
    #[error("server busy, try again in {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    /// 500: logged with its detail, shown as a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_otp`, `not_found`.
    pub code: String,
    /// Human-readable message (the reference clients display it).
    pub message: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unauthorized {
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Forbidden {
            code,
            message: message.into(),
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Unavailable | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Forbidden { code, .. } => code,
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::BadGateway(_) => "upstream_failed",
            Self::Unavailable => "not_ready",
            Self::Overloaded { .. } => "overloaded",
            Self::Internal(_) => "internal",
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "Internal server error".to_owned(),
            Self::BadGateway(_) => "Could not deliver the code, try again later".to_owned(),
            Self::TooManyRequests { retry_after_secs } => {
                format!("Too many requests, try again in {retry_after_secs} s")
            }
            other => {
                let m = other.to_string();
                // Capitalise the first letter for the reference clients' toasts.
                let mut c = m.chars();
                match c.next() {
                    Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                    None => m,
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(detail) => tracing::error!(%detail, "internal error"),
            Self::BadGateway(detail) => tracing::warn!(%detail, "upstream failure"),
            _ => tracing::debug!(%status, error = %self, "request refused"),
        }
        let body = ErrorBody {
            code: self.code().to_owned(),
            message: self.public_message(),
        };
        let mut resp = (status, Json(body)).into_response();
        match self {
            Self::TooManyRequests { retry_after_secs } | Self::Overloaded { retry_after_secs } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::Unavailable => {
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
                );
            }
            Self::RangeNotSatisfiable { len } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound("resource"),
            StoreError::Conflict => Self::Conflict("Already exists".into()),
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Self::Unavailable
            }
            StoreError::Backend(detail) => Self::Internal(format!("store: {detail}")),
        }
    }
}

/// Domain errors carry no status; this is where each gets one.
impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::NotFound => Self::NotFound("room"),
            AccessError::Store(s) => s.into(),
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        let message = e.to_string();
        match e {
            ChatError::RoomNotFound => Self::NotFound("room"),
            ChatError::MessageNotFound => Self::NotFound("message"),
            ChatError::UnknownUser => Self::unauthorized("invalid_token", message),
            ChatError::NotActivated => Self::forbidden("not_activated", message),
            ChatError::InvalidText { .. } => Self::bad_request("invalid_message", message),
            ChatError::NotASystemMessage => Self::bad_request("invalid_message_type", message),
            ChatError::NotAuthor => Self::forbidden("not_author", message),
            ChatError::Store(s) => s.into(),
        }
    }
}

impl From<SigningError> for ApiError {
    fn from(e: SigningError) -> Self {
        Self::internal(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge("Request body too large".into()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::UnsupportedMediaType("Expected Content-Type: application/json".into())
            }
            _ => Self::bad_request(
                "invalid_json",
                format!("Invalid JSON body: {}", r.body_text()),
            ),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        Self::NotFound("resource")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", format!("Invalid query: {}", r.body_text()))
    }
}

/// `Json` whose rejections are [`ApiError`]s (JSON bodies, not axum's plain text).
/// Every request body of the API is an object: serde would also fill a struct from an
/// array (`["+1415..."]`), which the OpenAPI document does not allow, so anything but
/// an object is refused with 400 `invalid_json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<serde_json::Value>::from_request(req, state).await?;
        json_object(value).map(ApiJson)
    }
}

/// Reads `T` from a JSON value that must be an object.
pub fn json_object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> ApiResult<T> {
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "Invalid JSON body: expected an object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("Invalid JSON body: {e}")))
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// Path parameters as typed ids. A malformed id is answered exactly like a well-formed
/// one that names nothing: 404 `not_found`, "Room not found" (the id's kind).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

/// What [`ApiPath`] can extract: one typed id, or two (`/room/{roomId}/messages/{id}`).
pub trait FromPath: Sized {
    /// The segments as axum hands them over, before the ids are checked.
    type Raw: serde::de::DeserializeOwned + Send;
    fn from_path(raw: Self::Raw) -> Result<Self, ApiError>;
}

macro_rules! path_id {
    ($($id:ty),*) => {$(
        impl FromPath for $id {
            type Raw = String;
            fn from_path(raw: String) -> Result<Self, ApiError> {
                <$id>::parse(raw).map_err(|e| ApiError::NotFound(e.kind))
            }
        }
    )*};
}
path_id!(RoomId, MessageId, FileId, UserId);

impl<A, B> FromPath for (A, B)
where
    A: FromPath<Raw = String>,
    B: FromPath<Raw = String>,
{
    type Raw = (String, String);
    fn from_path((a, b): (String, String)) -> Result<Self, ApiError> {
        Ok((A::from_path(a)?, B::from_path(b)?))
    }
}

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: FromPath,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<T::Raw>::from_request_parts(parts, state).await?;
        T::from_path(raw).map(ApiPath)
    }
}

/// `Query` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(e: impl Into<ApiError>) -> (StatusCode, &'static str, String) {
        let e = e.into();
        (e.status(), e.code(), e.public_message())
    }

    #[test]
    fn chat_errors_keep_their_http_status_code_and_message() {
        let cases = [
            (
                ChatError::RoomNotFound,
                404,
                "not_found",
                "Room not found".to_owned(),
            ),
            (
                ChatError::MessageNotFound,
                404,
                "not_found",
                "Message not found".to_owned(),
            ),
            (
                ChatError::UnknownUser,
                401,
                "invalid_token",
                "Unknown user".to_owned(),
            ),
            (
                ChatError::NotActivated,
                403,
                "not_activated",
                "Set your name before posting (POST /api/activate)".to_owned(),
            ),
            (
                ChatError::InvalidText { max: 7 },
                400,
                "invalid_message",
                "Message must be 1 to 7 visible characters".to_owned(),
            ),
            (
                ChatError::NotASystemMessage,
                400,
                "invalid_message_type",
                "Only call notices are system messages".to_owned(),
            ),
            (
                ChatError::NotAuthor,
                403,
                "not_author",
                "Only the author or the room owner can delete this message".to_owned(),
            ),
            (
                ChatError::Store(StoreError::Unavailable("down".into())),
                503,
                "not_ready",
                "Service unavailable".to_owned(),
            ),
            (
                ChatError::Store(StoreError::Backend("secret detail".into())),
                500,
                "internal",
                "Internal server error".to_owned(),
            ),
        ];
        for (e, status, code, message) in cases {
            let what = format!("{e:?}");
            assert_eq!(
                shown(e),
                (StatusCode::from_u16(status).expect("status"), code, message),
                "{what}"
            );
        }
    }

    #[test]
    fn access_and_signing_errors_get_404_and_500() {
        assert_eq!(
            shown(AccessError::NotFound),
            (
                StatusCode::NOT_FOUND,
                "not_found",
                "Room not found".to_owned()
            )
        );
        assert_eq!(
            shown(AccessError::Store(StoreError::Conflict)).0,
            StatusCode::CONFLICT
        );
        let signing = SigningError(jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey.into());
        assert_eq!(
            shown(signing),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error".to_owned()
            )
        );
    }

    #[test]
    fn a_write_into_a_vanished_room_is_a_missing_room() {
        assert!(matches!(
            ChatError::from(StoreError::NotFound),
            ChatError::RoomNotFound
        ));
    }
}
