//! SMS delivery of login codes, behind a trait: Twilio's Messages API in production, and a
//! development sender that writes the code to the server log.

use std::sync::Arc;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    #[error("SMS provider request failed: {0}")]
    Transport(String),
    #[error("SMS provider refused the message (HTTP {status}): {body}")]
    Rejected { status: u16, body: String },
    #[error("SMS sender misconfigured: {0}")]
    Config(String),
}

#[async_trait]
pub trait SmsSender: Send + Sync + 'static {
    async fn send(&self, to: &str, body: &str) -> Result<(), SmsError>;
    /// True for senders that do not deliver anything (the login page can say so).
    fn is_development(&self) -> bool {
        false
    }
}

/// Writes messages to the log instead of sending them. The default, for development only.
#[derive(Debug, Default, Clone, Copy)]
pub struct DevSmsSender;

#[async_trait]
impl SmsSender for DevSmsSender {
    async fn send(&self, to: &str, body: &str) -> Result<(), SmsError> {
        tracing::warn!(target: "chorus::dev_sms", to, body, "DEVELOPMENT SMS (not sent)");
        Ok(())
    }

    fn is_development(&self) -> bool {
        true
    }
}

/// Twilio credentials and sender number.
#[derive(Clone)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: String,
    pub from_number: String,
    /// `https://api.twilio.com` in production; tests point it at a local mock.
    pub base_url: String,
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("account_sid", &self.account_sid)
            .field("from_number", &self.from_number)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

pub const TWILIO_API: &str = "https://api.twilio.com";

/// Sends through Twilio's Messages API:
/// `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, HTTP basic auth (sid, token),
/// form body `To`, `From`, `Body`.
pub struct TwilioSender {
    config: TwilioConfig,
    http: reqwest::Client,
}

impl TwilioSender {
    pub fn new(config: TwilioConfig) -> Result<Self, SmsError> {
        if config.account_sid.is_empty()
            || config.auth_token.is_empty()
            || config.from_number.is_empty()
        {
            return Err(SmsError::Config(
                "SMS_SID, SMS_AUTH_TOKEN and SMS_FROM_NUMBER must all be set".into(),
            ));
        }
        // rustls with the ring provider and the Mozilla roots (no system dependency).
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| SmsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| SmsError::Config(e.to_string()))?;
        Ok(Self { config, http })
    }
}

#[async_trait]
impl SmsSender for TwilioSender {
    async fn send(&self, to: &str, body: &str) -> Result<(), SmsError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.config.base_url.trim_end_matches('/'),
            self.config.account_sid
        );
        let resp = self
            .http
            .post(url)
            .basic_auth(&self.config.account_sid, Some(&self.config.auth_token))
            .form(&[
                ("To", to),
                ("From", self.config.from_number.as_str()),
                ("Body", body),
            ])
            .send()
            .await
            .map_err(|e| SmsError::Transport(e.to_string()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(500);
        Err(SmsError::Rejected {
            status: status.as_u16(),
            body,
        })
    }
}
