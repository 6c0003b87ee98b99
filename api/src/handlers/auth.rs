//! Phone login and sessions: `send-otp`, `verify-otp`, `refresh`, `logout`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::SET_COOKIE;
use axum::response::{AppendHeaders, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::auth::{
    ACCESS_COOKIE, AuthError, REFRESH_COOKIE, REFRESH_COOKIE_PATH, clear_cookie, cookie_value,
    extract_access_token, random_token, set_cookie,
};
use crate::dto::{AuthResponse, UserJson};
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody, json_object};
use crate::otp::{self, PhoneError};
use crate::ratelimit::{self, ClientIp};
use crate::state::AppState;
use crate::store::{FamilyId, OtpChallenge, RefreshToken, User};

#[derive(Debug, Deserialize, ToSchema)]
pub struct SendOtpRequest {
    /// E.164 phone number, e.g. `+14155550123`.
    #[schema(required = true, nullable = false, example = "+14155550123")]
    pub phone: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SendOtpResponse {
    /// Opaque handle of this login attempt; pass it back to `verify-otp`.
    pub hash: String,
    /// The normalised phone number.
    pub phone: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyOtpRequest {
    /// The 6-digit code from the SMS.
    #[schema(required = true, nullable = false, example = "123456")]
    pub otp: Option<String>,
    /// The `hash` send-otp returned.
    #[schema(required = true, nullable = false)]
    pub hash: Option<String>,
    /// The phone number the code was sent to.
    #[schema(required = true, nullable = false, example = "+14155550123")]
    pub phone: Option<String>,
    /// Also return the tokens in the body (for API clients without a cookie jar).
    #[serde(default)]
    pub token_in_body: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    /// Refresh token for API clients; browsers send the `refreshToken` cookie instead.
    /// When given here, the new tokens are returned in the body.
    pub refresh_token: Option<String>,
}

fn phone_error(e: PhoneError) -> ApiError {
    match e {
        PhoneError::Missing => ApiError::bad_request("phone_required", "Phone field is required"),
        PhoneError::Invalid => ApiError::bad_request("invalid_phone", e.to_string()),
    }
}

/// Sends a login code by SMS.
#[utoipa::path(post, path = "/api/send-otp", tag = "auth", request_body = SendOtpRequest,
    responses(
        (status = 200, body = SendOtpResponse),
        (status = 400, body = ErrorBody, description = "missing or invalid phone"),
        (status = 429, body = ErrorBody, description = "rate limited; see Retry-After"),
        (status = 502, body = ErrorBody, description = "SMS provider failed"),
    ))]
pub async fn send_otp(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<SendOtpRequest>,
) -> ApiResult<Json<SendOtpResponse>> {
    let phone = otp::normalize_phone(req.phone.as_deref().unwrap_or("")).map_err(phone_error)?;
    ratelimit::check(&state.limits.send_otp_ip, &ratelimit::ip_key(ip))?;
    ratelimit::check(&state.limits.send_otp_phone, &phone)?;

    let code = otp::generate_code();
    let handle = random_token();
    let now = state.now();
    let ttl = state.config.otp_ttl;
    state
        .store
        .put_otp(OtpChallenge {
            handle_hash: otp::sha256(handle.as_bytes()),
            phone: phone.clone(),
            code_hash: otp_hash(&state, &handle, &phone, &code),
            expires_at: now + ttl,
            attempts_left: state.config.otp_attempts,
        })
        .await?;
    let minutes = (ttl.whole_seconds() + 59) / 60;
    let body = format!("Your Chorus code is {code}. It expires in {minutes} min.");
    state
        .sms
        .send(&phone, &body)
        .await
        .map_err(|e| ApiError::BadGateway(e.to_string()))?;
    Ok(Json(SendOtpResponse {
        hash: handle,
        phone,
    }))
}

fn otp_hash(state: &AppState, handle: &str, phone: &str, code: &str) -> Vec<u8> {
    state.tokens.keyed_hash(&[
        b"otp\0",
        handle.as_bytes(),
        phone.as_bytes(),
        code.as_bytes(),
    ])
}

fn invalid_otp() -> ApiError {
    ApiError::bad_request("invalid_otp", "Wrong code")
}

/// The handle is unknown, or its challenge was used, exhausted or expired and removed.
fn otp_gone() -> ApiError {
    ApiError::bad_request(
        "otp_not_found",
        "This code is no longer valid, request a new one",
    )
}

/// Checks the code; logs in (creating the user on first login) and sets the cookies.
#[utoipa::path(post, path = "/api/verify-otp", tag = "auth", request_body = VerifyOtpRequest,
    responses(
        (status = 200, body = AuthResponse, description = "logged in; accessToken/refreshToken cookies set"),
        (status = 400, body = ErrorBody, description = "invalid_otp (wrong code), otp_expired, otp_attempts_exhausted, otp_not_found (unknown or already used handle), missing_fields"),
        (status = 429, body = ErrorBody),
    ))]
pub async fn verify_otp(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<VerifyOtpRequest>,
) -> ApiResult<Response> {
    let (Some(code), Some(handle), Some(phone)) = (req.otp, req.hash, req.phone) else {
        return Err(ApiError::bad_request(
            "missing_fields",
            "otp, hash and phone are required",
        ));
    };
    let phone = otp::normalize_phone(&phone).map_err(phone_error)?;
    ratelimit::check(&state.limits.verify_otp_ip, &ratelimit::ip_key(ip))?;
    ratelimit::check(&state.limits.verify_otp_phone, &phone)?;
    if code.len() > 16 || handle.len() > 128 {
        return Err(otp_gone());
    }

    let handle_hash = otp::sha256(handle.as_bytes());
    let Some(challenge) = state.store.get_otp(&handle_hash).await? else {
        return Err(otp_gone());
    };
    if state.now() >= challenge.expires_at {
        state.store.consume_otp(&handle_hash).await?;
        return Err(ApiError::bad_request(
            "otp_expired",
            "The code has expired, request a new one",
        ));
    }
    // Spend the attempt before comparing, so parallel guesses cannot exceed the budget.
    let exhausted = || {
        ApiError::bad_request(
            "otp_attempts_exhausted",
            "Too many wrong codes, request a new one",
        )
    };
    if challenge.attempts_left == 0 {
        state.store.consume_otp(&handle_hash).await?;
        return Err(exhausted());
    }
    let Some(remaining) = state.store.spend_otp_attempt(&handle_hash).await? else {
        state.store.consume_otp(&handle_hash).await?;
        return Err(exhausted());
    };
    // The phone is part of the hash: a handle only works with the number it was sent to.
    let presented = otp_hash(&state, &handle, &phone, code.trim());
    let matches: bool = presented.ct_eq(&challenge.code_hash).into();
    if !matches {
        if remaining == 0 {
            state.store.consume_otp(&handle_hash).await?;
            return Err(exhausted());
        }
        return Err(invalid_otp());
    }
    // Single use: of two concurrent correct submissions only one consumes the challenge.
    if !state.store.consume_otp(&handle_hash).await? {
        return Err(otp_gone());
    }

    let user = state.store.find_or_create_user(&phone, state.now()).await?;
    let family = state.tokens.new_family();
    start_session(&state, &user, family, req.token_in_body).await
}

/// Issues an access token and a new refresh token in `family`, and the response carrying them.
async fn start_session(
    state: &AppState,
    user: &User,
    family: FamilyId,
    token_in_body: bool,
) -> ApiResult<Response> {
    let now = state.now();
    let cfg = &state.config;
    let access = state
        .tokens
        .issue_access(&user.id, Some(&family), now, cfg.access_token_ttl)?;
    let refresh = state.tokens.new_refresh_token();
    state
        .store
        .put_refresh_token(RefreshToken {
            token_hash: state.tokens.refresh_hash(&refresh),
            family,
            user_id: user.id.clone(),
            expires_at: now + cfg.refresh_token_ttl,
            used: false,
        })
        .await?;
    let cookies = AppendHeaders([
        (
            SET_COOKIE,
            set_cookie(
                ACCESS_COOKIE,
                &access,
                "/",
                cfg.access_token_ttl.whole_seconds(),
                cfg.secure_cookies,
            ),
        ),
        (
            SET_COOKIE,
            set_cookie(
                REFRESH_COOKIE,
                &refresh,
                REFRESH_COOKIE_PATH,
                cfg.refresh_token_ttl.whole_seconds(),
                cfg.secure_cookies,
            ),
        ),
    ]);
    let body = AuthResponse {
        user: Some(UserJson::own(user, &cfg.base_url)),
        auth: true,
        access_token: token_in_body.then_some(access),
        refresh_token: token_in_body.then_some(refresh),
    };
    Ok((cookies, Json(body)).into_response())
}

fn clear_cookies(state: &AppState) -> AppendHeaders<[(axum::http::HeaderName, String); 2]> {
    let secure = state.config.secure_cookies;
    AppendHeaders([
        (SET_COOKIE, clear_cookie(ACCESS_COOKIE, "/", secure)),
        (
            SET_COOKIE,
            clear_cookie(REFRESH_COOKIE, REFRESH_COOKIE_PATH, secure),
        ),
    ])
}

fn parse_refresh_body(body: &Bytes) -> ApiResult<RefreshRequest> {
    // No body, or only JSON's whitespace (RFC 8259: space, tab, LF, CR; not form feed,
    // which `is_ascii_whitespace` would let through).
    if body
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(RefreshRequest::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("Invalid JSON body: {e}")))?;
    // `null` is the same as no body (the document allows either); otherwise an object.
    if value.is_null() {
        return Ok(RefreshRequest::default());
    }
    json_object(value)
}

/// Rotates the refresh token (cookie, or `refreshToken` in a POST body) and issues a new
/// access token. Presenting an already-rotated token revokes that login everywhere.
#[utoipa::path(get, path = "/api/refresh", tag = "auth",
    responses(
        (status = 200, body = AuthResponse, description = "rotated cookies set"),
        (status = 401, body = ErrorBody, description = "missing, unknown, expired or reused refresh token"),
    ))]
pub async fn refresh_get(State(state): State<AppState>, headers: HeaderMap) -> Response {
    refresh(&state, &headers, RefreshRequest::default()).await
}

/// Same as `GET /api/refresh`; also accepts `{"refreshToken": ...}` for API clients.
#[utoipa::path(post, path = "/api/refresh", tag = "auth", request_body(content = Option<RefreshRequest>),
    responses(
        (status = 200, body = AuthResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
pub async fn refresh_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match parse_refresh_body(&body) {
        Ok(req) => refresh(&state, &headers, req).await,
        Err(e) => e.into_response(),
    }
}

async fn refresh(state: &AppState, headers: &HeaderMap, req: RefreshRequest) -> Response {
    let token_in_body = req.refresh_token.is_some();
    let token = req
        .refresh_token
        .or_else(|| cookie_value(headers, REFRESH_COOKIE));
    match rotate(state, token, token_in_body).await {
        Ok(resp) => resp,
        // A refused refresh also clears the browser's cookies: they are useless now.
        Err(e @ ApiError::Unauthorized { .. }) => (clear_cookies(state), e).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn rotate(
    state: &AppState,
    token: Option<String>,
    token_in_body: bool,
) -> ApiResult<Response> {
    let unauthorized = |code, msg: &str| ApiError::unauthorized(code, msg.to_owned());
    let token = token.ok_or_else(|| unauthorized("unauthenticated", "No refresh token"))?;
    if token.len() > 256 {
        return Err(unauthorized(
            "invalid_refresh_token",
            "Invalid refresh token",
        ));
    }
    let hash = state.tokens.refresh_hash(&token);
    let stored = state
        .store
        .get_refresh_token(&hash)
        .await?
        .ok_or_else(|| unauthorized("invalid_refresh_token", "Invalid refresh token"))?;
    if state.now() >= stored.expires_at {
        return Err(unauthorized(
            "refresh_token_expired",
            "Session expired, log in again",
        ));
    }
    if stored.used || !state.store.mark_refresh_token_used(&hash).await? {
        tracing::warn!(family = %stored.family, user = %stored.user_id,
            "refresh token reused: revoking the login");
        state.store.revoke_family(&stored.family).await?;
        return Err(unauthorized(
            "refresh_token_reused",
            "Session revoked, log in again",
        ));
    }
    let user = state
        .store
        .get_user(&stored.user_id)
        .await?
        .ok_or_else(|| unauthorized("invalid_refresh_token", "Invalid refresh token"))?;
    start_session(state, &user, stored.family, token_in_body).await
}

/// Ends the login: revokes its refresh-token family and clears the cookies. Accepts the
/// refresh cookie, a `refreshToken` body field, or a valid access token.
#[utoipa::path(post, path = "/api/logout", tag = "auth", request_body(content = Option<RefreshRequest>),
    responses(
        (status = 200, body = AuthResponse, description = "`{user: null, auth: false}`, cookies cleared"),
        (status = 401, body = ErrorBody, description = "no valid session presented"),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map_err(|_| ApiError::PayloadTooLarge("Request body too large".into()))?;
    let req = parse_refresh_body(&body)?;
    let refresh = req
        .refresh_token
        .or_else(|| cookie_value(&parts.headers, REFRESH_COOKIE));

    let mut family: Option<FamilyId> = None;
    if let Some(t) = refresh
        && t.len() <= 256
        && let Some(stored) = state
            .store
            .get_refresh_token(&state.tokens.refresh_hash(&t))
            .await?
    {
        family = Some(stored.family);
    }
    if family.is_none() {
        let access = extract_access_token(&parts.headers, None).ok_or(AuthError::Missing)?;
        let user = state.tokens.verifier().verify_access(&access)?;
        family = user.family;
    }
    if let Some(f) = &family {
        state.store.revoke_family(f).await?;
    }
    let body = AuthResponse {
        user: None,
        auth: false,
        access_token: None,
        refresh_token: None,
    };
    Ok((clear_cookies(&state), Json(body)).into_response())
}
