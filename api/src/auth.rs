//! Tokens: short-lived JWT access tokens (HS256) and rotating opaque refresh tokens, the
//! cookies that carry them, and the extraction of a token from a request (shared with the
//! signaling WebSocket).
//!
//! Access token claims: `{"sub": "<userId>", "iat": <unix s>, "exp": <unix s>, "typ": "access"}`,
//! signed with `JWT_ACCESS_TOKEN_SECRET`. Expiry is checked against the injected [`Clock`],
//! not the system time, so tests can expire tokens without waiting.
//!
//! Refresh tokens are 256 random bits (base64url); only `HMAC-SHA256(JWT_REFRESH_TOKEN_SECRET,
//! token)` is stored, with the login's family id. Each refresh marks the presented token
//! used and issues a new one in the same family; presenting a used token again is reuse
//! (a stolen token raced its owner) and revokes the whole family.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{FamilyId, UserId};

pub const ACCESS_COOKIE: &str = "accessToken";
pub const REFRESH_COOKIE: &str = "refreshToken";
/// The refresh cookie is only sent to `/api/refresh` and `/api/logout` (both under `/api`);
/// the access cookie goes everywhere (the WebSocket and `<audio src>` need it).
pub const REFRESH_COOKIE_PATH: &str = "/api";

/// The two signing secrets. `access` signs JWTs; `refresh` keys the refresh-token and
/// OTP hashes.
#[derive(Clone)]
pub struct JwtSecrets {
    pub access: Vec<u8>,
    pub refresh: Vec<u8>,
}

impl std::fmt::Debug for JwtSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtSecrets(..)")
    }
}

/// Who a valid access token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: UserId,
    /// The login (refresh-token family) this token was issued for.
    pub family: Option<FamilyId>,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no access token")]
    Missing,
    #[error("invalid access token")]
    Invalid,
    #[error("access token expired")]
    Expired,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Missing => "unauthenticated",
            AuthError::Invalid => "invalid_token",
            AuthError::Expired => "token_expired",
        };
        ApiError::unauthorized(code, e.to_string())
    }
}

/// An access token could not be signed (a server fault, never the client's).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign access token: {0}")]
pub struct SigningError(#[from] pub jsonwebtoken::errors::Error);

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    sub: String,
    iat: i64,
    exp: i64,
    typ: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fam: Option<String>,
}

/// Turns an access token into a user. Cheap to clone; shared with the signaling server.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    key: DecodingKey,
    validation: Validation,
    clock: Arc<dyn Clock>,
}

impl TokenVerifier {
    pub fn new(access_secret: &[u8], clock: Arc<dyn Clock>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below against the injected clock.
        validation.validate_exp = false;
        validation.required_spec_claims = ["sub", "exp"].iter().map(|s| s.to_string()).collect();
        Self {
            inner: Arc::new(VerifierInner {
                key: DecodingKey::from_secret(access_secret),
                validation,
                clock,
            }),
        }
    }

    pub fn verify_access(&self, token: &str) -> Result<AuthUser, AuthError> {
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.inner.key, &self.inner.validation)
                .map_err(|_| AuthError::Invalid)?;
        let c = data.claims;
        if c.typ != "access" {
            return Err(AuthError::Invalid);
        }
        let user_id = UserId::parse(c.sub).map_err(|_| AuthError::Invalid)?;
        let family = c
            .fam
            .map(FamilyId::parse)
            .transpose()
            .map_err(|_| AuthError::Invalid)?;
        let expires_at =
            OffsetDateTime::from_unix_timestamp(c.exp).map_err(|_| AuthError::Invalid)?;
        if self.inner.clock.now() >= expires_at {
            return Err(AuthError::Expired);
        }
        Ok(AuthUser {
            user_id,
            family,
            expires_at,
        })
    }
}

/// Issues tokens and hashes refresh tokens and OTPs.
#[derive(Clone)]
pub struct TokenService {
    encoding: Arc<EncodingKey>,
    refresh_key: Arc<Vec<u8>>,
    verifier: TokenVerifier,
}

impl TokenService {
    pub fn new(secrets: &JwtSecrets, clock: Arc<dyn Clock>) -> Self {
        Self {
            encoding: Arc::new(EncodingKey::from_secret(&secrets.access)),
            refresh_key: Arc::new(secrets.refresh.clone()),
            verifier: TokenVerifier::new(&secrets.access, clock),
        }
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    pub fn issue_access(
        &self,
        user: &UserId,
        family: Option<&FamilyId>,
        now: OffsetDateTime,
        ttl: time::Duration,
    ) -> Result<String, SigningError> {
        let claims = AccessClaims {
            sub: user.to_string(),
            iat: now.unix_timestamp(),
            exp: (now + ttl).unix_timestamp(),
            typ: "access".into(),
            fam: family.map(FamilyId::to_string),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// A fresh opaque refresh token (not yet stored).
    pub fn new_refresh_token(&self) -> String {
        random_token()
    }

    /// What the store keeps for a refresh token.
    pub fn refresh_hash(&self, token: &str) -> Vec<u8> {
        self.keyed_hash(&[b"refresh\0", token.as_bytes()])
    }

    /// Keyed hash used for OTP codes (domain-separated from refresh tokens).
    pub fn keyed_hash(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.refresh_key) {
            Ok(m) => m,
            // HMAC accepts keys of any length; this arm cannot be taken.
            Err(_) => return Vec::new(),
        };
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }

    pub fn new_family(&self) -> FamilyId {
        FamilyId::generate()
    }
}

/// 256 random bits from the OS-seeded CSPRNG, base64url without padding.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// Where a request's access token may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSources {
    /// `Authorization: Bearer` and the `accessToken` cookie (HTTP API).
    HeaderAndCookie,
    /// Also a `token` query parameter (WebSocket upgrades from browsers cannot set headers).
    HeaderCookieAndQuery,
}

/// Finds the access token of a request: `Authorization: Bearer` first, then the
/// `accessToken` cookie, then (if allowed) the `token` query parameter.
pub fn extract_access_token(parts: &Parts, sources: TokenSources) -> Option<String> {
    if let Some(t) = bearer_token(&parts.headers) {
        return Some(t);
    }
    if let Some(t) = cookie_value(&parts.headers, ACCESS_COOKIE) {
        return Some(t);
    }
    if sources == TokenSources::HeaderCookieAndQuery {
        let q = parts.uri.query()?;
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("token=")
                && !v.is_empty()
            {
                return Some(percent_decode(v));
            }
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// The value of a cookie from the `Cookie` header(s).
pub fn cookie_value(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    for h in headers.get_all(COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == name
                && !v.is_empty()
            {
                return Some(v.trim_matches('"').to_owned());
            }
        }
    }
    None
}

/// A `Set-Cookie` value. Tokens are base64url/JWT, so no escaping is needed.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{secure}")
}

/// A `Set-Cookie` value that deletes the cookie.
pub fn clear_cookie(name: &str, path: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{name}=; Path={path}; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax{secure}"
    )
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token =
            extract_access_token(parts, TokenSources::HeaderAndCookie).ok_or(AuthError::Missing)?;
        Ok(state.tokens.verifier().verify_access(&token)?)
    }
}
