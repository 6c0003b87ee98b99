//! Signaling limits and timings, with production defaults.

use std::time::Duration;

use crate::protocol::IceServer;

/// Everything configurable about the WebSocket side. `Default` gives the production
/// values documented in docs/PROTOCOL.md.
#[derive(Clone, Debug)]
pub struct SignalingConfig {
    /// Audio slots advertised in `joined.slotCount`; must match the SFU's `slots`.
    pub slot_count: usize,
    /// Participants (connections, including those inside their resume grace) per room.
    /// The room owner (its moderator) is admitted even to a full room.
    pub max_participants: usize,
    /// Largest text frame processed; bigger ones get `too_large` (up to 4x this the
    /// connection survives, beyond that the WebSocket layer drops the connection).
    pub max_frame_bytes: usize,
    /// Sustained client messages per second (token bucket refill rate).
    pub rate_per_sec: f64,
    /// Bucket size: how many messages may arrive in a burst.
    pub rate_burst: u32,
    /// How often the server pings each socket.
    pub ping_interval: Duration,
    /// A socket silent (no frame, no pong) this long is closed.
    pub ping_timeout: Duration,
    /// How long a participant whose socket dropped keeps its place for a resume.
    pub resume_grace: Duration,
    /// The resume grace of a place whose audio (WebRTC) never connected: a reloaded tab
    /// comes back within a second or two, while a place that was only ever a socket is
    /// cheap to abandon in bulk. Capped at `resume_grace`.
    pub unconnected_grace: Duration,
    /// Places one user may hold in one room (connected tabs and places waiting for a
    /// resume). A join over the cap takes the place of the user's oldest resumable
    /// one; with every place live, the join is refused with `too_many_tabs`.
    pub max_places_per_user: usize,
    /// STUN/TURN servers handed to clients in `joined`.
    pub ice_servers: Vec<IceServer>,
    /// Outgoing messages buffered per connection; a client that lets it fill is
    /// disconnected so it cannot stall a room's broadcasts.
    pub outgoing_queue: usize,
    /// Longest accepted room id (bytes).
    pub max_room_id_len: usize,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            slot_count: 3,
            max_participants: 5000,
            max_frame_bytes: 64 * 1024,
            rate_per_sec: 20.0,
            rate_burst: 40,
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(45),
            resume_grace: Duration::from_secs(15),
            unconnected_grace: Duration::from_secs(5),
            max_places_per_user: 4,
            ice_servers: Vec::new(),
            outgoing_queue: 512,
            max_room_id_len: 128,
        }
    }
}
