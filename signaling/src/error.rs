//! The crate's error type, shared by the port traits and the server.

/// Failures signaling sees from its collaborators. Only the variant reaches the client
/// (as an `ErrorCode`); the detail strings are logged, never sent.
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
    /// A store or directory call failed.
    #[error("backend: {0}")]
    Backend(String),
    /// The media side refused or failed.
    #[error("media: {0}")]
    Media(String),
}
