//! Access tokens for simulated users: either minted with the server's JWT secret (as
//! LiveKit's load tester does with its API key) or filled in from a template for
//! servers with pre-issued or test tokens. Minted tokens carry the claims Chorus's
//! access-token verifier checks: HS256, `sub`, `iat`, `exp`, `typ: "access"`.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub typ: String,
}

/// An HS256 access token for `user_id`, valid for `ttl`.
pub fn mint_access_token(secret: &[u8], user_id: &str, ttl: Duration) -> Result<String> {
    if secret.is_empty() {
        return Err(Error::Invalid("empty JWT secret".into()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::Invalid("clock before 1970".into()))?
        .as_secs() as i64;
    let claims = AccessClaims {
        sub: user_id.to_owned(),
        iat: now,
        exp: now + ttl.as_secs() as i64,
        typ: "access".into(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| Error::Invalid(format!("cannot sign token: {e}")))
}

/// Replaces `{user}` in `template` (e.g. `tok-{user}`).
pub fn from_template(template: &str, user_id: &str) -> String {
    template.replace("{user}", user_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_verifies_with_the_secret_and_has_the_access_claims() {
        let t = mint_access_token(
            b"secret-secret-secret-secret-1234",
            "u1",
            Duration::from_secs(600),
        )
        .expect("mint");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims = ["sub", "exp"].iter().map(|s| s.to_string()).collect();
        let d = jsonwebtoken::decode::<AccessClaims>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"secret-secret-secret-secret-1234"),
            &v,
        )
        .expect("valid");
        assert_eq!(d.claims.sub, "u1");
        assert_eq!(d.claims.typ, "access");
        assert_eq!(d.claims.exp - d.claims.iat, 600);
        let wrong = jsonwebtoken::decode::<AccessClaims>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"other"),
            &v,
        );
        assert!(wrong.is_err());
        assert!(mint_access_token(b"", "u1", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn template_fills_the_user() {
        assert_eq!(from_template("tok-{user}", "bob"), "tok-bob");
        assert_eq!(from_template("static", "bob"), "static");
    }
}
