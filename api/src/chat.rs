//! Chat operations shared by the HTTP handlers and the signaling side (through the
//! binary's adapter): who may post and delete, message validation, and storage with room
//! activity. These functions do not notify the live side; the HTTP handlers call
//! [`crate::live::LiveRooms`] hooks afterwards, and signaling broadcasts itself.
//! Errors are [`ChatError`]s, which carry no HTTP status: the HTTP edge turns them into
//! `ApiError`s (`From<ChatError> for ApiError`), the binary's socket adapter into
//! signaling's refusals.

use crate::access::{AccessError, visible_room};
use crate::state::AppState;
use crate::store::{Message, MessageId, MessageType, RoomId, StoreError, User, UserId};

/// Why a chat operation was refused. The `Display` text is what a client is shown.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Unknown, or a private room the user may not see (indistinguishable on purpose).
    #[error("room not found")]
    RoomNotFound,
    /// Unknown, or a message of another room.
    #[error("message not found")]
    MessageNotFound,
    /// The author is not a stored user (a validly signed token for an unknown user).
    #[error("Unknown user")]
    UnknownUser,
    /// Posting needs a display name.
    #[error("Set your name before posting (POST /api/activate)")]
    NotActivated,
    /// Empty after cleaning, or too long.
    #[error("Message must be 1 to {max} visible characters")]
    InvalidText { max: usize },
    /// Only call notices are system messages.
    #[error("Only call notices are system messages")]
    NotASystemMessage,
    /// Deleting takes the author or the room owner.
    #[error("Only the author or the room owner can delete this message")]
    NotAuthor,
    #[error(transparent)]
    Store(StoreError),
}

impl From<AccessError> for ChatError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::NotFound => Self::RoomNotFound,
            AccessError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        match e {
            // Writes into a room that no longer exists (deleted meanwhile).
            StoreError::NotFound => Self::RoomNotFound,
            other => Self::Store(other),
        }
    }
}

pub type ChatResult<T> = Result<T, ChatError>;

/// The author and their display name; posting needs a name (messages record it).
pub async fn author(state: &AppState, user: &UserId) -> ChatResult<(User, String)> {
    let user = state
        .store
        .get_user(user)
        .await
        .map_err(ChatError::Store)?
        .ok_or(ChatError::UnknownUser)?;
    let name = user.name.clone().ok_or(ChatError::NotActivated)?;
    Ok((user, name))
}

/// Cleans and checks a text message: control characters (but newline and tab) and
/// text-direction overrides go, the rest is trimmed, and what is left must be visible and
/// within the configured length. The one place chat text is checked, for HTTP and the
/// socket alike (signaling's adapter calls [`post_text`]).
pub fn validate_text(state: &AppState, raw: &str) -> ChatResult<String> {
    let max = state.config.max_message_chars;
    crate::text::clean_message(raw, max).map_err(|_| ChatError::InvalidText { max })
}

/// Stores a message and moves the room's activity forward.
pub async fn store_message(state: &AppState, msg: &Message) -> ChatResult<()> {
    state.store.insert_message(msg.clone()).await?;
    state.store.touch_room(&msg.room_id, msg.created_at).await?;
    Ok(())
}

/// Posts a text message as `user` in `room` (which they must be allowed to see).
pub async fn post_text(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    text: &str,
) -> ChatResult<Message> {
    let room = visible_room(state.store.as_ref(), room, user).await?;
    let text = validate_text(state, text)?;
    let (user, name) = author(state, user).await?;
    let msg = Message {
        id: MessageId::generate(),
        room_id: room.id,
        author_id: user.id,
        author_name: name,
        kind: MessageType::Text,
        text,
        attachment: None,
        created_at: state.now(),
    };
    store_message(state, &msg).await?;
    Ok(msg)
}

/// Stores a system notice (`call_notification` / `call_ended`) attributed to `user`
/// under `author_name`. Signaling posts these for participants it admitted, who may be
/// guests the store does not know (minted load-test tokens), so the user is not looked
/// up; the room must still be visible to them.
pub async fn post_system(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    author_name: &str,
    kind: MessageType,
    text: &str,
) -> ChatResult<Message> {
    if !matches!(kind, MessageType::CallNotification | MessageType::CallEnded) {
        return Err(ChatError::NotASystemMessage);
    }
    let room = visible_room(state.store.as_ref(), room, user).await?;
    let msg = Message {
        id: MessageId::generate(),
        room_id: room.id,
        author_id: user.clone(),
        author_name: author_name.to_owned(),
        kind,
        text: text.chars().take(state.config.max_message_chars).collect(),
        attachment: None,
        created_at: state.now(),
    };
    store_message(state, &msg).await?;
    Ok(msg)
}

/// Deletes a message of `room` (with its attachment bytes) if `user` is its author or the
/// room owner. Unknown messages, or messages of another room, are 404.
pub async fn delete_message(
    state: &AppState,
    room: &RoomId,
    message: &MessageId,
    user: &UserId,
) -> ChatResult<Message> {
    let room = visible_room(state.store.as_ref(), room, user).await?;
    let msg = state
        .store
        .get_message(message)
        .await
        .map_err(ChatError::Store)?
        .filter(|m| m.room_id == room.id)
        .ok_or(ChatError::MessageNotFound)?;
    if msg.author_id != *user && room.owner_id != *user {
        return Err(ChatError::NotAuthor);
    }
    state
        .store
        .delete_message(&msg.id)
        .await
        .map_err(ChatError::Store)?;
    Ok(msg)
}
