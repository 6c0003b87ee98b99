//! Adapters that let signaling use the control plane without depending on it: the
//! signaling crate states what it needs as traits (`Authenticator`, `RoomDirectory`,
//! `ChatStore`), the control plane states what it needs as `LiveRooms`, and this
//! module implements each over the other side.

use std::sync::Arc;

use api::access::{AccessError, can_join};
use api::auth::TokenVerifier;
use api::chat::ChatError;
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

/// A room id from the socket. A malformed one names no room, as over HTTP.
fn parse_room(s: &str) -> Result<RoomId, SignalingError> {
    RoomId::parse(s).map_err(|_| SignalingError::RoomNotFound)
}

/// A user id signaling got from [`ApiAuthenticator`], so always well formed; anything
/// else was not vouched for by the control plane.
fn parse_user(s: &str) -> Result<UserId, SignalingError> {
    UserId::parse(s).map_err(|_| SignalingError::Unauthorized)
}

/// Access tokens from the control plane, resolved to the user's public profile.
pub struct ApiAuthenticator {
    pub verifier: TokenVerifier,
    pub store: Arc<dyn Store>,
    pub base_url: String,
}

#[async_trait]
impl Authenticator for ApiAuthenticator {
    async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
        query: Option<&str>,
    ) -> Result<AuthUser, SignalingError> {
        // The control plane's one rule: bearer, then cookie, then the query parameter.
        let token =
            api::extract_access_token(headers, query).ok_or(SignalingError::Unauthorized)?;
        let claims = self
            .verifier
            .verify_access(&token)
            .map_err(|_| SignalingError::Unauthorized)?;
        let user = self
            .store
            .get_user(&claims.user_id)
            .await
            .map_err(backend)?;
        Ok(match user {
            Some(u) => AuthUser {
                user_id: u.id.to_string(),
                name: u.name.clone().unwrap_or_else(|| guest_name(&u.id)),
                avatar: u.avatar.as_ref().map(|f| avatar_url(&self.base_url, f)),
            },
            // A validly signed token for a user the store does not know was minted with
            // the server's secret (the load tester does this, as LiveKit's does with its
            // API key): admit it under a generated name.
            None => AuthUser {
                name: guest_name(&claims.user_id),
                user_id: claims.user_id.into_string(),
                avatar: None,
            },
        })
    }
}

fn guest_name(id: &UserId) -> String {
    let tail: String = id
        .as_str()
        .chars()
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
        let room = parse_room(room_id)?;
        match can_join(self.store.as_ref(), &room, &parse_user(&user.user_id)?).await {
            Ok(room) => Ok(RoomAccess {
                owner_user_id: room.owner_id.into_string(),
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
fn chat_refusal(e: ChatError) -> SignalingError {
    let message = e.to_string();
    let code = match e {
        ChatError::InvalidText { .. } | ChatError::NotASystemMessage => ErrorCode::BadMessage,
        ChatError::NotActivated | ChatError::NotAuthor => ErrorCode::Forbidden,
        // A validly signed token for a user the store does not know (a minted load-test
        // guest): joining and calls are open to it, posting is not, as over HTTP.
        ChatError::UnknownUser => {
            return SignalingError::Refused {
                code: ErrorCode::Forbidden,
                message: "Sign in and set your name before posting".into(),
            };
        }
        ChatError::RoomNotFound | ChatError::MessageNotFound => ErrorCode::NotFound,
        ChatError::Store(e) => return backend(e),
    };
    SignalingError::Refused { code, message }
}

/// A delete over the socket: refusals are outcomes, only store failures are errors.
fn delete_outcome(result: Result<Message, ChatError>) -> Result<DeleteOutcome, SignalingError> {
    match result {
        Ok(_) => Ok(DeleteOutcome::Deleted),
        Err(ChatError::RoomNotFound | ChatError::MessageNotFound) => Ok(DeleteOutcome::NotFound),
        Err(ChatError::NotAuthor) => Ok(DeleteOutcome::Forbidden),
        Err(e) => Err(chat_refusal(e)),
    }
}

/// The one adapter between the two chat message types: `api`'s `MessageJson` (what the
/// HTTP API returns) as the protocol's `ChatMessage` (what the socket broadcasts), which
/// cannot be one type because neither crate may depend on the other. Every path that puts
/// a stored message on the socket (posted over the socket or over HTTP, uploads, call
/// notices) comes through here, so both carry the same JSON; the destructuring names every
/// field, so a field added to `MessageJson` does not compile until it is carried over.
pub fn chat_message(m: &Message) -> ChatMessage {
    let MessageJson {
        underscore_id,
        id,
        room_id,
        user_id,
        username,
        message,
        kind,
        url,
        file_id,
        created_at,
        duration,
    } = MessageJson::of(m);
    ChatMessage {
        underscore_id,
        id,
        room_id,
        user_id,
        username,
        message,
        kind: kind.as_str().to_owned(),
        url,
        file_id,
        created_at,
        duration,
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
            &parse_room(room_id)?,
            &parse_user(&author.user_id)?,
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
        // The same rule and checks as `DELETE /api/room/{roomId}/messages/{id}`; a
        // malformed id names nothing, as over HTTP.
        let (Ok(room), Ok(message)) = (RoomId::parse(room_id), MessageId::parse(message_id)) else {
            return Ok(DeleteOutcome::NotFound);
        };
        delete_outcome(
            api::chat::delete_message(&self.state, &room, &message, &parse_user(user_id)?).await,
        )
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
            &parse_room(room_id)?,
            &parse_user(&user.user_id)?,
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
            .touch_room(&parse_room(room_id)?, self.state.now())
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
                // Signaling's users came from ApiAuthenticator, so their ids parse.
                speakers: s
                    .speakers
                    .into_iter()
                    .filter_map(|u| UserId::parse(u).ok())
                    .collect(),
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
            .filter_map(|r| RoomId::parse(r).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use api::store::FileId;
    use time::macros::datetime;

    use super::*;

    #[test]
    fn the_socket_carries_a_message_with_the_http_apis_json() {
        let message = |kind, text: &str, attachment: Option<&str>| Message {
            id: MessageId::parse("m1").expect("valid id"),
            room_id: RoomId::parse("r1").expect("valid id"),
            author_id: UserId::parse("u1").expect("valid id"),
            author_name: "Alice".into(),
            kind,
            text: text.into(),
            attachment: attachment.map(|f| FileId::parse(f).expect("valid id")),
            created_at: datetime!(2026-01-02 03:04:05.678 UTC),
        };
        for m in [
            message(MessageType::Text, "hi", None),
            message(
                MessageType::Voice,
                &api::dto::voice_text(Some(2500)),
                Some("f1"),
            ),
            message(MessageType::Image, "", Some("f2")),
            message(MessageType::CallNotification, "Alice joined the call", None),
            message(MessageType::CallEnded, "Alice left the call", None),
        ] {
            let http = serde_json::to_value(MessageJson::of(&m)).expect("http json");
            let socket = serde_json::to_value(chat_message(&m)).expect("socket json");
            assert_eq!(socket, http, "{:?}", m.kind);
        }
    }
}

#[cfg(test)]
mod chat_error_tests {
    use super::*;
    use api::store::StoreError;

    fn refusal(e: ChatError) -> (ErrorCode, String) {
        match chat_refusal(e) {
            SignalingError::Refused { code, message } => (code, message),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn chat_refusals_reach_the_socket_with_the_http_message_and_nearest_code() {
        assert_eq!(
            refusal(ChatError::InvalidText { max: 5 }),
            (
                ErrorCode::BadMessage,
                "Message must be 1 to 5 visible characters".to_owned()
            )
        );
        assert_eq!(
            refusal(ChatError::NotActivated),
            (
                ErrorCode::Forbidden,
                "Set your name before posting (POST /api/activate)".to_owned()
            )
        );
        assert_eq!(
            refusal(ChatError::UnknownUser),
            (
                ErrorCode::Forbidden,
                "Sign in and set your name before posting".to_owned()
            )
        );
        assert_eq!(
            refusal(ChatError::RoomNotFound),
            (ErrorCode::NotFound, "room not found".to_owned())
        );
    }

    #[test]
    fn store_failures_stay_internal() {
        let e = chat_refusal(ChatError::Store(StoreError::Backend("disk on fire".into())));
        assert!(matches!(e, SignalingError::Backend(_)), "{e:?}");
    }

    #[test]
    fn delete_refusals_are_outcomes() {
        assert_eq!(
            delete_outcome(Err(ChatError::MessageNotFound)).ok(),
            Some(DeleteOutcome::NotFound)
        );
        assert_eq!(
            delete_outcome(Err(ChatError::RoomNotFound)).ok(),
            Some(DeleteOutcome::NotFound)
        );
        assert_eq!(
            delete_outcome(Err(ChatError::NotAuthor)).ok(),
            Some(DeleteOutcome::Forbidden)
        );
        assert!(matches!(
            delete_outcome(Err(ChatError::Store(StoreError::Unavailable("x".into())))),
            Err(SignalingError::Backend(_))
        ));
    }
}

/// The media relay between nodes as signaling drives it: the SFU's relay (on when
/// `RELAY_SECRET` is set; without it no address is published, so no node subscribes to
/// another and participants on different nodes share everything but audio).
pub struct SfuRelay(pub media::Sfu);

impl signaling::cluster::MediaRelay for SfuRelay {
    fn relay_local_addr(&self, room: media::RoomKey) -> Option<std::net::SocketAddr> {
        self.0.relay_local_addr(room)
    }

    fn relay_add_subscriber(&self, room: media::RoomKey, node_addr: std::net::SocketAddr) {
        if let Err(e) = self.0.relay_add_subscriber(room, node_addr) {
            tracing::warn!(error = %e, %node_addr, "relaying a room to a node failed");
        }
    }

    fn relay_remove_subscriber(&self, room: media::RoomKey, node_addr: std::net::SocketAddr) {
        if let Err(e) = self.0.relay_remove_subscriber(room, node_addr) {
            tracing::warn!(error = %e, %node_addr, "ending a room's relay to a node failed");
        }
    }
}
