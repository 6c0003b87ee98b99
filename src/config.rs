//! The `chorus` binary's configuration: every setting is a flag and an environment
//! variable (a `.env` file in the working directory is read first). Documented with
//! defaults in docs/CONFIGURATION.md; keep the two in step.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use api::auth::JwtSecrets;
use api::config::{ApiConfig, RateLimitConfig};
use api::sms::{DevSmsSender, SmsSender, TWILIO_API, TwilioConfig, TwilioSender};
use clap::Parser;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "chorus",
    version,
    about = "Live voice rooms: control plane and audio SFU"
)]
pub struct Config {
    /// HTTP port (the reference Talkspace backend's default).
    #[arg(long, env = "PORT", default_value_t = 5500)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Directory for the embedded SQLite database and generated secrets.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// MongoDB connection string; when set, MongoDB is used instead of SQLite.
    /// `DB_URL` is accepted as an alias (Talkspace's name).
    #[arg(long, env = "MONGO_URI")]
    pub mongo_uri: Option<String>,

    /// How long a MongoDB operation waits for a reachable server before the request
    /// gets 503 (and `Retry-After`), milliseconds.
    #[arg(
        long,
        env = "MONGO_SERVER_SELECTION_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub mongo_server_selection_timeout_ms: u64,

    /// Deadline of one store operation on MongoDB (a database that accepts connections
    /// but does not answer), milliseconds; past it the request gets 503.
    #[arg(long, env = "MONGO_OPERATION_TIMEOUT_MS", default_value_t = 10000)]
    pub mongo_operation_timeout_ms: u64,

    /// MongoDB write concern `w`: `majority` or a number of members.
    #[arg(long, env = "MONGO_WRITE_CONCERN", default_value = "majority")]
    pub mongo_write_concern: String,

    /// MongoDB write concern `j`: acknowledge writes only once they are journaled.
    #[arg(long, env = "MONGO_JOURNAL", default_value_t = true, action = clap::ArgAction::Set)]
    pub mongo_journal: bool,

    /// Secret signing access tokens (HS256). Generated and kept in the data dir if unset.
    #[arg(long, env = "JWT_ACCESS_TOKEN_SECRET", hide_env_values = true)]
    pub jwt_access_token_secret: Option<String>,

    /// Secret keying refresh-token and login-code hashes. Generated and kept in the data
    /// dir if unset.
    #[arg(long, env = "JWT_REFRESH_TOKEN_SECRET", hide_env_values = true)]
    pub jwt_refresh_token_secret: Option<String>,

    /// Twilio account SID. With the token and number set, codes are sent by SMS;
    /// otherwise they are written to the log (development only).
    #[arg(long, env = "SMS_SID")]
    pub sms_sid: Option<String>,

    /// Twilio auth token.
    #[arg(long, env = "SMS_AUTH_TOKEN", hide_env_values = true)]
    pub sms_auth_token: Option<String>,

    /// Twilio sender phone number (E.164).
    #[arg(long, env = "SMS_FROM_NUMBER")]
    pub sms_from_number: Option<String>,

    /// Twilio API base URL (override for a mock in tests).
    #[arg(long, env = "SMS_API_URL", default_value = TWILIO_API)]
    pub sms_api_url: String,

    /// Public base URL prefixed to avatar URLs; empty means relative URLs.
    #[arg(long, env = "BASE_URL", default_value = "")]
    pub base_url: String,

    /// Origins allowed to call the API with credentials (CORS), comma-separated. Empty:
    /// none (the built-in web client is same-origin).
    #[arg(long, env = "FRONTEND_URL", default_value = "", value_delimiter = ',')]
    pub frontend_url: Vec<String>,

    /// Send cookies without `Secure` (plain-HTTP development only).
    #[arg(long, env = "INSECURE_COOKIES", default_value_t = false)]
    pub insecure_cookies: bool,

    /// Take the client IP from X-Forwarded-For (only behind a reverse proxy that sets it).
    #[arg(long, env = "TRUST_PROXY", default_value_t = false)]
    pub trust_proxy: bool,

    /// Access token lifetime in seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    pub access_token_ttl_secs: i64,

    /// Refresh token lifetime in days (each refresh starts a new period).
    #[arg(long, env = "REFRESH_TOKEN_TTL_DAYS", default_value_t = 30)]
    pub refresh_token_ttl_days: i64,

    /// Login code lifetime in seconds.
    #[arg(long, env = "OTP_TTL_SECS", default_value_t = 120)]
    pub otp_ttl_secs: i64,

    /// Wrong codes allowed per login code before it is void.
    #[arg(long, env = "OTP_MAX_ATTEMPTS", default_value_t = 5)]
    pub otp_max_attempts: u32,

    /// send-otp requests per phone number per hour.
    #[arg(long, env = "OTP_SEND_PER_PHONE_PER_HOUR", default_value_t = 5)]
    pub otp_send_per_phone_per_hour: u32,

    /// send-otp requests per client IP per hour.
    #[arg(long, env = "OTP_SEND_PER_IP_PER_HOUR", default_value_t = 20)]
    pub otp_send_per_ip_per_hour: u32,

    /// verify-otp requests per phone number per hour.
    #[arg(long, env = "OTP_VERIFY_PER_PHONE_PER_HOUR", default_value_t = 20)]
    pub otp_verify_per_phone_per_hour: u32,

    /// verify-otp requests per client IP per hour.
    #[arg(long, env = "OTP_VERIFY_PER_IP_PER_HOUR", default_value_t = 60)]
    pub otp_verify_per_ip_per_hour: u32,

    /// Rooms one user may create per hour (token bucket: a burst of this many, refilled
    /// evenly over the hour); chat rooms made on first use count too.
    #[arg(long, env = "ROOMS_PER_USER_PER_HOUR", default_value_t = 30)]
    pub rooms_per_user_per_hour: u32,

    /// Largest voice note upload, bytes.
    #[arg(long, env = "MAX_VOICE_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_voice_bytes: usize,

    /// Largest image upload, bytes.
    #[arg(long, env = "MAX_IMAGE_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_image_bytes: usize,

    /// Largest avatar data URL, bytes.
    #[arg(long, env = "MAX_AVATAR_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_avatar_bytes: usize,

    /// Largest avatar width or height, pixels (checked before decoding).
    #[arg(long, env = "MAX_AVATAR_DIMENSION", default_value_t = 4096)]
    pub max_avatar_dimension: u32,

    /// Avatars decoded at once (a maximum-size one needs ~70 MB while it is processed);
    /// 0: one per CPU core. Others wait up to AVATAR_DECODE_WAIT_SECS, then get 503.
    #[arg(long, env = "AVATAR_DECODE_CONCURRENCY", default_value_t = 0)]
    pub avatar_decode_concurrency: usize,

    /// Seconds an avatar waits for a decoding slot before the request gets 503 with
    /// `Retry-After`.
    #[arg(long, env = "AVATAR_DECODE_WAIT_SECS", default_value_t = 10)]
    pub avatar_decode_wait_secs: u64,

    /// Longest chat message, characters.
    #[arg(long, env = "MAX_MESSAGE_CHARS", default_value_t = 2000)]
    pub max_message_chars: usize,

    /// Rooms with no activity for this many days are deleted with their messages and files.
    #[arg(long, env = "ROOM_EXPIRY_DAYS", default_value_t = 30)]
    pub room_expiry_days: i64,

    /// How often the expiry sweeper runs, seconds.
    #[arg(long, env = "SWEEP_INTERVAL_SECS", default_value_t = 3600)]
    pub sweep_interval_secs: u64,

    /// UDP port of the first media thread's socket; thread i listens on MEDIA_PORT + i.
    #[arg(long, env = "MEDIA_PORT", default_value_t = 7882)]
    pub media_port: u16,

    /// Media threads (each with its own UDP socket; rooms are spread over them). 0: one per
    /// core.
    #[arg(long, env = "MEDIA_THREADS", default_value_t = 0)]
    pub media_threads: usize,

    /// Requests (joins, renegotiations, ICE restarts) that may wait for one media thread;
    /// beyond it they are refused as busy at once (leaves and mutes are never refused).
    #[arg(long, env = "MEDIA_COMMAND_QUEUE", default_value_t = 1024)]
    pub media_command_queue: usize,

    /// SFU events (speaker and slot changes, disconnects) that may wait for signaling;
    /// while this many wait, new joins are refused as busy.
    #[arg(long, env = "MEDIA_EVENT_BACKLOG", default_value_t = 16384)]
    pub media_event_backlog: usize,

    /// Address the media socket binds to: an interface's IP restricts media to it
    /// (127.0.0.1 for loopback-only tests); 0.0.0.0 listens on all of them.
    #[arg(long, env = "MEDIA_HOST", default_value = "0.0.0.0")]
    pub media_host: IpAddr,

    /// UDP port of the first media thread's node-to-node relay socket (on MEDIA_HOST);
    /// thread i listens on RELAY_PORT + i. Used only with RELAY_SECRET.
    #[arg(long, env = "RELAY_PORT", default_value_t = 7782)]
    pub relay_port: u16,

    /// Secret shared by the nodes of a cluster, authenticating relayed media
    /// (HMAC-SHA256; 16+ bytes, use 32+ random characters). Unset: the relay is off.
    #[arg(long, env = "RELAY_SECRET", hide_env_values = true)]
    pub relay_secret: Option<String>,

    /// IPs announced to clients as ICE host candidates, comma-separated: the public IPs
    /// of a 1:1 NAT, or the interface IPs to use. Empty: the bound IP; when bound to a
    /// wildcard (0.0.0.0, ::), every address of that family on the interfaces that are
    /// up, except loopback and link-local, the one that routes outwards first (loopback,
    /// with a warning, if there is none).
    #[arg(long, env = "ANNOUNCE_IPS", value_delimiter = ',')]
    pub announce_ips: Vec<IpAddr>,

    /// STUN/TURN server URLs handed to clients, comma-separated
    /// (e.g. `stun:stun.example.org:3478,turn:turn.example.org:3478?transport=udp`).
    #[arg(long, env = "ICE_SERVERS", value_delimiter = ',')]
    pub ice_servers: Vec<String>,

    /// Username for the TURN servers in ICE_SERVERS.
    #[arg(long, env = "TURN_USERNAME")]
    pub turn_username: Option<String>,

    /// Credential for the TURN servers in ICE_SERVERS.
    #[arg(long, env = "TURN_CREDENTIAL", hide_env_values = true)]
    pub turn_credential: Option<String>,

    /// Outgoing audio slots per listener: the loudest speakers are mapped onto them.
    #[arg(long, env = "AUDIO_SLOTS", default_value_t = 3)]
    pub audio_slots: usize,

    /// How often active speakers and slot assignments are decided, milliseconds (200-500).
    #[arg(long, env = "SPEAKER_INTERVAL_MS", default_value_t = 300)]
    pub speaker_interval_ms: u64,

    /// A connected participant silent (no packets, no ICE consent) this long is removed, seconds.
    #[arg(long, env = "PEER_TIMEOUT_SECS", default_value_t = 15)]
    pub peer_timeout_secs: u64,

    /// Participants per room (connections, two tabs count twice).
    #[arg(long, env = "MAX_PARTICIPANTS", default_value_t = 5000)]
    pub max_participants: usize,

    /// Seconds a participant whose WebSocket dropped keeps its place for a reconnect.
    #[arg(long, env = "RESUME_GRACE_SECS", default_value_t = 15)]
    pub resume_grace_secs: u64,

    /// The resume grace, in seconds, of a place whose audio never connected (at most
    /// RESUME_GRACE_SECS): places that were only ever a socket are given up quickly.
    #[arg(long, env = "UNCONNECTED_GRACE_SECS", default_value_t = 5)]
    pub unconnected_grace_secs: u64,

    /// Places one user may hold in one room (tabs, including places waiting for a
    /// resume); a join over it replaces the user's oldest resumable place.
    #[arg(long, env = "MAX_PLACES_PER_USER", default_value_t = 4)]
    pub max_places_per_user: usize,

    /// Client messages per second on one WebSocket (sustained; bursts of twice this pass).
    #[arg(long, env = "WS_RATE_PER_SEC", default_value_t = 20)]
    pub ws_rate_per_sec: u32,

    /// Open connections at once, HTTP and WebSocket together. At the cap the oldest
    /// connection with no request in progress is closed to make room, else the new one
    /// is refused. Lowered to fit the open-files limit (raised to its hard limit at start).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Seconds for a complete request head, counted from the connection opening or the
    /// previous response (so also the keep-alive idle timeout).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,

    /// Longest gap between two chunks of a request body, seconds.
    #[arg(long, env = "HTTP_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub http_body_timeout_secs: u64,

    /// Seconds from a request head to the start of its response (uploads included);
    /// longer gets 408.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_SECS", default_value_t = 120)]
    pub http_request_timeout_secs: u64,

    /// A connection on which no byte moves in either direction for this many seconds is
    /// closed (stalled downloads, dead peers). Above the WebSocket ping interval (20 s).
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub http_idle_timeout_secs: u64,

    /// Redis connection string (`redis://host:6379`): run as one node of a cluster whose
    /// nodes share rooms through this Redis. Unset: a single node, no Redis at all.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// This node's id in the cluster (unique among live nodes). Default: the host name
    /// and a random suffix.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// How often a cluster node writes its heartbeat to Redis, milliseconds.
    #[arg(long, env = "CLUSTER_HEARTBEAT_MS", default_value_t = 1000)]
    pub cluster_heartbeat_ms: u64,

    /// A node whose heartbeat is older than this is dead (its heartbeat key expires),
    /// milliseconds; its participants may resume elsewhere within the resume grace.
    #[arg(long, env = "CLUSTER_NODE_TTL_MS", default_value_t = 5000)]
    pub cluster_node_ttl_ms: u64,

    /// Serve `/metrics` on this separate port instead of the HTTP port.
    #[arg(long, env = "METRICS_PORT")]
    pub metrics_port: Option<u16>,

    /// Log output format (the filter comes from RUST_LOG, default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// The SFU's settings.
    pub fn sfu_config(&self) -> anyhow::Result<media::SfuConfig> {
        anyhow::ensure!(
            (1..=16).contains(&self.audio_slots),
            "AUDIO_SLOTS must be between 1 and 16"
        );
        anyhow::ensure!(
            (200..=500).contains(&self.speaker_interval_ms),
            "SPEAKER_INTERVAL_MS must be between 200 and 500"
        );
        anyhow::ensure!(
            self.peer_timeout_secs > 0,
            "PEER_TIMEOUT_SECS must be positive"
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.media_command_queue),
            "MEDIA_COMMAND_QUEUE must be between 1 and 1000000"
        );
        anyhow::ensure!(
            (1..=10_000_000).contains(&self.media_event_backlog),
            "MEDIA_EVENT_BACKLOG must be between 1 and 10000000"
        );
        Ok(media::SfuConfig {
            command_capacity: self.media_command_queue,
            event_backlog: self.media_event_backlog,
            bind: std::net::SocketAddr::new(self.media_host, self.media_port),
            announce_ips: self.announce_ips.clone(),
            slots: self.audio_slots,
            speaker_interval: std::time::Duration::from_millis(self.speaker_interval_ms),
            peer_timeout: std::time::Duration::from_secs(self.peer_timeout_secs),
            threads: match self.media_threads {
                0 => media::SfuConfig::default().threads,
                n => n,
            },
            relay: media::RelayConfig {
                bind: std::net::SocketAddr::new(self.media_host, self.relay_port),
                secret: self
                    .relay_secret
                    .as_deref()
                    .map(|s| media::RelaySecret::new(s.as_bytes().to_vec()))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("RELAY_SECRET: {e}"))?,
                ..media::RelayConfig::default()
            },
            ..media::SfuConfig::default()
        })
    }

    /// The WebSocket side's settings.
    pub fn signaling_config(&self) -> anyhow::Result<signaling::SignalingConfig> {
        anyhow::ensure!(
            self.max_participants > 0,
            "MAX_PARTICIPANTS must be positive"
        );
        anyhow::ensure!(self.ws_rate_per_sec > 0, "WS_RATE_PER_SEC must be positive");
        anyhow::ensure!(
            self.max_places_per_user > 0,
            "MAX_PLACES_PER_USER must be positive"
        );
        let ice_servers = if self.ice_servers.is_empty() {
            Vec::new()
        } else {
            vec![signaling::protocol::IceServer {
                urls: self.ice_servers.clone(),
                username: self.turn_username.clone(),
                credential: self.turn_credential.clone(),
            }]
        };
        Ok(signaling::SignalingConfig {
            slot_count: self.audio_slots,
            max_participants: self.max_participants,
            rate_per_sec: f64::from(self.ws_rate_per_sec),
            rate_burst: self.ws_rate_per_sec.saturating_mul(2),
            resume_grace: std::time::Duration::from_secs(self.resume_grace_secs),
            unconnected_grace: std::time::Duration::from_secs(self.unconnected_grace_secs),
            max_places_per_user: self.max_places_per_user,
            ice_servers,
            ..signaling::SignalingConfig::default()
        })
    }

    /// Connection cap and timeouts of the HTTP listener (before fitting the cap to the
    /// open-files limit, see [`crate::serve::effective_cap`]).
    pub fn http_limits(&self) -> anyhow::Result<crate::serve::HttpLimits> {
        use std::time::Duration;
        anyhow::ensure!(self.max_connections > 0, "MAX_CONNECTIONS must be positive");
        for (v, name) in [
            (self.http_header_timeout_secs, "HTTP_HEADER_TIMEOUT_SECS"),
            (self.http_body_timeout_secs, "HTTP_BODY_TIMEOUT_SECS"),
            (self.http_request_timeout_secs, "HTTP_REQUEST_TIMEOUT_SECS"),
            (self.http_idle_timeout_secs, "HTTP_IDLE_TIMEOUT_SECS"),
        ] {
            anyhow::ensure!(v > 0, "{name} must be positive");
        }
        Ok(crate::serve::HttpLimits {
            max_connections: self.max_connections,
            header_timeout: Duration::from_secs(self.http_header_timeout_secs),
            body_timeout: Duration::from_secs(self.http_body_timeout_secs),
            request_timeout: Duration::from_secs(self.http_request_timeout_secs),
            idle_timeout: Duration::from_secs(self.http_idle_timeout_secs),
            ..crate::serve::HttpLimits::default()
        })
    }

    /// The MongoDB store's timeouts and write concern, and the deadline of one store
    /// operation.
    pub fn mongo_settings(&self) -> anyhow::Result<(api::store::MongoSettings, Duration)> {
        anyhow::ensure!(
            self.mongo_server_selection_timeout_ms > 0,
            "MONGO_SERVER_SELECTION_TIMEOUT_MS must be positive"
        );
        anyhow::ensure!(
            self.mongo_operation_timeout_ms > 0,
            "MONGO_OPERATION_TIMEOUT_MS must be positive"
        );
        let settings = api::store::MongoSettings {
            server_selection_timeout: Duration::from_millis(self.mongo_server_selection_timeout_ms),
            write_acknowledgment: api::store::MongoSettings::parse_w(&self.mongo_write_concern)
                .map_err(|e| anyhow::anyhow!("MONGO_WRITE_CONCERN: {e}"))?,
            journal: self.mongo_journal,
        };
        Ok((
            settings,
            Duration::from_millis(self.mongo_operation_timeout_ms),
        ))
    }

    /// Cluster settings, when `REDIS_URL` is set.
    pub fn cluster_settings(
        &self,
    ) -> anyhow::Result<Option<crate::cluster_redis::ClusterSettings>> {
        let Some(url) = self
            .redis_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        anyhow::ensure!(
            self.cluster_heartbeat_ms > 0,
            "CLUSTER_HEARTBEAT_MS must be positive"
        );
        anyhow::ensure!(
            self.cluster_node_ttl_ms > self.cluster_heartbeat_ms,
            "CLUSTER_NODE_TTL_MS must be above CLUSTER_HEARTBEAT_MS"
        );
        let node_id = match self.node_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => {
                anyhow::ensure!(
                    id.len() <= 64
                        && id
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                    "NODE_ID: at most 64 letters, digits, '-', '_' or '.'"
                );
                id.to_owned()
            }
            _ => crate::cluster_redis::default_node_id(),
        };
        Ok(Some(crate::cluster_redis::ClusterSettings {
            redis_url: url.to_owned(),
            node_id,
            heartbeat: Duration::from_millis(self.cluster_heartbeat_ms),
            node_ttl: Duration::from_millis(self.cluster_node_ttl_ms),
        }))
    }

    /// Parses flags and environment, applying the `DB_URL` alias for `MONGO_URI`.
    pub fn load() -> Self {
        let mut cfg = Self::parse();
        if cfg.mongo_uri.is_none() {
            cfg.mongo_uri = std::env::var("DB_URL")
                .ok()
                .filter(|s| !s.trim().is_empty());
        }
        cfg.mongo_uri = cfg.mongo_uri.filter(|s| !s.trim().is_empty());
        cfg
    }

    pub fn api_config(&self) -> anyhow::Result<ApiConfig> {
        anyhow::ensure!(
            self.access_token_ttl_secs > 0,
            "ACCESS_TOKEN_TTL_SECS must be positive"
        );
        anyhow::ensure!(
            self.refresh_token_ttl_days > 0,
            "REFRESH_TOKEN_TTL_DAYS must be positive"
        );
        anyhow::ensure!(self.otp_ttl_secs > 0, "OTP_TTL_SECS must be positive");
        anyhow::ensure!(
            self.otp_max_attempts > 0,
            "OTP_MAX_ATTEMPTS must be positive"
        );
        anyhow::ensure!(
            self.rooms_per_user_per_hour > 0,
            "ROOMS_PER_USER_PER_HOUR must be positive"
        );
        anyhow::ensure!(
            self.room_expiry_days > 0,
            "ROOM_EXPIRY_DAYS must be positive"
        );
        anyhow::ensure!(
            self.sweep_interval_secs > 0,
            "SWEEP_INTERVAL_SECS must be positive"
        );
        Ok(ApiConfig {
            base_url: self.base_url.trim_end_matches('/').to_owned(),
            cors_origins: self.frontend_url.clone(),
            secure_cookies: !self.insecure_cookies,
            trust_proxy: self.trust_proxy,
            access_token_ttl: time::Duration::seconds(self.access_token_ttl_secs),
            refresh_token_ttl: time::Duration::days(self.refresh_token_ttl_days),
            otp_ttl: time::Duration::seconds(self.otp_ttl_secs),
            otp_attempts: self.otp_max_attempts,
            rate_limits: RateLimitConfig {
                send_otp_per_phone: self.otp_send_per_phone_per_hour,
                send_otp_per_ip: self.otp_send_per_ip_per_hour,
                verify_otp_per_phone: self.otp_verify_per_phone_per_hour,
                verify_otp_per_ip: self.otp_verify_per_ip_per_hour,
                create_room_per_user: self.rooms_per_user_per_hour,
            },
            max_voice_bytes: self.max_voice_bytes,
            max_image_bytes: self.max_image_bytes,
            max_avatar_bytes: self.max_avatar_bytes,
            max_avatar_dimension: self.max_avatar_dimension,
            avatar_decode_concurrency: self.avatar_decode_concurrency,
            avatar_decode_wait: std::time::Duration::from_secs(self.avatar_decode_wait_secs),
            max_message_chars: self.max_message_chars,
            room_expiry: time::Duration::days(self.room_expiry_days),
            sweep_interval: std::time::Duration::from_secs(self.sweep_interval_secs),
        })
    }

    /// The configured secrets, or ones generated once and kept in the data dir so sessions
    /// survive restarts.
    pub fn jwt_secrets(&self) -> anyhow::Result<JwtSecrets> {
        let access = secret_or_persisted(
            self.jwt_access_token_secret.as_deref(),
            "JWT_ACCESS_TOKEN_SECRET",
            &self.data_dir.join("jwt_access_token.secret"),
        )?;
        let refresh = secret_or_persisted(
            self.jwt_refresh_token_secret.as_deref(),
            "JWT_REFRESH_TOKEN_SECRET",
            &self.data_dir.join("jwt_refresh_token.secret"),
        )?;
        Ok(JwtSecrets { access, refresh })
    }

    /// Twilio when all three SMS settings are present, else the logging sender.
    pub fn sms_sender(&self) -> anyhow::Result<Arc<dyn SmsSender>> {
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        match (
            set(&self.sms_sid),
            set(&self.sms_auth_token),
            set(&self.sms_from_number),
        ) {
            (Some(account_sid), Some(auth_token), Some(from_number)) => {
                let sender = TwilioSender::new(TwilioConfig {
                    account_sid,
                    auth_token,
                    from_number,
                    base_url: self.sms_api_url.clone(),
                })?;
                tracing::info!("login codes are sent by SMS through Twilio");
                Ok(Arc::new(sender))
            }
            (None, None, None) => {
                tracing::warn!(
                    "!!! DEVELOPMENT SMS SENDER: login codes are written to this log, not sent. \
                     Set SMS_SID, SMS_AUTH_TOKEN and SMS_FROM_NUMBER for real SMS. !!!"
                );
                Ok(Arc::new(DevSmsSender))
            }
            _ => anyhow::bail!("SMS_SID, SMS_AUTH_TOKEN and SMS_FROM_NUMBER must be set together"),
        }
    }
}

fn secret_or_persisted(
    configured: Option<&str>,
    var: &str,
    file: &Path,
) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = configured.map(str::trim).filter(|s| !s.is_empty()) {
        if s.len() < 32 {
            tracing::warn!("{var} is shorter than 32 characters; use a long random value");
        }
        return Ok(s.as_bytes().to_vec());
    }
    if let Ok(existing) = fs::read_to_string(file) {
        let existing = existing.trim();
        if !existing.is_empty() {
            tracing::warn!(path = %file.display(), "{var} not set: using the secret generated earlier");
            return Ok(existing.as_bytes().to_vec());
        }
    }
    let secret = api::auth::random_token();
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(file)
        .with_context(|| format!("writing {}", file.display()))?;
    f.write_all(secret.as_bytes())?;
    tracing::warn!(path = %file.display(), "{var} not set: generated a random secret and saved it");
    Ok(secret.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("chorus-config-{}", api::store::new_id()));
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn a_generated_secret_is_persisted_and_reused() {
        let dir = temp_dir();
        let file = dir.join("nested").join("s.secret");
        let first = secret_or_persisted(None, "X", &file).expect("generated");
        assert!(first.len() >= 43, "256 bits, base64url");
        let again = secret_or_persisted(Some("  "), "X", &file).expect("reused");
        assert_eq!(first, again, "sessions survive a restart");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "secret file is private");
        }
        let configured = secret_or_persisted(Some("from-env"), "X", &file).expect("configured");
        assert_eq!(configured, b"from-env");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn flags_map_onto_the_api_settings() {
        let cfg = Config::try_parse_from([
            "chorus",
            "--insecure-cookies",
            "--frontend-url",
            "http://a.example,http://b.example",
            "--otp-ttl-secs",
            "60",
            "--room-expiry-days",
            "7",
        ])
        .expect("parses");
        let api = cfg.api_config().expect("valid");
        assert!(!api.secure_cookies);
        let default = Config::try_parse_from(["chorus"]).expect("parses");
        assert!(
            default
                .api_config()
                .expect("valid")
                .cors_origins
                .iter()
                .all(|o| o.trim().is_empty()),
            "no cross-origin access unless configured"
        );
        assert_eq!(api.cors_origins, ["http://a.example", "http://b.example"]);
        assert_eq!(api.otp_ttl, time::Duration::seconds(60));
        assert_eq!(api.room_expiry, time::Duration::days(7));
        assert_eq!(api.otp_attempts, 5);

        let bad = Config::try_parse_from(["chorus", "--otp-max-attempts", "0"]).expect("parses");
        assert!(bad.api_config().is_err());
    }

    #[test]
    fn the_relay_is_off_without_a_secret_and_binds_relay_port_on_media_host() {
        let off = Config::try_parse_from(["chorus"]).expect("parses");
        let sfu = off.sfu_config().expect("valid");
        assert!(sfu.relay.secret.is_none());
        assert_eq!(sfu.relay.bind.port(), 7782);
        let on = Config::try_parse_from([
            "chorus",
            "--media-host",
            "10.0.0.5",
            "--relay-port",
            "9000",
            "--relay-secret",
            "0123456789abcdef0123",
        ])
        .expect("parses");
        let sfu = on.sfu_config().expect("valid");
        assert!(sfu.relay.secret.is_some());
        assert_eq!(sfu.relay.bind.to_string(), "10.0.0.5:9000");
        let short = Config::try_parse_from(["chorus", "--relay-secret", "short"]).expect("parses");
        assert!(short.sfu_config().is_err(), "a short secret is refused");
    }

    #[test]
    fn the_sfu_queue_bounds_come_from_flags_and_must_be_positive() {
        let default = Config::try_parse_from(["chorus"]).expect("parses");
        let sfu = default.sfu_config().expect("valid");
        let media_default = media::SfuConfig::default();
        assert_eq!(sfu.command_capacity, media_default.command_capacity);
        assert_eq!(sfu.event_backlog, media_default.event_backlog);
        let set = Config::try_parse_from([
            "chorus",
            "--media-command-queue",
            "64",
            "--media-event-backlog",
            "512",
        ])
        .expect("parses");
        let sfu = set.sfu_config().expect("valid");
        assert_eq!((sfu.command_capacity, sfu.event_backlog), (64, 512));
        for flag in ["--media-command-queue", "--media-event-backlog"] {
            let zero = Config::try_parse_from(["chorus", flag, "0"]).expect("parses");
            assert!(zero.sfu_config().is_err(), "{flag} 0 is refused");
        }
    }

    #[test]
    fn cluster_mode_only_with_a_redis_url_and_sane_timings() {
        let single = Config::try_parse_from(["chorus"]).expect("parses");
        assert!(single.cluster_settings().expect("valid").is_none());
        let c = Config::try_parse_from([
            "chorus",
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--node-id",
            "n1",
        ])
        .expect("parses");
        let s = c.cluster_settings().expect("valid").expect("cluster");
        assert_eq!(s.node_id, "n1");
        assert!(s.heartbeat < s.node_ttl);
        let generated = Config::try_parse_from(["chorus", "--redis-url", "redis://x"])
            .expect("parses")
            .cluster_settings()
            .expect("valid")
            .expect("cluster");
        assert!(!generated.node_id.is_empty());
        for bad in [
            vec!["--node-id", "a b"],
            vec![
                "--cluster-heartbeat-ms",
                "5000",
                "--cluster-node-ttl-ms",
                "5000",
            ],
        ] {
            let mut args = vec!["chorus", "--redis-url", "redis://x"];
            args.extend(bad);
            let c = Config::try_parse_from(args).expect("parses");
            assert!(c.cluster_settings().is_err());
        }
    }

    #[test]
    fn sms_settings_must_come_together() {
        let partial = Config::try_parse_from(["chorus", "--sms-sid", "AC1"]).expect("parses");
        assert!(partial.sms_sender().is_err());
        let none = Config::try_parse_from(["chorus"]).expect("parses");
        assert!(none.sms_sender().expect("dev sender").is_development());
    }
}
