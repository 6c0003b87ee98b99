//! Chorus audio SFU.
//!
//! One UDP socket carries every participant's WebRTC connection (ICE-lite, DTLS, SRTP), driven
//! by the sans-I/O `rtc` crate on a dedicated media thread. Opus packets from publishers are
//! forwarded, never decoded, onto a fixed number of outgoing "slots" per subscriber.
//!
//! The public surface is [`Sfu`] (a cheap clonable handle), [`SfuConfig`], [`SfuEvent`] (read
//! from an [`EventReceiver`]) and [`SfuStats`]. media knows nothing of users, HTTP or storage: ids are opaque numbers that
//! the signaling layer allocates.
//!
//! Module map:
//! - [`sfu`]: the async handle, its commands and the media thread's start-up.
//! - `commands`: a media thread's command queue (bounded requests; leave and mute never
//!   refused).
//! - [`events`]: the event queue to signaling (room state coalesced per room, lifecycle
//!   events kept in order).
//! - `engine`: the media loop: socket, demultiplexing, timers, forwarding, cleanup.
//! - `peer`: one participant's `rtc` peer connection and its negotiated legs.
//! - `stun`: the tiny STUN parse used to demultiplex new remote addresses.
//! - `timers`: the deadline heap over all connections.
//! - `stats`: counters for metrics.
//! - [`relay`]: the node-to-node relay of a room's top speakers (issue 11): wire format,
//!   authentication and replay checks.
//! - [`ids`], [`level`], [`slots`], [`rewrite`], [`router`]: the socket-free logic of who
//!   receives what (audio levels, slot allocation with hysteresis, per-slot RTP rewriting),
//!   tested on virtual time.

mod batch;
mod commands;
mod driver;
mod engine;
pub mod events;
pub mod ids;
pub mod level;
mod peer;
pub mod relay;
mod report;
pub mod rewrite;
pub mod router;
pub mod sfu;
pub mod slots;
mod stats;
mod stun;
mod timers;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use engine::SlotMap;
pub use events::EventReceiver;
pub use ids::{ParticipantId, RoomKey};
pub use relay::RelaySecret;
pub use sfu::Sfu;
pub use stats::{JOIN_BUCKETS, JoinLatency, SfuStats};

/// Configuration of the media plane.
#[derive(Clone, Debug)]
pub struct SfuConfig {
    /// The one shared UDP socket; default `0.0.0.0:7882`, tests use `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// Host candidate IPs put in the SDP (1:1 NAT public IPs, or the interfaces to use),
    /// one candidate each, all on the one socket's port. Empty: the bound IP if it is not
    /// unspecified, else every address of the bound family on the interfaces that are up,
    /// except loopback and link-local, the one that routes outwards first (loopback, with
    /// a warning, if there is none). The first one is what `rtc` sees as the local address
    /// of every datagram, so list the primary address first and keep to one IP family.
    pub announce_ips: Vec<IpAddr>,
    /// Outgoing audio slots per subscriber, default 3 (1..=16).
    pub slots: usize,
    /// Active-speaker / slot decision period, default 300 ms (200..=500 ms).
    pub speaker_interval: Duration,
    /// No packets or consent for this long: the participant is removed. Default 15 s (a
    /// client checks consent every 4-6 s; RFC 7675).
    pub peer_timeout: Duration,
    /// Never connected within this: the participant is removed. Default 15 s.
    pub connect_timeout: Duration,
    /// Media threads, each with its own socket on port `bind.port + i` (or an ephemeral
    /// port each when `bind.port` is 0); rooms are spread over them. Default: one per core.
    pub threads: usize,
    /// Requests (join, answer, role change, ICE restart, slot map) queued per media thread
    /// at most; beyond it they fail at once with [`MediaError::Busy`]. Leaves and mute
    /// changes are never refused. Default 1024.
    pub command_capacity: usize,
    /// Events waiting for their consumer beyond which joins are refused with
    /// [`MediaError::Busy`]. Speaker and slot events coalesce per room and lifecycle events
    /// are never dropped (see [`events`]). Default 16384.
    pub event_backlog: usize,
    /// The node-to-node relay (one room across several nodes); off without a secret.
    pub relay: RelayConfig,
}

/// Configuration of the node-to-node relay (see [`relay`]).
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Relay socket of the first media thread; thread i binds port `bind.port + i` (each
    /// thread relays the rooms it holds), or an ephemeral port each when `bind.port` is 0.
    /// Default `0.0.0.0:7782`.
    pub bind: SocketAddr,
    /// The secret shared by every node of the cluster, which authenticates relay datagrams
    /// (HMAC-SHA256). `None` (the default): the relay is off and no socket is bound.
    pub secret: Option<RelaySecret>,
    /// A remote source (a publisher on another node) that stops arriving for this long is
    /// removed from its room here. Default 2 s (a silent publisher with DTX still sends a
    /// packet every 400 ms).
    pub remote_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 7782)),
            secret: None,
            remote_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 7882)),
            announce_ips: Vec::new(),
            slots: 3,
            speaker_interval: Duration::from_millis(300),
            peer_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(15),
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get().min(sfu::MAX_THREADS)),
            command_capacity: 1024,
            event_backlog: 16384,
            relay: RelayConfig::default(),
        }
    }
}

/// The server's SDP offer for one participant.
#[derive(Clone, Debug)]
pub struct Offer {
    /// The whole SDP, to hand to the client's `setRemoteDescription`.
    pub sdp: String,
    /// mid of the microphone m-line (the participant's own audio, towards the server).
    pub publish_mid: String,
    /// mid of slot i (audio from the server to the participant).
    pub slot_mids: Vec<String>,
}

/// Why the media side gave up on a participant.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// ICE or DTLS failed.
    IceFailed,
    /// Connected once, then no packets or consent for `peer_timeout`.
    Timeout,
    /// Not connected within `connect_timeout` of joining.
    NeverConnected,
}

/// What the media plane tells signaling.
#[derive(Clone, Debug, PartialEq)]
pub enum SfuEvent {
    /// ICE+DTLS done, media flows.
    Connected { pid: ParticipantId },
    /// The media side gave up on this participant; it has already been removed.
    Disconnected {
        pid: ParticipantId,
        reason: DisconnectReason,
    },
    /// Loudest current speakers of a room, loudest first, smoothed level 0..=1.
    ActiveSpeakers {
        room: RoomKey,
        speakers: Vec<(ParticipantId, f32)>,
    },
    /// Room-level slot map: `slots[i]` is forwarded in slot i to everyone; `spare` is the
    /// next-loudest speaker, which a participant whose own id is in `slots[j]` receives in
    /// slot j instead (nobody hears themself).
    SlotsChanged {
        room: RoomKey,
        slots: Vec<Option<ParticipantId>>,
        spare: Option<ParticipantId>,
    },
    /// RTP arrived from a participant not allowed to publish and was dropped (reported once
    /// per participant per role change).
    MediaRefused { pid: ParticipantId },
}

/// Errors of the media plane.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("invalid media configuration: {0}")]
    Config(String),
    #[error("cannot bind the media socket: {0}")]
    Bind(#[source] std::io::Error),
    #[error("participant {0:?} is already joined")]
    AlreadyJoined(ParticipantId),
    #[error("unknown participant {0:?}")]
    UnknownParticipant(ParticipantId),
    #[error("invalid SDP answer: {0}")]
    BadAnswer(String),
    #[error("no offer is outstanding for this participant")]
    NoPendingOffer,
    #[error("too many participants on this media server")]
    Full,
    #[error("WebRTC stack error: {0}")]
    Rtc(String),
    /// Refused to keep a queue bounded (see `SfuConfig::command_capacity` and
    /// `event_backlog`); the caller may retry later.
    #[error("the media server is busy: {0}")]
    Busy(&'static str),
    #[error("the media thread has stopped")]
    Stopped,
}
