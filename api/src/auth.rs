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
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
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

/// Finds the access token of a request, the one rule for HTTP and the WebSocket:
/// `Authorization: Bearer` first, then the `accessToken` cookie, then the `token`
/// parameter of `query` (WebSocket upgrades from browsers cannot set headers; the HTTP
/// API passes no query, so tokens never travel in its URLs). A source that is present
/// but empty or unreadable is skipped. The token is not verified here.
pub fn extract_access_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    bearer_token(headers)
        .or_else(|| cookie_value(headers, ACCESS_COOKIE))
        .or_else(|| {
            form_urlencoded::parse(query?.as_bytes())
                .find(|(k, v)| k == "token" && !v.is_empty())
                .map(|(_, v)| v.into_owned())
        })
}

pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// The first non-empty value of cookie `name` in the `Cookie` header(s); pairs that do
/// not parse are skipped.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name && !c.value_trimmed().is_empty())
        .map(|c| c.value_trimmed().to_owned())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, and Secure when asked.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age_secs: i64, secure: bool) -> String {
    Cookie::build((name, value))
        .path(path)
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .build()
        .to_string()
}

/// A `Set-Cookie` value that deletes the cookie.
pub fn clear_cookie(name: &str, path: &str, secure: bool) -> String {
    Cookie::build((name, ""))
        .path(path)
        .max_age(cookie::time::Duration::ZERO)
        .expires(cookie::time::OffsetDateTime::UNIX_EPOCH)
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .build()
        .to_string()
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = extract_access_token(&parts.headers, None).ok_or(AuthError::Missing)?;
        Ok(state.tokens.verifier().verify_access(&token)?)
    }
}

#[cfg(test)]
mod extract_tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("ascii"));
        }
        h
    }

    #[test]
    fn bearer_beats_cookie_beats_query() {
        let all = headers(&[
            ("authorization", "Bearer from-bearer"),
            ("cookie", "accessToken=from-cookie"),
        ]);
        let q = Some("room=x&token=from-query");
        assert_eq!(
            extract_access_token(&all, q).as_deref(),
            Some("from-bearer")
        );
        let cookie = headers(&[("cookie", "accessToken=from-cookie")]);
        assert_eq!(
            extract_access_token(&cookie, q).as_deref(),
            Some("from-cookie")
        );
        assert_eq!(
            extract_access_token(&HeaderMap::new(), q).as_deref(),
            Some("from-query")
        );
        assert_eq!(extract_access_token(&HeaderMap::new(), None), None);
        assert_eq!(
            extract_access_token(&cookie, None).as_deref(),
            Some("from-cookie")
        );
    }

    #[test]
    fn empty_or_unreadable_sources_are_skipped() {
        let h = headers(&[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("cookie", "accessToken="),
        ]);
        assert_eq!(
            extract_access_token(&h, Some("token=&token=q%2Eq")).as_deref(),
            Some("q.q"),
            "percent-decoded, first non-empty"
        );
        assert_eq!(
            extract_access_token(&headers(&[("authorization", "Bearer  ")]), None),
            None
        );
    }

    #[test]
    fn malformed_cookie_headers_do_not_hide_or_invent_the_token() {
        for (header, want) in [
            ("garbage; accessToken=tok", Some("tok")),
            ("=; ;;accessToken=\"tok\"; other=1", Some("tok")),
            ("accesstoken=wrong-case", None),
            ("xaccessToken=tok", None),
            ("accessToken", None),
            ("; = ;", None),
            ("other=1; accessToken=a=b", Some("a=b")),
        ] {
            assert_eq!(
                cookie_value(&headers(&[("cookie", header)]), ACCESS_COOKIE).as_deref(),
                want,
                "{header:?}"
            );
        }
        // Two Cookie headers: the pair may be in either.
        let two = headers(&[("cookie", "a=1"), ("cookie", "accessToken=second")]);
        assert_eq!(cookie_value(&two, ACCESS_COOKIE).as_deref(), Some("second"));
        // A non-UTF-8 header is skipped, not fatal.
        let mut bad = HeaderMap::new();
        bad.append(
            COOKIE,
            HeaderValue::from_bytes(b"\xff=\xfe").expect("opaque"),
        );
        bad.append(COOKIE, HeaderValue::from_static("accessToken=ok"));
        assert_eq!(cookie_value(&bad, ACCESS_COOKIE).as_deref(), Some("ok"));
    }

    #[test]
    fn set_cookie_carries_the_attributes() {
        let c = set_cookie("accessToken", "t", "/", 900, true);
        assert!(c.starts_with("accessToken=t;"), "{c}");
        for attr in [
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/",
            "Max-Age=900",
        ] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
        let gone = clear_cookie("refreshToken", "/api", false);
        assert!(gone.starts_with("refreshToken=;"), "{gone}");
        assert!(
            gone.contains("Max-Age=0") && gone.contains("1970"),
            "{gone}"
        );
        assert!(!gone.contains("Secure"), "{gone}");
    }
}
