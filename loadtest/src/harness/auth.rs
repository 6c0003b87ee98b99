//! Where the harness's access tokens come from.
//!
//! - Minted (`--jwt-secret`): HS256 with the server's `JWT_ACCESS_TOKEN_SECRET`, claims
//!   `{sub, iat, exp, typ: "access"}` exactly as the control plane issues them. The
//!   server admits a validly signed token for a user its store does not know under a
//!   guest name, as LiveKit's load tester does with its API key. Cheap: thousands of
//!   participants without touching the login flow or its rate limits.
//! - Logged in (`--login`): the real phone flow, `send-otp` then `verify-otp`. The code
//!   only reaches the server's development log, so `--otp-from-log <file>` tails that
//!   file for `Your Chorus code is NNNNNN` on the line naming the phone. The server's
//!   per-IP and per-phone login rate limits apply (defaults: 20 send-otp per IP per
//!   hour), so raise `OTP_SEND_PER_IP_PER_HOUR` and friends on the server for more.

use super::HarnessError;
use super::http::{self, BaseUrl};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// How long to wait for a login code to appear in the server log.
const OTP_WAIT: Duration = Duration::from_secs(15);

#[derive(Serialize, Deserialize)]
struct AccessClaims {
    sub: String,
    iat: i64,
    exp: i64,
    typ: String,
}

/// Mints an access token for `user_id` valid for `ttl`.
pub fn mint_access_token(
    secret: &[u8],
    user_id: &str,
    ttl: Duration,
) -> Result<String, HarnessError> {
    // HS256 accepts an empty key; a token signed with it is a configuration mistake.
    if secret.is_empty() {
        return Err(HarnessError::Config("empty JWT secret".into()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| HarnessError::Config(format!("system clock before 1970: {e}")))?
        .as_secs() as i64;
    let claims = AccessClaims {
        sub: user_id.to_owned(),
        iat: now,
        exp: now + ttl.as_secs() as i64,
        typ: "access".to_owned(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| HarnessError::Config(format!("cannot sign token: {e}")))
}

/// A fresh user id shaped like the server's own (24 hex digits).
pub fn new_user_id() -> String {
    let b: [u8; 12] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How participants obtain tokens.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Mint with the server's access-token secret.
    Mint { secret: Vec<u8>, ttl: Duration },
    /// Log in by phone; codes are read from the server's log file. Participant `i`
    /// uses phone `phone_base + i` (E.164 digits).
    Login { otp_log: PathBuf, phone_base: u64 },
}

/// Mints or logs in, giving (user id if known, access token).
pub struct Tokens {
    source: TokenSource,
    addr: SocketAddr,
    host: String,
    next_phone: std::sync::atomic::AtomicU64,
}

impl Tokens {
    pub fn new(source: TokenSource, base: &BaseUrl, addr: SocketAddr) -> Self {
        Self {
            source,
            addr,
            host: base.host.clone(),
            next_phone: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A token for a new participant.
    pub async fn token(&self) -> Result<String, HarnessError> {
        match &self.source {
            TokenSource::Mint { secret, ttl } => mint_access_token(secret, &new_user_id(), *ttl),
            TokenSource::Login {
                otp_log,
                phone_base,
            } => {
                let i = self
                    .next_phone
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let phone = format!("+{}", phone_base + i);
                login(self.addr, &self.host, &phone, otp_log).await
            }
        }
    }
}

#[derive(Deserialize)]
struct SendOtpReply {
    hash: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyReply {
    access_token: Option<String>,
}

/// The phone login: `send-otp`, the code from the log, `verify-otp`.
pub async fn login(
    addr: SocketAddr,
    host: &str,
    phone: &str,
    otp_log: &std::path::Path,
) -> Result<String, HarnessError> {
    // Only lines written after this point can hold our code.
    let offset = tokio::fs::metadata(otp_log)
        .await
        .map_err(|e| HarnessError::Config(format!("--otp-from-log {}: {e}", otp_log.display())))?
        .len();
    let t = Duration::from_secs(10);
    let r = http::request(
        addr,
        host,
        "POST",
        "/api/send-otp",
        None,
        Some(&serde_json::json!({ "phone": phone })),
        t,
    )
    .await?;
    if r.status != 200 {
        return Err(HarnessError::Http(format!(
            "send-otp for {phone}: HTTP {}: {}",
            r.status,
            r.text()
        )));
    }
    let hash = r.json::<SendOtpReply>()?.hash;
    let code = wait_for_code(otp_log, offset, phone, OTP_WAIT).await?;
    let r = http::request(
        addr,
        host,
        "POST",
        "/api/verify-otp",
        None,
        Some(&serde_json::json!({
            "otp": code, "hash": hash, "phone": phone, "tokenInBody": true
        })),
        t,
    )
    .await?;
    if r.status != 200 {
        return Err(HarnessError::Http(format!(
            "verify-otp for {phone}: HTTP {}: {}",
            r.status,
            r.text()
        )));
    }
    r.json::<VerifyReply>()?
        .access_token
        .ok_or_else(|| HarnessError::Http("verify-otp returned no accessToken".into()))
}

/// The six-digit code on a log line that names `phone`, if any.
pub fn find_code(line: &str, phone: &str) -> Option<String> {
    const MARK: &str = "Your Chorus code is ";
    if !line.contains(phone) {
        return None;
    }
    let rest = &line[line.find(MARK)? + MARK.len()..];
    let code: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    (code.len() == 6).then_some(code)
}

/// Tails `path` from `offset` until a line with `phone`'s code appears.
async fn wait_for_code(
    path: &std::path::Path,
    mut offset: u64,
    phone: &str,
    deadline: Duration,
) -> Result<String, HarnessError> {
    let end = tokio::time::Instant::now() + deadline;
    let mut pending = String::new();
    loop {
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display())))?;
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display())))?;
        let mut chunk = Vec::new();
        f.read_to_end(&mut chunk)
            .await
            .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display())))?;
        offset += chunk.len() as u64;
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(nl) = pending.find('\n') {
            let line: String = pending.drain(..=nl).collect();
            if let Some(code) = find_code(&line, phone) {
                return Ok(code);
            }
        }
        if tokio::time::Instant::now() >= end {
            return Err(HarnessError::Http(format!(
                "no login code for {phone} appeared in {} within {deadline:?} \
                 (is the server logging there, with the development SMS sender?)",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn minted_token_carries_the_access_claims_and_verifies_with_the_secret() {
        let t = mint_access_token(b"s3cret", "abc", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims = ["sub", "exp"].iter().map(|s| s.to_string()).collect();
        let data = jsonwebtoken::decode::<AccessClaims>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &v,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(data.claims.sub, "abc");
        assert_eq!(data.claims.typ, "access");
        assert_eq!(data.claims.exp - data.claims.iat, 60);
        assert!(
            jsonwebtoken::decode::<AccessClaims>(
                &t,
                &jsonwebtoken::DecodingKey::from_secret(b"other"),
                &v
            )
            .is_err()
        );
        // Exactly the four claims, nothing else.
        let payload = t.split('.').nth(1).unwrap_or_default();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
        let mut keys: Vec<_> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        assert_eq!(keys, ["exp", "iat", "sub", "typ"]);
    }

    #[test]
    fn an_empty_secret_is_refused() {
        assert!(mint_access_token(b"", "abc", Duration::from_secs(60)).is_err());
    }

    #[test]
    fn login_code_is_found_only_on_the_line_for_that_phone() {
        let text = r#"2026-11-21T16:00:00Z  WARN chorus::dev_sms: DEVELOPMENT SMS (not sent) to="+15550000001" body="Your Chorus code is 123456. It expires in 2 min.""#;
        assert_eq!(find_code(text, "+15550000001").as_deref(), Some("123456"));
        assert_eq!(find_code(text, "+15550000002"), None);
        let json = r#"{"level":"WARN","fields":{"to":"+15550000001","body":"Your Chorus code is 654321. It expires in 2 min."}}"#;
        assert_eq!(find_code(json, "+15550000001").as_deref(), Some("654321"));
        assert_eq!(
            find_code("Your Chorus code is 12. +15550000001", "+15550000001"),
            None
        );
    }

    #[tokio::test]
    async fn code_is_read_from_lines_appended_after_the_offset() {
        let dir = std::env::temp_dir().join(format!("chorus-lt-otp-{}", new_user_id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("server.log");
        std::fs::write(&path, "old: to=\"+1555\" Your Chorus code is 111111.\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let p2 = path.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut s = std::fs::read_to_string(&p2).unwrap_or_default();
            s.push_str("new: to=\"+1555\" Your Chorus code is 222222.\n");
            let _ = std::fs::write(&p2, s);
        });
        let code = wait_for_code(&path, offset, "+1555", Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(code, "222222");
        let _ = writer.await;
        let missing =
            wait_for_code(&path, offset + 1000, "+1555", Duration::from_millis(200)).await;
        assert!(missing.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
