//! Adapters that let signaling use the control plane without depending on it: the
//! signaling crate states what it needs as traits (`Authenticator`, `RoomDirectory`,
//! `ChatStore`), the control plane states what it needs as `LiveRooms`, and this
//! module implements each over the other side.

use std::sync::Arc;

use api::access::{AccessError, can_join};
use api::auth::TokenVerifier;
use api::dto::{MessageJson, avatar_url};
use api::store::{Message, MessageId, MessageType, RoomId, Store, UserId};
use api::{LiveRoomInfo, LiveRooms};
use async_trait::async_trait;
use signaling::protocol::{ChatMessage, ErrorCode};
use signaling::{
    AuthUser, Authenticator, CallEvent, ChatStore, DeleteOutcome, RoomAccess, RoomDirectory,
    Signaling, SignalingError,
};

fn backend(e: impl std::fmt::Display) -> SignalingError {
    SignalingError::Backend(e.to_string())
}

/// Access tokens from the control plane, resolved to the user's public profile.
pub struct ApiAuthenticator {
    pub verifier: TokenVerifier,
    pub store: Arc<dyn Store>,
    pub base_url: String,
}

#[async_trait]
impl Authenticator for ApiAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<AuthUser, SignalingError> {
        let claims = self
            .verifier
            .verify_access(token)
            .map_err(|_| SignalingError::Unauthorized)?;
        let user = self
            .store
            .get_user(&claims.user_id)
            .await
            .map_err(backend)?;
        Ok(match user {
            Some(u) => AuthUser {
                user_id: u.id.0.clone(),
                name: u.name.clone().unwrap_or_else(|| guest_name(&u.id)),
                avatar: u.avatar.as_ref().map(|f| avatar_url(&self.base_url, f)),
            },
            // A validly signed token for a user the store does not know was minted with
            // the server's secret (the load tester does this, as LiveKit's does with its
            // API key): admit it under a generated name.
            None => AuthUser {
                name: guest_name(&claims.user_id),
                user_id: claims.user_id.0,
                avatar: None,
            },
        })
    }
}

fn guest_name(id: &UserId) -> String {
    let tail: String =
        id.0.chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
    format!("Guest {tail}")
}

/// Join rules (open, social, private with invites) from the control plane.
pub struct ApiRoomDirectory {
    pub store: Arc<dyn Store>,
}

#[async_trait]
impl RoomDirectory for ApiRoomDirectory {
    async fn check_join(
        &self,
        room_id: &str,
        user: &AuthUser,
    ) -> Result<RoomAccess, SignalingError> {
        match can_join(
            self.store.as_ref(),
            &RoomId(room_id.to_owned()),
            &UserId(user.user_id.clone()),
        )
        .await
        {
            Ok(room) => Ok(RoomAccess {
                owner_user_id: room.owner_id.0,
            }),
            // A private room the user may not see is reported like a missing one, as
            // over HTTP, so room ids cannot be probed.
            Err(AccessError::NotFound) => Err(SignalingError::RoomNotFound),
            Err(AccessError::Store(e)) => Err(backend(e)),
        }
    }
}

/// Chat over the socket, through the control plane's chat functions (`api::chat`): the
/// same rules and storage as chat over HTTP.
pub struct ApiChatStore {
    pub state: api::AppState,
}

/// A refusal of the chat rules as the socket reports it: the same message as over HTTP,
/// with the protocol's nearest error code. Store failures stay internal.
fn chat_refusal(e: api::ApiError) -> SignalingError {
    let message = e.to_string();
    let code = match e {
        api::ApiError::BadRequest { .. } => ErrorCode::BadMessage,
        api::ApiError::Forbidden { .. } => ErrorCode::Forbidden,
        // A validly signed token for a user the store does not know (a minted load-test
        // guest): joining and calls are open to it, posting is not, as over HTTP.
        api::ApiError::Unauthorized { .. } => {
            return SignalingError::Refused {
                code: ErrorCode::Forbidden,
                message: "Sign in and set your name before posting".into(),
            };
        }
        api::ApiError::NotFound(_) => ErrorCode::NotFound,
        other => return backend(other),
    };
    SignalingError::Refused { code, message }
}

/// The protocol's chat message from a stored one (same JSON as the HTTP API's).
pub fn chat_message(m: &Message) -> ChatMessage {
    let j = MessageJson::of(m);
    ChatMessage {
        underscore_id: j.underscore_id,
        id: j.id,
        room_id: j.room_id,
        user_id: j.user_id,
        username: j.username,
        message: j.message,
        kind: m.kind.as_str().to_owned(),
        url: j.url,
        file_id: j.file_id,
        created_at: j.created_at,
        duration: j.duration,
    }
}

#[async_trait]
impl ChatStore for ApiChatStore {
    async fn store_message(
        &self,
        room_id: &str,
        author: &AuthUser,
        text: &str,
    ) -> Result<ChatMessage, SignalingError> {
        // The same function as `POST /api/room/{roomId}/messages`: one set of chat rules
        // (trimming, length, an activated profile, room visibility) for both paths.
        let posted = api::chat::post_text(
            &self.state,
            &RoomId(room_id.to_owned()),
            &UserId(author.user_id.clone()),
            text,
        )
        .await;
        match posted {
            Ok(msg) => Ok(chat_message(&msg)),
            Err(e) => Err(chat_refusal(e)),
        }
    }

    async fn delete_message(
        &self,
        room_id: &str,
        message_id: &str,
        user_id: &str,
    ) -> Result<DeleteOutcome, SignalingError> {
        // The same rule and checks as `DELETE /api/room/{roomId}/messages/{id}`.
        let deleted = api::chat::delete_message(
            &self.state,
            &RoomId(room_id.to_owned()),
            message_id,
            &UserId(user_id.to_owned()),
        )
        .await;
        match deleted {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(api::ApiError::NotFound(_)) => Ok(DeleteOutcome::NotFound),
            Err(api::ApiError::Forbidden { .. }) => Ok(DeleteOutcome::Forbidden),
            Err(e) => Err(backend(e)),
        }
    }

    async fn store_call_event(
        &self,
        room_id: &str,
        user: &AuthUser,
        event: CallEvent,
    ) -> Result<ChatMessage, SignalingError> {
        let (kind, text) = match event {
            CallEvent::Joined => (
                MessageType::CallNotification,
                format!("{} joined the call", user.name),
            ),
            CallEvent::Left => (
                MessageType::CallEnded,
                format!("{} left the call", user.name),
            ),
        };
        let msg = api::chat::post_system(
            &self.state,
            &RoomId(room_id.to_owned()),
            &UserId(user.user_id.clone()),
            &user.name,
            kind,
            &text,
        )
        .await
        .map_err(backend)?;
        Ok(chat_message(&msg))
    }

    async fn touch_room(&self, room_id: &str) -> Result<(), SignalingError> {
        self.state
            .store
            .touch_room(&RoomId(room_id.to_owned()), self.state.now())
            .await
            .map_err(backend)
    }
}

/// Room listings read live counts and speakers from signaling, and changes made over
/// HTTP (messages posted, uploaded or deleted; rooms deleted) reach the room's
/// sockets live. Every hook only takes signaling's state lock briefly: they run
/// inside HTTP handlers.
pub struct SignalingLiveRooms {
    pub signaling: Signaling,
}

impl LiveRooms for SignalingLiveRooms {
    fn snapshot(&self, room: &RoomId) -> LiveRoomInfo {
        match self.signaling.room_snapshot(room.as_str()) {
            Some(s) => LiveRoomInfo {
                total_people: u32::try_from(s.total_people).unwrap_or(u32::MAX),
                speakers: s.speakers.into_iter().map(UserId).collect(),
            },
            None => LiveRoomInfo::default(),
        }
    }

    fn message_created(&self, message: &Message) {
        self.signaling
            .broadcast_message(message.room_id.as_str(), chat_message(message));
    }

    fn message_deleted(&self, room: &RoomId, message: &MessageId) {
        self.signaling
            .broadcast_message_deleted(room.as_str(), message.as_str());
    }

    fn room_deleted(&self, room: &RoomId) {
        let removed = self.signaling.close_room(room.as_str(), "room deleted");
        if removed > 0 {
            tracing::info!(participants = removed, "deleted room closed live");
        }
    }

    fn occupied_rooms(&self) -> Vec<RoomId> {
        self.signaling
            .occupied_rooms()
            .into_iter()
            .map(RoomId)
            .collect()
    }
}

/// The media relay between nodes as signaling drives it. The SFU's relay is not
/// wired yet: this one relays nothing (no address is published, so no node subscribes
/// to another), and participants on different nodes share everything but audio.
pub struct DisabledRelay;

impl signaling::cluster::MediaRelay for DisabledRelay {
    fn relay_local_addr(&self, _room: signaling::RoomKey) -> Option<std::net::SocketAddr> {
        None
    }

    fn relay_add_subscriber(&self, _room: signaling::RoomKey, _node_addr: std::net::SocketAddr) {}

    fn relay_remove_subscriber(&self, _room: signaling::RoomKey, _node_addr: std::net::SocketAddr) {
    }
}
