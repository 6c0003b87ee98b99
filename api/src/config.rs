//! Settings of the control plane, as plain data. The binary fills this from flags and
//! environment variables (see docs/CONFIGURATION.md); tests build it directly.

use time::Duration;

/// Requests allowed per hour (a token bucket with this burst, refilled evenly over an hour).
#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    pub send_otp_per_phone: u32,
    pub send_otp_per_ip: u32,
    pub verify_otp_per_phone: u32,
    pub verify_otp_per_ip: u32,
    /// Rooms one user may create (`POST /api/rooms`, and chat rooms made on first use).
    pub create_room_per_user: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            send_otp_per_phone: 5,
            send_otp_per_ip: 20,
            verify_otp_per_phone: 20,
            verify_otp_per_ip: 60,
            create_room_per_user: 30,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Prefix for URLs the API hands out (avatars); empty means relative URLs (`/storage/..`).
    pub base_url: String,
    /// Origins allowed by CORS (with credentials). Empty: no cross-origin access.
    pub cors_origins: Vec<String>,
    /// Cookies carry `Secure`; only turned off for plain-HTTP development.
    pub secure_cookies: bool,
    /// Take the client IP from `X-Forwarded-For` (rightmost entry): only behind a proxy
    /// that sets it, otherwise clients could pick their own rate-limit key.
    pub trust_proxy: bool,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub otp_ttl: Duration,
    pub otp_attempts: u32,
    pub rate_limits: RateLimitConfig,
    pub max_voice_bytes: usize,
    pub max_image_bytes: usize,
    /// Maximum length of the avatar data URL (base64 text), bounding the decoded bytes.
    pub max_avatar_bytes: usize,
    /// Largest accepted avatar width or height in pixels, checked from the image header
    /// before decoding so a decompression bomb is refused cheaply.
    pub max_avatar_dimension: u32,
    /// Avatars decoded at once (each may need ~70 MB at the maximum dimension); 0 means
    /// one per CPU core.
    pub avatar_decode_concurrency: usize,
    /// How long an avatar waits for a decoding slot before the request gets 503.
    pub avatar_decode_wait: std::time::Duration,
    pub max_message_chars: usize,
    /// Rooms idle longer than this are deleted with their messages and bytes.
    pub room_expiry: Duration,
    pub sweep_interval: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            // The built-in web client is same-origin and needs none.
            cors_origins: Vec::new(),
            secure_cookies: true,
            trust_proxy: false,
            access_token_ttl: Duration::minutes(15),
            refresh_token_ttl: Duration::days(30),
            otp_ttl: Duration::minutes(2),
            otp_attempts: 5,
            rate_limits: RateLimitConfig::default(),
            max_voice_bytes: 10 * 1024 * 1024,
            max_image_bytes: 5 * 1024 * 1024,
            max_avatar_bytes: 4 * 1024 * 1024,
            max_avatar_dimension: 4096,
            avatar_decode_concurrency: 0,
            avatar_decode_wait: std::time::Duration::from_secs(10),
            max_message_chars: 2000,
            room_expiry: Duration::days(30),
            sweep_interval: std::time::Duration::from_secs(3600),
        }
    }
}
