//! The crate's error type, shared by the port traits and the server.

use crate::protocol::ErrorCode;

/// Failures signaling sees from its collaborators. Only the variant reaches the client
/// (as an `ErrorCode`); the detail strings are logged, never sent, except for
/// `Refused`, whose message is written for the client.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// Missing, malformed, expired or revoked token.
    #[error("unauthorized")]
    Unauthorized,
    /// The room does not exist (or may not be seen by this user).
    #[error("room not found")]
    RoomNotFound,
    /// The control plane's rules refuse this action (private room, not invited, ...).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The control plane's rules refuse what the client asked (e.g. a chat message that
    /// is empty after trimming, or from a user who has not set a name). Sent to the
    /// client as an `error` with this code and message; the connection stays usable.
    #[error("refused ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    /// A store or directory call failed.
    #[error("backend: {0}")]
    Backend(String),
    /// The media side refused or failed.
    #[error("media: {0}")]
    Media(String),
    /// The media side is momentarily overloaded (its queues are full); the same request
    /// may succeed a moment later. Sent to the client as `busy`.
    #[error("busy: {0}")]
    Busy(String),
}
