//! What signaling needs from the outside world, as small object-safe traits.
//!
//! The `chorus` binary implements `Authenticator`, `RoomDirectory` and `ChatStore`
//! over the control plane (`api`), and `MediaControl` is implemented for
//! `media::Sfu` in `sfu.rs`. Tests implement all four with fakes. Signaling never
//! depends on `api`: these traits are the whole contract. With media, which signaling
//! does depend on, it shares media's own types (`RoomKey`, `Offer`, `SfuEvent`).

use async_trait::async_trait;
use axum::http;
use futures::stream::BoxStream;
use media::{Offer, RoomKey, SfuEvent};

use crate::error::SignalingError;
use crate::protocol::{ChatMessage, ParticipantId};

/// A user the `Authenticator` vouched for. Never carries a phone number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: String,
    pub name: String,
    pub avatar: Option<String>,
}

/// Turns the credentials of a WebSocket upgrade into a user. Which of them carries the
/// token (a bearer header, a cookie, a `token` query parameter) and in which order is
/// the implementation's rule, so the socket and the HTTP API cannot disagree.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// `headers` and the raw `query` string of the upgrade request.
    /// `Err(SignalingError::Unauthorized)` for a missing, malformed, expired or revoked
    /// token; `Err(SignalingError::Backend(..))` if the check itself failed.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<AuthUser, SignalingError>;
}

/// The control plane's verdict on a join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomAccess {
    /// The room owner's user id: every connection of that user is a moderator.
    pub owner_user_id: String,
}

/// Room existence and the private/social/open join rules live in the control plane;
/// signaling only asks.
#[async_trait]
pub trait RoomDirectory: Send + Sync + 'static {
    /// `Ok` if `user` may join `room_id`. `Err(RoomNotFound)` for an unknown room,
    /// `Err(Forbidden(..))` when the rules refuse this user (e.g. a private room they
    /// were not invited to). Implementations may answer `RoomNotFound` for a private
    /// room the user may not see, as the HTTP API does.
    async fn check_join(
        &self,
        room_id: &str,
        user: &AuthUser,
    ) -> Result<RoomAccess, SignalingError>;
}

/// Outcome of a delete request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    /// Neither the author nor the room owner.
    Forbidden,
}

/// A call membership change, stored as a system message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEvent {
    Joined,
    Left,
}

/// Persistence of chat over the socket. Signaling stores first and broadcasts only what
/// the store accepted.
#[async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// Applies the chat rules (the same as for messages posted over HTTP: trimming,
    /// length, who may post) and stores the message; returns it as it will be
    /// broadcast. A message the rules refuse is `Err(SignalingError::Refused{..})`.
    /// Should also count as room activity. Signaling itself only bounds the frame size.
    async fn store_message(
        &self,
        room_id: &str,
        author: &AuthUser,
        text: &str,
    ) -> Result<ChatMessage, SignalingError>;
    /// Deletes a message of `room_id` on behalf of `user_id` (the author or the room
    /// owner may delete; attachments go with it).
    async fn delete_message(
        &self,
        room_id: &str,
        message_id: &str,
        user_id: &str,
    ) -> Result<DeleteOutcome, SignalingError>;
    /// Stores a system message saying `user` joined or left the call.
    async fn store_call_event(
        &self,
        room_id: &str,
        user: &AuthUser,
        event: CallEvent,
    ) -> Result<ChatMessage, SignalingError>;
    /// A participant joined the room: keeps it from expiring.
    async fn touch_room(&self, room_id: &str) -> Result<(), SignalingError>;
}

/// The stream of media events signaling consumes (one consumer): the SFU's own events,
/// in media's ids (the same numbers as signaling's: see `sfu.rs`).
pub type MediaEvents = BoxStream<'static, SfuEvent>;

/// What signaling drives on the SFU: `media::Sfu`'s methods, in signaling's participant
/// ids, so that tests can use a fake. Room keys and offers are media's own types.
#[async_trait]
pub trait MediaControl: Send + Sync + 'static {
    /// Creates the participant's peer connection and returns the server's offer.
    async fn join(
        &self,
        room: RoomKey,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<Offer, SignalingError>;
    /// The client's answer to the latest offer.
    async fn accept_answer(&self, pid: ParticipantId, sdp: String) -> Result<(), SignalingError>;
    /// Role change: renegotiates, returning the new offer.
    async fn set_can_publish(
        &self,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<Offer, SignalingError>;
    /// ICE restart: new offer with new ICE credentials.
    async fn restart_ice(&self, pid: ParticipantId) -> Result<Offer, SignalingError>;
    /// Server-enforced mute (takes effect without renegotiation).
    fn set_muted(&self, pid: ParticipantId, muted: bool);
    /// Removes the participant's peer connection and everything it owns.
    fn leave(&self, pid: ParticipantId);
}
